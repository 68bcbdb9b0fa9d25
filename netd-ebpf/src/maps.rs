//! netd's maps (BTF-defined, so `bpftool map dump` is typed). Static names
//! are the map names userspace looks up (netd_common::maps); userspace
//! pins them with a version suffix.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuHashMap, lpm_trie::Key},
    macros::btf_map,
};
use netd_common::{
    Config, CtEntry, CtKey, DEFAULT_CT_ENTRIES, Endpoint, EndpointKey, EndpointStats,
    MAX_ENDPOINTS, MAX_NETWORKS, MAX_PORT_PREFIXES, Network, PortKey, PortTarget,
};

#[btf_map]
pub static NETD_EP: HashMap<u32, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

#[btf_map]
pub static NETD_EP_IF: HashMap<EndpointKey, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

#[btf_map]
pub static NETD_NET: HashMap<u32, Network, { MAX_NETWORKS as usize }> = HashMap::new();

#[btf_map]
pub static NETD_PORTS: LpmTrie<PortKey, PortTarget, { MAX_PORT_PREFIXES as usize }> =
    LpmTrie::new();

/// Conntrack/NAT. A plain hash (not LRU): when it is full a new flow is
/// refused (and counted) instead of silently evicting an established one.
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

#[btf_map]
pub static NETD_EP_STATS: PerCpuHashMap<EndpointKey, EndpointStats, { MAX_ENDPOINTS as usize }> =
    PerCpuHashMap::new();

#[btf_map]
pub static NETD_CFG: Array<Config, 1> = Array::new();

pub type PortLpmKey = Key<PortKey>;

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
