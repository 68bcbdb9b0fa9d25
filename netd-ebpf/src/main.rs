//! netd's eBPF datapath. One thin entry point per attach point; the logic
//! lives in per-concern modules (parse, maps, ct, nat, frag, icmp,
//! counters).
//!
//! Walks (see DESIGN.md section 5 and the README's datapath section):
//! - from_container (TC ingress of each container's host-side veth): fails
//!   closed on an unknown veth or network; anti-spoofing (Ethernet, IPv4,
//!   ARP sender); IPv4 and ARP only (IPv6 where the network allows it);
//!   conntrack hits (masquerade out, published-port replies back out,
//!   hairpin), same-network unicast straight to the peer container with
//!   bpf_redirect_peer (icc enforced), isolation between networks (a
//!   `routed` network's published container ports excepted), new
//!   masqueraded (or tracked, without masquerade) flows out of the uplink
//!   (FIB lookup + bpf_redirect_neigh); a pod's traffic to another node's
//!   pod (the cluster CIDR) out of the uplink untranslated and untracked.
//! - from_world (TC ingress of the uplink): another node's pod straight
//!   into the pod (no NAT, no conntrack); replies of tracked flows and
//!   new connections (a SYN, or a datagram no host socket owns) to
//!   published ports, translated and redirected into the container; new
//!   connections routed to a container's own address where its network's
//!   gateway mode allows them (`routed`: published container ports and
//!   ICMP; `nat-unprotected`: everything), untranslated; nothing else
//!   reaches a container's address, and nothing from outside may be
//!   addressed to 127/8.
//! What goes to the kernel: ARP, broadcast/multicast, the host's own
//! traffic, packets too big for their egress (untranslated, with DF set,
//! so that the kernel answers "fragmentation needed"), destinations whose
//! route is unreachable/blackhole/prohibit (the kernel answers ICMP).
#![no_std]
#![no_main]

mod counters;
mod ct;
mod ct6;
mod fast;
mod frag;
mod icmp;
mod maps;
mod maps6;
mod nat;
mod nat6;
mod parse;
mod parse6;
mod probe;
mod sock;
mod v6;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, BPF_FIB_LOOKUP_SKIP_NEIGH,
        bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, bpf_fib_lookup as FibParams, bpf_redir_neigh,
        bpf_redir_neigh__bindgen_ty_1, bpf_sock_tuple,
    },
    helpers::generated::{
        bpf_check_mtu, bpf_fib_lookup, bpf_redirect_neigh, bpf_redirect_peer, bpf_sk_lookup_udp,
        bpf_sk_release,
    },
    macros::classifier,
    programs::TcContext,
};
use netd_common::{
    Config, Counter, CtEntry, CtKey, DropReason, Endpoint, FRAG_FROM_CONTAINER, FRAG_FROM_WORLD,
    NET_CLUSTER, NET_DIRECT_ALL, NET_DIRECT_ICMP, NET_DIRECT_PORTS, NET_FROM_NETWORKS, NET_ICC,
    NET_INTERNAL, NET_MASQUERADE, Network, PORT_KEY_FULL_PREFIX, PortKey, ct_kind, ct_state, tc,
};

use crate::{
    ct::Created,
    maps::{NETD_CFG, NETD_DIRECT, NETD_LOCAL, NETD_NET, NETD_PORTS, PortLpmKey},
    parse::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_ICMP, IPPROTO_TCP,
        IPPROTO_UDP, Ipv4, L4,
    },
};

