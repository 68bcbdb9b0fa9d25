//! The eBPF datapath: netd's TC programs do bridge forwarding, masquerade,
//! published-port DNAT and conntrack in the kernel; this side keeps their
//! maps equal to the control plane's state and owns their attachments.
//!
//! Maps and the uplink's TCX link are pinned under `--bpffs` (maps as
//! `maps/<NAME>_<MAP_VERSION>`, links as `links/<iface>`); the veths of
//! netd's own and Docker's containers carry TC filters (cls_bpf, see
//! `Programs::attach_tc`), which need no pin; CNI attachments' veths get a
//! pinned TCX link too (the chain's later plugins own their qdiscs:
//! `bandwidth` adds an ingress qdisc, which a clsact qdisc would hold). So
//! the datapath keeps forwarding while the daemon is down, and a restarted
//! daemon adopts it all: pinned maps are reused, the pinned links and the
//! filters get the new programs atomically (bpf_link_update, a cls_bpf
//! replace). Pins of another map version are removed
//! on start; the conntrack and host-socket entries of a version whose
//! layout this one reads (`MIGRATE_FROM`) are carried over first, as are
//! those of a conntrack table pinned with another `--conntrack-size`, so
//! an upgrade or a resize keeps every connection.
//!
//! Order of a sync: maps first, then attachments (a program never runs on
//! a veth, or on the uplink, before the maps describe it).
pub mod ct;
pub mod ports;
pub mod v6;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use aya::maps::{
    Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use netd_common::{
    Config, CtEntry, CtKey, EP_CACHE_SIZE, Endpoint, EndpointKey, EndpointStats, MAP_VERSION,
    MAX_ENDPOINTS, MIGRATE_FROM, NET_CLUSTER, NET_DIRECT_ALL, NET_DIRECT_ICMP, NET_DIRECT_PORTS,
    NET_FROM_NETWORKS, NET_ICC, NET_INTERNAL, NET_IPV6, NET_MASQUERADE, Network, PortKey,
    PortTarget, SockKey, SockOrig, ct_kind, ep_cache_slot_if, ep_cache_slot_ip, maps,
};

pub use self::ports::port_blocks;
use self::ports::{PortRun, PortSet, PublishedRuns, RESERVED_SYSCTL, Reserved, V4, port_key};
use super::{ConntrackGc, Datapath, EndpointCounters, Stats};
use crate::{
    bpf::{self, BpfLogLevel, Programs},
    cgroup::cgroup2_root,
    link::{default_route_iface, ifindex, link_ipv4, link_mac},
    model::{Owner, Status},
    netns::netns_cookie,
    netns::{SysctlFile, sysctl_read, sysctl_write},
    state::State,
};

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
    /// The cgroup the host-socket programs attach to.
    cgroup: PathBuf,
    /// Host veths carrying from_container, and how.
    attached: BTreeMap<String, Attach>,
    /// What the last sync wrote into the maps.
    last: Option<Desired>,
    /// The first sync attached the uplink and socket programs.
    started: bool,
    /// Tables whose entries are carried over (another map version's, or
    /// a conntrack table of another size), until the first sync has
    /// swapped the programs over to the new maps.
    carry: Vec<(&'static str, MapData)>,
    reserved: Reserved,
    /// The reserved-ports sysctl, kept open from the first sync (a sync
    /// reads it to follow the administrator's changes, and a lookup
    /// under /proc/sys cost more than the rest of that).
    reserved_file: Option<SysctlFile>,
    /// Each endpoint's slot in NETD_EP_STATS, by host veth ifindex
    /// (adopted from the pinned endpoints on start, so counters survive a
    /// restart).
    slots: BTreeMap<u32, u32>,
    /// What a sync would otherwise ask the kernel for again and again
    /// (see `Links`), and each container's published ranges.
    links: Links,
    /// Each container's published runs, both families.
    published: PublishedRuns,
    /// What the last sync wrote into the IPv6 maps.
    last6: Option<v6::Desired6>,
}

/// Interface indexes and MACs by name, kept while the interface is in the
/// desired state: a sync asks the kernel only about new ones. (As the
/// attachments do: a veth keeps its name and index while it is in use.)
#[derive(Default)]
pub(super) struct Links {
    index: BTreeMap<String, u32>,
    mac: BTreeMap<String, [u8; 6]>,
}

impl Links {
    pub(super) fn index(&mut self, name: &str) -> u32 {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let i = ifindex(name);
        if i != 0 {
            self.index.insert(name.to_string(), i);
        }
        i
    }

    pub(super) fn mac(&mut self, name: &str) -> [u8; 6] {
        if let Some(m) = self.mac.get(name) {
            return *m;
        }
        match link_mac(name) {
            Ok(m) => {
                self.mac.insert(name.to_string(), m);
                m
            }
            Err(_) => [0; 6],
        }
    }

