//! Published ports in the maps (LPM keys for ranges) and in the kernel's
//! `ip_local_reserved_ports`.
use std::net::{IpAddr, Ipv4Addr};

use aya::maps::lpm_trie::Key;
use netd_common::{PORT_KEY_FULL_PREFIX, PortKey, PortTarget};

use crate::portspec::PortBinding;

/// Prefix-aligned blocks covering [lo, hi]: (start, prefix bits of the port).
pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        // The largest power-of-two block starting at lo that fits.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// A run of consecutive host ports going to consecutive container ports
/// of one container: one published range, whatever the address family
/// (`H`: the host address, `C`: the container's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRun<H, C> {
    pub proto: u8,
    pub host: H,
    pub container: C,
    pub host_min: u16,
    pub host_max: u16,
    pub container_min: u16,
}

/// Bindings (proto, host address, container address, host port,
/// container port) grouped into runs: 10,000 published ports of one
/// container in one range are one run, a handful of LPM entries.
pub fn coalesce<H: Ord + Copy, C: Ord + Copy>(
    mut bindings: Vec<(u8, H, C, u16, u16)>,
) -> Vec<PortRun<H, C>> {
    bindings.sort_by_key(|&(proto, host, container, hport, _)| (proto, host, hport, container));
    let mut out: Vec<PortRun<H, C>> = Vec::new();
    for (proto, host, container, hport, cport) in bindings {
        if let Some(r) = out.last_mut()
            && (r.proto, r.host, r.container) == (proto, host, container)
            && r.host_max.checked_add(1) == Some(hport)
            && r.container_min.checked_add(hport - r.host_min) == Some(cport)
        {
            r.host_max = hport;
            continue;
        }
        out.push(PortRun {
            proto,
            host,
            container,
            host_min: hport,
            host_max: hport,
            container_min: cport,
        });
    }
    out
}

/// Published IPv4 bindings grouped into ranges (see [`coalesce`]).
pub fn port_ranges(bindings: &[(Ipv4Addr, PortBinding)]) -> Vec<(u8, Ipv4Addr, PortTarget)> {
    let items = bindings
        .iter()
        .filter_map(|(cip, b)| {
            let IpAddr::V4(hip) = b.host_ip else {
                return None;
            };
            Some((b.proto.number(), hip, *cip, b.host_port, b.container_port))
        })
        .collect();
    coalesce(items)
        .into_iter()
        .map(|r| {
            (
                r.proto,
                r.host,
                PortTarget {
                    container_ip: u32::from(r.container).to_be(),
                    host_port_min: r.host_min,
                    host_port_max: r.host_max,
                    container_port_min: r.container_min,
                    _pad: 0,
                },
            )
        })
        .collect()
}

pub fn port_key(proto: u8, host: Ipv4Addr, port: u16, port_bits: u32) -> Key<PortKey> {
    Key::new(
        PORT_KEY_FULL_PREFIX - 16 + port_bits,
        PortKey {
            proto,
            addr: host.octets(),
            port: port.to_be_bytes(),
            _pad: 0,
        },
    )
}

/// A set of ports as a bitmap (8 KiB): filling, combining and rendering
/// tens of thousands of ports costs microseconds.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet(Box<[u64; 1024]>);

impl Default for PortSet {
    fn default() -> Self {
        PortSet(Box::new([0; 1024]))
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&render_port_list(self))
    }
}

impl PortSet {
    pub fn insert(&mut self, p: u16) {
        self.0[usize::from(p / 64)] |= 1 << (p % 64);
    }

    /// Inserts [lo, hi] a word at a time (the masquerade range alone is
    /// tens of thousands of ports, inserted at every sync).
    pub fn insert_range(&mut self, lo: u16, hi: u16) {
        if lo > hi {
            return;
        }
        let (lo, hi) = (usize::from(lo), usize::from(hi));
        let (first, last) = (lo / 64, hi / 64);
        for w in first..=last {
            let from = if w == first { lo % 64 } else { 0 };
            let to = if w == last { hi % 64 } else { 63 };
            self.0[w] |= (u64::MAX >> (63 - to)) & (u64::MAX << from);
        }
    }

    pub fn contains(&self, p: u16) -> bool {
        self.0[usize::from(p / 64)] & (1 << (p % 64)) != 0
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
        out
    }

    pub fn minus(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a &= !b;
        }
        out
    }

    /// The ports as runs of consecutive ports, in order, found a word at
    /// a time.
    pub fn runs(&self) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        let mut from = 0u32;
        while let Some(start) = self.next_from(from, true) {
            let end = self.next_from(start, false).map_or(65535, |e| e - 1);
            out.push((start as u16, end as u16));
            from = end + 1;
        }
        out
    }

    /// The first port >= `p` that is (`set`) or is not (`!set`) in the set.
    fn next_from(&self, p: u32, set: bool) -> Option<u32> {
        let word = |w: usize| if set { self.0[w] } else { !self.0[w] };
        let mut w = (p / 64) as usize;
        if w >= self.0.len() {
            return None;
        }
        let mut bits = word(w) & (u64::MAX << (p % 64));
        while bits == 0 {
            w += 1;
            if w == self.0.len() {
                return None;
            }
            bits = word(w);
        }
        Some(w as u32 * 64 + bits.trailing_zeros())
    }
}

