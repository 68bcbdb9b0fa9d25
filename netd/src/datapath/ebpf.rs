//! The eBPF datapath: netd's TC programs do bridge forwarding, masquerade,
//! published-port DNAT and conntrack in the kernel; this side keeps their
//! maps equal to the control plane's state and owns their attachments.
//!
//! Maps and TCX links are pinned under `--bpffs` (maps as
//! `maps/<NAME>_<MAP_VERSION>`, links as `links/<iface>`), so the datapath
//! keeps forwarding while the daemon is down, and a restarted daemon adopts
//! them: pinned maps are reused and pinned links get the new programs
//! atomically (bpf_link_update). Pins of another map version are removed
//! on start (a changed layout is replaced deliberately, never misread).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use aya::maps::{
    Array, HashMap, MapData, PerCpuHashMap,
    lpm_trie::{Key, LpmTrie},
};
use netd_common::{
    Config, CtEntry, CtKey, Endpoint, EndpointKey, EndpointStats, MAP_VERSION, NET_ICC,
    NET_INTERNAL, NET_MASQUERADE, Network, PORT_KEY_FULL_PREFIX, PortKey, PortTarget, ct_kind,
    ct_state, maps,
};

use super::{ConntrackGc, Datapath, EndpointCounters, GcRun, Stats};
use crate::{
    bpf::{self, BpfLogLevel, Programs},
    cgroup::cgroup2_root,
    link::{default_route_iface, ifindex, link_ipv4, link_mac},
    model::Status,
    netns::netns_cookie,
    netns::{sysctl_read, sysctl_write},
    portspec::PortBinding,
    state::State,
};

/// Conntrack timeouts (seconds), by protocol and state.
const TCP_NEW: u64 = 60;
const TCP_ESTABLISHED: u64 = 6 * 3600;
const TCP_CLOSING: u64 = 10;
const UDP: u64 = 60;
const ICMP: u64 = 30;

#[derive(Clone, Debug)]
pub struct EbpfConfig {
    pub bpffs: PathBuf,
    pub uplink: Option<String>,
    pub nat_ports: (u16, u16),
    pub ct_entries: u32,
    /// The cgroup (v2) whose processes' sockets reach published ports
    /// directly; default: the root of the cgroup v2 hierarchy.
    pub cgroup: Option<PathBuf>,
}

pub struct Ebpf {
    cfg: EbpfConfig,
    progs: Option<Programs>,
    uplink: String,
    /// Host veths whose from_container link is pinned.
    attached: BTreeSet<String>,
    /// What the last sync wrote into the maps.
    last: Option<Desired>,
}

impl Ebpf {
    pub fn new(cfg: EbpfConfig) -> Ebpf {
        Ebpf {
            cfg,
            progs: None,
            uplink: String::new(),
            attached: BTreeSet::new(),
            last: None,
        }
    }

    fn progs(&mut self) -> Result<&mut Programs> {
        self.progs
            .as_mut()
            .context("the eBPF datapath is not initialised")
    }

    fn maps_dir(&self) -> PathBuf {
        self.cfg.bpffs.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.cfg.bpffs.join("links")
    }
}

/// A stable u32 id for a network: the first 8 hex digits of its id.
pub fn net_id(id: &str) -> u32 {
    u32::from_str_radix(&id[..8.min(id.len())], 16).unwrap_or(0)
}

/// The IPv4 addresses of this namespace (network order).
fn local_addrs() -> BTreeMap<u32, u32> {
    nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            a.address?
                .as_sockaddr_in()
                .map(|s| u32::from(s.ip()).to_be())
        })
        .map(|ip| (ip, 1))
        .collect()
}

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

