//! The IPv6 walks. `from_container` and `from_world` dispatch IPv6 frames
//! here (separate BPF functions, so the IPv4 walks' verification is not
//! multiplied by these).
//!
//! from_container (a container's IPv6): fails closed (an endpoint without
//! IPv6, or of a network without it: `not-ipv4`); anti-spoofing: the
//! source MAC, the source address (the endpoint's own address or the
//! EUI-64 link-local of its MAC; `::` only for DAD and MLD/RS), Neighbour
//! Discovery (an advertisement's target, a DAD probe's target, must be
//! the sender's own; router advertisements and redirects are dropped:
//! containers are not routers), every drop counted; NDP, RS and MLD to
//! the bridge; link-local unicast to the bridge (another container's
//! only where icc allows); another container of the network with
//! bpf_redirect_peer; isolation, icc, internal networks; tracked flows
//! (NAT66 out, published-port replies); new flows to the world masqueraded
//! to the uplink's IPv6 address (or tracked untranslated where the
//! network's gateway mode does not masquerade).
//! from_world: replies and published ports (DNAT to the container's
//! IPv6 address, the client's address kept), gateway modes routing to a
//! container's address, ICMPv6 errors about tracked flows translated
//! back; nothing else reaches a container's address.
use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, bpf_fib_lookup as FibParams, bpf_sock_tuple,
    },
    helpers::generated::{
        bpf_check_mtu, bpf_fib_lookup, bpf_redirect_neigh, bpf_redirect_peer, bpf_sk_lookup_udp,
        bpf_sk_release,
    },
    macros::classifier,
    programs::TcContext,
};
use netd_common::{
    Counter, DropReason, EndpointKey, FRAG_FROM_CONTAINER, FRAG_FROM_WORLD, FragPorts,
    NET_DIRECT_ALL, NET_DIRECT_ICMP, NET_DIRECT_PORTS, NET_ICC, NET_INTERNAL, NET_IPV6,
    NET_MASQUERADE, Network, ct_kind, ct_state, tc,
    v6::{CtEntry6, Endpoint6, FragKey6, Ip6, PORT_KEY6_FULL_PREFIX, PortKey6, PortTarget6},
};

use crate::{
    config, counters, ct6,
    ct6::Created6,
    maps::{NETD_EP_IF, NETD_EP_STATS},
    maps6::{
        NETD_CFG6, NETD_DIRECT6, NETD_EP6, NETD_EP6_IF, NETD_FIB6, NETD_FLOW6, NETD_FRAG6,
        NETD_JMP6, NETD_LOCAL6, NETD_NET6, NETD_PORTS6, PortLpmKey6,
    },
    nat, nat6,
    parse::{self, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, L4},
    parse6::{
        self, ICMP6_DEST_UNREACH, ICMP6_ECHO_REQUEST, ICMP6_PKT_TOOBIG, ICMP6_TIME_EXCEEDED,
        IP6_DADDR_OFF, IP6_SADDR_OFF, IPPROTO_ICMPV6, Ipv6, MLD_REPORT, MLD2_REPORT,
        ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_REDIRECT, ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT,
    },
};

const AF_INET6: u8 = 10;
const NAT_PROBES: u32 = 32;

/// Slots of NETD_JMP6 (userspace fills them at load).
pub const JMP_FROM_CONTAINER6: u32 = 0;
pub const JMP_FROM_WORLD6: u32 = 1;
pub const JMP_EGRESS6: u32 = 2;
pub const JMP_CONTAINER_ICMP6: u32 = 3;
pub const JMP_CONTAINER_FLOW6: u32 = 4;
pub const JMP_WORLD_ICMP6: u32 = 5;
pub const JMP_WORLD_DNAT6: u32 = 6;
pub const JMP_WORLD_ADDRESS6: u32 = 7;
pub const JMP_NEW_FLOW6: u32 = 8;
pub const JMP_EVICT6: u32 = 9;

/// What a walk returns to its program's main function to have it
/// tail-call the next program (tail calls are allowed there only).
const TO_EGRESS: i32 = -1000;
const TO_ICMP_ERROR: i32 = -1001;
const TO_FLOW: i32 = -1002;
const TO_DNAT: i32 = -1003;
const TO_ADDRESS: i32 = -1004;
const TO_NEW_FLOW: i32 = -1005;
const TO_EVICT: i32 = -1006;

/// An IPv6 frame (EtherType 0x86dd): `skb->protocol`, which
/// eth_type_trans set from the same two bytes (a context read, where a
/// bpf_skb_load_bytes of the EtherType cost every packet a helper call).
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    // SAFETY: reading the context.
    let proto = unsafe { (*ctx.skb.skb).protocol };
    u16::from_be(proto as u16) == crate::parse::ETH_P_IPV6
}

/// Tail-calls slot `slot` (a fresh BPF stack); returns only if the slot
/// is empty, and then the packet is dropped (fail closed).
#[inline(always)]
pub fn jump(ctx: &TcContext, slot: u32) -> i32 {
    // SAFETY: a tail call into one of netd's own programs.
    unsafe { NETD_JMP6.tail_call(ctx, slot) };
    counters::drop(ctx, DropReason::Unsupported)
}

