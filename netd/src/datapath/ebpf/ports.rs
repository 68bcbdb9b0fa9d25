//! Published ports in the maps (LPM keys for ranges) and in the kernel's
//! `ip_local_reserved_ports`.
use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::lpm_trie::Key;
use netd_common::{PORT_KEY_FULL_PREFIX, PortKey};

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

/// An address family's view of published ports: the host address a
/// binding is published on in this family, if it is.
pub trait Family {
    type Addr: Ord + Copy;
    fn host(ip: IpAddr) -> Option<Self::Addr>;
    /// This family's runs in a container's entry.
    fn runs(p: &mut Published) -> &mut Option<Runs<Self::Addr>>;
}

/// IPv4: bindings on an IPv4 address (0.0.0.0: all of them).
pub enum V4 {}

impl Family for V4 {
    type Addr = Ipv4Addr;
    fn host(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
    fn runs(p: &mut Published) -> &mut Option<Runs<Ipv4Addr>> {
        &mut p.v4
    }
}

/// IPv6: 0.0.0.0 covers both families; [::] and an IPv6 address IPv6
/// only; an IPv4 address none.
pub enum V6 {}

impl Family for V6 {
    type Addr = Ipv6Addr;
    fn host(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V4(a) if a.is_unspecified() => Some(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(_) => None,
            IpAddr::V6(a) => Some(a),
        }
    }
    fn runs(p: &mut Published) -> &mut Option<Runs<Ipv6Addr>> {
        &mut p.v6
    }
}

/// One container's published ports in one family, as runs.
pub struct Runs<A> {
    /// The container's address in the family.
    ip: A,
    /// (host_ports, direct_ports) of its network's wire in the family.
    wire: (bool, bool),
    /// Published host ports (`nat` modes): host address -> the container
    /// (NETD_PORTS, NETD_PORTS6).
    pub host: Vec<PortRun<A, A>>,
    /// Published container ports reachable by routing (`routed`, `nat`
    /// without masquerade): the container's own address and port, as a
    /// "host" binding of itself (NETD_DIRECT, NETD_DIRECT6).
    pub direct: Vec<PortRun<A, A>>,
}

impl<A: Ord + Copy> Runs<A> {
    fn new<F: Family<Addr = A>>(ip: A, bindings: &[PortBinding], wire: (bool, bool)) -> Runs<A> {
        let (host_ports, direct_ports) = wire;
        let host = bindings
            .iter()
            .filter(|b| host_ports && b.host_port != 0)
            .filter_map(|b| {
                let host = F::host(b.host_ip)?;
                Some((b.proto.number(), host, ip, b.host_port, b.container_port))
            })
            .collect();
        let direct = bindings
            .iter()
            .filter(|_| direct_ports)
            .map(|b| (b.proto.number(), ip, ip, b.container_port, b.container_port))
            .collect();
        Runs {
            ip,
            wire,
            host: coalesce(host),
            direct: coalesce(direct),
        }
    }
}

/// One container's published ports: its bindings and their runs per
/// family (computed when a family's sync first asks).
pub struct Published {
    bindings: Vec<PortBinding>,
    v4: Option<Runs<Ipv4Addr>>,
    v6: Option<Runs<Ipv6Addr>>,
}

/// Each container's published runs, kept across syncs: a container with
/// 10,000 published ports would otherwise be regrouped (and its bindings
/// compared once per family) at every sync. A container's runs in a
/// family are recomputed only when its bindings, its address in the
/// family or its network's wire change; its bindings are compared once
/// per sync.
#[derive(Default)]
pub struct PublishedRuns {
    /// The previous sync's, taken over as this one asks.
    last: BTreeMap<String, Published>,
    this: BTreeMap<String, Published>,
}

impl PublishedRuns {
    /// Starts a sync: containers not asked for by its end are forgotten
    /// at the next one's start.
    pub fn begin(&mut self) {
        self.last = std::mem::take(&mut self.this);
    }