const AF_INET: u8 = 2;
/// How many source ports masquerade tries before giving up.
const NAT_PROBES: u32 = 32;

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    // IPv6 has its own programs (v6.rs), tail-called from here (the
    // verifier allows tail calls in a program's main function only).
    if v6::is_ipv6(&ctx) {
        return v6::jump(&ctx, v6::JMP_FROM_CONTAINER6);
    }
    if let Some(verdict) = fast::from_container(&ctx) {
        return verdict;
    }
    match try_from_container(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

#[classifier]
pub fn from_world(ctx: TcContext) -> i32 {
    if v6::is_ipv6(&ctx) {
        return v6::jump(&ctx, v6::JMP_FROM_WORLD6);
    }
    if let Some(verdict) = fast::tracked_in(&ctx) {
        return verdict;
    }
    match try_from_world(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

#[inline(always)]
fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading the context.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
pub(crate) fn config() -> Option<Config> {
    NETD_CFG.get(0).copied()
}

#[inline(always)]
fn network(id: u32) -> Option<Network> {
    // SAFETY: map value copied out.
    unsafe { NETD_NET.get(id) }.copied()
}

/// 127.0.0.0/8 (network order): never a destination from outside the host
/// (a 127.0.0.1-bound published port must stay the host's).
#[inline(always)]
fn is_loopback(addr: u32) -> bool {
    u32::from_be(addr) >> 24 == 127
}

fn try_from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    let len = ctx.len();
    counters::add_packet(
        Counter::FromContainerPackets,
        Counter::FromContainerBytes,
        len,
    );
    let ifindex = ingress_ifindex(ctx);
    // Fail closed: a veth whose endpoint (or network) the maps do not
    // know carries nothing.
    // SAFETY: map value copied out.
    let Some(ep) = maps::endpoint_by_if(ifindex) else {
        return Err(DropReason::NoEndpoint);
    };
    counters::endpoint_rx(&ep, len);

    let eth = parse::eth(ctx)?;
    if eth.src != ep.mac {
        return Err(DropReason::SpoofedSource);
    }
    if eth.proto != ETH_P_IP {
        // The network must exist (fail closed).
        network(ep.net_id).ok_or(DropReason::NoEndpoint)?;
        return match eth.proto {
            ETH_P_ARP => {
                // The sender fields are what neighbours learn: they must be
                // the endpoint's (0.0.0.0: an address probe).
                // An endpoint without IPv4 (an IPv6-only network: 0 in
                // the maps) sends no ARP at all.
                let a = parse::arp(ctx)?;
                if ep.ip == 0 || a.mac != ep.mac || (a.ip != ep.ip && a.ip != 0) {
                    return Err(DropReason::SpoofedSource);
                }
                Ok(tc::ACT_UNSPEC)
            }
            // VLAN tags, anything else (IPv6 took its own programs in
            // from_container).
            _ => Err(DropReason::NotIpv4),
        };
    }
    let ip = parse::ipv4(ctx, ETH_HLEN)?;
    // 0.0.0.0 is a DHCP client's source; an endpoint without IPv4 (an
    // IPv6-only network) sends no IPv4 at all.
    if ep.ip == 0 || (ip.saddr != ep.ip && ip.saddr != 0) {
        return Err(DropReason::SpoofedSource);
    }
    if eth.dst_group {
        counters::add(Counter::FromContainerIpv4, 1);
        return Ok(tc::ACT_UNSPEC);
    }
    if is_loopback(ip.daddr) {
        return Err(DropReason::Martian);
    }
    // The fast path: another container on this network (its subnet),
    // neither a fragment nor ICMP (those take the full walk below: fragments for
    // their datagram's ports, ICMP errors for the flows they quote). No
    // conntrack, no NAT, no network lookup: nothing is translated between
    // two containers of one network, no flow of another kind has a
    // container address as its destination from a container (hairpin
    // flows are addressed to a host address), and the endpoint carries its
    // network's flags. The checks are the full walk's: endpoint, source
    // MAC and address (above), icc; a peer of another network (only
    // possible with overlapping subnets) takes the full walk.
    if !ip.is_fragment()
        && ip.proto != IPPROTO_ICMP
        && (ip.daddr ^ ep.ip) & ep.mask == 0
        && let Some(peer) = maps::endpoint(ip.daddr)
        && peer.net_id == ep.net_id
    {
        return to_peer(ctx, &ep, ep.net_flags, &peer, Some(ip.proto));
    }
    counters::add(Counter::FromContainerIpv4, 1);
    // Until a new flow is decided, the endpoint's copy of its network's
    // flags decides, as on the fast path (userspace writes an endpoint
    // after its network and removes it before): an established flow
    // costs no NETD_NET lookup. Anything new needs the network itself
    // (below: fail closed).
    let flags = ep.net_flags;
    // A pod's traffic to another node's pod: untranslated, untracked.
    if flags & NET_CLUSTER != 0
        && let Some(cfg) = config()
        && cfg.in_cluster(ip.daddr)
        && let Some(v) = cluster_out(ctx, &ip, ifindex, &cfg)?
    {
        return Ok(v);
    }
    // The L4 ports: from the header, or for a later fragment from its
    // datagram's first fragment.
    let l4 = if ip.is_later_fragment() {
        match frag::lookup(FRAG_FROM_CONTAINER, &ip) {
            Some(l4) => Some(l4),
            None if ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP => {
                return Err(DropReason::FragmentUnknown);
            }
            // ICMP other than echo, other protocols: no ports anyway.
            None => None,
        }
    } else {
        // An ICMP error about a flow netd translated on its way in: only
        // the flow's own container may send one.
        if let Some(inner) = icmp::parse(ctx, &ip)?
            && let Some(e) = icmp::flow(&inner.reply_key())
            && icmp::from_container_kind(e.kind)
        {
            if e.container_ip != ep.ip {
                return Err(DropReason::SpoofedSource);
            }
            if flags & NET_INTERNAL != 0 {
                return Err(DropReason::InternalNetwork);
            }
            let (out, _) = egress_to_world(ctx, &ip, 0, e.addr)?;
            if let Egress::Kernel = out {
                return Ok(tc::ACT_UNSPEC);
            }
            inner.untranslate_to_world(ctx, &ip, &e)?;
            counters::add(Counter::IcmpErrors, 1);
            return out.verdict();
        }
        let l4 = parse::l4(ctx, ip.proto, ETH_HLEN + ip.hdr_len)?;
        if ip.is_fragment()
            && let Some(l4) = &l4
        {
            frag::remember(FRAG_FROM_CONTAINER, &ip, l4);
        }
        l4
    };
    if let Some(l4) = &l4 {
        if !l4.hdr {
            counters::add(Counter::Fragments, 1);
        }
        if ip.proto == IPPROTO_TCP {
            counters::add(Counter::FromContainerTcp, 1);
        }
        // A flow netd tracks already.
        let key = ct::key(ip.saddr, ip.daddr, ip.proto, l4);
        if let Some(hit) = ct::lookup(&key, l4) {
            let e = hit.e;
            match e.kind {
                ct_kind::HAIRPIN | ct_kind::REV_HAIRPIN => {
                    return hairpin_rewrite(ctx, &ip, l4, &e);
                }
                ct_kind::SNAT | ct_kind::REV_DNAT | ct_kind::ROUTED | ct_kind::REV_ROUTED_IN => {
                    if flags & NET_INTERNAL != 0 {
                        return Err(DropReason::InternalNetwork);
                    }
                    // The reply of a connection a container of another
                    // network routed in: back into that container.
                    if e.kind == ct_kind::REV_ROUTED_IN && maps::is_endpoint(ip.daddr) {
                        counters::add(Counter::RoutedOut, 1);
                        return deliver(ctx, ip.daddr);
                    }
                    return out_to_world(ctx, &ip, l4, &e, &key, Some(&hit));
                }
                // A connection this container routed to a `routed`
                // network's container.
                ct_kind::ROUTED_IN => {
                    counters::add(Counter::RoutedIn, 1);
                    return deliver(ctx, e.addr);
                }
                _ => {}
            }
        }
    }

    let net = network(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    // A host address's published port (hairpin): translated both ways
    // and delivered straight into the target container.
    if let Some(l4) = &l4
        && ip.proto != IPPROTO_ICMP
        && is_local(ip.daddr)
        && let Some(t) = published(ip.proto, ip.daddr, l4.dport)
    {
        // Nothing leaves an internal network, not even this way.
        if net.flags & NET_INTERNAL != 0 {
            return Err(DropReason::InternalNetwork);
        }
        if !l4.hdr {
            return Err(DropReason::FragmentUnknown);
        }
        return hairpin_new_flow(ctx, &ip, l4, &t, &ep);
    }

    // Another container (ICMP and fragments; the rest took the fast path).
    if let Some(peer) = maps::endpoint(ip.daddr) {
        if peer.net_id != ep.net_id {
            // A `routed` network takes connections routed from other
            // networks to its published container ports (and ICMP echo),
            // as Docker's isolation rules let them through.
            if net.flags & NET_INTERNAL == 0
                && let Some(l4) = &l4
                && let Some(pnet) = network(peer.net_id)
                && pnet.flags & NET_FROM_NETWORKS != 0
                && l4.hdr
                && direct_allowed(&pnet, ip.proto, ip.daddr, l4)
            {
                routed_in_new_flow(&ip, l4, &peer)?;
                counters::add(Counter::RoutedIn, 1);
                return deliver_ep(ctx, &peer);
            }
            return Err(DropReason::NetworkIsolation);
        }
        return to_peer(ctx, &ep, net.flags, &peer, None);
    }

    // Somewhere else: the host itself (pass), the world (masquerade), or
    // another network (isolation).
    let cfg = config().ok_or(DropReason::Unsupported)?;
    let mut buf = MaybeUninit::uninit();
    let fib = fib_params(&mut buf, &ip, ip.saddr, ifindex);
    let rc = fib_lookup(ctx, fib);
    match rc {
        BPF_FIB_LKUP_RET_NOT_FWDED => return Ok(tc::ACT_UNSPEC),
        // No route: the kernel drops it and answers (ICMP unreachable).
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            return Ok(tc::ACT_UNSPEC);
        }
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED => {}
        _ => return Err(DropReason::FibLookupFailed),
    }
    if fib.ifindex != cfg.uplink_ifindex {
        return Err(DropReason::NetworkIsolation);
    }
    if net.flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    if too_big(
        ctx,
        fib_mtu(rc, fib),
        fib.ifindex,
        &ip,
        l4.map_or(0, |l| l.hlen),
    ) {
        return frag_needed(ctx, &ip);
    }
    let Some(l4) = l4 else {
        if net.flags & NET_MASQUERADE == 0 {
            // Untracked protocols leave as they are (their replies are
            // not let in: nothing tracks them).
            return redirect_neigh(cfg.uplink_ifindex, next_hop(fib));
        }
        return Err(DropReason::Unsupported);
    };
    if !l4.hdr {
        return Err(DropReason::FragmentUnknown);
    }
    let e = snat_new_flow(&ip, &l4, &cfg, &ep, net.flags & NET_MASQUERADE != 0)?;
    let key = ct::key(ip.saddr, ip.daddr, ip.proto, &l4);
    out_to_world(ctx, &ip, &l4, &e, &key, None)
}

/// Container -> container: another network is isolated, icc=false
/// (`net_flags`: the sender's network's) denies, else straight into the
/// peer (past the bridge). The fast path (`fast`: the packet's protocol)
/// counts its IPv4 and TCP packets here, with the forward, in one counter
/// lookup (the full walk counted them already).
#[inline(always)]
fn to_peer(
    ctx: &TcContext,
    ep: &Endpoint,
    net_flags: u32,
    peer: &Endpoint,
    fast: Option<u8>,
) -> Result<i32, DropReason> {
    if peer.net_id != ep.net_id {
        return Err(DropReason::NetworkIsolation);
    }
    if net_flags & NET_ICC == 0 {
        return Err(DropReason::IccDenied);
    }
    let len = ctx.len();
    counters::forwarded(fast.is_some(), fast == Some(IPPROTO_TCP));
    counters::endpoint_tx(peer, len);
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect_peer(peer.ifindex, 0) } as i32)
}

