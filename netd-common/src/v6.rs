//! IPv6 map types. The IPv6 datapath has maps of its own (the IPv4 ones
//! keep their layouts): endpoints by address and by veth, published ports,
//! conntrack, fragments and the host's addresses. Addresses are
//! `[u32; 4]` in network order (the bytes as on the wire), ports in host
//! order, as in the IPv4 types.

/// Map names (without the version suffix).
pub mod maps {
    /// [`Ip6`](super::Ip6) (the endpoint's IPv6 address) -> [`Endpoint6`](super::Endpoint6).
    pub const ENDPOINTS6: &str = "NETD_EP6";
    /// [`EndpointKey`](crate::EndpointKey) (host veth ifindex) -> [`Endpoint6`](super::Endpoint6).
    pub const ENDPOINTS6_BY_IF: &str = "NETD_EP6_IF";
    /// LPM trie: [`PortKey6`](super::PortKey6) -> [`PortTarget6`](super::PortTarget6).
    pub const PORTS6: &str = "NETD_PORTS6";
    /// LPM trie: (protocol, *container* address, container port) ->
    /// [`PortTarget6`](super::PortTarget6) (routed gateway modes).
    pub const DIRECT6: &str = "NETD_DIRECT6";
    /// [`CtKey6`](super::CtKey6) -> [`CtEntry6`](super::CtEntry6).
    pub const CT6: &str = "NETD_CT6";
    /// LRU [`FragKey6`](super::FragKey6) -> [`FragPorts`](crate::FragPorts).
    pub const FRAGS6: &str = "NETD_FRAG6";
    /// [`Ip6`](super::Ip6) -> u32: the host's own IPv6 addresses.
    pub const LOCAL6: &str = "NETD_LOCAL6";
    /// Array of one [`Config6`](super::Config6).
    pub const CONFIG6: &str = "NETD_CFG6";
    /// Program array: the IPv6 programs the IPv4 ones tail-call.
    pub const JUMP6: &str = "NETD_JMP6";
    /// LRU [`SockKey6`](super::SockKey6) -> [`SockOrig`](crate::SockOrig):
    /// host sockets the cgroup programs sent to a container's IPv6 address.
    pub const SOCKETS6: &str = "NETD_SOCK6";
    /// u32 network id -> [`Network`](crate::Network): the network's IPv6
    /// side (its flags as `gateway_mode_ipv6` makes them).
    pub const NETWORKS6: &str = "NETD_NET6";
    /// Queue of [`CtKey6`](super::CtKey6): recently created IPv6 flows,
    /// the eviction candidates when NETD_CT6 is full.
    pub const CT6_NEW: &str = "NETD_CT6_NEW";
    pub const ALL: [&str; 12] = [
        ENDPOINTS6,
        ENDPOINTS6_BY_IF,
        PORTS6,
        DIRECT6,
        CT6,
        FRAGS6,
        LOCAL6,
        CONFIG6,
        JUMP6,
        SOCKETS6,
        NETWORKS6,
        CT6_NEW,
    ];
}

pub const MAX_FRAGS6: u32 = 8192;
/// Default size of the IPv6 conntrack table (set at load time like the
/// IPv4 one's: `--conntrack-size`).
pub const DEFAULT_CT6_ENTRIES: u32 = crate::DEFAULT_CT_ENTRIES;

/// An IPv6 address, network order (the wire's bytes in four words).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Ip6 {
    pub a: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<Ip6>() == 16);

impl Ip6 {
    pub const UNSPECIFIED: Ip6 = Ip6 { a: [0; 4] };

    /// From the wire's 16 bytes.
    #[inline(always)]
    pub const fn from_bytes(b: [u8; 16]) -> Ip6 {
        Ip6 {
            a: [
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
                u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            ],
        }
    }

    /// The wire's 16 bytes.
    #[inline(always)]
    pub const fn to_bytes(self) -> [u8; 16] {
        let [a, b, c, d] = [
            self.a[0].to_ne_bytes(),
            self.a[1].to_ne_bytes(),
            self.a[2].to_ne_bytes(),
            self.a[3].to_ne_bytes(),
        ];
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    #[inline(always)]
    pub const fn is_unspecified(&self) -> bool {
        self.a[0] == 0 && self.a[1] == 0 && self.a[2] == 0 && self.a[3] == 0
    }

    /// ::1
    #[inline(always)]
    pub const fn is_loopback(&self) -> bool {
        self.a[0] == 0 && self.a[1] == 0 && self.a[2] == 0 && u32::from_be(self.a[3]) == 1
    }

    /// ff00::/8
    #[inline(always)]
    pub const fn is_multicast(&self) -> bool {
        u32::from_be(self.a[0]) >> 24 == 0xff
    }

    /// fe80::/10
    #[inline(always)]
    pub const fn is_link_local(&self) -> bool {
        u32::from_be(self.a[0]) >> 22 == 0x3fa
    }

    /// The EUI-64 link-local address of `mac` (fe80::/64, the MAC with
    /// its universal/local bit flipped and ff:fe in the middle), the one
    /// Linux gives an interface by default (addr_gen_mode eui64).
    #[inline(always)]
    pub const fn link_local_of(mac: [u8; 6]) -> Ip6 {
        Ip6::from_bytes([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            mac[0] ^ 2,
            mac[1],
            mac[2],
            0xff,
            0xfe,
            mac[3],
            mac[4],
            mac[5],
        ])
    }
}

/// A container endpoint's IPv6 side (value of NETD_EP6 and NETD_EP6_IF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Endpoint6 {
    /// Host-side veth (redirect target).
    pub ifindex: u32,
    /// Network id (key of NETD_NET).
    pub net_id: u32,
    pub ip: Ip6,
    pub mac: [u8; 6],
    /// The bridge's MAC: source MAC of frames netd delivers.
    pub gw_mac: [u8; 6],
    /// The endpoint's slot in NETD_EP_STATS (its IPv4 side's: one
    /// endpoint, one set of counters).
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<Endpoint6>() == 40);

