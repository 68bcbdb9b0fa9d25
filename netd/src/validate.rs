//! The rules input must meet before it reaches the kernel, a file or
//! another tool: names, addresses, subnets. Pure functions; each error
//! says what is wrong with the value and what would be right.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, bail};

use crate::ipam::Cidr;

/// Most entries any list in a request may have.
pub const MAX_LIST: usize = 1024;

/// Refuses a list longer than `max` (requests are bounded in size).
pub fn bounded<T>(what: &str, list: &[T], max: usize) -> Result<()> {
    if list.len() > max {
        bail!("too many {what}: {} given, at most {max}", list.len());
    }
    Ok(())
}

/// A host name (RFC 1123): dot-separated labels of letters, digits and
/// hyphens, none starting or ending with a hyphen, each 1-63 characters,
/// 253 in all.
pub fn hostname(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        bail!(
            "invalid {what} {s:?}: use letters, digits and '-' in dot-separated labels of at most 63 characters (RFC 1123)"
        );
    }
    Ok(())
}

/// An interface name the kernel accepts (1-15 bytes, not `.` or `..`, no
/// `/`, `:` or whitespace) that is also safe in iptables and nft rules
/// (no `+` or `*` wildcards).
pub fn ifname(what: &str, s: &str) -> Result<()> {
    let bad_char = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "/:+*\"'\\".contains(*c));
    if s.is_empty() || s.len() > 15 || s == "." || s == ".." || bad_char.is_some() || !s.is_ascii()
    {
        bail!(
            "invalid {what} {s:?}: an interface name has 1 to 15 ASCII characters, none of '/', ':', '+', '*', quotes or whitespace"
        );
    }
    Ok(())
}

/// Address blocks a container network must not overlap: "this network",
/// loopback, link-local, multicast and reserved/broadcast.
const FORBIDDEN: [(Ipv4Addr, u8, &str); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127.0.0.0/8)"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local (169.254.0.0/16)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224.0.0.0/4)"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
];

/// A container network's subnet: not in a forbidden block, with room for
/// a gateway and at least one container (so /31 and /32 are refused).
pub fn subnet(s: &Cidr) -> Result<()> {
    for (addr, prefix, name) in FORBIDDEN {
        let block = Cidr::containing(addr, prefix);
        if block.overlaps(s) {
            bail!("invalid subnet {s}: it overlaps {name}, which cannot hold containers");
        }
    }
    if s.prefix > 30 {
        bail!(
            "invalid subnet {s}: a /{} has no room for a gateway and a container (use /30 or larger)",
            s.prefix
        );
    }
    Ok(())
}

/// An address to give a container or a gateway inside `subnet`: in it,
/// and neither its network nor its broadcast address.
pub fn host_in(what: &str, ip: Ipv4Addr, subnet: &Cidr) -> Result<()> {
    if !subnet.contains(ip) {
        bail!("{what} {ip} is outside the subnet {subnet}");
    }
    if ip == subnet.network() || ip == subnet.broadcast() {
        bail!("{what} {ip} is the network or broadcast address of {subnet}");
    }
    Ok(())
}

/// A container's MAC address: unicast and not all zeros.
pub fn mac(m: &[u8; 6]) -> Result<()> {
    let s = crate::link::fmt_mac(*m);
    if m.iter().all(|b| *b == 0) {
        bail!("invalid MAC address {s}: the all-zero address is not a station's address");
    }
    if m[0] & 1 == 1 {
        bail!("invalid MAC address {s}: a multicast address cannot be a container's MAC");
    }
    Ok(())
}

/// A host address to publish ports on: unspecified (all addresses), or
/// one the host has (Docker's bind fails otherwise).
pub fn host_binding(ip: IpAddr, local: &[IpAddr]) -> Result<()> {
    if ip.is_unspecified() || local.contains(&ip) {
        return Ok(());
    }
    bail!(
        "cannot publish on {ip}: the host has no such address (use 0.0.0.0 or one of the host's addresses)"
    );
}

/// A command line: at least the program, no NUL bytes.
pub fn command(cmd: &[String]) -> Result<()> {
    if cmd.is_empty() || cmd[0].is_empty() {
        bail!("no command given");
    }
    bounded("command arguments", cmd, 4096)?;
    if cmd.iter().any(|a| a.contains('\0')) {
        bail!("invalid command: arguments cannot contain NUL bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["web", "a-b.c", "x1", &"a".repeat(63)] {
            hostname("hostname", ok).unwrap();
        }
        for bad in [
            "",
            "a\nb",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(hostname("hostname", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ifnames() {
        for ok in ["netd0", "br-x.1", "a"] {
            ifname("bridge name", ok).unwrap();
        }
        for bad in [
            "",
            "eth+",
            "a*",
            "a/b",
            "a:b",
            "a b",
            ".",
            "..",
            "0123456789abcdef",
        ] {
            assert!(ifname("bridge name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subnets() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        subnet(&c("10.1.0.0/24")).unwrap();
        subnet(&c("192.168.0.0/30")).unwrap();
        for bad in [
            "127.1.0.0/24",
            "0.0.0.0/0",
            "0.1.0.0/16",
            "169.254.1.0/24",
            "224.0.0.0/24",
            "250.0.0.0/8",
            "10.0.0.0/31",
            "10.0.0.1/32",
        ] {
            let e = subnet(&c(bad)).unwrap_err().to_string();
            assert!(e.contains("invalid subnet"), "{bad}: {e}");
        }
    }

    #[test]
    fn macs_and_hosts() {
        mac(&[0x02, 0x42, 0, 0, 0, 1]).unwrap();
        assert!(mac(&[0; 6]).is_err());
        assert!(mac(&[0x01, 0, 0, 0, 0, 1]).is_err());
        assert!(mac(&[0xff; 6]).is_err());
        let s: Cidr = "10.0.0.0/24".parse().unwrap();
        host_in("--ip", "10.0.0.5".parse().unwrap(), &s).unwrap();
        assert!(host_in("--ip", "10.0.0.0".parse().unwrap(), &s).is_err());
        assert!(host_in("--ip", "10.0.0.255".parse().unwrap(), &s).is_err());
        assert!(host_in("--ip", "10.0.1.1".parse().unwrap(), &s).is_err());
    }

    #[test]
    fn bindings() {
        let local = ["198.18.0.2".parse().unwrap()];
        host_binding("0.0.0.0".parse().unwrap(), &local).unwrap();
        host_binding("::".parse().unwrap(), &local).unwrap();
        host_binding("198.18.0.2".parse().unwrap(), &local).unwrap();
        assert!(host_binding("192.0.2.77".parse().unwrap(), &local).is_err());
        assert!(command(&[]).is_err());
        assert!(command(&["a\0b".into()]).is_err());
        command(&["true".into()]).unwrap();
        assert!(bounded("x", &[0; 3], 2).is_err());
    }
}
