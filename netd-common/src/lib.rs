//! Types shared by the eBPF programs (`netd-ebpf`) and userspace (`netd`).
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]`, has a
//! compile-time size assertion and no padding holes (with the `user`
//! feature, `bytemuck::Pod` derives prove the latter at compile time: they
//! refuse a struct with padding). Enums are never stored inside map values;
//! they are indexes (`as u32`).
#![no_std]

pub mod v6;

/// Suffix of every map name. Bump it whenever the layout of any map key or
/// value changes: a new netd then creates fresh maps next to (and removes)
/// the pinned ones of the old layout instead of misreading them.
pub const MAP_VERSION: &str = "v6";

/// Versions whose pinned conntrack (and host-socket) entries a new netd
/// carries over on start (their [`CtKey`]/[`CtEntry`]/[`SockKey`]/
/// [`SockOrig`] layouts are this version's), so an upgrade keeps every
/// connection. v2 -> v3 added drop reasons, counters and maps; v3 -> v4
/// (gateway modes, the cluster) grew [`Config`], added counters, conntrack
/// kinds and the `NETD_DIRECT` map; v4 -> v5 gave [`Endpoint`] its stats
/// slot, network flags and mask, made the per-endpoint stats a per-CPU
/// array and the counters one per-CPU [`Counters`] value. The conntrack
/// layout did not change. v5 -> v6 (IPv6) added drop reasons, counters
/// and the IPv6 maps ([`v6`]); the conntrack layout did not change.
pub const MIGRATE_FROM: &[&str] = &["v5", "v4", "v3", "v2"];

/// Map names (without the version suffix; userspace pins them as
/// `<name>_<MAP_VERSION>`).
pub mod maps {
    /// Per-CPU array of one [`Counters`](super::Counters).
    pub const COUNTERS: &str = "NETD_COUNTERS";
    pub const DROPS: &str = "NETD_DROPS";
    /// u32 (IPv4, network order) -> [`Endpoint`](super::Endpoint).
    pub const ENDPOINTS: &str = "NETD_EP";
    /// [`EndpointKey`](super::EndpointKey) (host veth ifindex) -> [`Endpoint`](super::Endpoint).
    pub const ENDPOINTS_BY_IF: &str = "NETD_EP_IF";
    /// u32 network id -> [`Network`](super::Network).
    pub const NETWORKS: &str = "NETD_NET";
    /// LPM trie: [`PortKey`](super::PortKey) -> [`PortTarget`](super::PortTarget).
    pub const PORTS: &str = "NETD_PORTS";
    /// [`CtKey`](super::CtKey) -> [`CtEntry`](super::CtEntry).
    pub const CT: &str = "NETD_CT";
    /// Per-CPU array of [`EndpointStats`](super::EndpointStats), indexed
    /// by [`Endpoint::slot`](super::Endpoint::slot).
    pub const EP_STATS: &str = "NETD_EP_STATS";
    /// Array of one [`Config`](super::Config).
    pub const CONFIG: &str = "NETD_CFG";
    /// u32 (IPv4, network order) -> u32: the host's own addresses.
    pub const LOCAL_ADDRS: &str = "NETD_LOCAL";
    /// LRU [`SockKey`](super::SockKey) -> [`SockOrig`](super::SockOrig):
    /// what a host socket asked for before the cgroup programs rewrote it.
    pub const SOCKETS: &str = "NETD_SOCK";
    /// LRU [`FragKey`](super::FragKey) -> [`FragPorts`](super::FragPorts):
    /// the ports of a fragmented datagram, from its first fragment.
    pub const FRAGS: &str = "NETD_FRAG";
    /// Queue of [`CtKey`](super::CtKey): recently created flows, the
    /// candidates for eviction (if still unconfirmed) when the table is full.
    pub const CT_NEW: &str = "NETD_CT_NEW";
    /// LPM trie: [`PortKey`](super::PortKey) (protocol, *container*
    /// address, container port) -> [`PortTarget`](super::PortTarget):
    /// published container ports reachable by routing to the container's
    /// address (`routed` networks, `nat` without masquerade).
    pub const DIRECT: &str = "NETD_DIRECT";
    /// Array of [`EP_CACHE_SIZE`](super::EP_CACHE_SIZE)
    /// [`Endpoint`](super::Endpoint)s: a direct-mapped cache of
    /// `ENDPOINTS`, slot [`ep_cache_slot_ip`](super::ep_cache_slot_ip).
    pub const ENDPOINTS_CACHE: &str = "NETD_EP_C";
    /// The same for `ENDPOINTS_BY_IF`, slot
    /// [`ep_cache_slot_if`](super::ep_cache_slot_if).
    pub const ENDPOINTS_BY_IF_CACHE: &str = "NETD_EP_IF_C";
    /// Every map netd pins, for cleanup.
    pub const ALL: [&str; 16] = [
        COUNTERS,
        DROPS,
        ENDPOINTS,
        ENDPOINTS_BY_IF,
        NETWORKS,
        PORTS,
        CT,
        EP_STATS,
        CONFIG,
        LOCAL_ADDRS,
        SOCKETS,
        FRAGS,
        CT_NEW,
        DIRECT,
        ENDPOINTS_CACHE,
        ENDPOINTS_BY_IF_CACHE,
    ];
}

/// Maximum sizes (the conntrack table's is set at load time from config).
pub const MAX_ENDPOINTS: u32 = 16384;
pub const MAX_NETWORKS: u32 = 1024;
pub const MAX_PORT_PREFIXES: u32 = 65536;
pub const DEFAULT_CT_ENTRIES: u32 = 262_144;
pub const MAX_LOCAL_ADDRS: u32 = 256;
pub const MAX_SOCKETS: u32 = 65536;
/// Fragmented datagrams in flight whose ports are remembered.
pub const MAX_FRAGS: u32 = 8192;
/// Recently created flows remembered as eviction candidates.
pub const CT_NEW_QUEUE: u32 = 16384;

/// Slots of the direct-mapped endpoint caches (`NETD_EP_C`,
/// `NETD_EP_IF_C`): a power of two. An endpoint sits in its slot of each
/// cache unless another one took it first (then the programs find it in
/// the hash maps, which always hold every endpoint). A cache hit is an
/// array lookup (inlined by the verifier: no call, no hashing), where a
/// hash map lookup cost a packet about 25 ns; containers' addresses (IPAM
/// hands them out in order) and veths' ifindexes (the kernel too) rarely
/// share a slot.
pub const EP_CACHE_SIZE: u32 = 4096;

/// The endpoint cache slot of an IPv4 address (network order): its low
/// bits.
#[inline(always)]
pub const fn ep_cache_slot_ip(ip: u32) -> u32 {
    u32::from_be(ip) & (EP_CACHE_SIZE - 1)
}

/// The endpoint cache slot of a host veth's ifindex: its low bits.
#[inline(always)]
pub const fn ep_cache_slot_if(ifindex: u32) -> u32 {
    ifindex & (EP_CACHE_SIZE - 1)
}

/// Whether a cache slot's entry is the endpoint with address `ip`
/// (a zeroed slot is nobody's: no endpoint has ifindex 0).
#[inline(always)]
pub const fn ep_cached_ip(e: &Endpoint, ip: u32) -> bool {
    e.ifindex != 0 && e.ip == ip
}

/// Whether a cache slot's entry is the endpoint on host veth `ifindex`.
#[inline(always)]
pub const fn ep_cached_if(e: &Endpoint, ifindex: u32) -> bool {
    e.ifindex != 0 && e.ifindex == ifindex
}

/// Why a program dropped a packet. Values are indexes into the per-CPU
/// `NETD_DROPS` array and are part of the on-disk (pinned) ABI: never
/// renumber, only append.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header claimed more bytes than the packet has, or an IPv4 header
    /// with IHL < 5.
    Malformed = 0,
    /// Source MAC/IP is not the endpoint's own (anti-spoofing).
    SpoofedSource = 1,
    /// Inter-container traffic on a network with icc=false.
    IccDenied = 2,
    /// Traffic between two networks the container is not both attached to.
    NetworkIsolation = 3,
    /// Traffic from an internal network towards anything outside it.
    InternalNetwork = 4,
    /// The conntrack table is full: new flows are refused.
    CtTableFull = 5,
    /// No free source port in the masquerade range.
    NatPortsExhausted = 6,
    /// The FIB had no route/neighbour for a packet netd must forward.
    FibLookupFailed = 7,
    /// A protocol or packet shape the program refuses to translate.
    Unsupported = 8,
    /// A checksum or header rewrite helper failed.
    RewriteFailed = 9,
    /// A frame from a container that is neither IPv4 nor ARP (IPv6 on a
    /// network without IPv6, VLAN tags, anything else).
    NotIpv4 = 10,
    /// A destination no packet from outside the host may have (127/8).
    Martian = 11,
    /// From outside to a container's address with no flow behind it:
    /// container ports are reached through published host ports only.
    NotPublished = 12,
    /// A non-first fragment of a datagram whose first fragment was not seen.
    FragmentUnknown = 13,
    /// A packet on a veth (or of a network) the maps do not know: the
    /// datapath fails closed.
    NoEndpoint = 14,
    /// An IPv6 packet whose extension headers netd does not walk (ESP,
    /// AH, mobility, HIP, shim6, experimental) or more of them than it
    /// walks: dropped, never mangled.
    Ipv6ExtHeader = 15,
    /// Neighbour Discovery from a container that claims what is not its
    /// own: an advertisement (or a DAD probe) for another address, a
    /// router advertisement or a redirect (containers are not routers).
    SpoofedNd = 16,
}

impl DropReason {
    /// Number of reasons: the size of the drops array.
    pub const COUNT: u32 = 17;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Malformed,
        DropReason::SpoofedSource,
        DropReason::IccDenied,
        DropReason::NetworkIsolation,
        DropReason::InternalNetwork,
        DropReason::CtTableFull,
        DropReason::NatPortsExhausted,
        DropReason::FibLookupFailed,
        DropReason::Unsupported,
        DropReason::RewriteFailed,
        DropReason::NotIpv4,
        DropReason::Martian,
        DropReason::NotPublished,
        DropReason::FragmentUnknown,
        DropReason::NoEndpoint,
        DropReason::Ipv6ExtHeader,
        DropReason::SpoofedNd,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::SpoofedSource => "spoofed-source",
            DropReason::IccDenied => "icc-denied",
            DropReason::NetworkIsolation => "network-isolation",
            DropReason::InternalNetwork => "internal-network",
            DropReason::CtTableFull => "ct-table-full",
            DropReason::NatPortsExhausted => "nat-ports-exhausted",
            DropReason::FibLookupFailed => "fib-lookup-failed",
            DropReason::Unsupported => "unsupported",
            DropReason::RewriteFailed => "rewrite-failed",
            DropReason::NotIpv4 => "not-ipv4",
            DropReason::Martian => "martian",
            DropReason::NotPublished => "not-published",
            DropReason::FragmentUnknown => "fragment-unknown",
            DropReason::NoEndpoint => "no-endpoint",
            DropReason::Ipv6ExtHeader => "ipv6-ext-header",
            DropReason::SpoofedNd => "spoofed-nd",
        }
    }
}

/// Global datapath counters: indexes into the per-CPU [`Counters`] value
/// (`NETD_COUNTERS[0]`). Same ABI rule as [`DropReason`]: append only.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets seen by `from_container`.
    FromContainerPackets = 0,
    /// Bytes (skb->len, L2 included) seen by `from_container`.
    FromContainerBytes = 1,
    /// IPv4 packets among them.
    FromContainerIpv4 = 2,
    /// TCP segments among them.
    FromContainerTcp = 3,
    /// Packets seen by `from_world`.
    FromWorldPackets = 4,
    /// Bytes seen by `from_world`.
    FromWorldBytes = 5,
    /// Container -> container redirects on one network (bpf_redirect_peer).
    Forwarded = 6,
    /// Packets source-NATed towards the uplink.
    Snat = 7,
    /// Replies to masqueraded flows, translated back.
    RevSnat = 8,
    /// Packets to published ports, destination-NATed.
    Dnat = 9,
    /// Replies of published-port flows, translated back.
    RevDnat = 10,
    /// Conntrack entries created.
    CtCreated = 11,
    /// ICMP errors about translated flows, translated back.
    IcmpErrors = 12,
    /// Hairpin packets (container -> a host address's published port).
    Hairpin = 13,
    /// Host sockets redirected to a published port's container.
    HostSockets = 14,
    /// Packets too big for their egress, handed to the kernel
    /// untranslated (with DF) so that it answers "fragmentation needed".
    FragNeeded = 15,
    /// Non-first fragments translated with their datagram's flow.
    Fragments = 16,
    /// Unconfirmed flows evicted to make room in a full table.
    CtEvicted = 17,
    /// Packets of containers' flows sent out untranslated (gateway modes
    /// without masquerade, replies of flows routed in).
    RoutedOut = 18,
    /// Packets routed from outside (or from another network) to a
    /// container's own address, delivered untranslated.
    RoutedIn = 19,
    /// Pod -> another node's pod: out of the uplink untranslated
    /// (FIB lookup + bpf_redirect_neigh), no conntrack.
    ClusterOut = 20,
    /// Another node's pod -> a pod here: straight into the endpoint, no
    /// NAT, no conntrack.
    ClusterIn = 21,
    /// Masqueraded TCP flows closed both ways whose translated port a new
    /// flow to the same destination took (every probed port was taken).
    CtReused = 22,
    /// IPv6 packets seen by `from_container`.
    FromContainerIpv6 = 23,
    /// IPv6 packets seen by `from_world`.
    FromWorldIpv6 = 24,
}

impl Counter {
    pub const COUNT: u32 = 25;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::FromContainerPackets,
        Counter::FromContainerBytes,
        Counter::FromContainerIpv4,
        Counter::FromContainerTcp,
        Counter::FromWorldPackets,
        Counter::FromWorldBytes,
        Counter::Forwarded,
        Counter::Snat,
        Counter::RevSnat,
        Counter::Dnat,
        Counter::RevDnat,
        Counter::CtCreated,
        Counter::IcmpErrors,
        Counter::Hairpin,
        Counter::HostSockets,
        Counter::FragNeeded,
        Counter::Fragments,
        Counter::CtEvicted,
        Counter::RoutedOut,
        Counter::RoutedIn,
        Counter::ClusterOut,
        Counter::ClusterIn,
        Counter::CtReused,
        Counter::FromContainerIpv6,
        Counter::FromWorldIpv6,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::FromContainerPackets => "from_container.packets",
            Counter::FromContainerBytes => "from_container.bytes",
            Counter::FromContainerIpv4 => "from_container.ipv4",
            Counter::FromContainerTcp => "from_container.tcp",
            Counter::FromWorldPackets => "from_world.packets",
            Counter::FromWorldBytes => "from_world.bytes",
            Counter::Forwarded => "forwarded",
            Counter::Snat => "snat",
            Counter::RevSnat => "rev_snat",
            Counter::Dnat => "dnat",
            Counter::RevDnat => "rev_dnat",
            Counter::CtCreated => "ct.created",
            Counter::IcmpErrors => "icmp_errors",
            Counter::Hairpin => "hairpin",
            Counter::HostSockets => "host_sockets",
            Counter::FragNeeded => "frag_needed",
            Counter::Fragments => "fragments",
            Counter::CtEvicted => "ct.evicted",
            Counter::RoutedOut => "routed_out",
            Counter::RoutedIn => "routed_in",
            Counter::ClusterOut => "cluster_out",
            Counter::ClusterIn => "cluster_in",
            Counter::CtReused => "ct.reused",
            Counter::FromContainerIpv6 => "from_container.ipv6",
            Counter::FromWorldIpv6 => "from_world.ipv6",
        }
    }
}

/// Every global counter of one CPU, indexed by [`Counter`]: one per-CPU
/// array lookup serves every counter a packet bumps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counters {
    pub v: [u64; Counter::COUNT as usize],
}
const _: () = assert!(core::mem::size_of::<Counters>() == 8 * Counter::COUNT as usize);

impl Default for Counters {
    fn default() -> Self {
        Counters {
            v: [0; Counter::COUNT as usize],
        }
    }
}

/// Per-endpoint traffic counters (a per-CPU array indexed by the
/// endpoint's [`Endpoint::slot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EndpointStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<EndpointStats>() == 32);

