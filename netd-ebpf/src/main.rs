//! netd's eBPF datapath. One thin entry point per attach point; the logic
//! lives in per-concern modules (parse, maps, ct, nat, counters).
//!
//! Walks (see DESIGN.md section 5):
//! - from_container (TC ingress of each container's host-side veth):
//!   anti-spoofing, conntrack hits (masquerade out, published-port replies
//!   back out), same-network unicast straight to the peer container with
//!   bpf_redirect_peer (icc enforced), isolation between networks, and new
//!   masqueraded flows out of the uplink (FIB lookup + bpf_redirect_neigh).
//! - from_world (TC ingress of the uplink): replies of masqueraded flows
//!   and connections to published ports, translated and redirected into
//!   the container.
//! Everything else (ARP, broadcast, the gateway, the host's own traffic,
//! fragments, protocols netd does not translate) is passed on untouched.
#![no_std]
#![no_main]

mod counters;
mod ct;
mod icmp;
mod maps;
mod nat;
mod parse;
mod sock;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect_neigh, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use netd_common::{
    Config, Counter, CtEntry, DropReason, Endpoint, EndpointKey, NET_ICC, NET_INTERNAL,
    NET_MASQUERADE, PORT_KEY_FULL_PREFIX, PortKey, ct_kind, ct_state, tc,
};

use crate::{
    ct::Insert,
    maps::{NETD_CFG, NETD_EP, NETD_EP_IF, NETD_LOCAL, NETD_NET, NETD_PORTS, PortLpmKey},
    parse::{ETH_HLEN, ETH_P_IP, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4, L4},
};

const AF_INET: u8 = 2;
/// How many source ports masquerade tries before giving up.
const NAT_PROBES: u32 = 32;

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    match try_from_container(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

#[classifier]
pub fn from_world(ctx: TcContext) -> i32 {
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

fn try_from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    counters::add(Counter::FromContainerPackets, 1);
    counters::add(Counter::FromContainerBytes, u64::from(ctx.len()));
    let ifindex = ingress_ifindex(ctx);
    // SAFETY: map value copied out.
    let Some(ep) = (unsafe { NETD_EP_IF.get(EndpointKey { ifindex }) }).copied() else {
        return Ok(tc::ACT_UNSPEC);
    };
    counters::endpoint_rx(ifindex, ctx.len());

    let eth = parse::eth(ctx)?;
    if eth.src != ep.mac {
        return Err(DropReason::SpoofedSource);
    }
    if eth.proto != ETH_P_IP {
        return Ok(tc::ACT_UNSPEC);
    }
    let ip = parse::ipv4(ctx, ETH_HLEN)?;
    counters::add(Counter::FromContainerIpv4, 1);
    if ip.saddr != ep.ip && ip.saddr != 0 {
        return Err(DropReason::SpoofedSource);
    }
    if eth.dst_group || ip.is_fragment() {
        return Ok(tc::ACT_UNSPEC);
    }
    // An ICMP error about a flow netd translated on its way in.
    if let Some(inner) = icmp::parse(ctx, &ip)?
        && let Some(e) = icmp::flow(&inner.reply_key())
        && icmp::from_container_kind(e.kind)
    {
        inner.untranslate_to_world(ctx, &ip, &e)?;
        counters::add(Counter::IcmpErrors, 1);
        return to_uplink(ctx, &ip, e.addr);
    }
    let l4 = parse::l4(ctx, ip.proto, ETH_HLEN + ip.hdr_len)?;
    if let Some(l4) = &l4 {
        if ip.proto == parse::IPPROTO_TCP {
            counters::add(Counter::FromContainerTcp, 1);
            if l4.is_syn() {
                aya_log_ebpf::debug!(
                    ctx,
                    "from_container: SYN {:i}:{} -> {:i}:{}",
                    u32::from_be(ip.saddr),
                    l4.sport,
                    u32::from_be(ip.daddr),
                    l4.dport
                );
            }
        }
        // A flow netd translates already: masquerade or a published-port reply.
        let key = ct::key(ip.saddr, ip.daddr, ip.proto, l4);
        if let Some(e) = ct::lookup(&key, l4) {
            if e.kind == ct_kind::HAIRPIN || e.kind == ct_kind::REV_HAIRPIN {
                return hairpin_rewrite(ctx, &ip, l4, &e);
            }
            if e.kind == ct_kind::SNAT || e.kind == ct_kind::REV_DNAT {
                nat::rewrite_addr(ctx, ip.proto, l4, IP_SADDR_OFF, ip.saddr, e.addr)?;
                nat::rewrite_port(ctx, ip.proto, l4, true, l4.sport, e.port)?;
                let c = if e.kind == ct_kind::SNAT {
                    Counter::Snat
                } else {
                    Counter::RevDnat
                };
                counters::add(c, 1);
                return to_uplink(ctx, &ip, e.addr);
            }
        }
    }

    // A host address's published port (hairpin): translated both ways
    // and delivered straight into the target container.
    if let Some(l4) = &l4
        && ip.proto != parse::IPPROTO_ICMP
        && is_local(ip.daddr)
        && let Some(t) = published(ip.proto, ip.daddr, l4.dport)
    {
        // Nothing leaves an internal network, not even this way.
        // SAFETY: map value copied out.
        let net = unsafe { NETD_NET.get(ep.net_id) }
            .copied()
            .unwrap_or_default();
        if net.flags & NET_INTERNAL != 0 {
            return Err(DropReason::InternalNetwork);
        }
        return hairpin_new_flow(ctx, &ip, l4, &t, ifindex);
    }

    // Another container?
    // SAFETY: map value copied out.
    if let Some(peer) = unsafe { NETD_EP.get(ip.daddr) }.copied() {
        if peer.net_id != ep.net_id {
            return Err(DropReason::NetworkIsolation);
        }
        // SAFETY: map value copied out.
        let net = unsafe { NETD_NET.get(ep.net_id) }
            .copied()
            .unwrap_or_default();
        if net.flags & NET_ICC == 0 {
            return Err(DropReason::IccDenied);
        }
        counters::add(Counter::Forwarded, 1);
        counters::endpoint_tx(peer.ifindex, ctx.len());
        // SAFETY: helper call.
        return Ok(unsafe { bpf_redirect_peer(peer.ifindex, 0) } as i32);
    }

    // Somewhere else: the host itself (pass), the world (masquerade), or
    // another network (isolation).
    let cfg = config().ok_or(DropReason::Unsupported)?;
    let mut fib = fib_params(&ip, ifindex);
    // SAFETY: helper call on a properly sized, initialised struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_NOT_FWDED | BPF_FIB_LKUP_RET_FRAG_NEEDED => return Ok(tc::ACT_UNSPEC),
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => {}
        _ => return Err(DropReason::FibLookupFailed),
    }
    // SAFETY: map value copied out.
    let net = unsafe { NETD_NET.get(ep.net_id) }
        .copied()
        .unwrap_or_default();
    if fib.ifindex != cfg.uplink_ifindex {
        return Err(DropReason::NetworkIsolation);
    }
    if net.flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    if net.flags & NET_MASQUERADE == 0 {
        return redirect_neigh(cfg.uplink_ifindex);
    }
    let Some(l4) = l4 else {
        return Err(DropReason::Unsupported);
    };
    let port = snat_new_flow(&ip, &l4, &cfg, &ep)?;
    nat::rewrite_addr(ctx, ip.proto, &l4, IP_SADDR_OFF, ip.saddr, cfg.uplink_ip)?;
    nat::rewrite_port(ctx, ip.proto, &l4, true, l4.sport, port)?;
    counters::add(Counter::Snat, 1);
    redirect_neigh(cfg.uplink_ifindex)
}