/// Published bindings grouped into ranges: consecutive host ports mapped
/// to consecutive container ports of one container become one target.
fn port_ranges(bindings: &[(Ipv4Addr, PortBinding)]) -> Vec<(u8, Ipv4Addr, PortTarget)> {
    let mut sorted: Vec<&(Ipv4Addr, PortBinding)> = bindings.iter().collect();
    sorted.sort_by_key(|(c, b)| (b.proto, b.host_ip, b.host_port, *c));
    let mut out: Vec<(u8, Ipv4Addr, PortTarget, Ipv4Addr)> = Vec::new();
    for (cip, b) in sorted {
        let IpAddr::V4(hip) = b.host_ip else { continue };
        let proto = b.proto.number();
        if let Some((p, h, t, c)) = out.last_mut()
            && *p == proto
            && *h == hip
            && *c == *cip
            && t.host_port_max.checked_add(1) == Some(b.host_port)
            && t.container_port_min + (b.host_port - t.host_port_min) == b.container_port
        {
            t.host_port_max = b.host_port;
            continue;
        }
        out.push((
            proto,
            hip,
            PortTarget {
                container_ip: u32::from(*cip).to_be(),
                host_port_min: b.host_port,
                host_port_max: b.host_port,
                container_port_min: b.container_port,
                _pad: 0,
            },
            *cip,
        ));
    }
    out.into_iter().map(|(p, h, t, _)| (p, h, t)).collect()
}

fn port_key(proto: u8, host: Ipv4Addr, port: u16, port_bits: u32) -> Key<PortKey> {
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

fn sync_hash<K, V>(map: &mut HashMap<&mut MapData, K, V>, want: &BTreeMap<K, V>) -> Result<()>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let have: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    for k in have {
        if !want.contains_key(&k) {
            map.remove(&k)?;
        }
    }
    for (k, v) in want {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0)?;
        }
    }
    Ok(())
}

impl Ebpf {
    fn desired(&self, state: &State) -> Result<Desired> {
        let mut d = Desired::default();
        let mut gw_macs = BTreeMap::new();
        for n in state.networks.values() {
            let mut flags = 0;
            if n.options.icc {
                flags |= NET_ICC;
            }
            if n.options.masquerade {
                flags |= NET_MASQUERADE;
            }
            if n.options.internal {
                flags |= NET_INTERNAL;
            }
            d.networks.insert(
                net_id(&n.id),
                Network {
                    flags,
                    bridge_ifindex: ifindex(&n.bridge),
                },
            );
            gw_macs.insert(n.id.clone(), link_mac(&n.bridge).unwrap_or_default());
        }
        for c in state
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
        {
            for ep in c.endpoints.values() {
                let idx = ifindex(&ep.veth);
                if idx == 0 {
                    continue;
                }
                let e = Endpoint {
                    ifindex: idx,
                    net_id: net_id(&ep.network),
                    ip: u32::from(ep.ip).to_be(),
                    mac: ep.mac,
                    gw_mac: gw_macs.get(&ep.network).copied().unwrap_or_default(),
                };
                d.by_ip.insert(e.ip, e);
                d.by_if.insert(EndpointKey { ifindex: idx }, e);
                d.veths.insert(ep.veth.clone());
            }
            if let Some(ep) = c.primary() {
                for b in &c.ports {
                    d.bindings.push((ep.ip, *b));
                }
            }
        }
        for (proto, host, t) in port_ranges(&d.bindings) {
            for (start, bits) in port_blocks(t.host_port_min, t.host_port_max) {
                let k = port_key(proto, host, start, bits);
                d.ports.insert(port_id(&k), (k, t));
            }
        }
        d.local = local_addrs();
        Ok(d)
    }

