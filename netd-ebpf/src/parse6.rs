//! IPv6 parsing: the fixed header, a bounded walk over the extension
//! headers netd knows (hop-by-hop, routing, destination options,
//! fragment), the upper-layer header (TCP, UDP, ICMPv6 echo as conntrack
//! keys it). Values are copied out with bpf_skb_load_bytes (headers in
//! paged data included); offsets are bounded by the walk.
use aya_ebpf::programs::TcContext;
use netd_common::{DropReason, v6::Ip6};

use crate::parse::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, L4};

pub const IPV6_HLEN: usize = 40;
pub const IP6_SADDR_OFF: usize = ETH_HLEN + 8;
pub const IP6_DADDR_OFF: usize = ETH_HLEN + 24;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PKT_TOOBIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;
pub const MLD_REPORT: u8 = 131;
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
pub const ND_REDIRECT: u8 = 137;
pub const MLD2_REPORT: u8 = 143;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked at most (hop-by-hop, destination options,
/// routing, fragment, destination options: a legal packet has no more).
const MAX_EXT: usize = 5;

pub struct Ipv6 {
    pub saddr: Ip6,
    pub daddr: Ip6,
    /// Upper-layer protocol (after the extension headers).
    pub proto: u8,
    /// Offset of the upper-layer header.
    pub l4_off: usize,
    /// Traffic class + flow label word, network order (for the FIB).
    pub flowinfo: u32,
    /// Fragment header: offset (bytes) and whether more follow; the id.
    pub frag_off: u16,
    pub frag_more: bool,
    pub frag_id: u32,
    pub has_frag: bool,
}

impl Ipv6 {
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.has_frag && (self.frag_off != 0 || self.frag_more)
    }

    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.has_frag && self.frag_off != 0
    }

    /// IPv6 header + extension headers.
    #[inline(always)]
    pub fn hdr_len(&self) -> u32 {
        (self.l4_off - ETH_HLEN) as u32
    }
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, DropReason> {
    ctx.load::<T>(off).map_err(|_| DropReason::Malformed)
}

/// The destination address of an IPv6 frame, for a frame that does not
/// parse (so that nothing unparsable slips to a container).
#[inline(always)]
pub fn daddr(ctx: &TcContext) -> Option<Ip6> {
    ctx.load::<Ip6>(IP6_DADDR_OFF).ok()
}

/// The IPv6 header and its extension headers (a BPF function of its
/// own: the walk's temporaries stay off the callers' stacks).
#[inline(always)]
pub fn ipv6(ctx: &TcContext) -> Result<Ipv6, DropReason> {
    let mut ip = Ipv6 {
        saddr: Ip6::UNSPECIFIED,
        daddr: Ip6::UNSPECIFIED,
        proto: 0,
        l4_off: 0,
        flowinfo: 0,
        frag_off: 0,
        frag_more: false,
        frag_id: 0,
        has_frag: false,
    };
    ipv6_into(ctx, &mut ip)?;
    Ok(ip)
}

#[inline(never)]
fn ipv6_into(ctx: &TcContext, out: &mut Ipv6) -> Result<(), DropReason> {
    *out = ipv6_walk(ctx)?;
    Ok(())
}

#[inline(always)]
fn ipv6_walk(ctx: &TcContext) -> Result<Ipv6, DropReason> {
    let w0: u32 = load(ctx, ETH_HLEN)?;
    if u32::from_be(w0) >> 28 != 6 {
        return Err(DropReason::Malformed);
    }
    let nh0: u8 = load(ctx, ETH_HLEN + 6)?;
    let saddr: Ip6 = load(ctx, IP6_SADDR_OFF)?;
    let daddr: Ip6 = load(ctx, IP6_DADDR_OFF)?;
    let mut ip = Ipv6 {
        saddr,
        daddr,
        proto: nh0,
        l4_off: ETH_HLEN + IPV6_HLEN,
        flowinfo: w0 & 0xffff_ff0fu32.to_be(),
        frag_off: 0,
        frag_more: false,
        frag_id: 0,
        has_frag: false,
    };
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut nh = nh0;
    for _ in 0..MAX_EXT {
        match nh {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let h: [u8; 2] = load(ctx, off)?;
                nh = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let f: [u8; 8] = load(ctx, off)?;
                nh = f[0];
                let field = u16::from_be_bytes([f[2], f[3]]);
                ip.frag_off = field & 0xfff8;
                ip.frag_more = field & 1 != 0;
                ip.frag_id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                ip.has_frag = true;
                off += 8;
            }
            // ESP, AH, mobility, HIP, shim6, experimental: not walked.
            50 | 51 | 135 | 139 | 140 | 253 | 254 => return Err(DropReason::Ipv6ExtHeader),
            _ => {
                ip.proto = nh;
                ip.l4_off = off;
                return Ok(ip);
            }
        }
    }
    Err(DropReason::Ipv6ExtHeader)
}

/// The ICMPv6 type of a packet that carries its ICMPv6 header.
#[inline(always)]
pub fn icmp_type(ctx: &TcContext, ip: &Ipv6) -> Result<Option<u8>, DropReason> {
    if ip.proto != IPPROTO_ICMPV6 || ip.is_later_fragment() {
        return Ok(None);
    }
    load::<u8>(ctx, ip.l4_off).map(Some)
}

/// The target address of a neighbour solicitation / advertisement.
#[inline(always)]
pub fn nd_target(ctx: &TcContext, ip: &Ipv6) -> Result<Ip6, DropReason> {
    load(ctx, ip.l4_off + 8)
}

/// TCP, UDP or ICMPv6 echo at `ip.l4_off` (`Ok(None)` for anything else).
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv6) -> Result<Option<L4>, DropReason> {
    let off = ip.l4_off;
    match ip.proto {
        IPPROTO_TCP => {
            let h: [u8; 20] = load(ctx, off)?;
            Ok(Some(L4 {
                sport: u16::from_be_bytes([h[0], h[1]]),
                dport: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: h[13],
                off,
                csum_off: off + 16,
                udp_no_csum: false,
                hdr: true,
                hlen: u32::from(h[12] >> 4) * 4,
            }))
        }
        IPPROTO_UDP => {
            let h: [u8; 8] = load(ctx, off)?;
            Ok(Some(L4 {
                sport: u16::from_be_bytes([h[0], h[1]]),
                dport: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: 0,
                off,
                csum_off: off + 6,
                udp_no_csum: h[6] == 0 && h[7] == 0,
                hdr: true,
                hlen: 8,
            }))
        }
        IPPROTO_ICMPV6 => {
            let h: [u8; 8] = load(ctx, off)?;
            let id = u16::from_be_bytes([h[4], h[5]]);
            let (sport, dport) = match h[0] {
                ICMP6_ECHO_REQUEST => (id, 0),
                ICMP6_ECHO_REPLY => (0, id),
                _ => return Ok(None),
            };
            Ok(Some(L4 {
                sport,
                dport,
                tcp_flags: h[0],
                off,
                csum_off: off + 2,
                udp_no_csum: false,
                hdr: true,
                hlen: 0,
            }))
        }
        _ => Ok(None),
    }
}