/// Where a packet for the world goes, decided before it is rewritten.
enum Egress {
    /// Out of this interface to this next hop (bpf_redirect_neigh).
    Redirect(u32, u32),
    /// A local destination: the stack delivers it.
    Local,
    /// Handed to the kernel untranslated: it answers ICMP (fragmentation
    /// needed, unreachable) and drops the packet.
    Kernel,
}

impl Egress {
    #[inline(always)]
    fn verdict(self) -> Result<i32, DropReason> {
        match self {
            Egress::Redirect(i, nh) => redirect_neigh(i, nh),
            Egress::Local | Egress::Kernel => Ok(tc::ACT_UNSPEC),
        }
    }
}

/// The FIB's egress for a packet that will leave with source `new_saddr`,
/// and whether it fits there: a packet that does not is handed to the
/// kernel untranslated (DF set, see `frag_needed`), never sent out as it is
/// nor dropped silently. With it, what a flow may cache of the lookup
/// (next hop, MTU): a successful lookup whose egress is the uplink.
#[inline(always)]
fn egress_to_world(
    ctx: &TcContext,
    ip: &Ipv4,
    l4_hlen: u32,
    new_saddr: u32,
) -> Result<(Egress, Option<(u32, u32)>), DropReason> {
    let cfg = config().ok_or(DropReason::Unsupported)?;
    let mut buf = MaybeUninit::uninit();
    let fib = fib_params(&mut buf, ip, new_saddr, cfg.uplink_ifindex);
    match fib_lookup(ctx, fib) {
        rc @ (BPF_FIB_LKUP_RET_SUCCESS
        | BPF_FIB_LKUP_RET_NO_NEIGH
        | BPF_FIB_LKUP_RET_FRAG_NEEDED) => {
            let mtu = fib_mtu(rc, fib);
            if too_big(ctx, mtu, fib.ifindex, ip, l4_hlen) {
                frag_needed(ctx, ip)?;
                return Ok((Egress::Kernel, None));
            }
            let nh = next_hop(fib);
            let cache = match mtu {
                Some(m) if m != 0 && fib.ifindex == cfg.uplink_ifindex => Some((nh, m)),
                _ => None,
            };
            Ok((Egress::Redirect(fib.ifindex, nh), cache))
        }
        // A reply to the host itself: the stack routes it.
        BPF_FIB_LKUP_RET_NOT_FWDED => Ok((Egress::Local, None)),
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Ok((Egress::Kernel, None))
        }
        _ => Err(DropReason::FibLookupFailed),
    }
}

