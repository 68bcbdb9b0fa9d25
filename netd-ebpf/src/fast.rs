//! The fast paths, first thing in `from_container` and `from_world`:
//! compact runs of the full walks (see `try_from_container`,
//! `try_from_world`) for their common cases only, with the same checks
//! and the same counters, before the full walk's function is called at
//! all: a forward between two containers of one network, and a packet
//! of an established flow netd tracks to or from the world (masquerade,
//! published ports and the gateway modes' untranslated flows, both
//! ways). Each forwards or declines: anything it is not sure
//! of (an endpoint outside the caches, a source of 0.0.0.0, IPv4 options,
//! a fragment, ICMP, a header beyond the linear data, icc=false, a TCP
//! SYN, FIN or RST, a flow whose entry the packet would change beyond its
//! last_seen, an egress not cached in the flow, a packet too big for it)
//! takes the full walk, which decides as it always did.
//!
//! Why: the full walks parse everything into structures, test every
//! case in turn and branch across kilobytes of code; these paths read
//! the headers where they lie and make the one conntrack lookup. They
//! rewrite with `bpf_skb_store_bytes`, not direct packet writes: a
//! program with direct writes gets a prologue from the verifier that
//! unclones a cloned skb on entry, and every TCP segment a local stack
//! sends is a clone (TCP keeps the original for retransmission): the
//! same-network forward, which writes nothing, then paid a copy of the
//! headers per packet (101 -> 143 ns per packet under TCP_RR here).

use aya_ebpf::{helpers::generated::bpf_redirect_peer, programs::TcContext};
use netd_common::{
    Config, Counter, CtEntry, CtKey, Endpoint, NET_CLUSTER, NET_ICC, NET_INTERNAL, ct_kind,
    ct_state, ep_cache_slot_if, ep_cache_slot_ip, ep_cached_if, ep_cached_ip,
};

use crate::{
    counters, ct,
    maps::{self, NETD_CFG, NETD_CT, NETD_EP_C, NETD_EP_IF_C},
    nat,
    parse::{
        ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4, L4, TCP_FLAG_FIN,
        TCP_FLAG_RST, TCP_FLAG_SYN,
    },
};

/// Ethernet + a 20-byte IPv4 header.
const HDRS: usize = ETH_HLEN + 20;
/// Where the L4 header starts.
const L4_OFF: usize = HDRS;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

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

/// The IPv4 header of a packet whose Ethernet and 20-byte IPv4 headers
/// are at `p` (checked by the caller), as `parse::ipv4` reads it.
#[inline(always)]
fn ipv4(p: *const u8) -> Ipv4 {
    // SAFETY: within the caller's checked HDRS bytes.
    unsafe {
        Ipv4 {
            hdr_len: 20,
            id: be16(p, 18),
            proto: *p.add(23),
            tos: *p.add(15),
            frag: be16(p, 20),
            saddr: raw32(p, 26),
            daddr: raw32(p, 30),
            csum: core::ptr::read_unaligned(p.add(24) as *const u16),
            tot_len: be16(p, 16),
            ttl: *p.add(22),
        }
    }
}

/// The TCP or UDP header after a 20-byte IPv4 header, as `parse::l4`
/// reads it, if it is in the linear data and the packet changes nothing
/// a flow's entry tracks but its last_seen: no SYN, FIN or RST (the
/// full walk's state machine and its SYN handling), no UDP datagram
/// without checksum (the full walk keeps it so).
#[inline(always)]
fn l4(ctx: &TcContext, proto: u8) -> Option<L4> {
    let p = ctx.data();
    if proto == IPPROTO_TCP {
        if p + L4_OFF + TCP_MIN_HLEN > ctx.data_end() {
            return None;
        }
        let p = p as *const u8;
        // SAFETY: within the checked bytes.
        let (flags, doff) = unsafe { (*p.add(L4_OFF + 13), *p.add(L4_OFF + 12)) };
        if flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
            return None;
        }
        Some(L4 {
            sport: be16(p, L4_OFF),
            dport: be16(p, L4_OFF + 2),
            tcp_flags: flags,
            off: L4_OFF,
            csum_off: L4_OFF + 16,
            udp_no_csum: false,
            hdr: true,
            hlen: u32::from(doff >> 4) * 4,
        })
    } else if proto == IPPROTO_UDP {
        if p + L4_OFF + UDP_HLEN > ctx.data_end() {
            return None;
        }
        let p = p as *const u8;
        if be16(p, L4_OFF + 6) == 0 {
            return None;
        }
        Some(L4 {
            sport: be16(p, L4_OFF),
            dport: be16(p, L4_OFF + 2),
            tcp_flags: 0,
            off: L4_OFF,
            csum_off: L4_OFF + 6,
            udp_no_csum: false,
            hdr: true,
            hlen: UDP_HLEN as u32,
        })
    } else {
        None
    }
}

