//! The same-network fast path, first thing in `from_container`: a
//! compact run of the full walk's fast path (see `try_from_container`)
//! for the common case only, with the same checks and the same counters,
//! before the full walk's function is called at all. It forwards or
//! declines: anything it is not sure of (an endpoint outside the caches,
//! a source of 0.0.0.0, IPv4 options, a header beyond the linear data,
//! icc=false, which the full walk drops and counts) takes the full walk,
//! which decides as it always did.
use aya_ebpf::{helpers::generated::bpf_redirect_peer, programs::TcContext};
use netd_common::{
    Counter, NET_ICC, ep_cache_slot_if, ep_cache_slot_ip, ep_cached_if, ep_cached_ip,
};

use crate::{
    counters::NETD_COUNTERS,
    maps::{NETD_EP_C, NETD_EP_IF_C, NETD_EP_STATS},
    parse::{ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP},
};

/// Ethernet + a 20-byte IPv4 header.
const HDRS: usize = ETH_HLEN + 20;

#[inline(always)]
fn be16(p: *const u8, off: usize) -> u16 {
    // SAFETY: callers checked `off + 2` is within the packet.
    unsafe { u16::from_be_bytes([*p.add(off), *p.add(off + 1)]) }
}

#[inline(always)]
fn raw32(p: *const u8, off: usize) -> u32 {
    // SAFETY: callers checked `off + 4` is within the packet.
    unsafe { core::ptr::read_unaligned(p.add(off) as *const u32) }
}

/// Forwards a container's TCP/UDP (any protocol but ICMP) packet, not a
/// fragment, to another container of its network straight into that
/// container (`bpf_redirect_peer`), counted as the full walk counts it;
/// `None`: the full walk decides.
#[inline(always)]
pub fn same_network(ctx: &TcContext) -> Option<i32> {
    // SAFETY: reading the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ep = NETD_EP_IF_C.get(ep_cache_slot_if(ifindex))?;
    if !ep_cached_if(ep, ifindex) {
        return None;
    }
    let p = ctx.data();
    if p + HDRS > ctx.data_end() {
        return None;
    }
    let p = p as *const u8;
    // Another container of the sender's subnet first: what the other
    // paths fail on at once.
    let daddr = raw32(p, 30);
    if (daddr ^ ep.ip) & ep.mask != 0 {
        return None;
    }
    // SAFETY: within the checked HDRS bytes.
    let (dst_group, vihl, frag, proto) =
        unsafe { (*p & 1 == 1, *p.add(14), be16(p, 20), *p.add(23)) };
    // SAFETY: as above.
    let src: [u8; 6] = unsafe { core::ptr::read_unaligned(p.add(6) as *const [u8; 6]) };
    if src != ep.mac
        || be16(p, 12) != ETH_P_IP
        || dst_group
        || vihl != 0x45
        || raw32(p, 26) != ep.ip
        || frag & 0x3fff != 0
        || proto == IPPROTO_ICMP
        || u32::from_be(daddr) >> 24 == 127
        || ep.net_flags & NET_ICC == 0
    {
        return None;
    }
    let peer = NETD_EP_C.get(ep_cache_slot_ip(daddr))?;
    if !ep_cached_ip(peer, daddr) || peer.net_id != ep.net_id {
        return None;
    }
    // Forwarded: the counters the full walk bumps on this path, the
    // global ones in one lookup.
    let len = u64::from(ctx.len());
    if let Some(c) = NETD_COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's value; no concurrent writer on this CPU.
        unsafe {
            (*c).v[Counter::FromContainerPackets as usize] += 1;
            (*c).v[Counter::FromContainerBytes as usize] += len;
            (*c).v[Counter::FromContainerIpv4 as usize] += 1;
            (*c).v[Counter::Forwarded as usize] += 1;
            if proto == IPPROTO_TCP {
                (*c).v[Counter::FromContainerTcp as usize] += 1;
            }
        }
    }
    if let Some(s) = NETD_EP_STATS.get_ptr_mut(ep.slot) {
        // SAFETY: this CPU's value of the sender's slot.
        unsafe {
            (*s).rx_packets += 1;
            (*s).rx_bytes += len;
        }
    }
    if let Some(s) = NETD_EP_STATS.get_ptr_mut(peer.slot) {
        // SAFETY: this CPU's value of the peer's slot.
        unsafe {
            (*s).tx_packets += 1;
            (*s).tx_bytes += len;
        }
    }
    // SAFETY: helper call.
    Some(unsafe { bpf_redirect_peer(peer.ifindex, 0) } as i32)
}
