//! The IPv6 datapath's maps (the IPv4 ones keep their layouts; see
//! netd_common::v6). Userspace pins them like the others.
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    btf_maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, Queue, lpm_trie::Key,
    },
    macros::btf_map,
};
use netd_common::{
    CT_NEW_QUEUE, DEFAULT_CT_ENTRIES, EndpointKey, FragPorts, MAX_ENDPOINTS, MAX_LOCAL_ADDRS,
    MAX_NETWORKS, MAX_PORT_PREFIXES, Network, SockOrig,
    v6::{
        Config6, CtEntry6, CtKey6, Endpoint6, FragKey6, Ip6, MAX_FRAGS6, PortKey6, PortTarget6,
        SockKey6,
    },
};

#[btf_map]
pub static NETD_EP6: HashMap<Ip6, Endpoint6, { MAX_ENDPOINTS as usize }> = HashMap::new();

#[btf_map]
pub static NETD_EP6_IF: HashMap<EndpointKey, Endpoint6, { MAX_ENDPOINTS as usize }> =
    HashMap::new();

#[btf_map]
pub static NETD_PORTS6: LpmTrie<PortKey6, PortTarget6, { MAX_PORT_PREFIXES as usize }> =
    LpmTrie::new();

#[btf_map]
pub static NETD_DIRECT6: LpmTrie<PortKey6, PortTarget6, { MAX_PORT_PREFIXES as usize }> =
    LpmTrie::new();

/// IPv6 conntrack/NAT66: a plain hash like NETD_CT (an established flow
/// is never evicted; a full table refuses new flows, counted), sized at
/// load time with it.
#[btf_map]
pub static NETD_CT6: HashMap<
    CtKey6,
    CtEntry6,
    { DEFAULT_CT_ENTRIES as usize },
    { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

#[btf_map]
pub static NETD_FRAG6: LruHashMap<FragKey6, FragPorts, { MAX_FRAGS6 as usize }> = LruHashMap::new();

/// The host's own IPv6 addresses.
#[btf_map]
pub static NETD_LOCAL6: HashMap<Ip6, u32, { MAX_LOCAL_ADDRS as usize }> = HashMap::new();

#[btf_map]
pub static NETD_CFG6: Array<Config6, 1> = Array::new();

pub type PortLpmKey6 = Key<PortKey6>;

/// The IPv6 programs, tail-called from the IPv4 ones' EtherType dispatch
/// (each starts with a fresh stack): v6::JMP_*.
#[btf_map]
pub static NETD_JMP6: ProgramArray<16> = ProgramArray::new();

/// Per-CPU scratch for the IPv6 FIB lookups' parameters (not pinned).
#[btf_map]
pub static NETD_FIB6: PerCpuArray<bpf_fib_lookup, 1> = PerCpuArray::new();

/// Per-CPU scratch for a new flow's keys and entries (not pinned).
#[repr(C)]
pub struct Flow6 {
    pub fwd_key: CtKey6,
    pub rev_key: CtKey6,
    pub fwd: CtEntry6,
    pub rev: CtEntry6,
}

#[btf_map]
pub static NETD_FLOW6: PerCpuArray<Flow6, 1> = PerCpuArray::new();

/// Host sockets the cgroup programs sent to a container's IPv6 address:
/// what they asked for.
#[btf_map]
pub static NETD_SOCK6: LruHashMap<SockKey6, SockOrig, { netd_common::MAX_SOCKETS as usize }> =
    LruHashMap::new();

/// Networks' IPv6 sides: id -> flags (NET_IPV6 and what the network's
/// IPv6 gateway mode makes of the others).
#[btf_map]
pub static NETD_NET6: HashMap<u32, Network, { MAX_NETWORKS as usize }> = HashMap::new();

/// Recently created IPv6 flows (their forward key), oldest first: the
/// eviction candidates when NETD_CT6 is full.
#[btf_map]
pub static NETD_CT6_NEW: Queue<CtKey6, { CT_NEW_QUEUE as usize }> = Queue::new();

/// Per-CPU scratch for the eviction of an unconfirmed IPv6 flow (not
/// pinned).
#[repr(C)]
pub struct Evict6 {
    pub k: CtKey6,
    pub rk: CtKey6,
}

#[btf_map]
pub static NETD_EVICT6: PerCpuArray<Evict6, 1> = PerCpuArray::new();