    /// Container `id`'s runs in family `F` (`ip`: its address there,
    /// `wire`: its network's (host_ports, direct_ports)).
    pub fn runs<F: Family>(
        &mut self,
        id: &str,
        bindings: &[PortBinding],
        ip: F::Addr,
        wire: (bool, bool),
    ) -> &Runs<F::Addr> {
        let entry = match self.this.entry(id.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let kept = self.last.remove(id).filter(|p| p.bindings == bindings);
                v.insert(kept.unwrap_or_else(|| Published {
                    bindings: bindings.to_vec(),
                    v4: None,
                    v6: None,
                }))
            }
        };
        let runs = F::runs(entry);
        if !runs.as_ref().is_some_and(|r| r.ip == ip && r.wire == wire) {
            *runs = None;
        }
        runs.get_or_insert_with(|| Runs::new::<F>(ip, bindings, wire))
    }
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

    /// Each family takes the bindings published on its addresses (0.0.0.0
    /// both), and a container's runs follow its bindings, its address and
    /// its network's wire from one sync to the next.
    #[test]
    fn published_runs_per_family_follow_bindings_address_and_wire() {
        use crate::portspec::Proto;
        let b = |host: &str, hp: u16, cp: u16| PortBinding {
            host_ip: host.parse().unwrap(),
            host_port: hp,
            container_port: cp,
            proto: Proto::Tcp,
        };
        let mut bindings = vec![b("0.0.0.0", 8080, 80), b("0.0.0.0", 8081, 81)];
        bindings.extend([b("127.0.0.1", 9090, 90), b("::1", 9091, 91)]);
        let (ip4, ip6): (Ipv4Addr, Ipv6Addr) =
            ("10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap());
        let hosts4 = |r: &Runs<Ipv4Addr>| -> Vec<(String, u16, u16, String)> {
            r.host
                .iter()
                .map(|r| {
                    (
                        r.host.to_string(),
                        r.host_min,
                        r.host_max,
                        r.container.to_string(),
                    )
                })
                .collect()
        };
        let mut p = PublishedRuns::default();
        p.begin();
        let r4 = p.runs::<V4>("c", &bindings, ip4, (true, false));
        assert_eq!(
            hosts4(r4),
            [
                ("0.0.0.0".to_string(), 8080, 8081, "10.0.0.2".to_string()),
                ("127.0.0.1".to_string(), 9090, 9090, "10.0.0.2".to_string()),
            ]
        );
        assert!(r4.direct.is_empty());
        let r6 = p.runs::<V6>("c", &bindings, ip6, (true, true));
        let h6: Vec<_> = r6
            .host
            .iter()
            .map(|r| (r.host.to_string(), r.host_min))
            .collect();
        assert_eq!(h6, [("::".to_string(), 8080), ("::1".to_string(), 9091)]);
        let d6: Vec<_> = r6
            .direct
            .iter()
            .map(|r| (r.host, r.host_min, r.host_max))
            .collect();
        assert_eq!(
            d6,
            [(ip6, 80, 81), (ip6, 90, 91)],
            "the container's own ports"
        );
        // The next sync: a new address, then other bindings, then a wire
        // with direct ports.
        p.begin();
        let moved: Ipv4Addr = "10.0.0.3".parse().unwrap();
        let r4 = p.runs::<V4>("c", &bindings, moved, (true, false));
        assert!(r4.host.iter().all(|r| r.container == moved));
        p.begin();
        bindings.truncate(1);
        let r4 = p.runs::<V4>("c", &bindings, moved, (true, false));
        assert_eq!(
            hosts4(r4),
            [("0.0.0.0".to_string(), 8080, 8080, "10.0.0.3".to_string())]
        );
        p.begin();
        let r4 = p.runs::<V4>("c", &bindings, moved, (false, true));
        assert!(r4.host.is_empty());
        assert_eq!(r4.direct.len(), 1);
        assert_eq!((r4.direct[0].host, r4.direct[0].host_min), (moved, 80));
        // Its IPv6 runs, asked again in that sync, follow the bindings too.
        let r6 = p.runs::<V6>("c", &bindings, ip6, (true, false));
        assert_eq!(r6.host.len(), 1);
        assert!(r6.direct.is_empty());
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