/// Applies a tracked flow's source rewrite (SNAT, a published port's
/// reply; ROUTED rewrites nothing) and sends the packet out. The egress
/// is the flow's cached FIB result while it is valid (`ct::fib_cached`:
/// looked up within the last ~1.07 s; a FIB lookup is the costliest part
/// of this path), else a lookup, whose result the flow's entry (`key`)
/// caches when it may (`hit`: the conntrack hit, `None` for a flow this
/// packet created).
#[inline(always)]
fn out_to_world(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    e: &CtEntry,
    key: &CtKey,
    hit: Option<&ct::Hit>,
) -> Result<i32, DropReason> {
    let out = match hit.and_then(ct::fib_cached) {
        Some((nh, mtu)) => {
            let uplink = config().ok_or(DropReason::Unsupported)?.uplink_ifindex;
            if too_big(ctx, Some(mtu), uplink, ip, l4.hlen) {
                frag_needed(ctx, ip)?;
                Egress::Kernel
            } else {
                Egress::Redirect(uplink, nh)
            }
        }
        None => {
            let (out, cache) = egress_to_world(ctx, ip, l4.hlen, e.addr)?;
            // Cache the result, or clear a stale one (the flow looks up
            // again next time).
            if cache.is_some() || hit.is_some_and(|h| h.e.fib_stamp != 0) {
                let now = hit.map_or_else(ct::now, |h| h.now);
                let (nh, mtu) = cache.unwrap_or((0, 0));
                ct::fib_store(key, now, nh, mtu);
            }
            out
        }
    };
    if let Egress::Kernel = out {
        return Ok(tc::ACT_UNSPEC);
    }
    nat::translate(ctx, ip, l4, true, e.addr, e.port)?;
    match e.kind {
        ct_kind::SNAT => counters::add(Counter::Snat, 1),
        ct_kind::REV_DNAT => counters::add(Counter::RevDnat, 1),
        _ => counters::add(Counter::RoutedOut, 1),
    }
    out.verdict()
}

/// The egress MTU a FIB lookup reported: after a successful one (without
/// tot_len, it sets mtu_result), none otherwise.
#[inline(always)]
fn fib_mtu(rc: u32, fib: &FibParams) -> Option<u32> {
    // SAFETY: a successful lookup without tot_len sets mtu_result.
    (rc == BPF_FIB_LKUP_RET_SUCCESS).then(|| u32::from(unsafe { fib.__bindgen_anon_1.mtu_result }))
}

/// Too big for the egress `ifindex` (GSO packets: any of their
/// segments). With the MTU of a successful FIB lookup (`mtu`, or the one
/// a flow cached from it) the packet is compared with it (exact; the
/// lookup's own check allows a VLAN tag's 4 bytes more and lets every GSO
/// packet through): a plain packet by its length, a TCP/UDP GSO packet by
/// its segments' (IP header + L4 header `l4_hlen` + gso_size, what the
/// kernel's skb_gso_validate_network_len computes). Other GSO packets and
/// unresolved neighbours ask `bpf_check_mtu` (BPF_MTU_CHK_SEGS).
#[inline(always)]
pub(crate) fn too_big(
    ctx: &TcContext,
    mtu: Option<u32>,
    ifindex: u32,
    ip: &Ipv4,
    l4_hlen: u32,
) -> bool {
    // SAFETY: reading the context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if let Some(mtu) = mtu {
        if gso_size == 0 {
            return ctx.len() > mtu + ETH_HLEN as u32;
        }
        if l4_hlen != 0 {
            return ip.hdr_len as u32 + l4_hlen + gso_size > mtu;
        }
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call; mtu_len 0 = check skb->len.
    unsafe {
        bpf_check_mtu(
            ctx.skb.skb as *mut _,
            ifindex,
            &mut mtu_len,
            0,
            u64::from(BPF_MTU_CHK_SEGS),
        ) > 0
    }
}

/// A packet too big for its egress goes to the kernel untranslated, with
/// DF set: the kernel's forwarding drops it and answers "fragmentation
/// needed" with the egress MTU (netd does not fragment, and a fragment it
/// did not translate must never leave). A sender that did not set DF
/// learns the path MTU all the same and fragments smaller next time.
#[inline(always)]
fn frag_needed(ctx: &TcContext, ip: &Ipv4) -> Result<i32, DropReason> {
    if !ip.df() {
        nat::set_df(ctx, ip.frag)?;
    }
    counters::add(Counter::FragNeeded, 1);
    Ok(tc::ACT_UNSPEC)
}

/// A FIB lookup without the neighbour: the redirect resolves it
/// (`bpf_redirect_neigh` with the next hop the lookup found, so the kernel
/// does not route the packet a second time), and an unresolved neighbour
/// is the redirect's to resolve anyway.
#[inline(always)]
fn fib_lookup(ctx: &TcContext, fib: &mut FibParams) -> u32 {
    // SAFETY: helper call on a properly sized, initialised struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            fib,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    rc as u32
}

/// The next hop a successful lookup found (the gateway, or the
/// destination itself on a link).
#[inline(always)]
fn next_hop(fib: &FibParams) -> u32 {
    // SAFETY: the lookup wrote the IPv4 member.
    unsafe { fib.__bindgen_anon_4.ipv4_dst }
}

