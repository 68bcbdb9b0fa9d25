//! Address/port rewrites with incremental checksum updates (L3 and L4,
//! pseudo-header aware, UDP "no checksum" preserved), and MAC rewrites.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netd_common::DropReason;

use crate::parse::{IP_CSUM_OFF, IPPROTO_ICMP, IPPROTO_UDP, L4};

const E: DropReason = DropReason::RewriteFailed;

/// Replaces the IPv4 address at `addr_off` (source or destination) and
/// fixes the IP checksum and, for TCP/UDP, the L4 checksum (the address
/// is part of the pseudo-header) when the L4 header is in this packet (a
/// datagram's checksum is in its first fragment only).
#[inline(always)]
pub fn rewrite_addr(
    ctx: &TcContext,
    proto: u8,
    l4: &L4,
    addr_off: usize,
    old: u32,
    new: u32,
) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    if l4.hdr && proto != IPPROTO_ICMP && !(proto == IPPROTO_UDP && l4.udp_no_csum) {
        let mut flags = u64::from(BPF_F_PSEUDO_HDR) | 4;
        if proto == IPPROTO_UDP {
            flags |= u64::from(BPF_F_MARK_MANGLED_0);
        }
        ctx.l4_csum_replace(l4.csum_off, u64::from(old), u64::from(new), flags)
            .map_err(|_| E)?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .map_err(|_| E)?;
    ctx.store(addr_off, &new, 0).map_err(|_| E)
}

/// Replaces a port (at `l4.off + port_at`, host-order values) or, for ICMP
/// echo, the id (at offset 4), fixing the L4 checksum.
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
    let field = if proto == IPPROTO_ICMP {
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

/// Sets Don't Fragment (fixing the IP checksum).
#[inline(always)]
pub fn set_df(ctx: &TcContext, frag: u16) -> Result<(), DropReason> {
    let (old, new) = (frag.to_be(), (frag | crate::parse::IP_DF).to_be());
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 2)
        .map_err(|_| E)?;
    ctx.store(crate::parse::IP_FRAG_OFF, &new, 0).map_err(|_| E)
}

#[inline(always)]
pub fn set_macs(ctx: &TcContext, src: &[u8; 6], dst: &[u8; 6]) -> Result<(), DropReason> {
    ctx.store(0, dst, 0).map_err(|_| E)?;
    ctx.store(6, src, 0).map_err(|_| E)
}