/// Key of per-endpoint maps: the host-side veth's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EndpointKey {
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 4);

/// A container endpoint (value of NETD_EP and NETD_EP_IF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Endpoint {
    /// Host-side veth: redirect target and key of NETD_EP_IF.
    pub ifindex: u32,
    /// Network id (key of NETD_NET).
    pub net_id: u32,
    /// IPv4 address, network order.
    pub ip: u32,
    pub mac: [u8; 6],
    /// The network's bridge (gateway) MAC: source MAC of frames netd
    /// delivers into the container.
    pub gw_mac: [u8; 6],
    /// Index of the endpoint's counters in NETD_EP_STATS (below
    /// [`MAX_ENDPOINTS`]; userspace allocates it and zeroes it first).
    pub slot: u32,
    /// Its network's NET_* flags, copied: the same-network fast path
    /// decides without a NETD_NET lookup (userspace writes an endpoint
    /// after its network and removes it before).
    pub net_flags: u32,
    /// Its network's subnet mask (network order): only a destination in
    /// the subnet is looked up as a peer by the fast path.
    pub mask: u32,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 36);

pub const NET_ICC: u32 = 1;
pub const NET_MASQUERADE: u32 = 2;
pub const NET_INTERNAL: u32 = 4;
/// The network has IPv6: its endpoints' IPv6 frames (NETD_EP6_IF) go
/// through the IPv6 walks. Without it every frame from a container that
/// is neither IPv4 nor ARP is dropped.
pub const NET_IPV6: u32 = 8;
/// Published container ports (NETD_DIRECT) are reachable by routing to
/// the container's address (`routed`; `nat` without masquerade).
pub const NET_DIRECT_PORTS: u32 = 16;
/// ICMP echo is reachable by routing to the container's address
/// (`routed`).
pub const NET_DIRECT_ICMP: u32 = 32;
/// Everything is reachable by routing to the container's address
/// (`nat-unprotected`).
pub const NET_DIRECT_ALL: u32 = 64;
/// Containers of other networks may route to this network's published
/// container ports and ICMP (`routed`).
pub const NET_FROM_NETWORKS: u32 = 128;
/// The subnet lies in the cluster CIDR: pod <-> cluster traffic is never
/// translated nor tracked.
pub const NET_CLUSTER: u32 = 256;