/// A container's IPv6 frame (tail-called by from_container).
#[classifier]
pub fn from_container6(ctx: TcContext) -> i32 {
    match try_from_container(&ctx) {
        Ok(TO_EGRESS) => jump(&ctx, JMP_EGRESS6),
        Ok(TO_ICMP_ERROR) => jump(&ctx, JMP_CONTAINER_ICMP6),
        Ok(TO_FLOW) => jump(&ctx, JMP_CONTAINER_FLOW6),
        Ok(v) => v,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// A container's IPv6 packet the policy let through (tail-called by
/// from_container6).
#[classifier]
pub fn container_flow6(ctx: TcContext) -> i32 {
    match try_container_flow(&ctx) {
        Ok(TO_EGRESS) => jump(&ctx, JMP_EGRESS6),
        Ok(v) => v,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// An ICMPv6 error from a container (tail-called by from_container6
/// once the policy let it through): translated back if it is about a
/// flow netd translated on its way in, else forwarded like any packet.
#[classifier]
pub fn container_icmp6(ctx: TcContext) -> i32 {
    match try_container_icmp(&ctx) {
        Ok(TO_EGRESS) => jump(&ctx, JMP_EGRESS6),
        Ok(v) => v,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// A new flow from a container to the world (tail-called by
/// from_container6 once the policy let it through): FIB lookup,
/// conntrack, NAT66.
#[classifier]
pub fn egress6(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(TO_NEW_FLOW) => jump(&ctx, JMP_NEW_FLOW6),
        Ok(v) => v,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// A new flow to the world (tail-called by egress6): conntrack, NAT66.
#[classifier]
pub fn new_flow6(ctx: TcContext) -> i32 {
    match try_new_flow(&ctx) {
        Ok(v) => v,
        Err(DropReason::CtTableFull) => evict_then(&ctx, JMP_NEW_FLOW6),
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// The IPv6 conntrack table is full: evicts the oldest unconfirmed flow
/// and runs the program whose new flow did not fit again (world_dnat6
/// for a packet from the uplink, new_flow6 for one from a container);
/// nothing to evict: `ct-table-full`.
#[classifier]
pub fn evict6(ctx: TcContext) -> i32 {
    if !ct6::evict_one() {
        return counters::drop(&ctx, DropReason::CtTableFull);
    }
    // SAFETY: reading the context (evict_then wrote the slot).
    let back = unsafe { (*ctx.skb.skb).cb[0] };
    if back == JMP_WORLD_DNAT6 || back == JMP_NEW_FLOW6 {
        jump(&ctx, back)
    } else {
        counters::drop(&ctx, DropReason::CtTableFull)
    }
}

/// Tail-calls evict6, which runs program `back` again after making room
/// (the slot travels in the skb's control block, which tail calls keep).
#[inline(always)]
fn evict_then(ctx: &TcContext, back: u32) -> i32 {
    // SAFETY: TC programs may write the control block.
    unsafe { (*ctx.skb.skb).cb[0] = back };
    jump(ctx, JMP_EVICT6)
}

/// An IPv6 frame from the world (tail-called by from_world).
#[classifier]
pub fn from_world6(ctx: TcContext) -> i32 {
    match try_from_world(&ctx) {
        Ok(TO_ICMP_ERROR) => jump(&ctx, JMP_WORLD_ICMP6),
        Ok(TO_DNAT) => jump(&ctx, JMP_WORLD_DNAT6),
        Ok(TO_ADDRESS) => jump(&ctx, JMP_WORLD_ADDRESS6),
        Ok(v) => v,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// An ICMPv6 error from the world (tail-called by from_world6).
#[classifier]
pub fn world_icmp6(ctx: TcContext) -> i32 {
    match try_world_icmp(&ctx) {
        Ok(v) => v,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// A new connection to a published port (tail-called by from_world6).
#[classifier]
pub fn world_dnat6(ctx: TcContext) -> i32 {
    match try_world_published(&ctx) {
        Ok(TO_EVICT) | Err(DropReason::CtTableFull) => evict_then(&ctx, JMP_WORLD_DNAT6),
        Ok(v) => v,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// To a container's address without a flow: what its gateway mode
/// routes in, else `not-published` (tail-called by from_world6).
#[classifier]
pub fn world_address6(ctx: TcContext) -> i32 {
    match try_world_address(&ctx) {
        Ok(v) => v,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

/// Out of `ifindex` (bpf_redirect_neigh; the kernel resolves the next
/// hop and its neighbour).
#[inline(always)]
fn redirect_neigh6(ifindex: u32) -> Result<i32, DropReason> {
    // SAFETY: helper call; NULL params = the kernel picks the next hop.
    Ok(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// Traffic the container sent (its endpoint's counters).
#[inline(always)]
fn endpoint_rx(ep: &Endpoint6, len: u32) {
    if let Some(s) = NETD_EP_STATS.get_ptr_mut(ep.slot) {
        // SAFETY: this CPU's value of the endpoint's slot.
        unsafe {
            (*s).rx_packets += 1;
            (*s).rx_bytes += u64::from(len);
        }
    }
}

/// Traffic delivered into the container.
#[inline(always)]
fn endpoint_tx(ep: &Endpoint6, len: u32) {
    if let Some(s) = NETD_EP_STATS.get_ptr_mut(ep.slot) {
        // SAFETY: as above.
        unsafe {
            (*s).tx_packets += 1;
            (*s).tx_bytes += u64::from(len);
        }
    }
}

/// A network's IPv6 side (NETD_NET6): its flags as its IPv6 gateway
/// mode makes them.
#[inline(always)]
fn network6(id: u32) -> Option<Network> {
    // SAFETY: map value copied out.
    unsafe { NETD_NET6.get(id) }.copied()
}

#[inline(always)]
fn ep6(addr: &Ip6) -> Option<Endpoint6> {
    // SAFETY: map value copied out.
    unsafe { NETD_EP6.get(addr) }.copied()
}

#[inline(always)]
fn uplink_ip6() -> Ip6 {
    NETD_CFG6
        .get(0)
        .map(|c| c.uplink_ip)
        .unwrap_or(Ip6::UNSPECIFIED)
}

/// Whether `addr` is the endpoint's own: its address or its EUI-64
/// link-local.
#[inline(always)]
fn own(ep: &Endpoint6, addr: &Ip6) -> bool {
    *addr == ep.ip || *addr == Ip6::link_local_of(ep.mac)
}

fn try_from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    counters::add(Counter::FromContainerPackets, 1);
    counters::add(Counter::FromContainerBytes, u64::from(ctx.len()));
    counters::add(Counter::FromContainerIpv6, 1);
    // SAFETY: reading the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = EndpointKey { ifindex };
    // SAFETY: map value copied out.
    let Some(ep) = (unsafe { NETD_EP6_IF.get(key) }).copied() else {
        // SAFETY: presence check only.
        if unsafe { NETD_EP_IF.get(key) }.is_some() {
            // An endpoint of an IPv4-only network.
            return Err(DropReason::NotIpv4);
        }
        return Err(DropReason::NoEndpoint);
    };
    endpoint_rx(&ep, ctx.len());
    let eth = parse::eth(ctx)?;
    if eth.src != ep.mac {
        return Err(DropReason::SpoofedSource);
    }
    // The network's IPv6 side (its own flags: `gateway_mode_ipv6`).
    let net = network6(ep.net_id).ok_or(DropReason::NotIpv4)?;
    if net.flags & NET_IPV6 == 0 {
        return Err(DropReason::NotIpv4);
    }
    let ip = parse6::ipv6(ctx)?;
    let icmp_type = parse6::icmp_type(ctx, &ip)?;
    // The source: its own address, its link-local, or (DAD, MLD, RS
    // before it has an address) the unspecified one.
    if ip.saddr.is_unspecified() {
        if !matches!(
            icmp_type,
            Some(ND_NEIGHBOR_SOLICIT | ND_ROUTER_SOLICIT | MLD_REPORT | MLD2_REPORT)
        ) {
            return Err(DropReason::SpoofedSource);
        }
    } else if !own(&ep, &ip.saddr) {
        return Err(DropReason::SpoofedSource);
    }
    // Neighbour Discovery: what it claims must be its own.
    match icmp_type {
        Some(ND_ROUTER_ADVERT | ND_REDIRECT) => return Err(DropReason::SpoofedNd),
        Some(ND_NEIGHBOR_ADVERT) => {
            if !own(&ep, &parse6::nd_target(ctx, &ip)?) {
                return Err(DropReason::SpoofedNd);
            }
        }
        // A DAD probe claims its target.
        Some(ND_NEIGHBOR_SOLICIT) if ip.saddr.is_unspecified() => {
            if !own(&ep, &parse6::nd_target(ctx, &ip)?) {
                return Err(DropReason::SpoofedNd);
            }
        }
        _ => {}
    }
    if eth.dst_group || ip.daddr.is_multicast() {
        return Ok(tc::ACT_UNSPEC);
    }
    if ip.daddr.is_loopback() || ip.daddr.is_unspecified() {
        return Err(DropReason::Martian);
    }
    if ip.daddr.is_link_local() {
        // The bridge (the host) always; another container on the link
        // only where icc allows (the bridge delivers it).
        let dst: [u8; 6] = ctx.load(0).map_err(|_| DropReason::Malformed)?;
        if net.flags & NET_ICC != 0 || dst == ep.gw_mac {
            return Ok(tc::ACT_UNSPEC);
        }
        return Err(DropReason::IccDenied);
    }
    // ICMPv6 errors: their own program.
    if matches!(
        icmp_type,
        Some(ICMP6_DEST_UNREACH | ICMP6_PKT_TOOBIG | ICMP6_TIME_EXCEEDED)
    ) {
        return Ok(TO_ICMP_ERROR);
    }
    // The same-network fast path (IPv4's, for IPv6): TCP or UDP, not a
    // fragment (a later one needs its first one remembered), to another
    // endpoint of this network: icc, then straight into the peer, without
    // the tail call to container_flow6 and its conntrack lookup (no flow
    // netd tracks has a container address as its destination from a
    // container). The checks above (endpoint, MAC, source, ND) are the
    // full walk's; a peer of another network takes the full walk.
    if (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP)
        && !ip.is_fragment()
        && let Some(peer) = ep6(&ip.daddr)
        && peer.net_id == ep.net_id
    {
        if net.flags & NET_ICC == 0 {
            return Err(DropReason::IccDenied);
        }
        // The whole L4 header is there (as the full walk's parse checks).
        let hlen = if ip.proto == IPPROTO_TCP { 20 } else { 8 };
        if ctx.len() < ip.l4_off as u32 + hlen {
            return Err(DropReason::Malformed);
        }
        counters::add(Counter::Forwarded, 1);
        endpoint_tx(&peer, ctx.len());
        // SAFETY: helper call.
        return Ok(unsafe { bpf_redirect_peer(peer.ifindex, 0) } as i32);
    }
    Ok(TO_FLOW)
}

/// The policy let the packet through: tracked flows, another container,
/// or the world (each program its own stack).
fn try_container_flow(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map value copied out.
    let ep = (unsafe { NETD_EP6_IF.get(EndpointKey { ifindex }) })
        .copied()
        .ok_or(DropReason::NoEndpoint)?;
    let net = network6(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    let ip = parse6::ipv6(ctx)?;
    let l4 = container_l4(ctx, &ip)?;
    if let Some(l4) = &l4 {
        if !l4.hdr {
            counters::add(Counter::Fragments, 1);
        }
        if let Some(e) = ct6::lookup(&ct6::key(ip.saddr, ip.daddr, ip.proto, l4), l4)
            && matches!(
                e.kind,
                ct_kind::SNAT | ct_kind::REV_DNAT | ct_kind::ROUTED | ct_kind::REV_ROUTED_IN
            )
        {
            if net.flags & NET_INTERNAL != 0 {
                return Err(DropReason::InternalNetwork);
            }
            return Ok(out_to_world_fn(ctx, &ip, l4, &e));
        }
    }
    peer_or_egress(ctx, &ip, &ep, net.flags)
}

/// Another container of the network (icc, isolation), or (TO_EGRESS)
/// the FIB decides in egress6.
#[inline(always)]
fn peer_or_egress(
    ctx: &TcContext,
    ip: &Ipv6,
    ep: &Endpoint6,
    net_flags: u32,
) -> Result<i32, DropReason> {
    if let Some(peer) = ep6(&ip.daddr) {
        if peer.net_id != ep.net_id {
            return Err(DropReason::NetworkIsolation);
        }
        if net_flags & NET_ICC == 0 {
            return Err(DropReason::IccDenied);
        }
        counters::add(Counter::Forwarded, 1);
        endpoint_tx(&peer, ctx.len());
        // SAFETY: helper call.
        return Ok(unsafe { bpf_redirect_peer(peer.ifindex, 0) } as i32);
    }
    // The host itself, the world, or another network.
    Ok(TO_EGRESS)
}

fn try_container_icmp(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map value copied out.
    let ep = (unsafe { NETD_EP6_IF.get(EndpointKey { ifindex }) })
        .copied()
        .ok_or(DropReason::NoEndpoint)?;
    let net = network6(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    let ip = parse6::ipv6(ctx)?;
    let v = container_icmp_error(ctx, &ip, &ep, net.flags);
    if v != CONTINUE {
        return Ok(v);
    }
    peer_or_egress(ctx, &ip, &ep, net.flags)
}

/// Returned by a helper function when the caller goes on.
const CONTINUE: i32 = i32::MIN;

/// The L4 part of a container's packet (a later fragment's from its
/// first fragment).
#[inline(always)]
fn container_l4(ctx: &TcContext, ip: &Ipv6) -> Result<Option<L4>, DropReason> {
    if ip.is_later_fragment() {
        return match frag_lookup(FRAG_FROM_CONTAINER, ip) {
            Some(l4) => Ok(Some(l4)),
            None if ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP => {
                Err(DropReason::FragmentUnknown)
            }
            None => Ok(None),
        };
    }
    let l4 = parse6::l4(ctx, ip)?;
    if ip.is_fragment()
        && let Some(l4) = &l4
    {
        frag_remember(FRAG_FROM_CONTAINER, ip, l4);
    }
    Ok(l4)
}

/// An ICMPv6 error a container sends about a flow netd translated on its
/// way in: translated back and sent out (a BPF function of its own: its
/// stack is not the caller's). `CONTINUE`: not such an error.
#[inline(never)]
fn container_icmp_error(ctx: &TcContext, ip: &Ipv6, ep: &Endpoint6, net_flags: u32) -> i32 {
    match try_container_icmp_error(ctx, ip, ep, net_flags) {
        Ok(v) => v,
        Err(reason) => counters::drop(ctx, reason),
    }
}

#[inline(always)]
fn try_container_icmp_error(
    ctx: &TcContext,
    ip: &Ipv6,
    ep: &Endpoint6,
    net_flags: u32,
) -> Result<i32, DropReason> {
    let Some(inner) = nat6::parse_error(ctx, ip)? else {
        return Ok(CONTINUE);
    };
    let Some(e) = ct6::peek(&inner.reply_key()) else {
        return Ok(CONTINUE);
    };
    if !nat6::from_container_kind(e.kind) {
        return Ok(CONTINUE);
    }
    if e.container_ip != ep.ip {
        return Err(DropReason::SpoofedSource);
    }
    if net_flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    let out = egress(ctx, ip, &e.addr, 0)?;
    if out == Egress::Kernel {
        return Ok(tc::ACT_UNSPEC);
    }
    inner.untranslate_to_world(ctx, ip, &e)?;
    counters::add(Counter::IcmpErrors, 1);
    out.verdict()
}

fn try_egress(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map value copied out.
    let ep = (unsafe { NETD_EP6_IF.get(EndpointKey { ifindex }) })
        .copied()
        .ok_or(DropReason::NoEndpoint)?;
    let net = network6(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    let ip = parse6::ipv6(ctx)?;
    let l4 = container_l4(ctx, &ip)?;
    let cfg = config().ok_or(DropReason::Unsupported)?;
    let fib = fib_params(&ip, &ip.saddr, ifindex)?;
    let rc = fib_lookup(ctx, fib);
    match rc {
        BPF_FIB_LKUP_RET_NOT_FWDED
        | BPF_FIB_LKUP_RET_BLACKHOLE
        | BPF_FIB_LKUP_RET_UNREACHABLE
        | BPF_FIB_LKUP_RET_PROHIBIT => return Ok(tc::ACT_UNSPEC),
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED => {}
        _ => return Err(DropReason::FibLookupFailed),
    }
    if fib.ifindex != cfg.uplink_ifindex {
        return Err(DropReason::NetworkIsolation);
    }
    if net.flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    if too_big(ctx, rc, fib, &ip, l4.map_or(0, |l| l.hlen)) {
        // The kernel's forwarding answers "packet too big" (untranslated:
        // the container gets it).
        counters::add(Counter::FragNeeded, 1);
        return Ok(tc::ACT_UNSPEC);
    }
    let masquerade = net.flags & NET_MASQUERADE != 0;
    let Some(l4) = l4 else {
        if !masquerade {
            return redirect_neigh6(cfg.uplink_ifindex);
        }
        return Err(DropReason::Unsupported);
    };
    if !l4.hdr {
        return Err(DropReason::FragmentUnknown);
    }
    Ok(TO_NEW_FLOW)
}

/// A new flow to the world, its checks done by egress6: conntrack and
/// NAT66, then out.
fn try_new_flow(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map value copied out.
    let ep = (unsafe { NETD_EP6_IF.get(EndpointKey { ifindex }) })
        .copied()
        .ok_or(DropReason::NoEndpoint)?;
    let net = network6(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    let ip = parse6::ipv6(ctx)?;
    let l4 = container_l4(ctx, &ip)?.ok_or(DropReason::Unsupported)?;
    new_flow(&ip, &l4, &ep, net.flags & NET_MASQUERADE != 0)?;
    // The forward entry, left in the scratch value by new_flow.
    let f = NETD_FLOW6.get_ptr(0).ok_or(DropReason::Unsupported)?;
    // SAFETY: this CPU's scratch value, written just now.
    Ok(out_to_world_fn(ctx, &ip, &l4, unsafe { &(*f).fwd }))
}

/// A new flow's entries (a BPF function of its own); the forward one is
/// left in NETD_FLOW6's `fwd`.
#[inline(never)]
fn new_flow(ip: &Ipv6, l4: &L4, ep: &Endpoint6, masquerade: bool) -> Result<(), DropReason> {
    snat_new_flow(ip, l4, ep, masquerade)
}

#[derive(PartialEq, Eq)]
enum Egress {
    Redirect(u32),
    Local,
    Kernel,
}

impl Egress {
    #[inline(always)]
    fn verdict(self) -> Result<i32, DropReason> {
        match self {
            Egress::Redirect(i) => redirect_neigh6(i),
            Egress::Local | Egress::Kernel => Ok(tc::ACT_UNSPEC),
        }
    }
}

/// The FIB's egress for a packet that leaves with source `new_saddr`; a
/// packet too big for it goes to the kernel untranslated (it answers
/// "packet too big").
#[inline(always)]
fn egress(ctx: &TcContext, ip: &Ipv6, new_saddr: &Ip6, l4_hlen: u32) -> Result<Egress, DropReason> {
    let cfg = config().ok_or(DropReason::Unsupported)?;
    let fib = fib_params(ip, new_saddr, cfg.uplink_ifindex)?;
    match fib_lookup(ctx, fib) {
        rc @ (BPF_FIB_LKUP_RET_SUCCESS
        | BPF_FIB_LKUP_RET_NO_NEIGH
        | BPF_FIB_LKUP_RET_FRAG_NEEDED) => {
            if too_big(ctx, rc, fib, ip, l4_hlen) {
                counters::add(Counter::FragNeeded, 1);
                return Ok(Egress::Kernel);
            }
            Ok(Egress::Redirect(fib.ifindex))
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => Ok(Egress::Local),
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Ok(Egress::Kernel)
        }
        _ => Err(DropReason::FibLookupFailed),
    }
}

/// `out_to_world` as a BPF function of its own.
#[inline(never)]
fn out_to_world_fn(ctx: &TcContext, ip: &Ipv6, l4: &L4, e: &CtEntry6) -> i32 {
    match out_to_world(ctx, ip, l4, e) {
        Ok(v) => v,
        Err(reason) => counters::drop(ctx, reason),
    }
}

/// Applies a tracked flow's source rewrite and sends the packet out.
#[inline(always)]
fn out_to_world(ctx: &TcContext, ip: &Ipv6, l4: &L4, e: &CtEntry6) -> Result<i32, DropReason> {
    let out = egress(ctx, ip, &e.addr, l4.hlen)?;
    if out == Egress::Kernel {
        return Ok(tc::ACT_UNSPEC);
    }
    nat6::rewrite_addr(ctx, ip.proto, l4, IP6_SADDR_OFF, &ip.saddr, &e.addr)?;
    nat6::rewrite_port(ctx, ip.proto, l4, true, l4.sport, e.port)?;
    match e.kind {
        ct_kind::SNAT => counters::add(Counter::Snat, 1),
        ct_kind::REV_DNAT => counters::add(Counter::RevDnat, 1),
        _ => counters::add(Counter::RoutedOut, 1),
    }
    out.verdict()
}

#[inline(always)]
fn too_big(ctx: &TcContext, rc: u32, fib: &FibParams, ip: &Ipv6, l4_hlen: u32) -> bool {
    // SAFETY: reading the context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        // SAFETY: a successful lookup without tot_len sets mtu_result.
        let mtu = u32::from(unsafe { fib.__bindgen_anon_1.mtu_result });
        if gso_size == 0 {
            return ctx.len() > mtu + ETH_HLEN as u32;
        }
        if l4_hlen != 0 {
            return ip.hdr_len() + l4_hlen + gso_size > mtu;
        }
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call; mtu_len 0 = check skb->len.
    unsafe {
        bpf_check_mtu(
            ctx.skb.skb as *mut _,
            fib.ifindex,
            &mut mtu_len,
            0,
            u64::from(BPF_MTU_CHK_SEGS),
        ) > 0
    }
}

/// The FIB lookup's parameters, in a per-CPU scratch value (off the BPF
/// stack, which the IPv6 walks need for addresses).
#[inline(always)]
fn fib_params(ip: &Ipv6, src: &Ip6, ifindex: u32) -> Result<&'static mut FibParams, DropReason> {
    let p = NETD_FIB6.get_ptr_mut(0).ok_or(DropReason::Unsupported)?;
    // SAFETY: this CPU's scratch value; no one else uses it meanwhile
    // (programs run to completion on a CPU, preemption disabled).
    let p = unsafe { &mut *p };
    // SAFETY: an all-zero bpf_fib_lookup is valid.
    *p = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.l4_protocol = ip.proto;
    p.ifindex = ifindex;
    p.__bindgen_anon_2.flowinfo = ip.flowinfo;
    p.__bindgen_anon_3.ipv6_src = src.a;
    p.__bindgen_anon_4.ipv6_dst = ip.daddr.a;
    Ok(p)
}

#[inline(always)]
fn fib_lookup(ctx: &TcContext, fib: &mut FibParams) -> u32 {
    // SAFETY: helper call on a properly sized, initialised struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    rc as u32
}

/// Both entries of a new flow to the world (as the IPv4 snat_new_flow):
/// NAT66 to the uplink's IPv6 address, the container's port kept when it
/// is in the NAT range and free; without masquerade a ROUTED flow.
#[inline(always)]
fn snat_new_flow(ip: &Ipv6, l4: &L4, ep: &Endpoint6, masquerade: bool) -> Result<(), DropReason> {
    let cfg = config().ok_or(DropReason::Unsupported)?;
    let (min, max) = (u32::from(cfg.nat_port_min), u32::from(cfg.nat_port_max));
    let (addr, kind, rev_kind) = if masquerade {
        let up = uplink_ip6();
        if up.is_unspecified() || max < min {
            // No IPv6 address on the uplink: nothing to masquerade to.
            return Err(DropReason::Unsupported);
        }
        (up, ct_kind::SNAT, ct_kind::REV_SNAT)
    } else {
        (ip.saddr, ct_kind::ROUTED, ct_kind::REV_ROUTED)
    };
    let span = if max < min { 1 } else { max - min + 1 };
    let orig = u32::from(l4.sport);
    let start = (orig ^ u32::from_be(ip.daddr.a[3]) ^ (u32::from(l4.dport) << 3)) % span;
    // The keys and entries live in a per-CPU scratch value (off the BPF
    // stack).
    let f = NETD_FLOW6.get_ptr_mut(0).ok_or(DropReason::Unsupported)?;
    // SAFETY: this CPU's scratch value, used by this program run only.
    let f = unsafe { &mut *f };
    f.fwd_key = ct6::key(ip.saddr, ip.daddr, ip.proto, l4);
    f.fwd.last_seen = crate::ct::now();
    f.fwd.addr = addr;
    f.fwd.container_ip = ip.saddr;
    f.fwd.port = l4.sport;
    f.fwd.kind = kind;
    f.fwd.state = ct_state::NEW;
    f.fwd.ifindex = ep.ifindex;
    // The reply's key differs by its destination port only: one key,
    // probed port by port.
    f.rev_key = f.fwd_key.reverse(&f.fwd);
    if masquerade {
        let in_range = orig >= min && orig <= max;
        let mut found = false;
        for i in 0..NAT_PROBES + 1 {
            let port = if i == 0 {
                if !in_range {
                    continue;
                }
                l4.sport
            } else {
                (min + (start + i - 1) % span) as u16
            };
            f.rev_key.dport = port;
            if ct6::free(&f.rev_key) {
                found = true;
                break;
            }
        }
        if !found {
            return Err(DropReason::NatPortsExhausted);
        }
        f.fwd.port = f.rev_key.dport;
    }
    f.rev = f.fwd;
    f.rev.addr = ip.saddr;
    f.rev.port = l4.sport;
    f.rev.kind = rev_kind;
    match ct6::create(&f.fwd_key, &f.fwd, &f.rev_key, &f.rev, false)? {
        Created6::New => {}
        Created6::Lost(w) => f.fwd = w,
        // The port was taken since the probe: by this very flow on
        // another CPU (translate as it does), or by another flow (drop;
        // the retransmission probes again).
        Created6::RevTaken => f.fwd = ct6::peek(&f.fwd_key).ok_or(DropReason::NatPortsExhausted)?,
    }
    Ok(())
}

#[inline(always)]
fn frag_key(dir: u8, ip: &Ipv6) -> FragKey6 {
    FragKey6 {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.frag_id,
        proto: ip.proto,
        dir,
        _pad: 0,
    }
}

#[inline(always)]
fn frag_remember(dir: u8, ip: &Ipv6, l4: &L4) {
    let ports = FragPorts {
        sport: l4.sport,
        dport: l4.dport,
    };
    let _ = NETD_FRAG6.insert(&frag_key(dir, ip), &ports, 0);
}

#[inline(always)]
fn frag_lookup(dir: u8, ip: &Ipv6) -> Option<L4> {
    // SAFETY: copied out of a valid map value.
    let p = unsafe { NETD_FRAG6.get(&frag_key(dir, ip)) }.copied()?;
    Some(L4::fragment(p.sport, p.dport))
}

/// One of the host's own IPv6 addresses.
#[inline(always)]
fn is_local(addr: &Ip6) -> bool {
    // SAFETY: presence check only.
    unsafe { NETD_LOCAL6.get(addr) }.is_some() || (uplink_ip6() == *addr && !addr.is_unspecified())
}

#[inline(always)]
fn port_key(proto: u8, addr: &Ip6, port: u16) -> PortLpmKey6 {
    PortLpmKey6::new(
        PORT_KEY6_FULL_PREFIX,
        PortKey6 {
            proto,
            addr: addr.to_bytes(),
            port: port.to_be_bytes(),
            _pad: 0,
        },
    )
}

/// The published binding for (proto, host address, port): the exact
/// address, then the wildcard (`[::]`, or `0.0.0.0` which covers both
/// families) for the host's own addresses.
#[inline(always)]
pub(crate) fn published(proto: u8, daddr: &Ip6, port: u16) -> Option<PortTarget6> {
    let mut t = NETD_PORTS6.get(&port_key(proto, daddr, port)).copied();
    if t.is_none() && is_local(daddr) {
        t = NETD_PORTS6
            .get(&port_key(proto, &Ip6::UNSPECIFIED, port))
            .copied();
    }
    t.filter(|t| port >= t.host_port_min && port <= t.host_port_max)
}

/// Whether a connected host socket owns this datagram's tuple.
#[inline(always)]
fn host_socket_owns(ctx: &TcContext, ip: &Ipv6, l4: &L4) -> bool {
    // SAFETY: an all-zero tuple is valid; filled below.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    t.__bindgen_anon_1.ipv6.saddr = ip.saddr.a;
    t.__bindgen_anon_1.ipv6.daddr = ip.daddr.a;
    t.__bindgen_anon_1.ipv6.sport = l4.sport.to_be();
    t.__bindgen_anon_1.ipv6.dport = l4.dport.to_be();
    // SAFETY: helper calls; a found socket is released before returning.
    unsafe {
        let sk = bpf_sk_lookup_udp(
            ctx.skb.skb as *mut _,
            &mut t,
            36,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let owned = (*sk).dst_port == l4.sport.to_be()
            && (*sk).dst_ip6[0] == ip.saddr.a[0]
            && (*sk).dst_ip6[1] == ip.saddr.a[1]
            && (*sk).dst_ip6[2] == ip.saddr.a[2]
            && (*sk).dst_ip6[3] == ip.saddr.a[3];
        bpf_sk_release(sk as *mut _);
        owned
    }
}

fn try_from_world(ctx: &TcContext) -> Result<i32, DropReason> {
    counters::add(Counter::FromWorldPackets, 1);
    counters::add(Counter::FromWorldBytes, u64::from(ctx.len()));
    counters::add(Counter::FromWorldIpv6, 1);
    let eth = parse::eth(ctx)?;
    if eth.dst_group {
        return Ok(tc::ACT_UNSPEC);
    }
    let ip = match parse6::ipv6(ctx) {
        Ok(ip) => ip,
        // The host's business, unless it is addressed to a container
        // (the kernel would forward it there past every check).
        Err(reason) => {
            return match parse6::daddr(ctx) {
                Some(d) if ep6(&d).is_some() => Err(reason),
                _ => Ok(tc::ACT_UNSPEC),
            };
        }
    };
    if ip.daddr.is_loopback() {
        return Err(DropReason::Martian);
    }
    let l4 = if ip.is_later_fragment() {
        match frag_lookup(FRAG_FROM_WORLD, &ip) {
            Some(l4) => l4,
            None => return pass_world(&ip.daddr),
        }
    } else {
        // An ICMPv6 error about a tracked flow (packet too big: path-MTU
        // discovery through NAT66): its own program.
        if matches!(
            parse6::icmp_type(ctx, &ip),
            Ok(Some(
                ICMP6_DEST_UNREACH | ICMP6_PKT_TOOBIG | ICMP6_TIME_EXCEEDED
            ))
        ) {
            return Ok(TO_ICMP_ERROR);
        }
        match parse6::l4(ctx, &ip) {
            Ok(Some(l4)) => l4,
            _ => return Ok(TO_ADDRESS),
        }
    };
    let key = ct6::key(ip.saddr, ip.daddr, ip.proto, &l4);
    if ip.proto == IPPROTO_TCP
        && l4.is_syn()
        && let Some(old) = ct6::peek(&key)
        && old.kind == ct_kind::DNAT
    {
        ct6::remove(&key.reverse(&old));
        ct6::remove(&key);
    }
    if let Some(e) = ct6::lookup(&key, &l4)
        && matches!(
            e.kind,
            ct_kind::REV_SNAT | ct_kind::DNAT | ct_kind::REV_ROUTED | ct_kind::ROUTED_IN
        )
    {
        match e.kind {
            ct_kind::REV_SNAT => counters::add(Counter::RevSnat, 1),
            ct_kind::DNAT => counters::add(Counter::Dnat, 1),
            _ => counters::add(Counter::RoutedIn, 1),
        }
        return to_container(ctx, &ip, &l4, &e.addr, e.port);
    }
    if ip.proto != IPPROTO_ICMPV6 && published(ip.proto, &ip.daddr, l4.dport).is_some() {
        return Ok(TO_DNAT);
    }
    Ok(TO_ADDRESS)
}

/// The L4 part of a packet from the world (a later fragment's from its
/// first fragment, if seen).
#[inline(always)]
fn world_l4(ctx: &TcContext, ip: &Ipv6) -> Option<L4> {
    if ip.is_later_fragment() {
        return frag_lookup(FRAG_FROM_WORLD, ip);
    }
    parse6::l4(ctx, ip).ok().flatten()
}

fn try_world_icmp(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip = parse6::ipv6(ctx)?;
    let v = try_world_icmp_error(ctx, &ip)?;
    if v != CONTINUE {
        return Ok(v);
    }
    try_to_address(ctx, &ip, None)
}

fn try_world_published(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip = parse6::ipv6(ctx)?;
    let Some(l4) = world_l4(ctx, &ip) else {
        return pass_world(&ip.daddr);
    };
    let Some(t) = published(ip.proto, &ip.daddr, l4.dport) else {
        return pass_world(&ip.daddr);
    };
    // The flow (a BPF function of its own), then the translation.
    let v = world_dnat(ctx, &ip, &l4, &t);
    if v != CONTINUE {
        return Ok(v);
    }
    // The flow's translation, left in the scratch value by world_dnat.
    let f = NETD_FLOW6.get_ptr(0).ok_or(DropReason::Unsupported)?;
    // SAFETY: this CPU's scratch value, written just now.
    let (addr, port) = unsafe { ((*f).fwd.addr, (*f).fwd.port) };
    Ok(to_container_fn(ctx, &ip, &l4, &addr, port))
}

/// `to_container` as a BPF function of its own.
#[inline(never)]
fn to_container_fn(ctx: &TcContext, ip: &Ipv6, l4: &L4, addr: &Ip6, port: u16) -> i32 {
    match to_container(ctx, ip, l4, addr, port) {
        Ok(v) => v,
        Err(reason) => counters::drop(ctx, reason),
    }
}

#[inline(never)]
fn world_dnat(ctx: &TcContext, ip: &Ipv6, l4: &L4, t: &PortTarget6) -> i32 {
    match try_world_dnat(ctx, ip, l4, t) {
        Ok(true) => CONTINUE,
        Ok(false) => tc::ACT_UNSPEC,
        Err(DropReason::CtTableFull) => TO_EVICT,
        Err(reason) => counters::drop(ctx, reason),
    }
}

fn try_world_address(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip = parse6::ipv6(ctx)?;
    let l4 = world_l4(ctx, &ip);
    try_to_address(ctx, &ip, l4.as_ref())
}

#[inline(always)]
fn try_world_dnat(
    ctx: &TcContext,
    ip: &Ipv6,
    l4: &L4,
    t: &PortTarget6,
) -> Result<bool, DropReason> {
    let Some(ep) = ep6(&t.container_ip) else {
        return pass_world(&ip.daddr).map(|_| false);
    };
    let net = network6(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    if net.flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    if !l4.hdr {
        return Err(DropReason::FragmentUnknown);
    }
    if (ip.proto == IPPROTO_TCP && !l4.is_syn())
        || (ip.proto == IPPROTO_UDP && host_socket_owns(ctx, ip, l4))
    {
        return Ok(false);
    }
    // Keys and entries in the per-CPU scratch value (off the BPF stack).
    let f = NETD_FLOW6.get_ptr_mut(0).ok_or(DropReason::Unsupported)?;
    // SAFETY: this CPU's scratch value, used by this program run only.
    let f = unsafe { &mut *f };
    f.fwd_key = ct6::key(ip.saddr, ip.daddr, ip.proto, l4);
    f.fwd.last_seen = crate::ct::now();
    f.fwd.addr = t.container_ip;
    f.fwd.container_ip = t.container_ip;
    f.fwd.port = t.container_port_min + (l4.dport - t.host_port_min);
    f.fwd.kind = ct_kind::DNAT;
    f.fwd.state = ct_state::NEW;
    f.fwd.ifindex = ep.ifindex;
    f.rev_key = f.fwd_key.reverse(&f.fwd);
    f.rev = f.fwd;
    f.rev.addr = ip.daddr;
    f.rev.port = l4.dport;
    f.rev.kind = ct_kind::REV_DNAT;
    f.rev.ifindex = 0;
    if let Created6::Lost(w) = ct6::create(&f.fwd_key, &f.fwd, &f.rev_key, &f.rev, true)? {
        f.fwd = w;
    }
    counters::add(Counter::Dnat, 1);
    Ok(true)
}

#[inline(always)]
fn try_world_icmp_error(ctx: &TcContext, ip: &Ipv6) -> Result<i32, DropReason> {
    let Ok(Some(inner)) = nat6::parse_error(ctx, ip) else {
        return Ok(CONTINUE);
    };
    let Some(e) = ct6::peek(&inner.reply_key()) else {
        return Ok(CONTINUE);
    };
    if !nat6::from_world_kind(e.kind) {
        return Ok(CONTINUE);
    }
    inner.untranslate_to_container(ctx, ip, &e)?;
    counters::add(Counter::IcmpErrors, 1);
    deliver(ctx, &e.addr)
}

/// From the world to no flow: a container's address is dropped
/// (`not-published`) unless its gateway mode routes to it.
#[inline(always)]
fn pass_world(daddr: &Ip6) -> Result<i32, DropReason> {
    if ep6(daddr).is_some() {
        return Err(DropReason::NotPublished);
    }
    Ok(tc::ACT_UNSPEC)
}

#[inline(always)]
fn try_to_address(ctx: &TcContext, ip: &Ipv6, l4: Option<&L4>) -> Result<i32, DropReason> {
    let Some(ep) = ep6(&ip.daddr) else {
        return Ok(tc::ACT_UNSPEC);
    };
    let net = network6(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    match l4 {
        Some(l4) if l4.hdr && direct_allowed(&net, ip, l4) => {
            routed_in_new_flow(ip, l4, &ep)?;
            counters::add(Counter::RoutedIn, 1);
            to_container(ctx, ip, l4, &ip.daddr, l4.dport)
        }
        None if net.flags & NET_DIRECT_ALL != 0 && net.flags & NET_INTERNAL == 0 => {
            counters::add(Counter::RoutedIn, 1);
            deliver_ep(ctx, &ep)
        }
        _ => Err(DropReason::NotPublished),
    }
}

#[inline(always)]
fn direct_allowed(net: &Network, ip: &Ipv6, l4: &L4) -> bool {
    if net.flags & NET_INTERNAL != 0 {
        return false;
    }
    let new = match ip.proto {
        IPPROTO_TCP => l4.is_syn(),
        IPPROTO_UDP => true,
        IPPROTO_ICMPV6 => l4.tcp_flags == ICMP6_ECHO_REQUEST,
        _ => false,
    };
    new && (net.flags & NET_DIRECT_ALL != 0
        || (ip.proto == IPPROTO_ICMPV6 && net.flags & NET_DIRECT_ICMP != 0)
        || (ip.proto != IPPROTO_ICMPV6
            && net.flags & NET_DIRECT_PORTS != 0
            && NETD_DIRECT6
                .get(&port_key(ip.proto, &ip.daddr, l4.dport))
                .is_some_and(|t| l4.dport >= t.host_port_min && l4.dport <= t.host_port_max)))
}

#[inline(always)]
fn routed_in_new_flow(ip: &Ipv6, l4: &L4, ep: &Endpoint6) -> Result<(), DropReason> {
    let key = ct6::key(ip.saddr, ip.daddr, ip.proto, l4);
    let fwd = CtEntry6 {
        last_seen: crate::ct::now(),
        addr: ip.daddr,
        container_ip: ip.daddr,
        port: l4.dport,
        kind: ct_kind::ROUTED_IN,
        state: ct_state::NEW,
        ifindex: ep.ifindex,
    };
    let rev_key = key.reverse(&fwd);
    let back = CtEntry6 {
        kind: ct_kind::REV_ROUTED_IN,
        ..fwd
    };
    ct6::create(&key, &fwd, &rev_key, &back, true).map(|_| ())
}

/// Rewrites the destination and delivers into the container that has
/// address `addr`.
#[inline(always)]
fn to_container(
    ctx: &TcContext,
    ip: &Ipv6,
    l4: &L4,
    addr: &Ip6,
    port: u16,
) -> Result<i32, DropReason> {
    if l4.hdr && ip.is_fragment() {
        frag_remember(FRAG_FROM_WORLD, ip, l4);
    } else if !l4.hdr {
        counters::add(Counter::Fragments, 1);
    }
    nat6::rewrite_addr(ctx, ip.proto, l4, IP6_DADDR_OFF, &ip.daddr, addr)?;
    nat6::rewrite_port(ctx, ip.proto, l4, false, l4.dport, port)?;
    deliver(ctx, addr)
}

#[inline(always)]
fn deliver(ctx: &TcContext, addr: &Ip6) -> Result<i32, DropReason> {
    let Some(ep) = ep6(addr) else {
        return Err(DropReason::NoEndpoint);
    };
    deliver_ep(ctx, &ep)
}

#[inline(always)]
fn deliver_ep(ctx: &TcContext, ep: &Endpoint6) -> Result<i32, DropReason> {
    nat::set_macs(ctx, &ep.gw_mac, &ep.mac)?;
    endpoint_tx(ep, ctx.len());
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32)
}
