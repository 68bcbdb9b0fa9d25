//! IPv6 rewrites (NAT66). IPv6 has no header checksum; the addresses are
//! in the pseudo-header of TCP, UDP and ICMPv6, so an address change
//! updates the L4 checksum by the difference of the two addresses
//! (bpf_csum_diff, then bpf_l4_csum_replace with BPF_F_PSEUDO_HDR and
//! BPF_F_IPV6, which knows CHECKSUM_PARTIAL and, for IPv6, leaves a
//! CHECKSUM_COMPLETE skb's csum alone). ICMPv6 errors about translated
//! flows are translated back: the outer address and the embedded
//! packet's address and port, with the ICMPv6 checksum fixed.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_diff,
    programs::TcContext,
};
use netd_common::{
    DropReason, ct_kind,
    v6::{CtEntry6, CtKey6, Ip6},
};

use crate::{
    parse::{IPPROTO_TCP, IPPROTO_UDP, L4},
    parse6::{
        ICMP6_DEST_UNREACH, ICMP6_ECHO_REQUEST, ICMP6_PKT_TOOBIG, ICMP6_TIME_EXCEEDED,
        IP6_DADDR_OFF, IP6_SADDR_OFF, IPPROTO_ICMPV6, Ipv6,
    },
};

const E: DropReason = DropReason::RewriteFailed;
/// bpf_l4_csum_replace: the packet is IPv6 (Linux 6.16).
const BPF_F_IPV6: u64 = 1 << 7;

/// The one's-complement difference between two addresses.
#[inline(always)]
fn diff(old: &Ip6, new: &Ip6) -> Result<u64, DropReason> {
    let mut o = old.a;
    let mut n = new.a;
    // SAFETY: helper call on two 16-byte stack buffers.
    let d = unsafe { bpf_csum_diff(o.as_mut_ptr(), 16, n.as_mut_ptr(), 16, 0) };
    if d < 0 {
        return Err(E);
    }
    Ok(d as u64 & 0xffff_ffff)
}

/// Replaces the address at `addr_off` and fixes the L4 checksum (when the
/// L4 header is in this packet).
#[inline(always)]
pub fn rewrite_addr(
    ctx: &TcContext,
    proto: u8,
    l4: &L4,
    addr_off: usize,
    old: &Ip6,
    new: &Ip6,
) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    if l4.hdr && !(proto == IPPROTO_UDP && l4.udp_no_csum) {
        let mut flags = u64::from(BPF_F_PSEUDO_HDR) | BPF_F_IPV6;
        if proto == IPPROTO_UDP {
            flags |= u64::from(BPF_F_MARK_MANGLED_0);
        }
        ctx.l4_csum_replace(l4.csum_off, 0, diff(old, new)?, flags)
            .map_err(|_| E)?;
    }
    ctx.store(addr_off, new, 0).map_err(|_| E)
}

/// Replaces a port or, for ICMPv6 echo, the id, fixing the L4 checksum.
#[inline(always)]
pub fn rewrite_port(
    ctx: &TcContext,
    proto: u8,
    l4: &L4,
    source: bool,
    old: u16,
    new: u16,
) -> Result<(), DropReason> {
    if old == new || !l4.hdr {
        return Ok(());
    }
    let field = if proto == IPPROTO_ICMPV6 {
        l4.off + 4
    } else if source {
        l4.off
    } else {
        l4.off + 2
    };
    let (old_be, new_be) = (old.to_be(), new.to_be());
    if !(proto == IPPROTO_UDP && l4.udp_no_csum) {
        let mut flags = 2u64;
        if proto == IPPROTO_UDP {
            flags |= u64::from(BPF_F_MARK_MANGLED_0);
        }
        ctx.l4_csum_replace(l4.csum_off, u64::from(old_be), u64::from(new_be), flags)
            .map_err(|_| E)?;
    }
    ctx.store(field, &new_be, 0).map_err(|_| E)
}

