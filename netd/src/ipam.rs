//! IPv4 subnets and address allocation: CIDR blocks, Docker's default address pools, picking a
//! free subnet for a new network, and handing out addresses inside one network. Pure logic: no
//! I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 network in CIDR form, normalised (host bits must be zero: "10.0.0.1/24" is an
/// error that says to use 10.0.0.0/24 — Docker refuses it too).
///
/// The fields are public for matching and literals; build from input with [`Cidr::new`] or
/// `parse`. The methods mask host bits, so they give sensible answers even for a hand-built
/// value that is not normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// The block `addr/prefix`. Errors if `prefix > 32` or host bits of `addr` are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr> {
        normalised(addr, prefix).map_err(|why| anyhow!("invalid subnet {addr}/{prefix}: {why}"))
    }

    /// The `/prefix` block that contains `addr`: host bits are cleared.
    ///
    /// # Panics
    ///
    /// If `prefix > 32`.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Cidr {
        assert!(prefix <= 32, "IPv4 prefix /{prefix} is longer than 32 bits");
        Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network())
    }

    /// Whether all of `other` is in the block.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network())
    }

    /// Whether the blocks share any address. (Two CIDR blocks either nest or are disjoint.)
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The first address of the block.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & mask(self.prefix))
    }

    /// The last address of the block.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !mask(self.prefix))
    }

    /// The number of addresses in the block, network and broadcast included.
    pub fn size(&self) -> u64 {
        1 << (32 - self.prefix.min(32))
    }

    /// The `n`-th address in the block (0 = network address), `None` if out of range.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        (u64::from(n) < self.size()).then(|| Ipv4Addr::from(u32::from(self.network()) + n))
    }

    /// The first address usable by a host: network + 1. A /31 has no network or broadcast
    /// address (RFC 3021) and a /32 is a single host, so for those it is the network address.
    pub fn first_host(&self) -> Ipv4Addr {
        if self.prefix >= 31 {
            self.network()
        } else {
            Ipv4Addr::from(u32::from(self.network()) + 1)
        }
    }

    /// Whether `ip` is this block's network or broadcast address, which hosts cannot use: the
    /// name of the address if so. /31 and /32 blocks have neither.
    fn reserved(&self, ip: Ipv4Addr) -> Option<&'static str> {
        if self.prefix >= 31 {
            None
        } else if ip == self.network() {
            Some("network address")
        } else if ip == self.broadcast() {
            Some("broadcast address")
        } else {
            None
        }
    }
}

/// The netmask of a `/prefix` as a number; prefixes above 32 count as 32.
fn mask(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

/// `addr/prefix` if it is a valid, normalised block; otherwise what is wrong with it.
fn normalised(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, String> {
    if prefix > 32 {
        return Err(format!("prefix /{prefix} is longer than 32 bits"));
    }
    let cidr = Cidr::containing(addr, prefix);
    if cidr.addr != addr {
        return Err(format!("host bits are set; use {cidr}"));
    }
    Ok(cidr)
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    /// Parses `A.B.C.D/PREFIX`. The prefix is required and host bits must be zero.
    fn from_str(s: &str) -> Result<Cidr> {
        let invalid = |why: String| anyhow!("invalid subnet {s:?}: {why}");
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(invalid("missing /prefix (e.g. 10.0.0.0/24)".into()));
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| invalid(format!("{addr:?} is not an IPv4 address")))?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!("prefix {prefix:?} is not a number")));
        }
        let prefix: u8 = match prefix.parse() {
            Ok(p) if p <= 32 => p,
            _ => return Err(invalid(format!("prefix /{prefix} is longer than 32 bits"))),
        };
        normalised(addr, prefix).map_err(invalid)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Serialised as its string form, `"10.0.0.0/24"`.
impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A pool of subnets for new networks: `base` split into blocks of prefix length `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub base: Cidr,
    pub size: u8,
}

/// Default address pools, Docker's defaults: 172.17.0.0/16..172.31.0.0/16 split into /16s,
/// then 192.168.0.0/16 split into /20s.
pub fn default_pools() -> Vec<Pool> {
    let pool = |addr, base_prefix, size| Pool {
        base: Cidr {
            addr,
            prefix: base_prefix,
        },
        size,
    };
    let mut pools: Vec<Pool> = (17..=31)
        .map(|b| pool(Ipv4Addr::new(172, b, 0, 0), 16, 16))
        .collect();
    pools.push(pool(Ipv4Addr::new(192, 168, 0, 0), 16, 20));
    pools
}

/// Picks the first subnet from `pools` that overlaps none of `taken` (existing networks'
/// subnets and the host's routes). Error if the pools are exhausted: "no free subnet in the
/// default address pools; pass --subnet".
///
/// Leave the default route (0.0.0.0/0) out of `taken`: it overlaps everything.
pub fn pick_subnet(pools: &[Pool], taken: &[Cidr]) -> Result<Cidr> {
    for pool in pools {
        if pool.size < pool.base.prefix || pool.size > 32 {
            bail!(
                "invalid address pool {} with size /{}: the size must be from /{} to /32",
                pool.base,
                pool.size,
                pool.base.prefix
            );
        }
        let last = u64::from(u32::from(pool.base.broadcast()));
        let mut next = u64::from(u32::from(pool.base.network()));
        while next <= last {
            // `next` is at most `last`, a u32.
            let candidate = Cidr::containing(Ipv4Addr::from(next as u32), pool.size);
            // Blocks nest or are disjoint: a taken block that overlaps the candidate either
            // lies inside it or covers it (and maybe more candidates). Skip past both.
            let end = taken
                .iter()
                .filter(|t| t.overlaps(&candidate))
                .map(|t| u32::from(t.broadcast()))
                .max();
            match end {
                None => return Ok(candidate),
                Some(end) => {
                    next = u64::from(end.max(u32::from(candidate.broadcast()))) + 1;
                }
            }
        }
    }
    bail!("no free subnet in the default address pools; pass --subnet")
}

/// Address allocation inside one network.
///
/// Addresses are handed out lowest first from the ip range (or the whole subnet), never the
/// subnet's network or broadcast address or the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocator {
    subnet: Cidr,
    gateway: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip_range: Option<Cidr>,
    /// Addresses handed out by `allocate` and `reserve` and not released.
    #[serde(default)]
    used: BTreeSet<Ipv4Addr>,
}

/// A placeholder: subnet 0.0.0.0/0, gateway 0.0.0.0, nothing in use. Build real allocators
/// with [`Allocator::new`].
impl Default for Allocator {
    fn default() -> Allocator {
        Allocator {
            subnet: Cidr {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
            },
            gateway: Ipv4Addr::UNSPECIFIED,
            ip_range: None,
            used: BTreeSet::new(),
        }
    }
}

impl Allocator {
    /// gateway must be inside subnet, not the network or broadcast address; ip_range must be
    /// inside subnet. Errors name the values ("gateway 10.1.0.1 is outside subnet 10.0.0.0/24").
    pub fn new(subnet: Cidr, gateway: Ipv4Addr, ip_range: Option<Cidr>) -> Result<Allocator> {
        let subnet = Cidr::new(subnet.addr, subnet.prefix)?;
        if !subnet.contains(gateway) {
            bail!("gateway {gateway} is outside subnet {subnet}");
        }
        if let Some(what) = subnet.reserved(gateway) {
            bail!("gateway {gateway} is the {what} of subnet {subnet}");
        }
        if let Some(range) = ip_range {
            let range = normalised(range.addr, range.prefix)
                .map_err(|why| anyhow!("invalid ip range {range}: {why}"))?;
            if !subnet.contains_cidr(&range) {
                bail!("ip range {range} is not inside subnet {subnet}");
            }
        }
        Ok(Allocator {
            subnet,
            gateway,
            ip_range,
            used: BTreeSet::new(),
        })
    }

    pub fn subnet(&self) -> Cidr {
        self.subnet
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    pub fn ip_range(&self) -> Option<Cidr> {
        self.ip_range
    }

    /// Lowest free address in ip_range (or subnet), skipping network, broadcast and gateway.
    /// Error: "no free address in 10.0.0.0/30".
    pub fn allocate(&mut self) -> Result<Ipv4Addr> {
        let range = self.ip_range.unwrap_or(self.subnet);
        let (first, last) = (u32::from(range.network()), u32::from(range.broadcast()));
        // Stops at the first free address, so this looks at no more than used + 3 addresses.
        let free = (first..=last).map(Ipv4Addr::from).find(|&ip| {
            self.subnet.reserved(ip).is_none() && ip != self.gateway && !self.used.contains(&ip)
        });
        match free {
            Some(ip) => {
                self.used.insert(ip);
                Ok(ip)
            }
            None => bail!("no free address in {range}"),
        }
    }

    /// A specific address (--ip): must be in the subnet (Docker allows outside ip_range but inside
    /// subnet), not network/broadcast/gateway, not taken ("address 10.0.0.5 is already in use").
    pub fn reserve(&mut self, ip: Ipv4Addr) -> Result<()> {
        let subnet = self.subnet;
        if !subnet.contains(ip) {
            bail!("address {ip} is outside subnet {subnet}");
        }
        if let Some(what) = subnet.reserved(ip) {
            bail!("address {ip} is the {what} of subnet {subnet}");
        }
        if ip == self.gateway {
            bail!("address {ip} is the gateway of subnet {subnet}");
        }
        if !self.used.insert(ip) {
            bail!("address {ip} is already in use");
        }
        Ok(())
    }

    /// Frees an address from `allocate` or `reserve`; freeing one not in use does nothing.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    /// Whether `allocate` or `reserve` handed out `ip` and it has not been released. (The
    /// gateway is not "used" in this sense, though it is never handed out.)
    pub fn is_used(&self, ip: Ipv4Addr) -> bool {
        self.used.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(s: &str) -> String {
        s.parse::<Cidr>().unwrap_err().to_string()
    }

    #[test]
    fn parses_and_displays() {
        let c = cidr("10.0.0.0/24");
        assert_eq!(
            c,
            Cidr {
                addr: ip("10.0.0.0"),
                prefix: 24
            }
        );
        assert_eq!(c.to_string(), "10.0.0.0/24");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("10.1.2.3/32").to_string(), "10.1.2.3/32");
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            parse_err("10.0.0/24"),
            r#"invalid subnet "10.0.0/24": "10.0.0" is not an IPv4 address"#
        );
        assert_eq!(
            parse_err("10.0.0.0"),
            r#"invalid subnet "10.0.0.0": missing /prefix (e.g. 10.0.0.0/24)"#
        );
        assert_eq!(
            parse_err("10.0.0.0/"),
            r#"invalid subnet "10.0.0.0/": prefix "" is not a number"#
        );
        assert_eq!(
            parse_err("10.0.0.0/x"),
            r#"invalid subnet "10.0.0.0/x": prefix "x" is not a number"#
        );
        assert_eq!(
            parse_err("10.0.0.0/33"),
            r#"invalid subnet "10.0.0.0/33": prefix /33 is longer than 32 bits"#
        );
        assert!(parse_err("10.0.0.0/999999999999").contains("longer than 32 bits"));
        assert!(parse_err("10.0.0.0/+8").contains(r#"prefix "+8" is not a number"#));
        assert!(parse_err("::1/128").contains(r#""::1" is not an IPv4 address"#));
        assert!(parse_err("10.0.0.0/24/8").contains(r#"prefix "24/8" is not a number"#));
        assert!(parse_err("").contains("missing /prefix"));
    }

    #[test]
    fn host_bits() {
        assert_eq!(
            parse_err("10.0.0.1/24"),
            r#"invalid subnet "10.0.0.1/24": host bits are set; use 10.0.0.0/24"#
        );
        assert_eq!(
            Cidr::new(ip("172.17.5.0"), 16).unwrap_err().to_string(),
            "invalid subnet 172.17.5.0/16: host bits are set; use 172.17.0.0/16"
        );
        assert_eq!(
            Cidr::new(ip("10.0.0.0"), 33).unwrap_err().to_string(),
            "invalid subnet 10.0.0.0/33: prefix /33 is longer than 32 bits"
        );
        assert_eq!(Cidr::new(ip("10.0.0.0"), 8).unwrap(), cidr("10.0.0.0/8"));
        assert_eq!(Cidr::containing(ip("10.1.2.3"), 16), cidr("10.1.0.0/16"));
        assert_eq!(Cidr::containing(ip("10.1.2.3"), 0), cidr("0.0.0.0/0"));
        assert_eq!(Cidr::containing(ip("10.1.2.3"), 32), cidr("10.1.2.3/32"));
    }

    #[test]
    #[should_panic(expected = "longer than 32 bits")]
    fn containing_rejects_long_prefixes() {
        Cidr::containing(ip("10.0.0.0"), 33);
    }

    #[test]
    fn geometry() {
        let c = cidr("10.0.0.0/24");
        assert_eq!(c.network(), ip("10.0.0.0"));
        assert_eq!(c.broadcast(), ip("10.0.0.255"));
        assert_eq!(c.size(), 256);
        assert_eq!(c.nth(0), Some(ip("10.0.0.0")));
        assert_eq!(c.nth(5), Some(ip("10.0.0.5")));
        assert_eq!(c.nth(255), Some(ip("10.0.0.255")));
        assert_eq!(c.nth(256), None);
        assert_eq!(c.first_host(), ip("10.0.0.1"));

        let all = cidr("0.0.0.0/0");
        assert_eq!(all.size(), 1 << 32);
        assert_eq!(all.broadcast(), Ipv4Addr::BROADCAST);
        assert_eq!(all.nth(u32::MAX), Some(Ipv4Addr::BROADCAST));

        let p2p = cidr("10.0.0.2/31");
        assert_eq!((p2p.size(), p2p.first_host()), (2, ip("10.0.0.2")));
        assert_eq!(p2p.broadcast(), ip("10.0.0.3"));
        let host = cidr("10.0.0.7/32");
        assert_eq!((host.size(), host.first_host()), (1, ip("10.0.0.7")));
        assert_eq!(
            (host.network(), host.broadcast()),
            (ip("10.0.0.7"), ip("10.0.0.7"))
        );
        assert_eq!(host.nth(1), None);
    }

    #[test]
    fn contains_and_overlaps() {
        let net = cidr("10.0.0.0/24");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.0.0.255")));
        assert!(!net.contains(ip("10.0.1.0")));
        assert!(!net.contains(ip("9.255.255.255")));

        let wide = cidr("10.0.0.0/8");
        let other = cidr("10.0.1.0/24");
        assert!(wide.contains_cidr(&net));
        assert!(net.contains_cidr(&net));
        assert!(!net.contains_cidr(&wide));
        assert!(!net.contains_cidr(&other));

        assert!(net.overlaps(&wide));
        assert!(wide.overlaps(&net));
        assert!(net.overlaps(&net));
        assert!(!net.overlaps(&other));
        assert!(!other.overlaps(&net));
        assert!(cidr("0.0.0.0/0").overlaps(&net));
        assert!(net.overlaps(&cidr("10.0.0.128/25")));
        assert!(!cidr("192.168.0.0/20").overlaps(&cidr("192.168.16.0/20")));
    }

    #[test]
    fn hand_built_cidrs_are_masked() {
        let loose = Cidr {
            addr: ip("10.0.0.9"),
            prefix: 24,
        };
        assert_eq!(loose.network(), ip("10.0.0.0"));
        assert!(loose.contains(ip("10.0.0.1")));
        assert!(loose.overlaps(&cidr("10.0.0.0/28")));
        let too_long = Cidr {
            addr: ip("10.0.0.9"),
            prefix: 40,
        };
        assert_eq!((too_long.size(), too_long.network()), (1, ip("10.0.0.9")));
    }

    #[test]
    fn serde_as_string() {
        let c = cidr("172.17.0.0/16");
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""172.17.0.0/16""#);
        assert_eq!(
            serde_json::from_str::<Cidr>(r#""172.17.0.0/16""#).unwrap(),
            c
        );
        let e = serde_json::from_str::<Cidr>(r#""172.17.0.1/16""#).unwrap_err();
        assert!(
            e.to_string()
                .contains("host bits are set; use 172.17.0.0/16"),
            "{e}"
        );
        let v = serde_json::to_value(c).unwrap();
        assert_eq!(serde_json::from_value::<Cidr>(v).unwrap(), c);
    }

    #[test]
    fn default_pools_are_dockers() {
        let pools = default_pools();
        assert_eq!(pools.len(), 16);
        assert_eq!(
            pools[0],
            Pool {
                base: cidr("172.17.0.0/16"),
                size: 16
            }
        );
        assert_eq!(
            pools[14],
            Pool {
                base: cidr("172.31.0.0/16"),
                size: 16
            }
        );
        assert_eq!(
            pools[15],
            Pool {
                base: cidr("192.168.0.0/16"),
                size: 20
            }
        );
        for p in &pools {
            assert_eq!(Cidr::new(p.base.addr, p.base.prefix).unwrap(), p.base);
        }
    }

    #[test]
    fn picks_the_first_free_subnet() {
        let pools = default_pools();
        assert_eq!(pick_subnet(&pools, &[]).unwrap(), cidr("172.17.0.0/16"));
        let taken = [cidr("172.17.0.0/16"), cidr("172.19.0.0/16")];
        assert_eq!(pick_subnet(&pools, &taken).unwrap(), cidr("172.18.0.0/16"));
        // A route inside a pool entry takes the whole entry.
        let taken = [cidr("172.17.3.0/24"), cidr("172.18.255.255/32")];
        assert_eq!(pick_subnet(&pools, &taken).unwrap(), cidr("172.19.0.0/16"));
    }

    #[test]
    fn a_wide_route_covers_many_pool_entries() {
        let pools = default_pools();
        // 172.16.0.0/12 covers all of 172.17-172.31.
        let taken = [cidr("172.16.0.0/12")];
        assert_eq!(pick_subnet(&pools, &taken).unwrap(), cidr("192.168.0.0/20"));
        // A /8 route covering the 172 pools, plus some of 192.168.
        let taken = [
            cidr("172.0.0.0/8"),
            cidr("192.168.0.0/20"),
            cidr("192.168.17.0/24"),
        ];
        assert_eq!(
            pick_subnet(&pools, &taken).unwrap(),
            cidr("192.168.32.0/20")
        );
    }

    #[test]
    fn pools_run_out() {
        let pools = default_pools();
        let taken = [cidr("172.0.0.0/8"), cidr("192.168.0.0/16")];
        assert_eq!(
            pick_subnet(&pools, &taken).unwrap_err().to_string(),
            "no free subnet in the default address pools; pass --subnet"
        );
        let mut taken: Vec<Cidr> = (17..=31)
            .map(|b| cidr(&format!("172.{b}.0.0/16")))
            .collect();
        taken.extend((0..16).map(|n| cidr(&format!("192.168.{}.0/20", n * 16))));
        assert!(pick_subnet(&pools, &taken).is_err());
        taken.pop();
        assert_eq!(
            pick_subnet(&pools, &taken).unwrap(),
            cidr("192.168.240.0/20")
        );
        assert!(pick_subnet(&[], &[]).is_err());
    }

    #[test]
    fn huge_pools_skip_taken_blocks_quickly() {
        let pools = [Pool {
            base: cidr("0.0.0.0/0"),
            size: 32,
        }];
        let taken = [cidr("0.0.0.0/1"), cidr("128.0.0.0/2"), cidr("192.0.0.0/3")];
        assert_eq!(pick_subnet(&pools, &taken).unwrap(), cidr("224.0.0.0/32"));
        let taken = [cidr("0.0.0.0/1"), cidr("128.0.0.0/1")];
        assert!(pick_subnet(&pools, &taken).is_err());
    }

    #[test]
    fn rejects_bad_pools() {
        let pools = [Pool {
            base: cidr("10.0.0.0/16"),
            size: 8,
        }];
        assert_eq!(
            pick_subnet(&pools, &[]).unwrap_err().to_string(),
            "invalid address pool 10.0.0.0/16 with size /8: the size must be from /16 to /32"
        );
        let pools = [Pool {
            base: cidr("10.0.0.0/16"),
            size: 33,
        }];
        assert!(pick_subnet(&pools, &[]).is_err());
    }

    fn alloc(subnet: &str, gateway: &str, range: Option<&str>) -> Result<Allocator> {
        Allocator::new(cidr(subnet), ip(gateway), range.map(cidr))
    }

    #[test]
    fn new_checks_gateway_and_range() {
        let e = |s, g, r| alloc(s, g, r).unwrap_err().to_string();
        assert_eq!(
            e("10.0.0.0/24", "10.1.0.1", None),
            "gateway 10.1.0.1 is outside subnet 10.0.0.0/24"
        );
        assert_eq!(
            e("10.0.0.0/24", "10.0.0.0", None),
            "gateway 10.0.0.0 is the network address of subnet 10.0.0.0/24"
        );
        assert_eq!(
            e("10.0.0.0/24", "10.0.0.255", None),
            "gateway 10.0.0.255 is the broadcast address of subnet 10.0.0.0/24"
        );
        assert_eq!(
            e("10.0.0.0/24", "10.0.0.1", Some("10.0.1.0/28")),
            "ip range 10.0.1.0/28 is not inside subnet 10.0.0.0/24"
        );
        assert_eq!(
            e("10.0.0.0/24", "10.0.0.1", Some("10.0.0.0/16")),
            "ip range 10.0.0.0/16 is not inside subnet 10.0.0.0/24"
        );
        let loose = Cidr {
            addr: ip("10.0.0.1"),
            prefix: 24,
        };
        assert_eq!(
            Allocator::new(loose, ip("10.0.0.1"), None)
                .unwrap_err()
                .to_string(),
            "invalid subnet 10.0.0.1/24: host bits are set; use 10.0.0.0/24"
        );
        let range = Cidr {
            addr: ip("10.0.0.17"),
            prefix: 28,
        };
        assert_eq!(
            Allocator::new(cidr("10.0.0.0/24"), ip("10.0.0.1"), Some(range))
                .unwrap_err()
                .to_string(),
            "invalid ip range 10.0.0.17/28: host bits are set; use 10.0.0.16/28"
        );

        let a = alloc("10.0.0.0/24", "10.0.0.1", Some("10.0.0.128/25")).unwrap();
        assert_eq!(a.subnet(), cidr("10.0.0.0/24"));
        assert_eq!(a.gateway(), ip("10.0.0.1"));
        assert_eq!(a.ip_range(), Some(cidr("10.0.0.128/25")));
        // The gateway may be anywhere in the subnet, and /31 and /32 have no reserved edges.
        assert!(alloc("10.0.0.0/24", "10.0.0.254", None).is_ok());
        assert!(alloc("10.0.0.0/31", "10.0.0.0", None).is_ok());
        assert!(alloc("10.0.0.5/32", "10.0.0.5", None).is_ok());
    }

    #[test]
    fn allocates_lowest_first() {
        let mut a = alloc("10.0.0.0/24", "10.0.0.1", None).unwrap();
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.2"));
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.3"));
        assert!(a.is_used(ip("10.0.0.2")));
        assert!(
            !a.is_used(ip("10.0.0.1")),
            "the gateway is not counted as used"
        );

        // The gateway is skipped wherever it is.
        let mut a = alloc("10.0.0.0/24", "10.0.0.3", None).unwrap();
        let got: Vec<_> = (0..3).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(got, [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.4")]);
    }

    #[test]
    fn allocates_from_the_ip_range() {
        let mut a = alloc("10.0.0.0/24", "10.0.0.1", Some("10.0.0.252/30")).unwrap();
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.252"));
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.253"));
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.254"));
        // 10.0.0.255 is the subnet's broadcast address.
        assert_eq!(
            a.allocate().unwrap_err().to_string(),
            "no free address in 10.0.0.252/30"
        );

        // A range at the start of the subnet skips the network address and gateway.
        let mut a = alloc("10.0.0.0/24", "10.0.0.1", Some("10.0.0.0/28")).unwrap();
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.2"));
    }

    #[test]
    fn exhaustion() {
        let mut a = alloc("10.0.0.0/30", "10.0.0.1", None).unwrap();
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.2"));
        assert_eq!(
            a.allocate().unwrap_err().to_string(),
            "no free address in 10.0.0.0/30"
        );
        assert!(a.allocate().is_err());

        let mut a = alloc("10.0.0.0/31", "10.0.0.0", None).unwrap();
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.1"));
        assert!(a.allocate().is_err());

        let mut a = alloc("10.0.0.5/32", "10.0.0.5", None).unwrap();
        assert_eq!(
            a.allocate().unwrap_err().to_string(),
            "no free address in 10.0.0.5/32"
        );
    }

    #[test]
    fn reserve_errors() {
        let mut a = alloc("10.0.0.0/24", "10.0.0.1", Some("10.0.0.128/25")).unwrap();
        let mut e = |addr| a.reserve(ip(addr)).unwrap_err().to_string();
        assert_eq!(
            e("10.0.1.5"),
            "address 10.0.1.5 is outside subnet 10.0.0.0/24"
        );
        assert_eq!(
            e("10.0.0.0"),
            "address 10.0.0.0 is the network address of subnet 10.0.0.0/24"
        );
        assert_eq!(
            e("10.0.0.255"),
            "address 10.0.0.255 is the broadcast address of subnet 10.0.0.0/24"
        );
        assert_eq!(
            e("10.0.0.1"),
            "address 10.0.0.1 is the gateway of subnet 10.0.0.0/24"
        );

        // Outside the ip range but inside the subnet is allowed, once.
        a.reserve(ip("10.0.0.5")).unwrap();
        assert!(a.is_used(ip("10.0.0.5")));
        assert_eq!(
            a.reserve(ip("10.0.0.5")).unwrap_err().to_string(),
            "address 10.0.0.5 is already in use"
        );
        let got = a.allocate().unwrap();
        assert_eq!(got, ip("10.0.0.128"));
        assert_eq!(
            a.reserve(got).unwrap_err().to_string(),
            "address 10.0.0.128 is already in use"
        );
    }

    #[test]
    fn allocate_skips_reserved_addresses() {
        let mut a = alloc("10.0.0.0/24", "10.0.0.1", None).unwrap();
        a.reserve(ip("10.0.0.2")).unwrap();
        a.reserve(ip("10.0.0.4")).unwrap();
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.3"));
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.5"));
    }

    #[test]
    fn release_and_reuse() {
        let mut a = alloc("10.0.0.0/29", "10.0.0.1", None).unwrap();
        let got: Vec<_> = (0..5).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(got.last(), Some(&ip("10.0.0.6")));
        assert!(a.allocate().is_err());

        a.release(ip("10.0.0.4"));
        assert!(!a.is_used(ip("10.0.0.4")));
        a.release(ip("10.0.0.4")); // twice is harmless
        a.release(ip("192.0.2.1")); // as is an address never used
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.4"));
        assert!(a.allocate().is_err());

        a.release(ip("10.0.0.3"));
        a.reserve(ip("10.0.0.3")).unwrap();
        assert!(a.allocate().is_err());
    }

    #[test]
    fn allocator_serde_round_trip() {
        let mut a = alloc("10.0.0.0/24", "10.0.0.1", Some("10.0.0.128/25")).unwrap();
        a.allocate().unwrap();
        a.reserve(ip("10.0.0.9")).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"subnet":"10.0.0.0/24","gateway":"10.0.0.1","ip_range":"10.0.0.128/25","used":["10.0.0.9","10.0.0.128"]}"#
        );
        let back: Allocator = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);

        let plain = alloc("10.0.0.0/24", "10.0.0.1", None).unwrap();
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(
            json,
            r#"{"subnet":"10.0.0.0/24","gateway":"10.0.0.1","used":[]}"#
        );
        let minimal = r#"{"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}"#;
        assert_eq!(serde_json::from_str::<Allocator>(minimal).unwrap(), plain);
    }

    #[test]
    fn default_allocator() {
        let a = Allocator::default();
        assert_eq!(a.subnet(), cidr("0.0.0.0/0"));
        assert_eq!(a.ip_range(), None);
        assert!(!a.is_used(Ipv4Addr::UNSPECIFIED));
    }
}