    /// Makes the maps match `d`. The first sync after start compares
    /// with the maps themselves (adopting whatever an earlier daemon left);
    /// later ones diff against the previous desired state, so a change
    /// costs syscalls for the entries it changes, not for every entry.
    fn sync_maps(&mut self, d: &Desired) -> Result<()> {
        let prev = self.last.take();
        let p = prev.as_ref();
        let progs = self.progs()?;
        apply(
            &mut HashMap::try_from(progs.map_mut(maps::NETWORKS)?)?,
            p.map(|p| &p.networks),
            &d.networks,
        )?;
        apply(
            &mut HashMap::try_from(progs.map_mut(maps::LOCAL_ADDRS)?)?,
            p.map(|p| &p.local),
            &d.local,
        )?;
        apply(
            &mut HashMap::try_from(progs.map_mut(maps::ENDPOINTS)?)?,
            p.map(|p| &p.by_ip),
            &d.by_ip,
        )?;
        apply(
            &mut HashMap::try_from(progs.map_mut(maps::ENDPOINTS_BY_IF)?)?,
            p.map(|p| &p.by_if),
            &d.by_if,
        )?;
        {
            let mut stats: PerCpuHashMap<&mut MapData, EndpointKey, EndpointStats> =
                PerCpuHashMap::try_from(progs.map_mut(maps::EP_STATS)?)?;
            let stale: Vec<EndpointKey> = match p {
                Some(p) => p
                    .by_if
                    .keys()
                    .filter(|k| !d.by_if.contains_key(k))
                    .copied()
                    .collect(),
                None => stats
                    .keys()
                    .filter_map(|k| k.ok())
                    .filter(|k| !d.by_if.contains_key(k))
                    .collect(),
            };
            for k in stale {
                let _ = stats.remove(&k);
            }
        }
        {
            let mut ports: LpmTrie<&mut MapData, PortKey, PortTarget> =
                LpmTrie::try_from(progs.map_mut(maps::PORTS)?)?;
            let have: Vec<Key<PortKey>> = match p {
                Some(p) => p
                    .ports
                    .iter()
                    .filter(|(k, _)| !d.ports.contains_key(k))
                    .map(|(_, (k, _))| *k)
                    .collect(),
                None => ports
                    .keys()
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .filter(|k| !d.ports.contains_key(&port_id(k)))
                    .collect(),
            };
            for k in have {
                ports.remove(&k)?;
            }
            for (id, (k, t)) in &d.ports {
                let unchanged = match p {
                    Some(p) => p.ports.get(id).map(|(_, pt)| pt) == Some(t),
                    None => ports.get(k, 0).ok().as_ref() == Some(t),
                };
                if !unchanged {
                    ports.insert(k, *t, 0)?;
                }
            }
        }
        // Conntrack entries of removed containers or unpublished ports go,
        // so a restarted service is never blackholed by a stale entry.
        let live_ips: BTreeSet<u32> = d.by_ip.keys().copied().collect();
        let live_ports: BTreeSet<(u8, u16, u32)> = d
            .bindings
            .iter()
            .map(|(ip, b)| (b.proto.number(), b.host_port, u32::from(*ip).to_be()))
            .collect();
        let removed = match p {
            None => true,
            Some(p) => {
                p.by_ip.keys().any(|k| !live_ips.contains(k))
                    || p.bindings.iter().any(|(ip, b)| {
                        !live_ports.contains(&(
                            b.proto.number(),
                            b.host_port,
                            u32::from(*ip).to_be(),
                        ))
                    })
            }
        };
        if removed {
            let mut ct: HashMap<&mut MapData, CtKey, CtEntry> =
                HashMap::try_from(progs.map_mut(maps::CT)?)?;
            let stale: Vec<CtKey> = ct
                .iter()
                .filter_map(|r| r.ok())
                .filter(|(k, e)| {
                    if !live_ips.contains(&e.container_ip) {
                        return true;
                    }
                    let host_port = match e.kind {
                        ct_kind::DNAT => k.dport,
                        ct_kind::REV_DNAT => e.port,
                        _ => return false,
                    };
                    !live_ports.contains(&(k.proto, host_port, e.container_ip))
                })
                .map(|(k, _)| k)
                .collect();
            for k in stale {
                let _ = ct.remove(&k);
            }
        }
        self.last = Some(d.clone());
        Ok(())
    }

    fn attach(&mut self, d: &Desired) -> Result<()> {
        let links = self.links_dir();
        for veth in &d.veths {
            if self.attached.contains(veth) {
                continue;
            }
            let pin = links.join(veth);
            self.progs()?
                .attach_pinned(bpf::FROM_CONTAINER, veth, &pin)?;
            self.attached.insert(veth.clone());
        }
        let gone: Vec<String> = self.attached.difference(&d.veths).cloned().collect();
        for veth in gone {
            // The veth is gone (its link with it) or leaving: unpin.
            let _ = std::fs::remove_file(links.join(&veth));
            self.attached.remove(&veth);
        }
        Ok(())
    }
}