/// A network (value of NETD_NET).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Network {
    /// NET_* flags.
    pub flags: u32,
    /// Bridge ifindex.
    pub bridge_ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<Network>() == 8);

/// Host-wide settings (NETD_CFG[0]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config {
    pub uplink_ifindex: u32,
    /// The uplink's address (masquerade source), network order.
    pub uplink_ip: u32,
    /// Masquerade source port range, host order, inclusive.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    pub _pad: u32,
    /// The host namespace's cookie: the cgroup socket programs only
    /// rewrite sockets of this namespace.
    pub netns_cookie: u64,
    /// The cluster's pod range (`--cluster-cidr`), network order; mask 0:
    /// no cluster.
    pub cluster_net: u32,
    pub cluster_mask: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 32);

impl Config {
    /// Whether `addr` (network order) is inside the cluster CIDR.
    #[inline(always)]
    pub const fn in_cluster(&self, addr: u32) -> bool {
        self.cluster_mask != 0 && addr & self.cluster_mask == self.cluster_net
    }
}

/// Data of a NETD_PORTS LPM key: protocol, host address, host port, in
/// that order (network byte order), matched by prefix: 8 + 32 bits are
/// always exact, the port's high bits cover a prefix-aligned block of a
/// published range. Wildcard (0.0.0.0) bindings use address 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PortKey {
    pub proto: u8,
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);