/// The embedded packet of an ICMPv6 error (no extension headers in it:
/// an error quoting one is not translated).
pub struct Inner {
    icmp_csum_off: usize,
    ip_off: usize,
    saddr: Ip6,
    daddr: Ip6,
    proto: u8,
    sport_off: usize,
    dport_off: usize,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, DropReason> {
    ctx.load::<T>(off).map_err(|_| DropReason::Malformed)
}

/// Parses an ICMPv6 error (destination unreachable, packet too big, time
/// exceeded); `Ok(None)` for anything else.
#[inline(always)]
pub fn parse_error(ctx: &TcContext, ip: &Ipv6) -> Result<Option<Inner>, DropReason> {
    if ip.proto != IPPROTO_ICMPV6 || ip.is_later_fragment() {
        return Ok(None);
    }
    let icmp = ip.l4_off;
    let ty: u8 = load(ctx, icmp)?;
    if ty != ICMP6_DEST_UNREACH && ty != ICMP6_PKT_TOOBIG && ty != ICMP6_TIME_EXCEEDED {
        return Ok(None);
    }
    let ip_off = icmp + 8;
    let w0: u32 = load(ctx, ip_off)?;
    if u32::from_be(w0) >> 28 != 6 {
        return Err(DropReason::Malformed);
    }
    let proto: u8 = load(ctx, ip_off + 6)?;
    let saddr: Ip6 = load(ctx, ip_off + 8)?;
    let daddr: Ip6 = load(ctx, ip_off + 24)?;
    let l4 = ip_off + 40;
    let (sport_off, dport_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (l4, l4 + 2),
        IPPROTO_ICMPV6 => (l4 + 4, l4 + 4),
        _ => return Ok(None),
    };
    let sport = u16::from_be(load::<u16>(ctx, sport_off)?);
    let dport = u16::from_be(load::<u16>(ctx, dport_off)?);
    let (sport, dport) = if proto == IPPROTO_ICMPV6 {
        let ity: u8 = load(ctx, l4)?;
        if ity == ICMP6_ECHO_REQUEST {
            (sport, 0)
        } else {
            (0, dport)
        }
    } else {
        (sport, dport)
    };
    Ok(Some(Inner {
        icmp_csum_off: icmp + 2,
        ip_off,
        saddr,
        daddr,
        proto,
        sport_off,
        dport_off,
        sport,
        dport,
    }))
}

impl Inner {
    /// The conntrack key of the flow the error travels back along.
    #[inline(always)]
    pub fn reply_key(&self) -> CtKey6 {
        CtKey6 {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// An inner address: part of the ICMPv6 message (not of its
    /// pseudo-header).
    #[inline(always)]
    fn inner_addr(
        &self,
        ctx: &TcContext,
        off: usize,
        old: &Ip6,
        new: &Ip6,
    ) -> Result<(), DropReason> {
        if old == new {
            return Ok(());
        }
        ctx.l4_csum_replace(self.icmp_csum_off, 0, diff(old, new)?, 0)
            .map_err(|_| E)?;
        ctx.store(off, new, 0).map_err(|_| E)
    }

    #[inline(always)]
    fn inner_port(
        &self,
        ctx: &TcContext,
        off: usize,
        old: u16,
        new: u16,
    ) -> Result<(), DropReason> {
        if old == new {
            return Ok(());
        }
        let (o, n) = (old.to_be(), new.to_be());
        ctx.l4_csum_replace(self.icmp_csum_off, u64::from(o), u64::from(n), 2)
            .map_err(|_| E)?;
        ctx.store(off, &n, 0).map_err(|_| E)
    }

    /// The outer address: in the ICMPv6 pseudo-header.
    #[inline(always)]
    fn outer(&self, ctx: &TcContext, off: usize, old: &Ip6, new: &Ip6) -> Result<(), DropReason> {
        if old == new {
            return Ok(());
        }
        ctx.l4_csum_replace(
            self.icmp_csum_off,
            0,
            diff(old, new)?,
            u64::from(BPF_F_PSEUDO_HDR) | BPF_F_IPV6,
        )
        .map_err(|_| E)?;
        ctx.store(off, new, 0).map_err(|_| E)
    }

    /// From the world, about a packet netd translated on its way out:
    /// the embedded source (and the outer destination) become the
    /// container's again.
    #[inline(always)]
    pub fn untranslate_to_container(
        &self,
        ctx: &TcContext,
        ip: &Ipv6,
        e: &CtEntry6,
    ) -> Result<(), DropReason> {
        self.inner_addr(ctx, self.ip_off + 8, &self.saddr, &e.addr)?;
        let (off, old) = if self.proto == IPPROTO_ICMPV6 && self.sport == 0 {
            (self.dport_off, self.dport)
        } else {
            (self.sport_off, self.sport)
        };
        self.inner_port(ctx, off, old, e.port)?;
        self.outer(ctx, IP6_DADDR_OFF, &ip.daddr, &e.addr)
    }

    /// From a container, about a packet netd translated on its way in:
    /// the embedded destination (and the outer source) become the host's.
    #[inline(always)]
    pub fn untranslate_to_world(
        &self,
        ctx: &TcContext,
        ip: &Ipv6,
        e: &CtEntry6,
    ) -> Result<(), DropReason> {
        self.inner_addr(ctx, self.ip_off + 24, &self.daddr, &e.addr)?;
        let (off, old) = if self.proto == IPPROTO_ICMPV6 && self.dport == 0 {
            (self.sport_off, self.sport)
        } else {
            (self.dport_off, self.dport)
        };
        self.inner_port(ctx, off, old, e.port)?;
        self.outer(ctx, IP6_SADDR_OFF, &ip.saddr, &e.addr)
    }
}

#[inline(always)]
pub fn from_world_kind(kind: u8) -> bool {
    matches!(
        kind,
        ct_kind::REV_SNAT | ct_kind::DNAT | ct_kind::REV_ROUTED | ct_kind::ROUTED_IN
    )
}

#[inline(always)]
pub fn from_container_kind(kind: u8) -> bool {
    matches!(
        kind,
        ct_kind::SNAT | ct_kind::REV_DNAT | ct_kind::REV_ROUTED_IN
    )
}