/// Creates both conntrack entries of a new masqueraded flow; returns the
/// source port: the original one when it is in the NAT range and free,
/// else the first free one probing from a hash.
#[inline(always)]
fn snat_new_flow(ip: &Ipv4, l4: &L4, cfg: &Config, ep: &Endpoint) -> Result<u16, DropReason> {
    let (min, max) = (u32::from(cfg.nat_port_min), u32::from(cfg.nat_port_max));
    if max < min {
        return Err(DropReason::NatPortsExhausted);
    }
    let span = max - min + 1;
    let orig = u32::from(l4.sport);
    let start = (orig ^ u32::from_be(ip.daddr) ^ (u32::from(l4.dport) << 3)) % span;
    let fwd = ct::key(ip.saddr, ip.daddr, ip.proto, l4);
    let now = ct::now();
    // First the container's own port, as netfilter's masquerade keeps it
    // when the translated tuple is free (so a container's port reuse maps
    // onto the same tuple the server last saw from it), then the NAT range
    // from a hash.
    for i in 0..NAT_PROBES + 1 {
        let port = if i == 0 {
            if orig < 1024 && ip.proto != parse::IPPROTO_ICMP {
                continue;
            }
            l4.sport
        } else {
            (min + (start + i - 1) % span) as u16
        };
        let out = CtEntry {
            last_seen: now,
            addr: cfg.uplink_ip,
            port,
            kind: ct_kind::SNAT,
            state: ct_state::NEW,
            ifindex: 0,
            container_ip: ip.saddr,
            ..CtEntry::default()
        };
        let rev = fwd.reverse(&out);
        let back = CtEntry {
            last_seen: now,
            addr: ip.saddr,
            port: l4.sport,
            kind: ct_kind::REV_SNAT,
            state: ct_state::NEW,
            ifindex: ep.ifindex,
            container_ip: ip.saddr,
            ..CtEntry::default()
        };
        match ct::insert(&rev, &back)? {
            Insert::Ok => {}
            Insert::Exists => continue,
        }
        if let Err(e) = ct::insert(&fwd, &out) {
            ct::remove(&rev);
            return Err(e);
        }
        counters::add(Counter::CtCreated, 2);
        return Ok(port);
    }
    Err(DropReason::NatPortsExhausted)
}