/// Prefix length of a NETD_PORTS key that matches exactly one port.
pub const PORT_KEY_FULL_PREFIX: u32 = 8 + 32 + 16;

/// Where a published range goes: host port `p` in
/// [host_port_min, host_port_max] maps to
/// `container_port_min + (p - host_port_min)` on `container_ip`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PortTarget {
    /// Network order.
    pub container_ip: u32,
    pub host_port_min: u16,
    pub host_port_max: u16,
    pub container_port_min: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<PortTarget>() == 12);

/// A conntrack key: the packet's tuple as it arrives. Addresses in
/// network order, ports in host order. ICMP echo: requests use
/// (sport = id, dport = 0), replies (sport = 0, dport = id), so a request
/// and its reply map onto each other like ports do.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

/// What to do with a packet that matches a conntrack entry.
pub mod ct_kind {
    /// Container -> world: rewrite the source to (addr, port), out the uplink.
    pub const SNAT: u8 = 1;
    /// World -> container reply: rewrite the destination, to `ifindex`.
    pub const REV_SNAT: u8 = 2;
    /// World -> published port: rewrite the destination, to `ifindex`.
    pub const DNAT: u8 = 3;
    /// Container reply of a published-port flow: rewrite the source, out the uplink.
    pub const REV_DNAT: u8 = 4;
    /// Container -> a host address's published port (hairpin): rewrite
    /// the source to (addr2, port2) and the destination to (addr, port),
    /// deliver to `ifindex`.
    pub const HAIRPIN: u8 = 5;
    /// The target's reply of a hairpin flow: same rewrite, back.
    pub const REV_HAIRPIN: u8 = 6;
    /// Container -> world on a network without masquerade: nothing is
    /// rewritten, the flow is tracked so that its replies may come in.
    pub const ROUTED: u8 = 7;
    /// The world's reply of a ROUTED flow: delivered to the container.
    pub const REV_ROUTED: u8 = 8;
    /// A connection routed to a container's own address (gateway modes
    /// `routed`, `nat-unprotected`; from the world or from another
    /// network's container): delivered to the container untranslated.
    pub const ROUTED_IN: u8 = 9;
    /// The container's side of a ROUTED_IN flow: sent back untranslated.
    pub const REV_ROUTED_IN: u8 = 10;

