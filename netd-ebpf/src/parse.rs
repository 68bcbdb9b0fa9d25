//! Header parsing with direct packet access. Every accessor checks bounds
//! against `data_end` (the verifier insists, and frames can be truncated);
//! the IPv4 header length comes from IHL, so options are honoured.
use aya_ebpf::programs::TcContext;
use netd_common::DropReason;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_TCP: u8 = 6;

const IPV4_MIN_HLEN: usize = 20;
const TCP_MIN_HLEN: usize = 20;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// A pointer to `len` bytes at `offset`, or `Malformed` if the packet is
/// shorter.
#[inline(always)]
fn bytes_at(ctx: &TcContext, offset: usize, len: usize) -> Result<*const u8, DropReason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + len > end {
        return Err(DropReason::Malformed);
    }
    Ok((start + offset) as *const u8)
}

#[inline(always)]
fn be16(p: *const u8, off: usize) -> u16 {
    // SAFETY: callers checked `off + 2` is within the bounds from bytes_at.
    unsafe { u16::from_be_bytes([*p.add(off), *p.add(off + 1)]) }
}

#[inline(always)]
fn raw32(p: *const u8, off: usize) -> u32 {
    // SAFETY: as above, 4 bytes.
    unsafe { core::ptr::read_unaligned(p.add(off) as *const u32) }
}

pub struct Eth {
    /// EtherType, host order.
    pub proto: u16,
}

#[inline(always)]
pub fn eth(ctx: &TcContext) -> Result<Eth, DropReason> {
    let p = bytes_at(ctx, 0, ETH_HLEN)?;
    Ok(Eth { proto: be16(p, 12) })
}

pub struct Ipv4 {
    /// Header length in bytes (IHL * 4).
    pub hdr_len: usize,
    pub proto: u8,
    /// Fragment offset + MF flag, host order, flags masked except MF.
    pub frag: u16,
    /// Addresses in network order.
    pub saddr: u32,
    pub daddr: u32,
}

impl Ipv4 {
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frag & 0x3fff != 0
    }
}

#[inline(always)]
pub fn ipv4(ctx: &TcContext, off: usize) -> Result<Ipv4, DropReason> {
    let p = bytes_at(ctx, off, IPV4_MIN_HLEN)?;
    // SAFETY: within the checked 20 bytes.
    let vihl = unsafe { *p };
    if vihl >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let hdr_len = usize::from(vihl & 0x0f) * 4;
    if hdr_len < IPV4_MIN_HLEN {
        return Err(DropReason::Malformed);
    }
    // The whole header, options included, must be present.
    bytes_at(ctx, off, hdr_len)?;
    Ok(Ipv4 {
        hdr_len,
        // SAFETY: within the checked 20 bytes.
        proto: unsafe { *p.add(9) },
        frag: be16(p, 6),
        saddr: raw32(p, 12),
        daddr: raw32(p, 16),
    })
}

pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
}

impl Tcp {
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

#[inline(always)]
pub fn tcp(ctx: &TcContext, off: usize) -> Result<Tcp, DropReason> {
    let p = bytes_at(ctx, off, TCP_MIN_HLEN)?;
    Ok(Tcp {
        sport: be16(p, 0),
        dport: be16(p, 2),
        // SAFETY: within the checked 20 bytes.
        flags: unsafe { *p.add(13) },
    })
}