/// Creates both conntrack entries of a new flow to the world and returns
/// the forward one. Masquerade: the source becomes the uplink's address
/// with the container's own port when it is in the NAT range and free
/// (as netfilter keeps it), else the first free one probing from a hash;
/// a port outside the range is never used (it could be a host socket's).
/// Without masquerade nothing is rewritten; the flow is tracked so that
/// its replies are let in (ROUTED).
#[inline(always)]
fn snat_new_flow(
    ip: &Ipv4,
    l4: &L4,
    cfg: &Config,
    ep: &Endpoint,
    masquerade: bool,
) -> Result<CtEntry, DropReason> {
    let (min, max) = (u32::from(cfg.nat_port_min), u32::from(cfg.nat_port_max));
    if masquerade && max < min {
        return Err(DropReason::NatPortsExhausted);
    }
    let span = if max < min { 1 } else { max - min + 1 };
    let orig = u32::from(l4.sport);
    // Spread (a multiplicative hash): a container's consecutive ports do
    // not probe one crowded stretch of the range.
    let start =
        (orig.wrapping_mul(0x9e37_79b1) ^ u32::from_be(ip.daddr) ^ (u32::from(l4.dport) << 3))
            % span;
    let fwd_key = ct::key(ip.saddr, ip.daddr, ip.proto, l4);
    let now = ct::now();
    // The container's own port is kept only inside the NAT range (issue
    // 11, item 8): the range is reserved from the host's ephemeral ports
    // (`ip_local_reserved_ports`), so no host socket can later pick the
    // translated tuple, whose replies the reverse entry would steal. Any
    // other port, even one no host socket has now, could be a host
    // socket's tomorrow: a container flow must not hold it.
    let keep = masquerade && orig >= min && orig <= max;
    let (addr, rev_kind) = if masquerade {
        (cfg.uplink_ip, ct_kind::REV_SNAT)
    } else {
        (ip.saddr, ct_kind::REV_ROUTED)
    };
    let mut out = CtEntry {
        last_seen: now,
        addr,
        port: l4.sport,
        kind: if masquerade {
            ct_kind::SNAT
        } else {
            ct_kind::ROUTED
        },
        state: ct_state::NEW,
        ifindex: ep.ifindex,
        container_ip: ip.saddr,
        ..CtEntry::default()
    };
    // The port: kept (no masquerade, or in the range and free), else the
    // first free one from a hash. Probed with lookups; `create` settles a
    // race for the same port.
    if masquerade {
        let mut found = false;
        // A probed port whose flow to this same destination has closed.
        let mut closed = None;
        for i in 0..NAT_PROBES + 1 {
            let port = if i == 0 {
                if !keep {
                    continue;
                }
                l4.sport
            } else {
                (min + (start + i - 1) % span) as u16
            };
            out.port = port;
            match ct::peek(&fwd_key.reverse(&out)) {
                None => {
                    found = true;
                    break;
                }
                Some(r)
                    if closed.is_none()
                        && ip.proto == IPPROTO_TCP
                        && r.kind == ct_kind::REV_SNAT
                        && r.state == ct_state::CLOSING =>
                {
                    closed = Some(port);
                }
                Some(_) => {}
            }
        }
        if !found {
            // Every probed port is taken: a TCP flow to this destination
            // that has closed both ways (FIN or RST) gives its port up to
            // the new connection, as netfilter reuses a closed tuple (the
            // server's TIME_WAIT takes the new SYN: its timestamps are
            // newer). Its entries would only have waited for the GC.
            out.port = closed.ok_or(DropReason::NatPortsExhausted)?;
            if !ct::take_over_closed(&fwd_key.reverse(&out)) {
                return Err(DropReason::NatPortsExhausted);
            }
        }
    }
    let rev_key = fwd_key.reverse(&out);
    let back = CtEntry {
        last_seen: now,
        addr: ip.saddr,
        port: l4.sport,
        kind: rev_kind,
        state: ct_state::NEW,
        ifindex: ep.ifindex,
        container_ip: ip.saddr,
        ..CtEntry::default()
    };
    match ct::create(&fwd_key, &out, &rev_key, &back, false)? {
        Created::New => Ok(out),
        Created::Lost(winner) => Ok(winner),
        // The port was taken since the probe: by this very flow on another
        // CPU (translate as it does), or by another flow (drop; the
        // retransmission probes again).
        Created::RevTaken => ct::peek(&fwd_key).ok_or(DropReason::NatPortsExhausted),
    }
}

/// Passes a packet from the world to the stack, unless it is addressed to
/// a container: container ports are reached through published host ports
/// (and tracked flows) only, never by routing to the container's address
/// (Docker 28 drops those in the raw table).
#[inline(always)]
fn pass_world(daddr: u32) -> Result<i32, DropReason> {
    if maps::is_endpoint(daddr) {
        return Err(DropReason::NotPublished);
    }
    Ok(tc::ACT_UNSPEC)
}

