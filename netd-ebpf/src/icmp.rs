//! ICMP errors (destination unreachable, time exceeded) about a translated
//! flow are translated back: the outer address, and the embedded
//! original header's address and port, with the inner IPv4 checksum and
//! the ICMP checksum fixed. This is what makes path-MTU discovery
//! ("fragmentation needed") and port-unreachable work through the NAT.
use aya_ebpf::programs::TcContext;
use netd_common::{CtEntry, CtKey, DropReason, ct_kind};

use crate::{
    ct,
    parse::{ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const E: DropReason = DropReason::RewriteFailed;

/// The embedded header of an ICMP error.
pub struct Inner {
    icmp_csum_off: usize,
    ip_off: usize,
    saddr: u32,
    daddr: u32,
    proto: u8,
    /// Offset of the inner source / destination port (ICMP echo: the id).
    sport_off: usize,
    dport_off: usize,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, DropReason> {
    ctx.load::<T>(off).map_err(|_| DropReason::Malformed)
}

/// Parses an ICMP error's embedded header; `Ok(None)` if this is not an
/// ICMP error netd translates.
#[inline(always)]
pub fn parse(ctx: &TcContext, ip: &Ipv4) -> Result<Option<Inner>, DropReason> {
    if ip.proto != IPPROTO_ICMP {
        return Ok(None);
    }
    let icmp = ETH_HLEN + ip.hdr_len;
    let ty: u8 = load(ctx, icmp)?;
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return Ok(None);
    }
    let ip_off = icmp + 8;
    let vihl: u8 = load(ctx, ip_off)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || ihl > 60 {
        return Err(DropReason::Malformed);
    }
    let proto: u8 = load(ctx, ip_off + 9)?;
    let saddr: u32 = load(ctx, ip_off + 12)?;
    let daddr: u32 = load(ctx, ip_off + 16)?;
    let l4 = ip_off + ihl;
    let (sport_off, dport_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (l4, l4 + 2),
        IPPROTO_ICMP => (l4 + 4, l4 + 4),
        _ => return Ok(None),
    };
    let sport = u16::from_be(load::<u16>(ctx, sport_off)?);
    let dport = u16::from_be(load::<u16>(ctx, dport_off)?);
    // The inner ICMP echo is a request we translated (id in "sport") or a
    // reply (id in "dport"), as conntrack keys it.
    let (sport, dport) = if proto == IPPROTO_ICMP {
        let ity: u8 = load(ctx, l4)?;
        if ity == 8 { (sport, 0) } else { (0, dport) }
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
    /// The conntrack key of the flow the error is about, in the direction
    /// opposite to the embedded packet (the embedded packet is one netd
    /// sent; the error travels back along the flow).
    #[inline(always)]
    pub fn reply_key(&self) -> CtKey {
        CtKey::new(self.daddr, self.saddr, self.dport, self.sport, self.proto)
    }

    #[inline(always)]
    fn rewrite_inner_addr(
        &self,
        ctx: &TcContext,
        off: usize,
        old: u32,
        new: u32,
    ) -> Result<(), DropReason> {
        if old == new {
            return Ok(());
        }
        let csum_off = self.ip_off + 10;
        let old_c: u16 = load(ctx, csum_off)?;
        ctx.l3_csum_replace(csum_off, u64::from(old), u64::from(new), 4)
            .map_err(|_| E)?;
        let new_c: u16 = load(ctx, csum_off)?;
        ctx.l4_csum_replace(self.icmp_csum_off, u64::from(old), u64::from(new), 4)
            .map_err(|_| E)?;
        ctx.l4_csum_replace(self.icmp_csum_off, u64::from(old_c), u64::from(new_c), 2)
            .map_err(|_| E)?;
        ctx.store(off, &new, 0).map_err(|_| E)
    }

    #[inline(always)]
    fn rewrite_inner_port(
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

    /// An error arriving from the world about a packet netd translated on
    /// its way out: the embedded packet's source (and the outer
    /// destination) become the container's again.
    #[inline(always)]
    pub fn untranslate_to_container(
        &self,
        ctx: &TcContext,
        ip: &Ipv4,
        e: &CtEntry,
    ) -> Result<(), DropReason> {
        self.rewrite_inner_addr(ctx, self.ip_off + 12, self.saddr, e.addr)?;
        let (off, old) = if self.proto == IPPROTO_ICMP && self.sport == 0 {
            (self.dport_off, self.dport)
        } else {
            (self.sport_off, self.sport)
        };
        self.rewrite_inner_port(ctx, off, old, e.port)?;
        outer(ctx, crate::parse::IP_DADDR_OFF, ip.daddr, e.addr)
    }

    /// An error a container sends about a packet netd translated on its
    /// way in: the embedded packet's destination (and the outer source)
    /// become the host's.
    #[inline(always)]
    pub fn untranslate_to_world(
        &self,
        ctx: &TcContext,
        ip: &Ipv4,
        e: &CtEntry,
    ) -> Result<(), DropReason> {
        self.rewrite_inner_addr(ctx, self.ip_off + 16, self.daddr, e.addr)?;
        let (off, old) = if self.proto == IPPROTO_ICMP && self.dport == 0 {
            (self.sport_off, self.sport)
        } else {
            (self.dport_off, self.dport)
        };
        self.rewrite_inner_port(ctx, off, old, e.port)?;
        outer(ctx, crate::parse::IP_SADDR_OFF, ip.saddr, e.addr)
    }
}

#[inline(always)]
fn outer(ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(crate::parse::IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .map_err(|_| E)?;
    ctx.store(off, &new, 0).map_err(|_| E)
}

/// Which entries an error may follow, by direction.
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

/// Looks the flow up without refreshing it (an error is not traffic).
#[inline(always)]
pub fn flow(key: &CtKey) -> Option<CtEntry> {
    ct::peek(key)
}