    /// Forgets every name not in `keep`.
    fn retain(&mut self, keep: &BTreeSet<String>) {
        self.index.retain(|n, _| keep.contains(n));
        self.mac.retain(|n, _| keep.contains(n));
    }
}

/// A run of published IPv4 ports: host (or, routed, the container's own)
/// address -> the container's address.
type Run4 = PortRun<Ipv4Addr, Ipv4Addr>;

/// A run's LPM entries (NETD_PORTS, NETD_DIRECT): prefix-aligned blocks
/// of its host ports.
fn run_entries(r: &Run4) -> impl Iterator<Item = (PortId, (Key<PortKey>, PortTarget))> + '_ {
    let t = PortTarget {
        container_ip: u32::from(r.container).to_be(),
        host_port_min: r.host_min,
        host_port_max: r.host_max,
        container_port_min: r.container_min,
        _pad: 0,
    };
    port_blocks(r.host_min, r.host_max)
        .into_iter()
        .map(move |(start, bits)| {
            let k = port_key(r.proto, r.host, start, bits);
            (port_id(&k), (k, t))
        })
}

/// What the conntrack cleanup needs of a published run.
fn live_range(r: &Run4) -> ct::LiveRange {
    ct::LiveRange {
        proto: r.proto,
        container_ip: u32::from(r.container).to_be(),
        host_min: r.host_min,
        host_max: r.host_max,
    }
}

