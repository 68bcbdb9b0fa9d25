//! Header parsing with direct packet access. Every accessor checks bounds
//! against `data_end` (the verifier insists, and frames can be truncated);
//! the IPv4 header length comes from IHL, so options are honoured.
use aya_ebpf::programs::TcContext;
use netd_common::DropReason;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_ECHO: u8 = 8;

const IPV4_MIN_HLEN: usize = 20;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;
/// Don't Fragment, in the host-order flags/offset field.
pub const IP_DF: u16 = 0x4000;

/// Offsets of fields netd rewrites.
pub const IP_FRAG_OFF: usize = ETH_HLEN + 6;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IP_DADDR_OFF: usize = ETH_HLEN + 16;

/// A pointer to `len` bytes at `offset`, or `Malformed` if the packet is
/// shorter. Headers that are in the packet but beyond its linear area (a
/// NIC or GRO may leave them in paged data) are pulled in first
/// (`bpf_skb_pull_data`, only then: the usual skb has them linear).
/// Parsers copy values out, so no pointer outlives a pull.
#[inline(always)]
fn bytes_at(ctx: &TcContext, offset: usize, len: usize) -> Result<*const u8, DropReason> {
    if ctx.data() + offset + len > ctx.data_end() && offset + len <= ctx.len() as usize {
        let _ = ctx.pull_data((offset + len) as u32);
    }
    // One load of `data` for the check and the pointer (the verifier
    // tracks the checked range per pointer).
    let start = ctx.data();
    if start + offset + len > ctx.data_end() {
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
    pub src: [u8; 6],
    /// EtherType, host order.
    pub proto: u16,
    /// Destination is a group (broadcast/multicast) address.
    pub dst_group: bool,
}

#[inline(always)]
pub fn eth(ctx: &TcContext) -> Result<Eth, DropReason> {
    let p = bytes_at(ctx, 0, ETH_HLEN)?;
    // SAFETY: within the checked 14 bytes.
    unsafe {
        Ok(Eth {
            src: [
                *p.add(6),
                *p.add(7),
                *p.add(8),
                *p.add(9),
                *p.add(10),
                *p.add(11),
            ],
            proto: be16(p, 12),
            dst_group: *p & 1 == 1,
        })
    }
}

pub struct Ipv4 {
    /// Header length in bytes (IHL * 4).
    pub hdr_len: usize,
    /// Identification (host order): keys a datagram's fragments.
    pub id: u16,
    pub proto: u8,
    pub tos: u8,
    /// Fragment offset + flags, host order.
    pub frag: u16,
    /// Addresses in network order.
    pub saddr: u32,
    pub daddr: u32,
    /// The header checksum as it lies in the packet (read natively).
    pub csum: u16,
    /// Total length and TTL (host order): with the fields above, the
    /// header a rewrite stores back whole (`nat::translate_into`).
    pub tot_len: u16,
    pub ttl: u8,
}

impl Ipv4 {
    /// A fragment (MF set or a non-zero offset).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frag & 0x3fff != 0
    }

    /// A fragment other than the first: it carries no L4 header (its
    /// datagram's ports come from the first fragment, see `frag`).
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.frag & 0x1fff != 0
    }

    #[inline(always)]
    pub fn df(&self) -> bool {
        self.frag & IP_DF != 0
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
    // The whole header, options included, must be in the packet (the
    // options are not read; the L4 parser pulls what it reads).
    if off + hdr_len > ctx.len() as usize {
        return Err(DropReason::Malformed);
    }
    Ok(Ipv4 {
        hdr_len,
        id: be16(p, 4),
        // SAFETY: within the checked 20 bytes.
        proto: unsafe { *p.add(9) },
        tos: unsafe { *p.add(1) },
        frag: be16(p, 6),
        saddr: raw32(p, 12),
        daddr: raw32(p, 16),
        // SAFETY: within the checked 20 bytes.
        csum: unsafe { core::ptr::read_unaligned(p.add(10) as *const u16) },
        tot_len: be16(p, 2),
        // SAFETY: within the checked 20 bytes.
        ttl: unsafe { *p.add(8) },
    })
}