    /// Kinds whose packets leave by the uplink (a FIB lookup + redirect),
    /// the entries that cache their FIB result (`CtEntry::addr2`).
    #[inline(always)]
    pub const fn leaves_by_uplink(kind: u8) -> bool {
        matches!(kind, SNAT | REV_DNAT | ROUTED | REV_ROUTED_IN)
    }
}

/// Conntrack states, for timeouts.
pub mod ct_state {
    pub const NEW: u8 = 0;
    pub const ESTABLISHED: u8 = 1;
    pub const CLOSING: u8 = 2;
}

/// A conntrack entry. Each flow has two: one per direction, each the
/// other's reverse (see `CtEntry::reverse_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtEntry {
    /// bpf_ktime_get_ns() of the last packet (CLOCK_MONOTONIC).
    pub last_seen: u64,
    /// The address to write (network order).
    pub addr: u32,
    /// The port (or ICMP id) to write, host order.
    pub port: u16,
    /// ct_kind::*.
    pub kind: u8,
    /// ct_state::*.
    pub state: u8,
    /// The container's host veth when the flow was created (informative:
    /// packets are delivered to the endpoint that has `addr` now, so a
    /// restarted container's new veth gets its flows).
    pub ifindex: u32,
    /// The container's address (network order): lets the control plane
    /// remove a container's or a port's entries.
    pub container_ip: u32,
    /// Hairpin kinds: the source to write (network order / host order).
    /// Kinds that leave by the uplink (SNAT, REV_DNAT, ROUTED,
    /// REV_ROUTED_IN; see [`ct_kind::leaves_by_uplink`]): the flow's
    /// cached FIB result, the next hop (network order) and the uplink's
    /// MTU, valid while `fib_stamp` is the current [`fib_stamp`] (0: none;
    /// entries older netds wrote have zeros here).
    pub addr2: u32,
    pub port2: u16,
    /// See `addr2`: when the cached FIB result was looked up.
    pub fib_stamp: u16,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 32);