/// Host-wide IPv6 settings (NETD_CFG6[0]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config6 {
    /// The uplink's global IPv6 address: the NAT66 masquerade source
    /// (unspecified: the uplink has none, nothing is masqueraded).
    pub uplink_ip: Ip6,
}
const _: () = assert!(core::mem::size_of::<Config6>() == 16);

/// Data of a NETD_PORTS6 / NETD_DIRECT6 LPM key: protocol, address, port
/// (network order), matched by prefix like [`PortKey`](crate::PortKey).
/// Wildcard (`[::]`, and `0.0.0.0` which covers both families) bindings
/// use the unspecified address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PortKey6 {
    pub proto: u8,
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey6>() == 20);

/// Prefix length of a PortKey6 that matches exactly one port.
pub const PORT_KEY6_FULL_PREFIX: u32 = 8 + 128 + 16;

/// Where a published range goes over IPv6 (see [`PortTarget`](crate::PortTarget)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PortTarget6 {
    pub container_ip: Ip6,
    pub host_port_min: u16,
    pub host_port_max: u16,
    pub container_port_min: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<PortTarget6>() == 24);

/// An IPv6 conntrack key (as [`CtKey`](crate::CtKey): the packet's tuple
/// as it arrives; ICMPv6 echo requests (sport = id, dport = 0), replies
/// (0, id)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey6 {
    pub saddr: Ip6,
    pub daddr: Ip6,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey6>() == 40);

/// An IPv6 conntrack entry (kinds and states of [`ct_kind`](crate::ct_kind)
/// and [`ct_state`](crate::ct_state); no hairpin kinds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtEntry6 {
    pub last_seen: u64,
    /// The address to write.
    pub addr: Ip6,
    /// The container's address (lets the control plane remove a
    /// container's or a port's entries).
    pub container_ip: Ip6,
    /// The port (or ICMPv6 echo id) to write, host order.
    pub port: u16,
    pub kind: u8,
    pub state: u8,
    /// The container's host veth when the flow was created (informative).
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<CtEntry6>() == 48);

impl CtKey6 {
    /// The key of the flow's other direction (as [`CtKey::reverse`](crate::CtKey::reverse)).
    pub const fn reverse(&self, e: &CtEntry6) -> CtKey6 {
        use crate::ct_kind;
        match e.kind {
            ct_kind::SNAT | ct_kind::REV_DNAT | ct_kind::ROUTED | ct_kind::REV_ROUTED_IN => {
                CtKey6 {
                    saddr: self.daddr,
                    daddr: e.addr,
                    sport: self.dport,
                    dport: e.port,
                    proto: self.proto,
                    _pad: [0; 3],
                }
            }
            _ => CtKey6 {
                saddr: e.addr,
                daddr: self.saddr,
                sport: e.port,
                dport: self.sport,
                proto: self.proto,
                _pad: [0; 3],
            },
        }
    }
}

/// Key of NETD_FRAG6: a fragmented datagram (the fragment header's id,
/// host order) and the program that saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragKey6 {
    pub saddr: Ip6,
    pub daddr: Ip6,
    pub id: u32,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<FragKey6>() == 40);

/// Key of NETD_SOCK6: a socket (its cookie) and the container's IPv6
/// address and port it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockKey6 {
    pub cookie: u64,
    pub ip: Ip6,
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockKey6>() == 32);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: repr(C), no padding (proved by the bytemuck::Pod derive),
    // every bit pattern valid.
    unsafe impl aya::Pod for Ip6 {}
    unsafe impl aya::Pod for Endpoint6 {}
    unsafe impl aya::Pod for Config6 {}
    unsafe impl aya::Pod for PortKey6 {}
    unsafe impl aya::Pod for PortTarget6 {}
    unsafe impl aya::Pod for CtKey6 {}
    unsafe impl aya::Pod for CtEntry6 {}
    unsafe impl aya::Pod for FragKey6 {}
    unsafe impl aya::Pod for SockKey6 {}
}