impl Ebpf {
    pub fn new(cfg: EbpfConfig) -> Ebpf {
        Ebpf {
            cfg,
            progs: None,
            uplink: String::new(),
            cgroup: PathBuf::new(),
            attached: BTreeMap::new(),
            last: None,
            started: false,
            carry: Vec::new(),
            reserved: Reserved::default(),
            reserved_file: None,
            slots: BTreeMap::new(),
            links: Links::default(),
            published: PublishedRuns::default(),
            last6: None,
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

/// The names of this namespace's interfaces.
fn link_names() -> BTreeSet<String> {
    nix::net::if_::if_nameindex()
        .map(|l| {
            l.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
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
    fn desired(&mut self, state: &State) -> Result<Desired> {
        let mut d = Desired {
            cluster: state.cluster_cidr.map(|c| {
                let mask = if c.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(c.prefix))
                };
                (u32::from(c.network()).to_be(), mask.to_be())
            }),
            ..Desired::default()
        };
        let mut gw_macs = BTreeMap::new();
        let mut wires = BTreeMap::new();
        let mut net_flags = BTreeMap::new();
        let mut masks = BTreeMap::new();
        let mut names = BTreeSet::new();
        for n in state.networks.values() {
            // What the gateway mode means on the wire (model::Wire).
            let w = n.wire(state.cluster_cidr);
            wires.insert(n.id.clone(), w);
            let mut flags = 0;
            for (on, flag) in [
                (n.options.icc, NET_ICC),
                (w.masquerade, NET_MASQUERADE),
                (n.options.internal, NET_INTERNAL),
                (w.direct_ports, NET_DIRECT_PORTS),
                (w.direct_icmp, NET_DIRECT_ICMP),
                (w.direct_all, NET_DIRECT_ALL),
                (w.from_other_networks, NET_FROM_NETWORKS),
                (w.cluster, NET_CLUSTER),
                (n.enable_ipv6(), NET_IPV6),
            ] {
                if on {
                    flags |= flag;
                }
            }
            d.networks.insert(
                net_id(&n.id),
                Network {
                    flags,
                    bridge_ifindex: self.links.index(&n.bridge),
                },
            );
            gw_macs.insert(n.id.clone(), self.links.mac(&n.bridge));
            names.insert(n.bridge.clone());
            net_flags.insert(n.id.clone(), flags);
            // An IPv6-only network's endpoints have no IPv4 address (0 in
            // the maps: from_container drops their IPv4 and ARP) and a
            // mask that matches no peer.
            let prefix = n.subnet().map_or(32, |s| u32::from(s.prefix));
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            masks.insert(n.id.clone(), mask.to_be());
        }
        for c in state
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
        {
            for ep in c.endpoints.values() {
                let idx = self.links.index(&ep.veth);
                if idx == 0 {
                    continue;
                }
                let e = Endpoint {
                    ifindex: idx,
                    net_id: net_id(&ep.network),
                    ip: ep.ip.map_or(0, |ip| u32::from(ip).to_be()),
                    mac: ep.mac,
                    gw_mac: gw_macs.get(&ep.network).copied().unwrap_or_default(),
                    // Set by `assign_slots`.
                    slot: 0,
                    net_flags: net_flags.get(&ep.network).copied().unwrap_or_default(),
                    mask: masks.get(&ep.network).copied().unwrap_or_default(),
                };
                if ep.ip.is_some() {
                    d.by_ip.insert(e.ip, e);
                }
                d.by_if.insert(EndpointKey { ifindex: idx }, e);
                let how = match c.owner {
                    Owner::Cni { .. } => Attach::Tcx,
                    _ => Attach::Filter,
                };
                d.veths.insert(ep.veth.clone(), how);
                names.insert(ep.veth.clone());
            }
            if let Some(ep) = c.primary()
                && !c.ports.is_empty()
                && let Some(ip) = ep.ip
                && let Some(w) = wires.get(&ep.network)
            {
                let wire = (w.host_ports, w.direct_ports);
                let runs = self.published.runs::<V4>(&c.id, &c.ports, ip, wire);
                for r in &runs.host {
                    d.ranges.insert(*r);
                    d.ports.extend(run_entries(r));
                }
                for r in &runs.direct {
                    d.direct.extend(run_entries(r));
                }
            }
        }
        self.links.retain(&names);
        // The host's addresses: read again when the networks (their
        // bridges' addresses) change; the refresh every few seconds
        // follows the rest.
        d.local = match &self.last {
            Some(l) if l.networks.keys().eq(d.networks.keys()) => l.local.clone(),
            _ => local_addrs(),
        };
        Ok(d)
    }

    /// Gives every endpoint of `d` its stats slot: the one it had, else
    /// the lowest free one. Returns the slots handed out anew (their
    /// counters must be zeroed before the endpoint is written).
    fn assign_slots(&mut self, d: &mut Desired) -> Result<Vec<u32>> {
        self.slots
            .retain(|ifindex, _| d.by_if.contains_key(&EndpointKey { ifindex: *ifindex }));
        let mut used: BTreeSet<u32> = self.slots.values().copied().collect();
        let mut fresh = Vec::new();
        let mut next = 0u32;
        for k in d.by_if.keys() {
            if self.slots.contains_key(&k.ifindex) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            if next >= MAX_ENDPOINTS {
                bail!("more than {MAX_ENDPOINTS} endpoints");
            }
            used.insert(next);
            self.slots.insert(k.ifindex, next);
            fresh.push(next);
        }
        let slots = &self.slots;
        for e in d.by_if.values_mut().chain(d.by_ip.values_mut()) {
            e.slot = slots.get(&e.ifindex).copied().unwrap_or_default();
        }
        Ok(fresh)
    }

    /// Makes the maps match `d`. The first sync after start compares
    /// with the maps themselves (adopting whatever an earlier daemon left);
    /// later ones diff against the previous desired state, so a change
    /// costs syscalls for the entries it changes, not for every entry.
    fn sync_maps(&mut self, d: &Desired, fresh_slots: &[u32]) -> Result<()> {
        let prev = self.last.take();
        let p = prev.as_ref();
        let progs = self.progs()?;
        // Networks are written before their endpoints and removed after
        // them (an endpoint carries its network's flags for the fast
        // path, which never looks the network up).
        let mut networks = d.networks.clone();
        if let Some(p) = p {
            for (k, v) in &p.networks {
                networks.entry(*k).or_insert(*v);
            }
        }
        apply(
            &mut HashMap::try_from(progs.map_mut(maps::NETWORKS)?)?,
            p.map(|p| &p.networks),
            &networks,
        )?;
        apply(
            &mut HashMap::try_from(progs.map_mut(maps::LOCAL_ADDRS)?)?,
            p.map(|p| &p.local),
            &d.local,
        )?;
        if !fresh_slots.is_empty() {
            let mut stats: PerCpuArray<&mut MapData, EndpointStats> =
                PerCpuArray::try_from(progs.map_mut(maps::EP_STATS)?)?;
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            for slot in fresh_slots {
                stats.set(
                    *slot,
                    PerCpuValues::try_from(vec![EndpointStats::default(); cpus])?,
                    0,
                )?;
            }
        }
        // The endpoint caches: a slot whose endpoint changes or goes is
        // zeroed before the hash maps change and filled after them, so a
        // packet finds the old endpoint, the hash maps' answer, or the new
        // one (an array slot is written in place: a read racing with the
        // fill mixes zeros with the new endpoint, which fails closed).
        let want_ip = ep_cache(d.by_ip.iter().map(|(ip, e)| (ep_cache_slot_ip(*ip), *e)));
        let want_if = ep_cache(
            d.by_if
                .iter()
                .map(|(k, e)| (ep_cache_slot_if(k.ifindex), *e)),
        );
        let have_ip = match p {
            Some(p) => ep_cache(p.by_ip.iter().map(|(ip, e)| (ep_cache_slot_ip(*ip), *e))),
            None => ep_cache_read(progs, maps::ENDPOINTS_CACHE)?,
        };
        let have_if = match p {
            Some(p) => ep_cache(
                p.by_if
                    .iter()
                    .map(|(k, e)| (ep_cache_slot_if(k.ifindex), *e)),
            ),
            None => ep_cache_read(progs, maps::ENDPOINTS_BY_IF_CACHE)?,
        };
        ep_cache_clear(progs, maps::ENDPOINTS_CACHE, &have_ip, &want_ip)?;
        ep_cache_clear(progs, maps::ENDPOINTS_BY_IF_CACHE, &have_if, &want_if)?;
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
        ep_cache_fill(progs, maps::ENDPOINTS_CACHE, &have_ip, &want_ip)?;
        ep_cache_fill(progs, maps::ENDPOINTS_BY_IF_CACHE, &have_if, &want_if)?;
        if networks.len() != d.networks.len() {
            apply(
                &mut HashMap::try_from(progs.map_mut(maps::NETWORKS)?)?,
                Some(&networks),
                &d.networks,
            )?;
        }
        sync_lpm(
            &mut LpmTrie::try_from(progs.map_mut(maps::PORTS)?)?,
            p.map(|p| &p.ports),
            &d.ports,
        )?;
        sync_lpm(
            &mut LpmTrie::try_from(progs.map_mut(maps::DIRECT)?)?,
            p.map(|p| &p.direct),
            &d.direct,
        )?;
        // The cluster's pod range.
        {
            let mut arr: Array<&mut MapData, Config> =
                Array::try_from(progs.map_mut(maps::CONFIG)?)?;
            let mut cfg = arr.get(&0, 0)?;
            let (net, mask) = d.cluster.unwrap_or((0, 0));
            if (cfg.cluster_net, cfg.cluster_mask) != (net, mask) {
                cfg.cluster_net = net;
                cfg.cluster_mask = mask;
                arr.set(0, cfg, 0)?;
            }
        }
        // Conntrack entries of removed containers or unpublished ports go,
        // so a restarted service is never blackholed by a stale entry.
        let live = ct::Live {
            ips: d.by_ip.keys().copied().collect(),
            ports: d.ranges.iter().map(live_range).collect(),
        };
        let removed = match p {
            None => true,
            Some(p) => {
                p.by_ip.keys().any(|k| !live.ips.contains(k))
                    || p.ranges.iter().any(|r| !d.ranges.contains(r))
            }
        };
        if removed {
            let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
                HashMap::try_from(progs.map_mut(maps::CT)?)?;
            let stale: Vec<CtKey> = ct::dump::<CtKey, CtEntry>(table.map())?
                .into_iter()
                .filter(|(k, e)| ct::stale(k, e, &live))
                .map(|(k, _)| k)
                .collect();
            for k in stale {
                let _ = table.remove(&k);
            }
        }
        self.last = Some(d.clone());
        Ok(())
    }

    /// Attaches from_container to the veths of `d` (see [`Attach`]): a TC
    /// filter (an earlier daemon's gets the new program atomically; a TCX
    /// link an older netd pinned for the veth is released once the filter
    /// is there), or a pinned TCX link (adopted, its program swapped
    /// atomically); and lets go of the veths that left `d` (a veth that
    /// is still there loses its filter, or its link with the pin).
    fn attach(&mut self, d: &Desired) -> Result<()> {
        let links = self.links_dir();
        for (veth, how) in &d.veths {
            if self.attached.get(veth) == Some(how) {
                continue;
            }
            let pin = links.join(veth);
            match how {
                Attach::Filter => {
                    self.progs()?.attach_tc(bpf::FROM_CONTAINER, veth)?;
                    if pin.exists() {
                        let _ = std::fs::remove_file(&pin);
                    }
                }
                Attach::Tcx => {
                    self.progs()?
                        .attach_pinned(bpf::FROM_CONTAINER, veth, &pin)?;
                    if self.attached.contains_key(veth) {
                        let _ = bpf::detach_tc(bpf::FROM_CONTAINER, veth);
                    }
                }
            }
            self.attached.insert(veth.clone(), *how);
        }
        let gone: Vec<(String, Attach)> = self
            .attached
            .iter()
            .filter(|(v, _)| !d.veths.contains_key(*v))
            .map(|(v, h)| (v.clone(), *h))
            .collect();
        for (veth, how) in gone {
            match how {
                Attach::Filter => {
                    if ifindex(&veth) != 0
                        && let Err(e) = bpf::detach_tc(bpf::FROM_CONTAINER, &veth)
                    {
                        tracing::warn!("{e:#}");
                    }
                }
                // The veth is gone (its link with it) or leaving: unpin.
                Attach::Tcx => {
                    let _ = std::fs::remove_file(links.join(&veth));
                }
            }
            self.attached.remove(&veth);
        }
        Ok(())
    }

    /// The first sync, once the maps describe the state: the uplink and
    /// socket programs are attached (or swapped into their pinned links),
    /// pins of links the state does not know (veths deleted while no
    /// daemon ran) are removed, and carried-over entries created by the
    /// previous programs since `init` are copied once more.
    fn start(&mut self, d: &Desired) -> Result<()> {
        let links = self.links_dir();
        let uplink = self.uplink.clone();
        let cgroup = self.cgroup.clone();
        let progs = self.progs()?;
        progs.attach_pinned(bpf::FROM_WORLD, &uplink, &links.join(&uplink))?;
        progs.attach_sock_programs(&cgroup, &links)?;
        tracing::info!(
            "host sockets in cgroup {} reach published ports directly",
            cgroup.display()
        );
        for e in std::fs::read_dir(&links)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != uplink
                && !name.starts_with("cgroup-")
                && d.veths.get(&name) != Some(&Attach::Tcx)
            {
                tracing::info!("removing the stale link pin {}", e.path().display());
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.carry_over()?;
        self.carry.clear();
        self.started = true;
        Ok(())
    }

    /// Copies the entries of the carried-over tables into the new ones
    /// (keys already present are kept).
    fn carry_over(&mut self) -> Result<()> {
        let carry = std::mem::take(&mut self.carry);
        let progs = self.progs()?;
        for (name, from) in &carry {
            let n = match *name {
                maps::CT => {
                    let mut to = HashMap::try_from(progs.map_mut(maps::CT)?)?;
                    ct::copy_entries::<CtKey, CtEntry>(from, &mut to)
                }
                maps::SOCKETS => {
                    let mut to = HashMap::try_from(progs.map_mut(maps::SOCKETS)?)?;
                    ct::copy_entries::<SockKey, SockOrig>(from, &mut to)
                }
                _ => 0,
            };
            if n > 0 {
                tracing::info!("carried {n} {name} entries over");
            }
        }
        self.carry = carry;
        Ok(())
    }

    /// The ports the kernel must not hand out as ephemeral ones.
    fn sync_reserved_ports(&mut self, d: &Desired) {
        let mut ours = PortSet::default();
        for r in &d.ranges {
            ours.insert_range(r.host_min, r.host_max);
        }
        let (lo, hi) = self.cfg.nat_ports;
        if lo <= hi {
            ours.insert_range(lo, hi);
        }
        if let Err(e) = self.reserve(&ours) {
            tracing::warn!("reserving published ports: {e:#}");
        }
    }

    /// Sets the sysctl to the administrator's ports and `ours`, through
    /// the file kept open (opened at the first call).
    fn reserve(&mut self, ours: &PortSet) -> Result<()> {
        let file = match &mut self.reserved_file {
            Some(f) => f,
            slot => slot.insert(SysctlFile::open(RESERVED_SYSCTL)?),
        };
        let current = file.read()?;
        if let Some(v) = self.reserved.update(&current, ours) {
            file.write(&v)?;
        }
        Ok(())
    }

    /// Follows the uplink: its address (the masquerade source) and index,
    /// and the host's addresses.
    fn follow_uplink(&mut self) -> Result<()> {
        let idx = ifindex(&self.uplink);
        let ip = link_ipv4(&self.uplink).ok().map(|a| u32::from(a).to_be());
        let uplink = self.uplink.clone();
        let links = self.links_dir();
        let started = self.started;
        let progs = self.progs()?;
        let mut arr: Array<&mut MapData, Config> = Array::try_from(progs.map_mut(maps::CONFIG)?)?;
        let mut cfg = arr.get(&0, 0)?;
        let old = cfg;
        if idx != 0 {
            cfg.uplink_ifindex = idx;
        }
        if let Some(ip) = ip {
            cfg.uplink_ip = ip;
        }
        if cfg != old {
            arr.set(0, cfg, 0)?;
            tracing::info!(
                "uplink {uplink}: index {}, address {}",
                cfg.uplink_ifindex,
                Ipv4Addr::from(u32::from_be(cfg.uplink_ip))
            );
        }
        if cfg.uplink_ip != old.uplink_ip {
            // Masqueraded flows of the old address cannot get replies.
            let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
                HashMap::try_from(progs.map_mut(maps::CT)?)?;
            let gone: Vec<CtKey> = ct::dump::<CtKey, CtEntry>(table.map())?
                .into_iter()
                .filter(|(k, e)| {
                    (e.kind == ct_kind::SNAT && e.addr == old.uplink_ip)
                        || (e.kind == ct_kind::REV_SNAT && k.daddr == old.uplink_ip)
                })
                .map(|(k, _)| k)
                .collect();
            for k in gone {
                let _ = table.remove(&k);
            }
        }
        if started && cfg.uplink_ifindex != old.uplink_ifindex {
            progs.attach_pinned(bpf::FROM_WORLD, &uplink, &links.join(&uplink))?;
        }
        v6::set_uplink(self.progs()?, &uplink)?;
        let mut last6 = self.last6.take();
        let r = v6::refresh_local(self.progs()?, last6.as_mut());
        self.last6 = last6;
        r?;
        let local = local_addrs();
        let prev = self.last.as_ref().map(|d| d.local.clone());
        if prev.as_ref() != Some(&local) {
            let progs = self.progs()?;
            apply(
                &mut HashMap::try_from(progs.map_mut(maps::LOCAL_ADDRS)?)?,
                prev.as_ref(),
                &local,
            )?;
            if let Some(d) = self.last.as_mut() {
                d.local = local;
            }
        }
        Ok(())
    }
}

/// How from_container sits on a container's host veth.
///
/// Decision: TC filters for netd's own and Docker's containers, TCX links
/// for CNI attachments. A TCX attach waits for an RCU grace period under
/// the RTNL lock (~14 ms per veth here; attaches cannot overlap), a TC
/// filter costs ~0.15 ms, which is what makes creating containers on ebpf
/// as cheap as on iptables. But a filter needs the clsact qdisc, and the
/// plugins chained after netd in a CNI list own the veth's qdiscs: the
/// reference `bandwidth` plugin adds an ingress qdisc and fails when one
/// (clsact included) is there. A TCX link coexists with any qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    Filter,
    Tcx,
}

#[derive(Default, Clone)]
struct Desired {
    networks: BTreeMap<u32, Network>,
    local: BTreeMap<u32, u32>,
    by_ip: BTreeMap<u32, Endpoint>,
    by_if: BTreeMap<EndpointKey, Endpoint>,
    veths: BTreeMap<String, Attach>,
    /// Every published range (coalesced bindings of one container).
    ranges: BTreeSet<Run4>,
    ports: BTreeMap<PortId, (Key<PortKey>, PortTarget)>,
    /// Published container ports reachable by routing, keyed by the
    /// container's address, and their LPM entries (NETD_DIRECT).
    direct: BTreeMap<PortId, (Key<PortKey>, PortTarget)>,
    /// The cluster CIDR (network, mask; network order).
    cluster: Option<(u32, u32)>,
}

/// Makes an LPM map of ports match `want`: against `have` (what the
/// previous sync wrote) when known, else against the map's own contents.
fn sync_lpm(
    map: &mut LpmTrie<&mut MapData, PortKey, PortTarget>,
    have: Option<&BTreeMap<PortId, (Key<PortKey>, PortTarget)>>,
    want: &BTreeMap<PortId, (Key<PortKey>, PortTarget)>,
) -> Result<()> {
    let gone: Vec<Key<PortKey>> = match have {
        Some(h) => h
            .iter()
            .filter(|(k, _)| !want.contains_key(k))
            .map(|(_, (k, _))| *k)
            .collect(),
        None => map
            .keys()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|k| !want.contains_key(&port_id(k)))
            .collect(),
    };
    for k in gone {
        map.remove(&k)?;
    }
    for (id, (k, t)) in want {
        let unchanged = match have {
            Some(h) => h.get(id).map(|(_, pt)| pt) == Some(t),
            None => map.get(k, 0).ok().as_ref() == Some(t),
        };
        if !unchanged {
            map.insert(k, *t, 0)?;
        }
    }
    Ok(())
}

/// An LPM key as an orderable value.
type PortId = (u32, [u8; 8]);

fn port_id(k: &Key<PortKey>) -> PortId {
    (k.prefix_len(), bytemuck::cast(k.data()))
}

/// Applies `want` to a hash map: against `have` (what the previous sync
/// wrote) when known, else against the map's own contents.
/// An endpoint cache's slots (`NETD_EP_C`, `NETD_EP_IF_C`) for
/// endpoints given with their slots in key order: the first endpoint of a
/// slot has it (the others are found in the hash maps).
fn ep_cache(eps: impl Iterator<Item = (u32, Endpoint)>) -> BTreeMap<u32, Endpoint> {
    let mut slots = BTreeMap::new();
    for (slot, e) in eps {
        slots.entry(slot).or_insert(e);
    }
    slots
}

/// The occupied slots of an endpoint cache map (the first sync after a
/// start adopts what an earlier daemon left).
fn ep_cache_read(progs: &mut Programs, name: &str) -> Result<BTreeMap<u32, Endpoint>> {
    let arr: Array<&mut MapData, Endpoint> = Array::try_from(progs.map_mut(name)?)?;
    let mut slots = BTreeMap::new();
    for slot in 0..EP_CACHE_SIZE {
        let e = arr.get(&slot, 0)?;
        if e != Endpoint::default() {
            slots.insert(slot, e);
        }
    }
    Ok(slots)
}

/// Zeroes the slots whose endpoint changes or goes (before the hash maps
/// change).
fn ep_cache_clear(
    progs: &mut Programs,
    name: &str,
    have: &BTreeMap<u32, Endpoint>,
    want: &BTreeMap<u32, Endpoint>,
) -> Result<()> {
    let mut arr: Array<&mut MapData, Endpoint> = Array::try_from(progs.map_mut(name)?)?;
    for (slot, e) in have {
        if want.get(slot) != Some(e) {
            arr.set(*slot, Endpoint::default(), 0)?;
        }
    }
    Ok(())
}

/// Writes the slots whose endpoint is new or changed (after the hash maps
/// hold it).
fn ep_cache_fill(
    progs: &mut Programs,
    name: &str,
    have: &BTreeMap<u32, Endpoint>,
    want: &BTreeMap<u32, Endpoint>,
) -> Result<()> {
    let mut arr: Array<&mut MapData, Endpoint> = Array::try_from(progs.map_mut(name)?)?;
    for (slot, e) in want {
        if have.get(slot) != Some(e) {
            arr.set(*slot, *e, 0)?;
        }
    }
    Ok(())
}

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

impl Datapath for Ebpf {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn wants_hairpin_mode(&self) -> bool {
        false
    }

    /// Decision: netd's own containers get the NAT range as their
    /// ephemeral ports. Masquerade keeps a container's source port only
    /// inside that range (reserved from the host's ephemeral ports, so no
    /// host socket can ever take the translated tuple and have its
    /// replies stolen); any other port is rewritten into the range, and
    /// a rewritten tuple comes back to a server with another
    /// connection's TCP timestamps and sequence numbers, which the
    /// server's TIME_WAIT refuses (PAWS): a container opening many
    /// short connections to one server stalled. With the range as their
    /// ephemeral ports, containers' connections keep their own ports, as
    /// netfilter's masquerade keeps them (its conntrack also sees the
    /// host's own connections and remaps a clash, which netd's cannot).
    fn container_port_range(&self) -> Option<(u16, u16)> {
        let (lo, hi) = self.cfg.nat_ports;
        (lo < hi).then_some((lo, hi))
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
        // Pins of another layout version are replaced, never misread; the
        // connections of a version whose layout this one reads are
        // carried over (the old programs keep using the old tables until
        // the first sync swaps the programs).
        let suffix = format!("_{MAP_VERSION}");
        for e in std::fs::read_dir(&maps_dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(&suffix) {
                continue;
            }
            if let Some((base, version)) = name.rsplit_once('_')
                && MIGRATE_FROM.contains(&version)
                && let Some(kind) = [maps::CT, maps::SOCKETS].into_iter().find(|m| *m == base)
                && let Ok(data) = MapData::from_pin(e.path())
            {
                tracing::info!("carrying the entries of {} over", e.path().display());
                self.carry.push((kind, data));
            } else {
                tracing::info!(
                    "removing pinned map of another version: {}",
                    e.path().display()
                );
            }
            let _ = std::fs::remove_file(e.path());
        }
        // A conntrack table pinned with another size than asked for is
        // replaced by one of the right size, its entries carried over.
        let ct_pin = maps_dir.join(format!("{}{suffix}", maps::CT));
        if let Ok(data) = MapData::from_pin(&ct_pin) {
            let size = data.info()?.max_entries();
            if size != self.cfg.ct_entries {
                tracing::info!(
                    "conntrack table: {size} -> {} entries (carried over)",
                    self.cfg.ct_entries
                );
                self.carry.push((maps::CT, data));
                std::fs::remove_file(&ct_pin)?;
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
            // The first sync sets it from the state; until then a pinned
            // table keeps the previous daemon's (the cluster's traffic
            // goes on across a restart).
            cluster_net: 0,
            cluster_mask: 0,
        };
        let mut arr: Array<&mut MapData, Config> = Array::try_from(progs.map_mut(maps::CONFIG)?)?;
        let old = arr.get(&0, 0).unwrap_or_default();
        arr.set(
            0,
            Config {
                cluster_net: old.cluster_net,
                cluster_mask: old.cluster_mask,
                ..cfg
            },
            0,
        )?;
        self.cgroup = match &self.cfg.cgroup {
            Some(c) => c.clone(),
            None => cgroup2_root()?,
        };
        v6::set_uplink(&mut progs, &self.uplink)?;
        // Pinned endpoints keep their stats slots (and counters).
        {
            let by_if: HashMap<&MapData, EndpointKey, Endpoint> = HashMap::try_from(
                progs
                    .ebpf()
                    .map(maps::ENDPOINTS_BY_IF)
                    .context("endpoints")?,
            )?;
            self.slots = by_if
                .iter()
                .filter_map(|r| r.ok())
                .map(|(k, e)| (k.ifindex, e.slot))
                .collect();
        }
        self.progs = Some(progs);
        self.carry_over()?;
        // The programs are attached by the first sync, once the maps
        // describe the state (links pinned by an earlier daemon keep its
        // programs until then).
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
        self.published.begin();
        let mut d = self.desired(state)?;
        let fresh = self.assign_slots(&mut d)?;
        let t_desired = t.elapsed();
        self.sync_maps(&d, &fresh)?;
        let t_maps4 = t.elapsed();
        let d6 = v6::Desired6::from_state(
            state,
            &self.slots,
            self.last6.as_ref(),
            &mut self.links,
            &mut self.published,
        );
        if self.last6.as_ref() != Some(&d6) {
            let prev = self.last6.take();
            v6::sync(self.progs()?, prev.as_ref(), &d6)?;
            self.last6 = Some(d6);
        }
        let t_maps = t.elapsed();
        self.attach(&d)?;
        if !self.started {
            self.start(&d)?;
        }
        let t_attach = t.elapsed();
        self.sync_reserved_ports(&d);
        tracing::debug!(
            "ebpf sync: desired {:?}, IPv4 maps {:?}, IPv6 {:?}, attach {:?}, reserved ports {:?}",
            t_desired,
            t_maps4 - t_desired,
            t_maps - t_maps4,
            t_attach - t_maps,
            t.elapsed() - t_attach
        );
        Ok(())
    }

    fn refresh(&mut self, _state: &State) -> Result<()> {
        if self.progs.is_none() {
            return Ok(());
        }
        self.follow_uplink()
    }

    fn cleanup(&mut self) -> Result<()> {
        self.progs = None;
        self.last = None;
        self.last6 = None;
        self.slots.clear();
        // netd's TC filters, wherever they are (this instance may be a
        // fresh one cleaning up after another daemon): a filter left
        // behind would keep running with the maps it holds.
        for name in link_names() {
            let _ = bpf::detach_tc(bpf::FROM_CONTAINER, &name);
        }
        self.carry.clear();
        let _ = std::fs::remove_dir_all(self.links_dir());
        let _ = std::fs::remove_dir_all(self.maps_dir());
        self.attached.clear();
        self.reserved_file = None;
        if let Some(v) = self.reserved.restore() {
            let _ = sysctl_write(RESERVED_SYSCTL, &v);
        }
        Ok(())
    }

    fn conntrack_gc(&mut self) -> Result<Option<Box<dyn ConntrackGc>>> {
        // Its own handle on the pinned table: the collector never needs
        // the daemon (or this datapath) while it walks the map.
        let pin = self.maps_dir().join(format!("{}_{MAP_VERSION}", maps::CT));
        let data = MapData::from_pin(&pin)
            .with_context(|| format!("opening the conntrack table {}", pin.display()))?;
        let table = HashMap::try_from(aya::maps::Map::HashMap(data))?;
        let pin6 = self
            .maps_dir()
            .join(format!("{}_{MAP_VERSION}", netd_common::v6::maps::CT6));
        let data6 = MapData::from_pin(&pin6)
            .with_context(|| format!("opening the conntrack table {}", pin6.display()))?;
        Ok(Some(Box::new(v6::Gc {
            v4: Box::new(ct::CtGc { ct: table }),
            ct6: HashMap::try_from(aya::maps::Map::HashMap(data6))?,
        })))
    }

    fn stats(&mut self) -> Result<Stats> {
        let progs = self
            .progs
            .as_ref()
            .context("the eBPF datapath is not initialised")?;
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
        let stats: PerCpuArray<&MapData, EndpointStats> =
            PerCpuArray::try_from(progs.ebpf().map(maps::EP_STATS).context("stats map")?)?;
        for (ifindex, slot) in &self.slots {
            let per_cpu = stats.get(slot, 0)?;
            let mut t = EndpointCounters::default();
            for s in per_cpu.iter() {
                t.rx_packets += s.rx_packets;
                t.rx_bytes += s.rx_bytes;
                t.tx_packets += s.tx_packets;
                t.tx_bytes += s.tx_bytes;
            }
            out.endpoints.insert(*ifindex, t);
        }
        let table: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(progs.ebpf().map(maps::CT).context("ct map")?)?;
        let table6: HashMap<&MapData, netd_common::v6::CtKey6, netd_common::v6::CtEntry6> =
            HashMap::try_from(
                progs
                    .ebpf()
                    .map(netd_common::v6::maps::CT6)
                    .context("ct6 map")?,
            )?;
        out.conntrack_entries = Some(
            (ct::dump::<CtKey, CtEntry>(table.map())?.len()
                + ct::dump::<netd_common::v6::CtKey6, netd_common::v6::CtEntry6>(table6.map())?
                    .len()) as u64,
        );
        out.programs = progs.sizes()?;
        Ok(out)
    }
}