/// The coarse clock's ns (CLOCK_MONOTONIC) bits below a FIB cache stamp's
/// unit: 2^30 ns, about 1.07 s.
pub const FIB_STAMP_SHIFT: u32 = 30;

/// The FIB cache stamp of `now_ns` (CLOCK_MONOTONIC): its unit of about
/// 1.07 s, never 0 (0 is "nothing cached"). It wraps after about 19.5
/// hours; a cached result is only used by a flow that had a packet in
/// the last unit too (see the eBPF `fib_cached`), so a wrapped stamp
/// never passes for a fresh one.
#[inline(always)]
pub const fn fib_stamp(now_ns: u64) -> u16 {
    let s = (now_ns >> FIB_STAMP_SHIFT) as u16;
    if s == 0 { 1 } else { s }
}

impl CtKey {
    /// A key with its padding zeroed. Built from four words: a `[0; 3]`
    /// padding field is zeroed by a call to `memset` in the eBPF build
    /// (bpf-linker expands memcpy in order, never memset), a byte loop
    /// behind a BPF-to-BPF call on every packet that builds a key.
    #[inline(always)]
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
        let [s0, s1] = sport.to_ne_bytes();
        let [d0, d1] = dport.to_ne_bytes();
        let w = [
            saddr,
            daddr,
            u32::from_ne_bytes([s0, s1, d0, d1]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ];
        // SAFETY: CtKey is repr(C), 16 bytes without padding holes (the
        // size assertion above; bytemuck's Pod derive proves it for the
        // user build), and every bit pattern is a valid CtKey; the words
        // hold its fields at their offsets in native byte order.
        unsafe { core::mem::transmute::<[u32; 4], CtKey>(w) }
    }