/// From outside to something no flow covers. The host's own traffic
/// passes; a container's own address takes what its network's gateway
/// mode lets in by routing (`routed`: new connections to published
/// container ports and ICMP echo; `nat` without masquerade: published
/// container ports; `nat-unprotected`: anything), untranslated, tracked
/// so that the replies leave untranslated too; anything else addressed
/// to a container is dropped (`nat`: Docker 28's raw-table rule).
#[inline(always)]
fn to_address(ctx: &TcContext, ip: &Ipv4, l4: Option<&L4>) -> Result<i32, DropReason> {
    let Some(ep) = maps::endpoint(ip.daddr) else {
        return Ok(tc::ACT_UNSPEC);
    };
    let net = network(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    match l4 {
        Some(l4) if l4.hdr && direct_allowed(&net, ip.proto, ip.daddr, l4) => {
            routed_in_new_flow(ip, l4, &ep)?;
            counters::add(Counter::RoutedIn, 1);
            to_container(ctx, ip, l4, ip.daddr, l4.dport)
        }
        // nat-unprotected filters nothing: other protocols and ICMP
        // errors go in as they are.
        None if net.flags & NET_DIRECT_ALL != 0 && net.flags & NET_INTERNAL == 0 => {
            counters::add(Counter::RoutedIn, 1);
            deliver_ep(ctx, &ep)
        }
        _ => Err(DropReason::NotPublished),
    }
}

/// Whether a new connection routed to a container's own address is let
/// in by the container's network (a TCP SYN, a datagram, an ICMP echo
/// request; anything else needs a flow).
#[inline(always)]
fn direct_allowed(net: &Network, proto: u8, daddr: u32, l4: &L4) -> bool {
    if net.flags & NET_INTERNAL != 0 {
        return false;
    }
    let new = match proto {
        IPPROTO_TCP => l4.is_syn(),
        IPPROTO_UDP => true,
        // An echo request (an id of 0 keys requests and replies alike).
        IPPROTO_ICMP => l4.hdr && l4.tcp_flags == parse::ICMP_ECHO,
        _ => false,
    };
    new && (net.flags & NET_DIRECT_ALL != 0
        || (proto == IPPROTO_ICMP && net.flags & NET_DIRECT_ICMP != 0)
        || (proto != IPPROTO_ICMP
            && net.flags & NET_DIRECT_PORTS != 0
            && direct_port(proto, daddr, l4.dport)))
}

/// Whether (proto, container address, container port) is a published
/// container port reachable by routing.
#[inline(always)]
fn direct_port(proto: u8, addr: u32, port: u16) -> bool {
    let key = PortLpmKey::new(
        PORT_KEY_FULL_PREFIX,
        PortKey {
            proto,
            addr: addr.to_ne_bytes(),
            port: port.to_be_bytes(),
            _pad: 0,
        },
    );
    NETD_DIRECT
        .get(&key)
        .is_some_and(|t| port >= t.host_port_min && port <= t.host_port_max)
}

/// Creates the two entries of a connection routed to container `ep`'s
/// own address: ROUTED_IN (the client's direction, delivered as it is)
/// and REV_ROUTED_IN (the container's replies, sent back as they are).
/// A stale reverse entry on the same tuple is replaced.
#[inline(always)]
fn routed_in_new_flow(ip: &Ipv4, l4: &L4, ep: &Endpoint) -> Result<(), DropReason> {
    let key = ct::key(ip.saddr, ip.daddr, ip.proto, l4);
    let now = ct::now();
    let fwd = CtEntry {
        last_seen: now,
        addr: ip.daddr,
        port: l4.dport,
        kind: ct_kind::ROUTED_IN,
        state: ct_state::NEW,
        ifindex: ep.ifindex,
        container_ip: ip.daddr,
        ..CtEntry::default()
    };
    let rev_key: CtKey = key.reverse(&fwd);
    let back = CtEntry {
        kind: ct_kind::REV_ROUTED_IN,
        ..fwd
    };
    ct::create(&key, &fwd, &rev_key, &back, true).map(|_| ())
}

/// A pod's packet to a cluster address that is not a container here: out
/// of the uplink untranslated (FIB lookup + bpf_redirect_neigh), no
/// conntrack. `None`: not for the uplink (another local network: the
/// ordinary checks decide). The host itself, routes the kernel answers
/// (unreachable) and packets too big for the uplink go to the kernel,
/// untouched: it forwards, fragments or answers them itself.
#[inline(always)]
fn cluster_out(
    ctx: &TcContext,
    ip: &Ipv4,
    ifindex: u32,
    cfg: &Config,
) -> Result<Option<i32>, DropReason> {
    if maps::is_endpoint(ip.daddr) {
        return Ok(None);
    }
    let mut buf = MaybeUninit::uninit();
    let fib = fib_params(&mut buf, ip, ip.saddr, ifindex);
    let rc = fib_lookup(ctx, fib);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED => {}
        BPF_FIB_LKUP_RET_NOT_FWDED
        | BPF_FIB_LKUP_RET_BLACKHOLE
        | BPF_FIB_LKUP_RET_UNREACHABLE
        | BPF_FIB_LKUP_RET_PROHIBIT => return Ok(Some(tc::ACT_UNSPEC)),
        _ => return Err(DropReason::FibLookupFailed),
    }
    if fib.ifindex != cfg.uplink_ifindex {
        return Ok(None);
    }
    let hlen = if ip.is_later_fragment() {
        0
    } else {
        match parse::l4(ctx, ip.proto, ETH_HLEN + ip.hdr_len) {
            Ok(Some(l4)) => l4.hlen,
            _ => 0,
        }
    };
    if too_big(ctx, fib_mtu(rc, fib), fib.ifindex, ip, hlen) {
        counters::add(Counter::FragNeeded, 1);
        return Ok(Some(tc::ACT_UNSPEC));
    }
    counters::add(Counter::ClusterOut, 1);
    redirect_neigh(fib.ifindex, next_hop(fib)).map(Some)
}

