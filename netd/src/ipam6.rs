//! IPv6 address management: a network's IPv6 subnet, its gateway and the
//! addresses handed out, and the ULA pool `--ipv6` takes a /64 from when
//! no subnet is given (Docker 27's default-address-pools for IPv6). Pure:
//! no I/O.
use std::{collections::BTreeSet, net::Ipv6Addr};

use anyhow::{Result, bail};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

/// A pool of IPv6 subnets: `base` split into blocks of prefix length `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool6 {
    pub base: Ipv6Net,
    pub size: u8,
}

/// The default pool: a /48 of the ULA range fd00::/8 with a 40-bit global
/// id derived from the daemon's instance (RFC 4193: pseudo-random, stable
/// for the host), split into /64s.
pub fn default_pool(instance: &str) -> Pool6 {
    // FNV-1a of the instance id: 40 bits of it make the global id.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in instance.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let gid = h & 0xff_ffff_ffff;
    let seg0 = 0xfd00 | ((gid >> 32) as u16 & 0xff);
    let seg1 = (gid >> 16) as u16;
    let seg2 = gid as u16;
    Pool6 {
        base: Ipv6Net::new(Ipv6Addr::new(seg0, seg1, seg2, 0, 0, 0, 0, 0), 48).expect("/48"),
        size: 64,
    }
}

/// Checks a network's IPv6 subnet: not loopback, link-local, multicast or
/// unspecified space, and with room for a gateway and a container.
pub fn check_subnet(s: &Ipv6Net) -> Result<()> {
    if *s != s.trunc() {
        bail!(
            "invalid IPv6 subnet {s}: host bits are set (did you mean {}?)",
            s.trunc()
        );
    }
    let forbidden: [(&str, &str); 4] = [
        ("::/128", "the unspecified address"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ];
    for (block, name) in forbidden {
        let b: Ipv6Net = block.parse().expect("a valid block");
        if b.contains(s) || s.contains(&b) {
            bail!("invalid IPv6 subnet {s}: it overlaps {name} ({block})");
        }
    }
    if s.prefix_len() > 126 {
        bail!(
            "invalid IPv6 subnet {s}: no room for a gateway and a container (use /126 or larger)"
        );
    }
    Ok(())
}

/// The first /`size` of `pool` that overlaps none of `taken`.
pub fn pick_subnet(pools: &[Pool6], taken: &[Ipv6Net]) -> Result<Ipv6Net> {
    for pool in pools {
        if pool.size < pool.base.prefix_len() || pool.size > 126 {
            bail!(
                "invalid IPv6 address pool {} with size /{}",
                pool.base,
                pool.size
            );
        }
        let Ok(subnets) = pool.base.subnets(pool.size) else {
            continue;
        };
        // A pool of /64s in a /48 has 65,536 candidates: stop at the
        // first free one.
        for c in subnets {
            if !taken.iter().any(|t| t.contains(&c) || c.contains(t)) {
                return Ok(c);
            }
        }
    }
    bail!("no free IPv6 subnet in the default address pools; pass --subnet with an IPv6 prefix")
}

/// Address allocation inside one network's IPv6 subnet: lowest first,
/// never the subnet-router anycast address (the subnet's first) or the
/// gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocator6 {
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    #[serde(default)]
    used: BTreeSet<Ipv6Addr>,
}

impl Allocator6 {
    pub fn new(subnet: Ipv6Net, gateway: Option<Ipv6Addr>) -> Result<Allocator6> {
        check_subnet(&subnet)?;
        let first = subnet.network();
        let gateway = gateway.unwrap_or_else(|| Ipv6Addr::from(u128::from(first) + 1));
        if !subnet.contains(&gateway) {
            bail!("IPv6 gateway {gateway} is outside subnet {subnet}");
        }
        if gateway == first {
            bail!("IPv6 gateway {gateway} is the subnet-router anycast address of {subnet}");
        }
        Ok(Allocator6 {
            subnet,
            gateway,
            used: BTreeSet::new(),
        })
    }

    pub fn subnet(&self) -> Ipv6Net {
        self.subnet
    }

    pub fn gateway(&self) -> Ipv6Addr {
        self.gateway
    }