#[derive(Default, Clone)]
struct Desired {
    networks: BTreeMap<u32, Network>,
    local: BTreeMap<u32, u32>,
    by_ip: BTreeMap<u32, Endpoint>,
    by_if: BTreeMap<EndpointKey, Endpoint>,
    veths: BTreeSet<String>,
    bindings: Vec<(Ipv4Addr, PortBinding)>,
    ports: BTreeMap<PortId, (Key<PortKey>, PortTarget)>,
}

/// An LPM key as an orderable value.
type PortId = (u32, [u8; 8]);

fn port_id(k: &Key<PortKey>) -> PortId {
    (k.prefix_len(), bytemuck::cast(k.data()))
}

/// Applies `want` to a hash map: against `have` (what the previous sync
/// wrote) when known, else against the map's own contents.
fn apply<K, V>(
    map: &mut HashMap<&mut MapData, K, V>,
    have: Option<&BTreeMap<K, V>>,
    want: &BTreeMap<K, V>,
) -> Result<()>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let Some(have) = have else {
        return sync_hash(map, want);
    };
    for k in have.keys() {
        if !want.contains_key(k) {
            map.remove(k)?;
        }
    }
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.insert(k, v, 0)?;
        }
    }
    Ok(())
}

fn timeout(proto: u8, state: u8) -> u64 {
    match (proto, state) {
        (6, ct_state::NEW) => TCP_NEW,
        (6, ct_state::ESTABLISHED) => TCP_ESTABLISHED,
        (6, _) => TCP_CLOSING,
        (17, _) => UDP,
        _ => ICMP,
    }
}