/// Whether a connected host socket owns this datagram's tuple (a host
/// client using a published port number as its source port): its replies
/// are the host's, not a new flow to the container.
#[inline(always)]
fn host_socket_owns(ctx: &TcContext, ip: &Ipv4, l4: &L4) -> bool {
    // SAFETY: an all-zero tuple is valid; filled below.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    t.__bindgen_anon_1.ipv4.saddr = ip.saddr;
    t.__bindgen_anon_1.ipv4.daddr = ip.daddr;
    t.__bindgen_anon_1.ipv4.sport = l4.sport.to_be();
    t.__bindgen_anon_1.ipv4.dport = l4.dport.to_be();
    // SAFETY: helper calls; a found socket is released before returning.
    unsafe {
        let sk = bpf_sk_lookup_udp(
            ctx.skb.skb as *mut _,
            &mut t,
            12,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let owned = (*sk).dst_ip4 == ip.saddr && (*sk).dst_port == l4.sport.to_be();
        bpf_sk_release(sk as *mut _);
        owned
    }
}

fn try_from_world(ctx: &TcContext) -> Result<i32, DropReason> {
    counters::add_packet(
        Counter::FromWorldPackets,
        Counter::FromWorldBytes,
        ctx.len(),
    );
    let eth = parse::eth(ctx)?;
    if eth.proto != ETH_P_IP || eth.dst_group {
        return Ok(tc::ACT_UNSPEC);
    }
    // A malformed packet to the host is the host stack's business.
    let Ok(ip) = parse::ipv4(ctx, ETH_HLEN) else {
        return Ok(tc::ACT_UNSPEC);
    };
    // A loopback destination from outside would reach 127.0.0.1-bound
    // published ports (and the host's own loopback services).
    if is_loopback(ip.daddr) {
        return Err(DropReason::Martian);
    }
    // Another node's pod to a pod here: straight in, untranslated,
    // untracked (fragments too).
    if let Some(cfg) = config()
        && cfg.in_cluster(ip.saddr)
        && let Some(ep) = maps::endpoint(ip.daddr)
        && network(ep.net_id).is_some_and(|n| n.flags & NET_CLUSTER != 0)
    {
        counters::add(Counter::ClusterIn, 1);
        return deliver_ep(ctx, &ep);
    }
    let l4 = if ip.is_later_fragment() {
        // A fragment of a datagram netd translates, or the host's.
        match frag::lookup(FRAG_FROM_WORLD, &ip) {
            Some(l4) => l4,
            None => return pass_world(ip.daddr),
        }
    } else {
        // An ICMP error about a flow netd tracks (fragmentation needed:
        // path-MTU discovery through the NAT).
        if let Ok(Some(inner)) = icmp::parse(ctx, &ip)
            && let Some(e) = icmp::flow(&inner.reply_key())
            && icmp::from_world_kind(e.kind)
        {
            inner.untranslate_to_container(ctx, &ip, &e)?;
            counters::add(Counter::IcmpErrors, 1);
            return deliver(ctx, e.addr);
        }
        match parse::l4(ctx, ip.proto, ETH_HLEN + ip.hdr_len) {
            Ok(Some(l4)) => l4,
            _ => return to_address(ctx, &ip, None),
        }
    };
    let key = ct::key(ip.saddr, ip.daddr, ip.proto, &l4);
    // A new connection (SYN) on the tuple of an earlier one to a published
    // port starts afresh: the port may have been re-published elsewhere
    // since, and a stale translation must not outlive it.
    if ip.proto == IPPROTO_TCP
        && l4.is_syn()
        && let Some(old) = ct::peek(&key)
        && old.kind == ct_kind::DNAT
    {
        ct::remove(&key.reverse(&old));
        ct::remove(&key);
    }
    if let Some(e) = ct::lookup(&key, &l4).map(|h| h.e)
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
        return to_container(ctx, &ip, &l4, e.addr, e.port);
    }
    if ip.proto == IPPROTO_ICMP {
        return to_address(ctx, &ip, Some(&l4));
    }
    // A published port?
    let Some(t) = published(ip.proto, ip.daddr, l4.dport) else {
        return to_address(ctx, &ip, Some(&l4));
    };
    let Some(ep) = maps::endpoint(t.container_ip) else {
        return pass_world(ip.daddr);
    };
    let net = network(ep.net_id).ok_or(DropReason::NoEndpoint)?;
    if net.flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    if !l4.hdr {
        return Err(DropReason::FragmentUnknown);
    }
    // Only a new connection starts a flow: a TCP SYN, or a datagram that
    // no connected host socket owns. Anything else is the host's (its own
    // connections from a port number that is also published, or strays
    // it answers with an RST).
    if (ip.proto == IPPROTO_TCP && !l4.is_syn())
        || (ip.proto == IPPROTO_UDP && host_socket_owns(ctx, &ip, &l4))
    {
        return Ok(tc::ACT_UNSPEC);
    }
    let cport = t.container_port_min + (l4.dport - t.host_port_min);
    let now = ct::now();
    let fwd = CtEntry {
        last_seen: now,
        addr: t.container_ip,
        port: cport,
        kind: ct_kind::DNAT,
        state: ct_state::NEW,
        ifindex: ep.ifindex,
        container_ip: t.container_ip,
        ..CtEntry::default()
    };
    let rev_key = key.reverse(&fwd);
    let back = CtEntry {
        last_seen: now,
        addr: ip.daddr,
        port: l4.dport,
        kind: ct_kind::REV_DNAT,
        state: ct_state::NEW,
        ifindex: 0,
        container_ip: t.container_ip,
        ..CtEntry::default()
    };
    // A stale reverse entry of an earlier flow with the same tuple is
    // replaced (the translation is the same).
    let e = match ct::create(&key, &fwd, &rev_key, &back, true)? {
        Created::Lost(w) => w,
        _ => fwd,
    };
    counters::add(Counter::Dnat, 1);
    to_container(ctx, &ip, &l4, e.addr, e.port)
}

/// One of the host's own addresses (the uplink's always is).
#[inline(always)]
pub(crate) fn is_local(addr: u32) -> bool {
    // SAFETY: presence check only.
    unsafe { NETD_LOCAL.get(addr) }.is_some() || config().is_some_and(|c| c.uplink_ip == addr)
}

/// The published binding for (proto, host address, port): an exact host
/// address first, then the wildcard (for the host's own addresses).
#[inline(always)]
pub(crate) fn published(proto: u8, daddr: u32, port: u16) -> Option<netd_common::PortTarget> {
    let mut t = port_lookup(proto, daddr, port);
    if t.is_none() && is_local(daddr) {
        t = port_lookup(proto, 0, port);
    }
    t.filter(|t| port >= t.host_port_min && port <= t.host_port_max)
}

/// Applies a hairpin entry: source to (addr2, port2), destination to
/// (addr, port), into the container that has address `addr`.
#[inline(always)]
fn hairpin_rewrite(ctx: &TcContext, ip: &Ipv4, l4: &L4, e: &CtEntry) -> Result<i32, DropReason> {
    nat::rewrite_addr(ctx, ip.proto, l4, IP_SADDR_OFF, ip.saddr, e.addr2)?;
    nat::rewrite_port(ctx, ip.proto, l4, true, l4.sport, e.port2)?;
    nat::rewrite_addr(ctx, ip.proto, l4, IP_DADDR_OFF, ip.daddr, e.addr)?;
    nat::rewrite_port(ctx, ip.proto, l4, false, l4.dport, e.port)?;
    counters::add(Counter::Hairpin, 1);
    deliver(ctx, e.addr)
}

/// A container reaching a published port through a host address: the
/// target sees the connection come from that host address and a NAT port
/// (as Docker's hairpin masquerade does), so its replies come back here
/// whichever network either container is on (or when both are one).
/// Nothing enters an internal network this way either.
#[inline(always)]
fn hairpin_new_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    t: &netd_common::PortTarget,
    from: &Endpoint,
) -> Result<i32, DropReason> {
    let cfg = config().ok_or(DropReason::Unsupported)?;
    let Some(target) = maps::endpoint(t.container_ip) else {
        return Ok(tc::ACT_UNSPEC);
    };
    let tnet = network(target.net_id).ok_or(DropReason::NoEndpoint)?;
    if tnet.flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    let cport = t.container_port_min + (l4.dport - t.host_port_min);
    let (min, max) = (u32::from(cfg.nat_port_min), u32::from(cfg.nat_port_max));
    if max < min {
        return Err(DropReason::NatPortsExhausted);
    }
    let span = max - min + 1;
    let start = (u32::from(l4.sport) ^ u32::from_be(ip.saddr)) % span;
    let fwd_key = ct::key(ip.saddr, ip.daddr, ip.proto, l4);
    let now = ct::now();
    let mut fwd = CtEntry {
        last_seen: now,
        addr: t.container_ip,
        port: cport,
        kind: ct_kind::HAIRPIN,
        state: ct_state::NEW,
        ifindex: target.ifindex,
        container_ip: t.container_ip,
        addr2: ip.daddr,
        port2: 0,
        fib_stamp: 0,
    };
    let mut found = false;
    for i in 0..NAT_PROBES {
        fwd.port2 = (min + (start + i) % span) as u16;
        if ct::free(&fwd_key.reverse(&fwd)) {
            found = true;
            break;
        }
    }
    if !found {
        return Err(DropReason::NatPortsExhausted);
    }
    let rev_key = fwd_key.reverse(&fwd);
    let rev = CtEntry {
        last_seen: now,
        addr: ip.saddr,
        port: l4.sport,
        kind: ct_kind::REV_HAIRPIN,
        state: ct_state::NEW,
        ifindex: from.ifindex,
        container_ip: t.container_ip,
        addr2: ip.daddr,
        port2: l4.dport,
        fib_stamp: 0,
    };
    match ct::create(&fwd_key, &fwd, &rev_key, &rev, false)? {
        Created::New => hairpin_rewrite(ctx, ip, l4, &fwd),
        Created::Lost(w) => hairpin_rewrite(ctx, ip, l4, &w),
        Created::RevTaken => match ct::peek(&fwd_key) {
            Some(w) => hairpin_rewrite(ctx, ip, l4, &w),
            None => Err(DropReason::NatPortsExhausted),
        },
    }
}