/// Parses `ip_local_reserved_ports` ("8080,9000-9010"); junk is skipped.
pub fn parse_port_list(s: &str) -> PortSet {
    let mut out = PortSet::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>())
            && a <= b
        {
            out.insert_range(a, b);
        }
    }
    out
}

/// Renders ports as the sysctl wants them: sorted ranges.
pub fn render_port_list(ports: &PortSet) -> String {
    let out: Vec<String> = ports
        .runs()
        .into_iter()
        .map(|(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect();
    out.join(",")
}

/// The host ports the kernel must never pick as a socket's ephemeral
/// port: every published host port (a host client on that port would have
/// its replies taken for a new connection to the container) and the
/// masquerade range (a host socket there could collide with a translated
/// flow). The rest of the sysctl is the administrator's and kept.
#[derive(Default)]
pub struct Reserved {
    /// What the sysctl held that is not netd's (read at the first sync).
    base: Option<PortSet>,
    /// netd's ports and the value they gave, last time.
    last: Option<(PortSet, String)>,
}

pub const RESERVED_SYSCTL: &str = "net/ipv4/ip_local_reserved_ports";

impl Reserved {
    /// The sysctl's new value for netd's `ours`, or None if unchanged.
    pub fn update(&mut self, current: &str, ours: &PortSet) -> Option<String> {
        if let Some((last, value)) = &self.last
            && last == ours
            && value == current.trim()
        {
            return None;
        }
        let base = self
            .base
            .get_or_insert_with(|| parse_port_list(current).minus(ours));
        let want = render_port_list(&base.union(ours));
        let changed = want != current.trim();
        self.last = Some((ours.clone(), want.clone()));
        changed.then_some(want)
    }

    /// The sysctl without netd's ports (None: netd never wrote it).
    pub fn restore(&self) -> Option<String> {
        self.base.as_ref().map(render_port_list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_cover_ranges_exactly() {
        for (lo, hi) in [
            (80u16, 80u16),
            (8000, 8010),
            (1, 65535),
            (0, 65535),
            (32768, 60999),
        ] {
            let blocks = port_blocks(lo, hi);
            let mut covered = Vec::new();
            for (start, bits) in &blocks {
                let size = 1u32 << (16 - bits);
                assert_eq!(u32::from(*start) % size, 0, "aligned");
                covered.extend(u32::from(*start)..u32::from(*start) + size);
            }
            assert_eq!(covered, (u32::from(lo)..=u32::from(hi)).collect::<Vec<_>>());
            assert!(blocks.len() <= 32);
        }
        assert_eq!(port_blocks(8080, 8080), vec![(8080, 16)]);
    }

    #[test]
    fn bindings_coalesce_into_runs() {
        // 30000-30009 -> 30000-30009 of container 1, out of order; 30010
        // goes elsewhere in the container; 30011 to container 2; UDP apart.
        let mut b: Vec<(u8, u8, u8, u16, u16)> = (0..10)
            .rev()
            .map(|i| (6, 0, 1, 30000 + i, 30000 + i))
            .collect();
        b.extend([
            (6, 0, 1, 30010, 80),
            (6, 0, 2, 30011, 30011),
            (17, 0, 1, 30000, 30000),
        ]);
        let runs = coalesce(b);
        let r = |proto, container, host_min, host_max, container_min| PortRun {
            proto,
            host: 0u8,
            container,
            host_min,
            host_max,
            container_min,
        };
        assert_eq!(
            runs,
            vec![
                r(6, 1, 30000, 30009, 30000),
                r(6, 1, 30010, 30010, 80),
                r(6, 2, 30011, 30011, 30011),
                r(17, 1, 30000, 30000, 30000),
            ]
        );
        // A container port that would overflow ends the run.
        assert_eq!(
            coalesce(vec![(6, 0u8, 1u8, 10, 65535), (6, 0, 1, 11, 0)]).len(),
            2
        );
    }

    #[test]
    fn reserved_ports_keep_the_administrators_and_follow_netds() {
        let p = |s: &str| parse_port_list(s);
        assert_eq!(render_port_list(&p("9,1-3,5,4,65535")), "1-5,9,65535");
        assert_eq!(render_port_list(&p("")), "");
        assert_eq!(render_port_list(&p("0-65535")), "0-65535");
        assert_eq!(
            render_port_list(&p("63-64,127,128-191,65534")),
            "63-64,127-191,65534"
        );
        let mut big = PortSet::default();
        big.insert_range(32768, 60999);
        big.insert_range(61000, 61000);
        big.insert_range(5, 5);
        assert_eq!(render_port_list(&big), "5,32768-61000");
        assert_eq!(
            big.runs()
                .iter()
                .map(|(a, b)| u32::from(b - a) + 1)
                .sum::<u32>(),
            28234
        );
        assert!(big.contains(32768) && big.contains(61000) && !big.contains(32767));
        assert_eq!(render_port_list(&p("x,7-3,8")), "8");
        let mut r = Reserved::default();
        let ours = p("8080,61000-61002");
        assert_eq!(
            r.update("22,8080", &ours).as_deref(),
            Some("22,8080,61000-61002")
        );
        assert_eq!(r.update("22,8080,61000-61002", &ours), None, "unchanged");
        let fewer = p("61000-61002");
        assert_eq!(
            r.update("22,8080,61000-61002", &fewer).as_deref(),
            Some("22,61000-61002"),
            "an unpublished port is released (8080 was netd's at the first sync)"
        );
        assert_eq!(r.restore().as_deref(), Some("22"));
    }
}