fn monotonic_ns() -> u64 {
    // The clock bpf_ktime_get_ns() reads.
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

impl Datapath for Ebpf {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn wants_hairpin_mode(&self) -> bool {
        false
    }

    fn init(&mut self) -> Result<()> {
        sysctl_write("net/ipv4/ip_forward", "1")?;
        // No iptables in this datapath: bridged frames need not traverse it.
        if sysctl_read("net/bridge/bridge-nf-call-iptables").is_ok() {
            let _ = sysctl_write("net/bridge/bridge-nf-call-iptables", "0");
        }
        bpf::ensure_bpffs(&self.cfg.bpffs)?;
        let (maps_dir, links_dir) = (self.maps_dir(), self.links_dir());
        std::fs::create_dir_all(&maps_dir)?;
        std::fs::create_dir_all(&links_dir)?;
        // Pins of another layout version are replaced, not misread.
        let suffix = format!("_{MAP_VERSION}");
        for e in std::fs::read_dir(&maps_dir)?.flatten() {
            if !e.file_name().to_string_lossy().ends_with(&suffix) {
                tracing::info!(
                    "removing pinned map of another version: {}",
                    e.path().display()
                );
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut progs =
            Programs::load_with(BpfLogLevel::Warn, Some(&maps_dir), self.cfg.ct_entries)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            progs.spawn_logger()?;
        }
        self.uplink = match &self.cfg.uplink {
            Some(u) => u.clone(),
            None => default_route_iface()?,
        };
        let up_idx = ifindex(&self.uplink);
        if up_idx == 0 {
            bail!("uplink {} does not exist", self.uplink);
        }
        let up_ip = link_ipv4(&self.uplink)
            .with_context(|| format!("the uplink {} has no IPv4 address", self.uplink))?;
        let cfg = Config {
            uplink_ifindex: up_idx,
            uplink_ip: u32::from(up_ip).to_be(),
            nat_port_min: self.cfg.nat_ports.0,
            nat_port_max: self.cfg.nat_ports.1,
            _pad: 0,
            netns_cookie: netns_cookie()?,
        };
        let mut arr: Array<&mut MapData, Config> = Array::try_from(progs.map_mut(maps::CONFIG)?)?;
        arr.set(0, cfg, 0)?;
        progs.attach_pinned(bpf::FROM_WORLD, &self.uplink, &links_dir.join(&self.uplink))?;
        let cgroup = match &self.cfg.cgroup {
            Some(c) => c.clone(),
            None => cgroup2_root()?,
        };
        progs.attach_sock_programs(&cgroup, &links_dir)?;
        tracing::info!(
            "host sockets in cgroup {} reach published ports directly",
            cgroup.display()
        );
        // Links pinned by an earlier daemon are adopted by the first sync.
        self.progs = Some(progs);
        tracing::info!(
            "ebpf datapath: uplink {} ({up_ip}), NAT ports {}-{}",
            self.uplink,
            cfg.nat_port_min,
            cfg.nat_port_max
        );
        Ok(())
    }

    fn sync(&mut self, state: &State) -> Result<()> {
        let t = std::time::Instant::now();
        let d = self.desired(state)?;
        let t_desired = t.elapsed();
        self.attach(&d)?;
        let t_attach = t.elapsed();
        self.sync_maps(&d)?;
        tracing::debug!(
            "ebpf sync: desired {:?}, attach {:?}, maps {:?}",
            t_desired,
            t_attach - t_desired,
            t.elapsed() - t_attach
        );
        Ok(())
    }

    fn cleanup(&mut self) -> Result<()> {
        self.progs = None;
        self.last = None;
        let _ = std::fs::remove_dir_all(self.links_dir());
        let _ = std::fs::remove_dir_all(self.maps_dir());
        self.attached.clear();
        Ok(())
    }

    fn conntrack_gc(&mut self) -> Result<Option<Box<dyn ConntrackGc>>> {
        // Its own handle on the pinned table: the collector never needs
        // the daemon (or this datapath) while it walks the map.
        let pin = self.maps_dir().join(format!("{}_{MAP_VERSION}", maps::CT));
        let data = MapData::from_pin(&pin)
            .with_context(|| format!("opening the conntrack table {}", pin.display()))?;
        let ct = HashMap::try_from(aya::maps::Map::HashMap(data))?;
        Ok(Some(Box::new(CtGc { ct })))
    }

    fn stats(&mut self) -> Result<Stats> {
        let progs = self.progs()?;
        let mut out = Stats::new("ebpf");
        out.counters = progs
            .counters()?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        out.drops = progs
            .drops()?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let stats: PerCpuHashMap<&MapData, EndpointKey, EndpointStats> =
            PerCpuHashMap::try_from(progs.ebpf().map(maps::EP_STATS).context("stats map")?)?;
        for r in stats.iter() {
            let (k, per_cpu) = r?;
            let mut t = EndpointCounters::default();
            for s in per_cpu.iter() {
                t.rx_packets += s.rx_packets;
                t.rx_bytes += s.rx_bytes;
                t.tx_packets += s.tx_packets;
                t.tx_bytes += s.tx_bytes;
            }
            out.endpoints.insert(k.ifindex, t);
        }
        let ct: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(progs.ebpf().map(maps::CT).context("ct map")?)?;
        out.conntrack_entries = Some(ct.keys().count() as u64);
        Ok(out)
    }
}

/// The conntrack garbage collector: a flow goes when both of its
/// directions are idle past their state's timeout.
struct CtGc {
    ct: HashMap<MapData, CtKey, CtEntry>,
}

impl ConntrackGc for CtGc {
    fn run(&mut self) -> Result<GcRun> {
        let cpu = thread_cpu_time();
        let now = monotonic_ns();
        let entries: BTreeMap<CtKey, CtEntry> = self.ct.iter().filter_map(|r| r.ok()).collect();
        let expired = |e: &CtEntry, k: &CtKey| {
            now.saturating_sub(e.last_seen) > timeout(k.proto, e.state) * 1_000_000_000
        };
        let mut run = GcRun {
            entries: entries.len() as u64,
            ..GcRun::default()
        };
        for (k, e) in &entries {
            let rev = k.reverse(e);
            let rev_expired = entries.get(&rev).is_none_or(|re| expired(re, &rev));
            if expired(e, k) && rev_expired && self.ct.remove(k).is_ok() {
                run.expired += 1;
            }
        }
        run.cpu_micros = thread_cpu_time().saturating_sub(cpu).as_micros() as u64;
        Ok(run)
    }
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(std::time::Duration::from)
        .unwrap_or_default()
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
}
