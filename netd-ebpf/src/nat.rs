//! Address/port rewrites with incremental checksum updates (L3 and L4,
//! pseudo-header aware, UDP "no checksum" preserved), and MAC rewrites.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netd_common::DropReason;

use crate::parse::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_ICMP, IPPROTO_UDP, Ipv4, L4};

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

/// Both MACs in one store.
#[inline(always)]
pub fn set_macs(ctx: &TcContext, src: &[u8; 6], dst: &[u8; 6]) -> Result<(), DropReason> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    ctx.store(0, &macs, 0).map_err(|_| E)
}

/// The IPv4 header checksum after a 32-bit word changed from `old` to
/// `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')). Checksum and words
/// as they lie in the packet: ones' complement sums do not care about
/// byte order as long as every word is read the same way.
#[inline(always)]
fn csum_replace4(csum: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!csum);
    sum += (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites one side of a packet, its source (`source`) or its
/// destination, to (`addr`, `port`): the translation of every tracked
/// flow. The L4 checksum goes through the kernel's helpers (they know
/// whether the skb carries a full checksum or only the pseudo-header's,
/// CHECKSUM_PARTIAL); the IPv4 checksum is computed here and stored with
/// the addresses, and, when the L4 header follows a 20-byte IPv4 header,
/// with the ports: one store for what took five helper calls. ICMP echo
/// (the id is in the checksummed ICMP header), later fragments (no L4
/// header) and IPv4 options take the field-by-field rewrite.
#[inline(always)]
pub fn translate(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    source: bool,
    addr: u32,
    port: u16,
) -> Result<(), DropReason> {
    let (old_addr, old_port) = if source {
        (ip.saddr, l4.sport)
    } else {
        (ip.daddr, l4.dport)
    };
    if ip.proto == IPPROTO_ICMP || !l4.hdr {
        let off = if source { IP_SADDR_OFF } else { IP_DADDR_OFF };
        rewrite_addr(ctx, ip.proto, l4, off, old_addr, addr)?;
        return rewrite_port(ctx, ip.proto, l4, source, old_port, port);
    }
    if old_addr == addr && old_port == port {
        return Ok(());
    }
    l4_csum_update(ctx, ip, l4, old_addr, addr, old_port, port)?;
    let (saddr, daddr) = if source {
        (addr, ip.daddr)
    } else {
        (ip.saddr, addr)
    };
    let (sport, dport) = if source {
        (port, l4.dport)
    } else {
        (l4.sport, port)
    };
    // csum, saddr, daddr [, sport, dport]
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&csum_replace4(ip.csum, old_addr, addr).to_ne_bytes());
    b[2..6].copy_from_slice(&saddr.to_ne_bytes());
    b[6..10].copy_from_slice(&daddr.to_ne_bytes());
    b[10..12].copy_from_slice(&sport.to_be_bytes());
    b[12..14].copy_from_slice(&dport.to_be_bytes());
    if ip.hdr_len == 20 {
        return ctx.store(IP_CSUM_OFF, &b, 0).map_err(|_| E);
    }
    let mut a = [0u8; 10];
    a.copy_from_slice(&b[..10]);
    ctx.store(IP_CSUM_OFF, &a, 0).map_err(|_| E)?;
    if old_port != port {
        let mut p = [0u8; 4];
        p.copy_from_slice(&b[10..]);
        ctx.store(l4.off, &p, 0).map_err(|_| E)?;
    }
    Ok(())
}

/// The L4 checksum after an address (pseudo-header) and a port of a
/// TCP/UDP header changed, through the kernel's helpers (they know
/// whether the skb carries a full checksum or only the pseudo-header's,
/// CHECKSUM_PARTIAL, where the port is not in it). UDP without checksum
/// stays without.
#[inline(always)]
fn l4_csum_update(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    old_addr: u32,
    addr: u32,
    old_port: u16,
    port: u16,
) -> Result<(), DropReason> {
    if ip.proto == IPPROTO_UDP && l4.udp_no_csum {
        return Ok(());
    }
    let mangled = if ip.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_addr != addr {
        let flags = u64::from(BPF_F_PSEUDO_HDR) | 4 | mangled;
        ctx.l4_csum_replace(l4.csum_off, u64::from(old_addr), u64::from(addr), flags)
            .map_err(|_| E)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(
            l4.csum_off,
            u64::from(old_port.to_be()),
            u64::from(port.to_be()),
            2 | mangled,
        )
        .map_err(|_| E)?;
    }
    Ok(())
}

/// Rewrites the destination to (`addr`, `port`) and the MACs to `src`,
/// `dst` for delivery into a container: with a 20-byte IPv4 header and
/// the L4 header in the packet (TCP, UDP), the Ethernet header, the IPv4
/// header (checksum computed here, RFC 1624) and the ports go back in one
/// store of 38 bytes, rebuilt from the parsed fields (where `translate`
/// and `set_macs` took two); anything else takes those two.
#[inline(always)]
pub fn translate_into(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    addr: u32,
    port: u16,
    src: &[u8; 6],
    dst: &[u8; 6],
) -> Result<(), DropReason> {
    if ip.proto == IPPROTO_ICMP
        || !l4.hdr
        || ip.hdr_len != 20
        || (ip.daddr == addr && l4.dport == port)
    {
        translate(ctx, ip, l4, false, addr, port)?;
        return set_macs(ctx, src, dst);
    }
    l4_csum_update(ctx, ip, l4, ip.daddr, addr, l4.dport, port)?;
    // dst MAC, src MAC, EtherType, version/IHL, TOS, total length, id,
    // flags/fragment offset, TTL, protocol, checksum, saddr, daddr,
    // sport, dport: what the packet holds, the destination rewritten.
    let mut b = [0u8; 38];
    b[0..6].copy_from_slice(dst);
    b[6..12].copy_from_slice(src);
    b[12..14].copy_from_slice(&crate::parse::ETH_P_IP.to_be_bytes());
    b[14] = 0x45;
    b[15] = ip.tos;
    b[16..18].copy_from_slice(&ip.tot_len.to_be_bytes());
    b[18..20].copy_from_slice(&ip.id.to_be_bytes());
    b[20..22].copy_from_slice(&ip.frag.to_be_bytes());
    b[22] = ip.ttl;
    b[23] = ip.proto;
    b[24..26].copy_from_slice(&csum_replace4(ip.csum, ip.daddr, addr).to_ne_bytes());
    b[26..30].copy_from_slice(&ip.saddr.to_ne_bytes());
    b[30..34].copy_from_slice(&addr.to_ne_bytes());
    b[34..36].copy_from_slice(&l4.sport.to_be_bytes());
    b[36..38].copy_from_slice(&port.to_be_bytes());
    ctx.store(0, &b, 0).map_err(|_| E)
}