fn try_from_world(ctx: &TcContext) -> Result<i32, DropReason> {
    counters::add(Counter::FromWorldPackets, 1);
    counters::add(Counter::FromWorldBytes, u64::from(ctx.len()));
    let eth = parse::eth(ctx)?;
    if eth.proto != ETH_P_IP || eth.dst_group {
        return Ok(tc::ACT_UNSPEC);
    }
    // A malformed packet to the host is the host stack's business.
    let Ok(ip) = parse::ipv4(ctx, ETH_HLEN) else {
        return Ok(tc::ACT_UNSPEC);
    };
    if ip.is_fragment() {
        return Ok(tc::ACT_UNSPEC);
    }
    // An ICMP error about a flow netd translated on its way out
    // (fragmentation needed: path-MTU discovery through the NAT).
    if let Ok(Some(inner)) = icmp::parse(ctx, &ip)
        && let Some(e) = icmp::flow(&inner.reply_key())
        && icmp::from_world_kind(e.kind)
    {
        inner.untranslate_to_container(ctx, &ip, &e)?;
        counters::add(Counter::IcmpErrors, 1);
        return deliver(ctx, e.ifindex);
    }
    let Ok(Some(l4)) = parse::l4(ctx, ip.proto, ETH_HLEN + ip.hdr_len) else {
        return Ok(tc::ACT_UNSPEC);
    };
    let key = ct::key(ip.saddr, ip.daddr, ip.proto, &l4);
    // A new connection (SYN) on the tuple of an earlier one to a published
    // port starts afresh: the port may have been re-published elsewhere
    // since, and a stale translation must not outlive it.
    if ip.proto == parse::IPPROTO_TCP
        && l4.is_syn()
        && let Some(old) = ct::peek(&key)
        && old.kind == ct_kind::DNAT
    {
        ct::remove(&key.reverse(&old));
        ct::remove(&key);
    }
    if let Some(e) = ct::lookup(&key, &l4)
        && (e.kind == ct_kind::REV_SNAT || e.kind == ct_kind::DNAT)
    {
        let c = if e.kind == ct_kind::REV_SNAT {
            Counter::RevSnat
        } else {
            Counter::Dnat
        };
        counters::add(c, 1);
        return to_container(ctx, &ip, &l4, e.addr, e.port, e.ifindex);
    }
    if ip.proto == parse::IPPROTO_ICMP {
        return Ok(tc::ACT_UNSPEC);
    }
    // A published port?
    let Some(t) = published(ip.proto, ip.daddr, l4.dport) else {
        return Ok(tc::ACT_UNSPEC);
    };
    // SAFETY: map value copied out.
    let Some(ep) = (unsafe { NETD_EP.get(t.container_ip) }).copied() else {
        return Ok(tc::ACT_UNSPEC);
    };
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
    // A stale entry of an earlier flow with the same tuple is replaced.
    ct::remove(&rev_key);
    ct::insert(&rev_key, &back)?;
    if let Err(e) = ct::insert(&key, &fwd) {
        ct::remove(&rev_key);
        return Err(e);
    }
    counters::add(Counter::CtCreated, 2);
    counters::add(Counter::Dnat, 1);
    to_container(ctx, &ip, &l4, t.container_ip, cport, ep.ifindex)
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
/// (addr, port), into the container behind `ifindex`.
#[inline(always)]
fn hairpin_rewrite(ctx: &TcContext, ip: &Ipv4, l4: &L4, e: &CtEntry) -> Result<i32, DropReason> {
    nat::rewrite_addr(ctx, ip.proto, l4, IP_SADDR_OFF, ip.saddr, e.addr2)?;
    nat::rewrite_port(ctx, ip.proto, l4, true, l4.sport, e.port2)?;
    nat::rewrite_addr(ctx, ip.proto, l4, IP_DADDR_OFF, ip.daddr, e.addr)?;
    nat::rewrite_port(ctx, ip.proto, l4, false, l4.dport, e.port)?;
    counters::add(Counter::Hairpin, 1);
    deliver(ctx, e.ifindex)
}

/// A container reaching a published port through a host address: the
/// target sees the connection come from that host address and a NAT port
/// (as Docker's hairpin masquerade does), so its replies come back here
/// whichever network either container is on (or when both are one).
#[inline(always)]
fn hairpin_new_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    t: &netd_common::PortTarget,
    from_ifindex: u32,
) -> Result<i32, DropReason> {
    let cfg = config().ok_or(DropReason::Unsupported)?;
    // SAFETY: map value copied out.
    let Some(target) = (unsafe { NETD_EP.get(t.container_ip) }).copied() else {
        return Ok(tc::ACT_UNSPEC);
    };
    let cport = t.container_port_min + (l4.dport - t.host_port_min);
    let (min, max) = (u32::from(cfg.nat_port_min), u32::from(cfg.nat_port_max));
    if max < min {
        return Err(DropReason::NatPortsExhausted);
    }
    let span = max - min + 1;
    let start = (u32::from(l4.sport) ^ u32::from_be(ip.saddr)) % span;
    let fwd_key = ct::key(ip.saddr, ip.daddr, ip.proto, l4);
    let now = ct::now();
    for i in 0..NAT_PROBES {
        let np = (min + (start + i) % span) as u16;
        let fwd = CtEntry {
            last_seen: now,
            addr: t.container_ip,
            port: cport,
            kind: ct_kind::HAIRPIN,
            state: ct_state::NEW,
            ifindex: target.ifindex,
            container_ip: t.container_ip,
            addr2: ip.daddr,
            port2: np,
            _pad: 0,
        };
        let rev_key = fwd_key.reverse(&fwd);
        let rev = CtEntry {
            last_seen: now,
            addr: ip.saddr,
            port: l4.sport,
            kind: ct_kind::REV_HAIRPIN,
            state: ct_state::NEW,
            ifindex: from_ifindex,
            container_ip: t.container_ip,
            addr2: ip.daddr,
            port2: l4.dport,
            _pad: 0,
        };
        match ct::insert(&rev_key, &rev)? {
            Insert::Exists => continue,
            Insert::Ok => {}
        }
        if let Err(e) = ct::insert(&fwd_key, &fwd) {
            ct::remove(&rev_key);
            return Err(e);
        }
        counters::add(Counter::CtCreated, 2);
        return hairpin_rewrite(ctx, ip, l4, &fwd);
    }
    Err(DropReason::NatPortsExhausted)
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
/// container behind host veth `ifindex`.
#[inline(always)]
fn to_container(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    addr: u32,
    port: u16,
    ifindex: u32,
) -> Result<i32, DropReason> {
    nat::rewrite_addr(ctx, ip.proto, l4, IP_DADDR_OFF, ip.daddr, addr)?;
    nat::rewrite_port(ctx, ip.proto, l4, false, l4.dport, port)?;
    deliver(ctx, ifindex)
}

/// Delivers an already translated packet into the container behind host
/// veth `ifindex`.
#[inline(always)]
fn deliver(ctx: &TcContext, ifindex: u32) -> Result<i32, DropReason> {
    // SAFETY: map value copied out.
    let Some(ep) = (unsafe { NETD_EP_IF.get(EndpointKey { ifindex }) }).copied() else {
        return Err(DropReason::Unsupported);
    };
    nat::set_macs(ctx, &ep.gw_mac, &ep.mac)?;
    counters::endpoint_tx(ifindex, ctx.len());
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}

/// Sends a (translated) packet out of the uplink: FIB lookup for the
/// egress, the kernel resolves the neighbour.
#[inline(always)]
fn to_uplink(ctx: &TcContext, ip: &Ipv4, new_saddr: u32) -> Result<i32, DropReason> {
    let cfg = config().ok_or(DropReason::Unsupported)?;
    let mut fib = fib_params(ip, cfg.uplink_ifindex);
    fib.__bindgen_anon_3.ipv4_src = new_saddr;
    // SAFETY: helper call on a properly sized, initialised struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => redirect_neigh(fib.ifindex),
        // A reply to the host itself (or a hairpin): let the stack route it.
        BPF_FIB_LKUP_RET_NOT_FWDED => Ok(tc::ACT_UNSPEC),
        _ => Err(DropReason::FibLookupFailed),
    }
}

#[inline(always)]
fn redirect_neigh(ifindex: u32) -> Result<i32, DropReason> {
    // SAFETY: helper call; NULL params = the kernel picks the next hop.
    Ok(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

#[inline(always)]
fn fib_params(ip: &Ipv4, ifindex: u32) -> FibParams {
    // SAFETY: an all-zero bpf_fib_lookup is valid.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    // tot_len 0: the kernel checks the MTU GSO-aware (is_skb_forwardable).
    p.ifindex = ifindex;
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = ip.saddr;
    p.__bindgen_anon_4.ipv4_dst = ip.daddr;
    p
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
