//! Types shared by the eBPF programs (`netd-ebpf`) and userspace (`netd`).
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]`, has a
//! compile-time size assertion and no padding holes (with the `user`
//! feature, `bytemuck::Pod` derives prove the latter at compile time: they
//! refuse a struct with padding). Enums are never stored inside map values;
//! they are indexes (`as u32`).
#![no_std]

/// Suffix of every map name. Bump it whenever the layout of any map key or
/// value changes: a new netd then creates fresh maps next to (and removes)
/// the pinned ones of the old layout instead of misreading them.
pub const MAP_VERSION: &str = "v1";

/// Map names (without the version suffix; userspace pins them as
/// `<name>_<MAP_VERSION>`).
pub mod maps {
    pub const COUNTERS: &str = "NETD_COUNTERS";
    pub const DROPS: &str = "NETD_DROPS";
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
}

impl DropReason {
    /// Number of reasons: the size of the drops array.
    pub const COUNT: u32 = 9;
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
        }
    }
}

/// Global datapath counters: indexes into the per-CPU `NETD_COUNTERS`
/// array. Same ABI rule as [`DropReason`]: append only.
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
}

impl Counter {
    pub const COUNT: u32 = 6;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::FromContainerPackets,
        Counter::FromContainerBytes,
        Counter::FromContainerIpv4,
        Counter::FromContainerTcp,
        Counter::FromWorldPackets,
        Counter::FromWorldBytes,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::FromContainerPackets => "from_container.packets",
            Counter::FromContainerBytes => "from_container.bytes",
            Counter::FromContainerIpv4 => "from_container.ipv4",
            Counter::FromContainerTcp => "from_container.tcp",
            Counter::FromWorldPackets => "from_world.packets",
            Counter::FromWorldBytes => "from_world.bytes",
        }
    }
}

/// Per-endpoint traffic counters (value of a per-CPU hash keyed by the
/// host-side veth's ifindex).
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EndpointKey {
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 4);

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
    unsafe impl aya::Pod for EndpointKey {}
}