/// The entry of the flow `key` if its kind is one `takes` and this
/// packet (no SYN, FIN or RST: see `l4`) leaves it as it is but for
/// last_seen, which `ct::lookup` would otherwise change: an established
/// flow, or a UDP flow's first direction (which stays NEW). The entry is
/// not refreshed yet (`refresh`): the caller may still decline.
#[inline(always)]
fn settled_flow(key: &CtKey, takes: fn(u8) -> bool) -> Option<(*mut CtEntry, CtEntry)> {
    let p = NETD_CT.get_ptr_mut(key)?;
    // SAFETY: a valid map value pointer, copied out.
    let e = unsafe { *p };
    if !takes(e.kind) {
        return None;
    }
    if e.state != ct_state::ESTABLISHED && !(key.proto == IPPROTO_UDP && !ct::is_reply_kind(e.kind))
    {
        return None;
    }
    Some((p, e))
}

/// Refreshes a flow's last_seen, as `ct::lookup` does (written only when
/// the coarse clock moved).
#[inline(always)]
fn refresh(p: *mut CtEntry, prev_seen: u64, now: u64) {
    if prev_seen != now {
        // SAFETY: a valid map value pointer; concurrent writers store
        // the same kind of value (last writer wins).
        unsafe { (*p).last_seen = now };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    NETD_CFG.get(0)
}

/// The container's packet, first thing in `from_container`: a forward to
/// another container of its network (`same_network`) or a packet of an
/// established flow leaving by the uplink (`tracked_out`); `None`: the
/// full walk decides. The checks every path of the full walk makes
/// first: the endpoint of the veth (its cache), its source MAC and
/// address, IPv4 without options, neither a fragment nor ICMP (those
/// take the full walk: fragments for their datagram's ports, ICMP errors
/// for the flows they quote), no group destination, no loopback one.
#[inline(always)]
pub fn from_container(ctx: &TcContext) -> Option<i32> {
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
    let daddr = raw32(p, 30);
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
    {
        return None;
    }
    // Another container of the sender's subnet, else out.
    if (daddr ^ ep.ip) & ep.mask == 0 {
        same_network(ctx, ep, daddr, proto)
    } else {
        tracked_out(ctx, ep, proto)
    }
}

/// Forwards a container's TCP/UDP (any protocol but ICMP) packet to
/// another container of its network straight into that container
/// (`bpf_redirect_peer`), counted as the full walk counts it.
#[inline(always)]
fn same_network(ctx: &TcContext, ep: &Endpoint, daddr: u32, proto: u8) -> Option<i32> {
    if ep.net_flags & NET_ICC == 0 {
        return None;
    }
    let peer = NETD_EP_C.get(ep_cache_slot_ip(daddr))?;
    if !ep_cached_ip(peer, daddr) || peer.net_id != ep.net_id {
        return None;
    }
    // Forwarded: the counters the full walk bumps on this path, the
    // global ones in one lookup.
    let len = ctx.len();
    counters::from_container_ipv4(u64::from(len), proto == IPPROTO_TCP, Counter::Forwarded);
    counters::endpoint_rx(ep, len);
    counters::endpoint_tx(peer, len);
    // SAFETY: helper call.
    Some(unsafe { bpf_redirect_peer(peer.ifindex, 0) } as i32)
}

/// A packet of an established flow leaving by the uplink: masqueraded
/// (SNAT), the reply of a published port's (REV_DNAT), or untranslated
/// (ROUTED, REV_ROUTED_IN: the gateway modes without masquerade): its
/// source rewritten (the first two), out to the next hop the flow cached
/// (`ct::fib_cached`), counted as the full walk counts it. The full
/// walk's checks on this path: not an internal network, not another
/// node's pod (the cluster range), not the reply of a connection routed
/// in from another network (REV_ROUTED_IN to a local endpoint: delivered
/// by the full walk), the packet fits the egress MTU. The kinds are all
/// the full walk sends out this way: an established flow never pays a
/// second conntrack lookup there.
///
/// Its own BPF function (not inlined): the stack it needs is not added to
/// the full walk's (the verifier's limit is over a chain of calls), and
/// the same-network forward keeps its few instructions.
#[inline(never)]
fn tracked_out(ctx: &TcContext, ep: &Endpoint, proto: u8) -> Option<i32> {
    let flags = ep.net_flags;
    if flags & NET_INTERNAL != 0 {
        return None;
    }
    let cfg = config()?;
    let p = ctx.data();
    if p + HDRS > ctx.data_end() {
        return None;
    }
    let ip = ipv4(p as *const u8);
    if flags & NET_CLUSTER != 0 && cfg.in_cluster(ip.daddr) {
        return None;
    }
    let l4 = l4(ctx, proto)?;
    let key = ct::key(ip.saddr, ip.daddr, proto, &l4);
    let (entry, e) = settled_flow(&key, |k| {
        matches!(
            k,
            ct_kind::SNAT | ct_kind::REV_DNAT | ct_kind::ROUTED | ct_kind::REV_ROUTED_IN
        )
    })?;
    if e.kind == ct_kind::REV_ROUTED_IN && maps::is_endpoint(ip.daddr) {
        return None;
    }
    let hit = ct::Hit {
        e,
        prev_seen: e.last_seen,
        now: ct::now(),
    };
    let (nh, mtu) = ct::fib_cached(&hit)?;
    let uplink = cfg.uplink_ifindex;
    if crate::too_big(ctx, Some(mtu), uplink, &ip, l4.hlen) {
        return None;
    }
    refresh(entry, hit.prev_seen, hit.now);
    if let Err(reason) = nat::translate(ctx, &ip, &l4, true, e.addr, e.port) {
        return Some(counters::drop(ctx, reason));
    }
    let what = match e.kind {
        ct_kind::SNAT => Counter::Snat,
        ct_kind::REV_DNAT => Counter::RevDnat,
        _ => Counter::RoutedOut,
    };
    let len = ctx.len();
    counters::from_container_ipv4(u64::from(len), proto == IPPROTO_TCP, what);
    counters::endpoint_rx(ep, len);
    Some(match crate::redirect_neigh(uplink, nh) {
        Ok(v) => v,
        Err(reason) => counters::drop(ctx, reason),
    })
}

/// A packet from outside of an established flow to a published port
/// (DNAT), of the reply to a masqueraded one (REV_SNAT), or of a flow
/// routed in or out untranslated (ROUTED_IN, REV_ROUTED): its
/// destination rewritten (the first two), straight into the container
/// that has the flow's address now (the endpoint cache), counted as the
/// full walk counts it; the kinds are all the full walk delivers this
/// way. The full walk's checks before its conntrack lookup: IPv4
/// without options, no group destination, no loopback one, not from
/// another node's pod (the cluster range, untranslated), neither a
/// fragment nor ICMP.
#[inline(always)]
pub fn tracked_in(ctx: &TcContext) -> Option<i32> {
    let p = ctx.data();
    if p + HDRS > ctx.data_end() {
        return None;
    }
    let p = p as *const u8;
    // SAFETY: within the checked HDRS bytes.
    let (dst_group, vihl) = unsafe { (*p & 1 == 1, *p.add(14)) };
    if be16(p, 12) != ETH_P_IP || dst_group || vihl != 0x45 {
        return None;
    }
    let ip = ipv4(p);
    if ip.is_fragment()
        || ip.proto == IPPROTO_ICMP
        || u32::from_be(ip.daddr) >> 24 == 127
        || config()?.in_cluster(ip.saddr)
    {
        return None;
    }
    let l4 = l4(ctx, ip.proto)?;
    let key = ct::key(ip.saddr, ip.daddr, ip.proto, &l4);
    let (entry, e) = settled_flow(&key, |k| {
        matches!(
            k,
            ct_kind::DNAT | ct_kind::REV_SNAT | ct_kind::ROUTED_IN | ct_kind::REV_ROUTED
        )
    })?;
    let ep = NETD_EP_C.get(ep_cache_slot_ip(e.addr))?;
    if !ep_cached_ip(ep, e.addr) {
        return None;
    }
    refresh(entry, e.last_seen, ct::now());
    if let Err(reason) = nat::translate_into(ctx, &ip, &l4, e.addr, e.port, &ep.gw_mac, &ep.mac) {
        return Some(counters::drop(ctx, reason));
    }
    let what = match e.kind {
        ct_kind::DNAT => Counter::Dnat,
        ct_kind::REV_SNAT => Counter::RevSnat,
        _ => Counter::RoutedIn,
    };
    let len = ctx.len();
    counters::from_world(u64::from(len), what);
    counters::endpoint_tx(ep, len);
    // SAFETY: helper call.
    Some(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32)
}