    /// The key under which the other direction of a flow is stored, given
    /// this key and its entry's rewrite (addr, port).
    #[inline(always)]
    pub const fn reverse(&self, e: &CtEntry) -> CtKey {
        match e.kind {
            // Both rewritten: the reply comes from (addr, port) to (addr2, port2).
            ct_kind::HAIRPIN | ct_kind::REV_HAIRPIN => {
                CtKey::new(e.addr, e.addr2, e.port, e.port2, self.proto)
            }
            // Source rewritten (or kept, for ROUTED and REV_ROUTED_IN): the
            // reply comes from daddr to (addr, port).
            ct_kind::SNAT | ct_kind::REV_DNAT | ct_kind::ROUTED | ct_kind::REV_ROUTED_IN => {
                CtKey::new(self.daddr, e.addr, self.dport, e.port, self.proto)
            }
            // Destination rewritten: the reply comes from (addr, port).
            _ => CtKey::new(e.addr, self.saddr, e.port, self.sport, self.proto),
        }
    }
}

/// Key of NETD_SOCK: a socket (its cookie) and the container address and
/// port it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockKey {
    pub cookie: u64,
    /// Network order.
    pub ip: u32,
    /// Host order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 16);

/// What the socket asked for: family 4 (ip4) or 6 (ip6), and the port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockOrig {
    pub ip6: [u32; 4],
    pub ip4: u32,
    pub port: u16,
    pub family: u16,
}
const _: () = assert!(core::mem::size_of::<SockOrig>() == 24);

/// Key of NETD_FRAG: a fragmented datagram as its fragments carry it
/// (addresses in network order, the IPv4 id in host order), and which
/// program saw it (`FRAG_FROM_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub dir: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

pub const FRAG_FROM_CONTAINER: u8 = 1;
pub const FRAG_FROM_WORLD: u8 = 2;

/// The L4 ports of a fragmented datagram (host order; ICMP echo as
/// conntrack keys it), learnt from its first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<FragPorts>() == 4);

/// TC verdicts (the classic `TC_ACT_*` values; TCX maps them onto
/// `TCX_NEXT`/`TCX_PASS`/`TCX_DROP`/`TCX_REDIRECT`).
pub mod tc {
    /// Not ours: let the next program / the stack decide (TCX_NEXT).
    pub const ACT_UNSPEC: i32 = -1;
    pub const ACT_OK: i32 = 0;
    pub const ACT_SHOT: i32 = 2;
    pub const ACT_REDIRECT: i32 = 7;
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: repr(C), no padding (proved by the bytemuck::Pod derive),
    // every bit pattern valid.
    unsafe impl aya::Pod for EndpointStats {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for Network {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PortTarget {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockOrig {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CtKey::new` (built from words) is the struct with its fields set
    /// and its padding zero.
    #[test]
    fn ct_key_new_is_the_struct() {
        let k = CtKey::new(0x0102_0304, 0x0a0b_0c0d, 40000, 80, 6);
        assert_eq!(
            k,
            CtKey {
                saddr: 0x0102_0304,
                daddr: 0x0a0b_0c0d,
                sport: 40000,
                dport: 80,
                proto: 6,
                _pad: [0; 3],
            }
        );
    }
}