#[inline(always)]
fn port_lookup(proto: u8, addr: u32, port: u16) -> Option<netd_common::PortTarget> {
    let key = PortLpmKey::new(
        PORT_KEY_FULL_PREFIX,
        PortKey {
            proto,
            addr: addr.to_ne_bytes(),
            port: port.to_be_bytes(),
            _pad: 0,
        },
    );
    NETD_PORTS.get(&key).copied()
}

/// Rewrites the destination to (addr, port) and delivers into the
/// container with address `addr` (a first fragment leaves its ports for
/// the later ones first).
#[inline(always)]
fn to_container(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    addr: u32,
    port: u16,
) -> Result<i32, DropReason> {
    if l4.hdr && ip.is_fragment() {
        frag::remember(FRAG_FROM_WORLD, ip, l4);
    } else if !l4.hdr {
        counters::add(Counter::Fragments, 1);
    }
    let Some(ep) = maps::endpoint(addr) else {
        return Err(DropReason::NoEndpoint);
    };
    nat::translate_into(ctx, ip, l4, addr, port, &ep.gw_mac, &ep.mac)?;
    counters::endpoint_tx(&ep, ctx.len());
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32)
}

/// Delivers an already translated packet into the container that has
/// address `addr` now (looked up, not remembered: a restarted container's
/// new veth gets its flows; one that is gone gets nothing).
///
/// bpf_redirect_peer skips the veth's MTU check: a packet above the
/// container's MTU (an uplink with a larger MTU than the network's) is
/// delivered whole, and the container's stack accepts it (Linux has no
/// receive-side MTU check). That is kept on purpose: handing it to the
/// kernel instead would fragment it or, with DF, drop it and answer with
/// an ICMP error quoting the translated header, which the sender cannot
/// match.
#[inline(always)]
fn deliver(ctx: &TcContext, addr: u32) -> Result<i32, DropReason> {
    let Some(ep) = maps::endpoint(addr) else {
        return Err(DropReason::NoEndpoint);
    };
    deliver_ep(ctx, &ep)
}

/// Delivers a packet into endpoint `ep` (its MACs set, bpf_redirect_peer).
#[inline(always)]
fn deliver_ep(ctx: &TcContext, ep: &Endpoint) -> Result<i32, DropReason> {
    nat::set_macs(ctx, &ep.gw_mac, &ep.mac)?;
    counters::endpoint_tx(ep, ctx.len());
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32)
}

#[inline(always)]
pub(crate) fn redirect_neigh(ifindex: u32, next_hop: u32) -> Result<i32, DropReason> {
    let mut nh = bpf_redir_neigh {
        nh_family: u32::from(AF_INET),
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: next_hop },
    };
    // SAFETY: helper call on an initialised struct of the size passed.
    Ok(unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    } as i32)
}

/// FIB lookup parameters for `ip` from `saddr` arriving on `ifindex`,
/// every other byte zero, in `buf`. Written word by word: `mem::zeroed` (and a `[0; 6]` MAC) becomes
/// a call to `memset` in the eBPF build (bpf-linker expands memcpy in
/// order, never memset), a byte loop behind a BPF-to-BPF call on every
/// packet that takes a FIB lookup.
#[inline(always)]
fn fib_params<'a>(
    buf: &'a mut MaybeUninit<FibParams>,
    ip: &Ipv4,
    saddr: u32,
    ifindex: u32,
) -> &'a mut FibParams {
    use core::mem::offset_of;
    const _: () = {
        assert!(core::mem::size_of::<FibParams>() == 64);
        assert!(offset_of!(FibParams, l4_protocol) == 1);
        assert!(offset_of!(FibParams, ifindex) == 8);
        assert!(offset_of!(FibParams, __bindgen_anon_2) == 12);
        assert!(offset_of!(FibParams, __bindgen_anon_3) == 16);
        assert!(offset_of!(FibParams, __bindgen_anon_4) == 32);
    };
    let w: [u32; 16] = [
        // family, l4_protocol, sport
        u32::from_ne_bytes([AF_INET, ip.proto, 0, 0]),
        // dport, tot_len (0: the kernel checks the MTU GSO-aware,
        // is_skb_forwardable)
        0,
        ifindex,
        // tos
        u32::from_ne_bytes([ip.tos, 0, 0, 0]),
        saddr,
        0,
        0,
        0,
        ip.daddr,
        0,
        0,
        0,
        // VLAN / table id, MACs
        0,
        0,
        0,
        0,
    ];
    // Volatile stores, in the caller's buffer: LLVM merges a run of plain
    // zero stores (or a copy of known zeros) back into a memset call.
    let dst = buf.as_mut_ptr() as *mut u32;
    // SAFETY: bpf_fib_lookup is plain integers (and unions of them), 64
    // bytes, 4-aligned: the 16 words initialise all of it, holding the
    // fields at the offsets asserted above.
    unsafe {
        for (i, v) in w.iter().enumerate() {
            dst.add(i).write_volatile(*v);
        }
        buf.assume_init_mut()
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