/// The L4 part netd tracks: ports (or ICMP echo id), TCP flags, and where
/// the L4 checksum and ports live.
#[derive(Clone, Copy)]
pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    /// TCP: the flags; ICMP: the type (echo request or reply).
    pub tcp_flags: u8,
    /// Offset of the L4 header.
    pub off: usize,
    /// Offset of the L4 checksum.
    pub csum_off: usize,
    /// UDP with checksum 0 ("none").
    pub udp_no_csum: bool,
    /// The L4 header is in this packet (false for a non-first fragment:
    /// the ports are its datagram's, nothing at `off` may be rewritten).
    pub hdr: bool,
    /// The L4 header's length (TCP: data offset; 0 when unknown), for the
    /// segment length of GSO packets.
    pub hlen: u32,
}

impl L4 {
    /// A connection's first segment: SYN, and no ACK, RST or FIN (the
    /// combinations netfilter calls invalid never start a flow).
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST | TCP_FLAG_FIN) == TCP_FLAG_SYN
    }

    /// A non-first fragment of a datagram with these ports.
    #[inline(always)]
    pub fn fragment(sport: u16, dport: u16) -> L4 {
        L4 {
            sport,
            dport,
            tcp_flags: 0,
            off: 0,
            csum_off: 0,
            udp_no_csum: false,
            hdr: false,
            hlen: 0,
        }
    }
}

/// An ARP packet's sender, for anti-spoofing: `Err(Malformed)` unless it
/// is Ethernet/IPv4 ARP.
pub struct ArpSender {
    pub mac: [u8; 6],
    /// Network order.
    pub ip: u32,
}

#[inline(always)]
pub fn arp(ctx: &TcContext) -> Result<ArpSender, DropReason> {
    let p = bytes_at(ctx, ETH_HLEN, 28)?;
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4.
    if be16(p, 0) != 1 || be16(p, 2) != ETH_P_IP {
        return Err(DropReason::Malformed);
    }
    // SAFETY: within the checked 28 bytes.
    unsafe {
        if *p.add(4) != 6 || *p.add(5) != 4 {
            return Err(DropReason::Malformed);
        }
        Ok(ArpSender {
            mac: [
                *p.add(8),
                *p.add(9),
                *p.add(10),
                *p.add(11),
                *p.add(12),
                *p.add(13),
            ],
            ip: raw32(p, 14),
        })
    }
}

/// Parses TCP, UDP or ICMP echo at `off`; `Ok(None)` for anything else
/// (other protocols, other ICMP types): those are not translated.
#[inline(always)]
pub fn l4(ctx: &TcContext, proto: u8, off: usize) -> Result<Option<L4>, DropReason> {
    match proto {
        IPPROTO_TCP => {
            let p = bytes_at(ctx, off, TCP_MIN_HLEN)?;
            Ok(Some(L4 {
                sport: be16(p, 0),
                dport: be16(p, 2),
                // SAFETY: within the checked 20 bytes.
                tcp_flags: unsafe { *p.add(13) },
                off,
                csum_off: off + 16,
                udp_no_csum: false,
                hdr: true,
                // SAFETY: within the checked 20 bytes.
                hlen: u32::from(unsafe { *p.add(12) } >> 4) * 4,
            }))
        }
        IPPROTO_UDP => {
            let p = bytes_at(ctx, off, UDP_HLEN)?;
            Ok(Some(L4 {
                sport: be16(p, 0),
                dport: be16(p, 2),
                tcp_flags: 0,
                off,
                csum_off: off + 6,
                udp_no_csum: be16(p, 6) == 0,
                hdr: true,
                hlen: UDP_HLEN as u32,
            }))
        }
        IPPROTO_ICMP => {
            let p = bytes_at(ctx, off, ICMP_HLEN)?;
            // SAFETY: within the checked 8 bytes.
            let ty = unsafe { *p };
            let id = be16(p, 4);
            let (sport, dport) = match ty {
                ICMP_ECHO => (id, 0),
                ICMP_ECHOREPLY => (0, id),
                _ => return Ok(None),
            };
            Ok(Some(L4 {
                sport,
                dport,
                tcp_flags: ty,
                off,
                csum_off: off + 2,
                udp_no_csum: false,
                hdr: true,
                hlen: 0,
            }))
        }
        _ => Ok(None),
    }
}
