//! netd's maps (BTF-defined, so `bpftool map dump` is typed). Static names
//! are the map names userspace looks up (netd_common::maps); userspace
//! pins them with a version suffix.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, Queue, lpm_trie::Key},
    macros::btf_map,
};
use netd_common::{
    CT_NEW_QUEUE, Config, CtEntry, CtKey, DEFAULT_CT_ENTRIES, Endpoint, EndpointKey, EndpointStats,
    FragKey, FragPorts, MAX_ENDPOINTS, MAX_FRAGS, MAX_NETWORKS, MAX_PORT_PREFIXES, Network,
    PortKey, PortTarget,
};

#[btf_map]
pub static NETD_EP: HashMap<u32, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

#[btf_map]
pub static NETD_EP_IF: HashMap<EndpointKey, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Direct-mapped caches of NETD_EP and NETD_EP_IF (see
/// `netd_common::EP_CACHE_SIZE`); a miss falls back to the hash maps.
#[btf_map]
pub static NETD_EP_C: Array<Endpoint, { netd_common::EP_CACHE_SIZE as usize }> = Array::new();

#[btf_map]
pub static NETD_EP_IF_C: Array<Endpoint, { netd_common::EP_CACHE_SIZE as usize }> = Array::new();

/// The endpoint with IPv4 address `ip` (network order): its cache slot,
/// else the hash map.
#[inline(always)]
pub fn endpoint(ip: u32) -> Option<Endpoint> {
    if let Some(e) = NETD_EP_C.get(netd_common::ep_cache_slot_ip(ip))
        && netd_common::ep_cached_ip(e, ip)
    {
        return Some(*e);
    }
    // SAFETY: map value copied out.
    unsafe { NETD_EP.get(ip) }.copied()
}

/// Whether `ip` (network order) is a local endpoint's address.
#[inline(always)]
pub fn is_endpoint(ip: u32) -> bool {
    if let Some(e) = NETD_EP_C.get(netd_common::ep_cache_slot_ip(ip))
        && netd_common::ep_cached_ip(e, ip)
    {
        return true;
    }
    // SAFETY: presence check only.
    unsafe { NETD_EP.get(ip) }.is_some()
}

/// The endpoint on host veth `ifindex`: its cache slot, else the hash map.
#[inline(always)]
pub fn endpoint_by_if(ifindex: u32) -> Option<Endpoint> {
    if let Some(e) = NETD_EP_IF_C.get(netd_common::ep_cache_slot_if(ifindex))
        && netd_common::ep_cached_if(e, ifindex)
    {
        return Some(*e);
    }
    // SAFETY: map value copied out.
    unsafe { NETD_EP_IF.get(EndpointKey { ifindex }) }.copied()
}

#[btf_map]
pub static NETD_NET: HashMap<u32, Network, { MAX_NETWORKS as usize }> = HashMap::new();

#[btf_map]
pub static NETD_PORTS: LpmTrie<PortKey, PortTarget, { MAX_PORT_PREFIXES as usize }> =
    LpmTrie::new();

/// Conntrack/NAT. A plain hash (not LRU): an established flow is never
/// evicted; when it is full an unconfirmed flow from NETD_CT_NEW makes
/// room, and failing that the new flow is refused (and counted).
/// The size is set at load time from the daemon's configuration.
///
/// Not preallocated: memory follows the number of live flows, so the
/// default size can be generous.
#[btf_map]
pub static NETD_CT: HashMap<
    CtKey,
    CtEntry,
    { DEFAULT_CT_ENTRIES as usize },
    { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Per-endpoint counters, indexed by `Endpoint::slot`.
#[btf_map]
pub static NETD_EP_STATS: PerCpuArray<EndpointStats, { MAX_ENDPOINTS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static NETD_CFG: Array<Config, 1> = Array::new();

pub type PortLpmKey = Key<PortKey>;

/// Published container ports reachable by routing: (protocol, container
/// address, container port) in the same LPM layout as NETD_PORTS.
#[btf_map]
pub static NETD_DIRECT: LpmTrie<PortKey, PortTarget, { MAX_PORT_PREFIXES as usize }> =
    LpmTrie::new();

/// The host's own IPv4 addresses (network order): what "a host address"
/// means for hairpin and for wildcard published ports from host sockets.
#[btf_map]
pub static NETD_LOCAL: HashMap<u32, u32, { netd_common::MAX_LOCAL_ADDRS as usize }> =
    HashMap::new();

/// Host sockets the cgroup programs rewrote: what they asked for.
#[btf_map]
pub static NETD_SOCK: LruHashMap<
    netd_common::SockKey,
    netd_common::SockOrig,
    { netd_common::MAX_SOCKETS as usize },
> = LruHashMap::new();

/// Recently created flows (their forward key), oldest first: when the
/// conntrack table is full, the oldest one still unconfirmed is evicted.
/// Pushing onto a full queue drops its oldest key.
#[btf_map]
pub static NETD_CT_NEW: Queue<CtKey, { CT_NEW_QUEUE as usize }> = Queue::new();

/// Ports of fragmented datagrams, from their first fragment.
#[btf_map]
pub static NETD_FRAG: LruHashMap<FragKey, FragPorts, { MAX_FRAGS as usize }> = LruHashMap::new();