    fn reserved(&self, ip: Ipv6Addr) -> Option<&'static str> {
        if ip == self.subnet.network() {
            Some("subnet-router anycast address")
        } else if ip == self.gateway {
            Some("gateway")
        } else {
            None
        }
    }

    /// The lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv6Addr> {
        let first = u128::from(self.subnet.network());
        let last = u128::from(self.subnet.broadcast());
        // Stops at the first free address: at most used + 2 steps.
        let mut ip = first;
        while ip <= last {
            let a = Ipv6Addr::from(ip);
            if self.reserved(a).is_none() && !self.used.contains(&a) {
                self.used.insert(a);
                return Ok(a);
            }
            ip += 1;
        }
        bail!("no free address in {}", self.subnet)
    }

    /// A specific address (`--ip6`).
    pub fn reserve(&mut self, ip: Ipv6Addr) -> Result<()> {
        if !self.subnet.contains(&ip) {
            bail!("address {ip} is outside subnet {}", self.subnet);
        }
        if let Some(what) = self.reserved(ip) {
            bail!("address {ip} is the {what} of {}", self.subnet);
        }
        if !self.used.insert(ip) {
            bail!("address {ip} is already in use");
        }
        Ok(())
    }

    pub fn release(&mut self, ip: Ipv6Addr) {
        self.used.remove(&ip);
    }

    pub fn is_used(&self, ip: Ipv6Addr) -> bool {
        self.used.contains(&ip)
    }
}

/// Docker's MAC-less EUI-64 is not used: container IPv6 addresses come
/// from the allocator; this is the reverse-DNS name of an address
/// (`...ip6.arpa.`).
pub fn ptr_name(ip: Ipv6Addr) -> String {
    let mut s = String::with_capacity(72);
    for b in ip.octets().iter().rev() {
        s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
    }
    s.push_str("ip6.arpa.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_first_and_reserves() {
        let mut a = Allocator6::new("fd00:1::/64".parse().unwrap(), None).unwrap();
        assert_eq!(a.gateway(), "fd00:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            a.allocate().unwrap(),
            "fd00:1::2".parse::<Ipv6Addr>().unwrap()
        );
        a.reserve("fd00:1::9".parse().unwrap()).unwrap();
        assert!(a.reserve("fd00:1::9".parse().unwrap()).is_err());
        assert!(a.reserve("fd00:1::1".parse().unwrap()).is_err());
        assert!(a.reserve("fd00:1::".parse().unwrap()).is_err());
        assert!(a.reserve("fd00:2::5".parse().unwrap()).is_err());
        a.release("fd00:1::2".parse().unwrap());
        assert_eq!(
            a.allocate().unwrap(),
            "fd00:1::2".parse::<Ipv6Addr>().unwrap()
        );
        let mut tiny = Allocator6::new("fd00:3::/126".parse().unwrap(), None).unwrap();
        tiny.allocate().unwrap();
        tiny.allocate().unwrap();
        assert!(tiny.allocate().is_err());
    }

    #[test]
    fn subnets_are_checked() {
        for bad in [
            "fe80::/64",
            "ff02::/64",
            "::1/128",
            "fd00::1/64",
            "fd00::/127",
        ] {
            assert!(check_subnet(&bad.parse().unwrap()).is_err(), "{bad}");
        }
        check_subnet(&"2001:db8:1::/64".parse().unwrap()).unwrap();
        assert!(
            Allocator6::new(
                "fd00::/64".parse().unwrap(),
                Some("fd01::1".parse().unwrap())
            )
            .is_err()
        );
    }

    #[test]
    fn default_pool_is_a_stable_ula_48() {
        let p = default_pool("abcd1234");
        assert_eq!(p, default_pool("abcd1234"));
        assert_ne!(p, default_pool("other"));
        assert_eq!(p.base.prefix_len(), 48);
        assert_eq!(p.base.addr().segments()[0] & 0xff00, 0xfd00);
        let first = pick_subnet(std::slice::from_ref(&p), &[]).unwrap();
        assert_eq!(first.prefix_len(), 64);
        let second = pick_subnet(std::slice::from_ref(&p), &[first]).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn ptr_names() {
        assert_eq!(
            ptr_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
    }
}
