//! Crafting Ethernet/IPv4/TCP/UDP frames with correct checksums, and
//! checking checksums of frames the programs rewrote.
use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;

/// One's-complement sum folded to 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

pub fn ip_checksum(hdr: &[u8]) -> u16 {
    !fold(sum16(hdr))
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    !fold(sum16(&pseudo) + sum16(seg))
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            src_mac: [0x02, 0x42, 172, 17, 0, 2],
            dst_mac: [0x02, 0x42, 172, 17, 0, 3],
            src: Ipv4Addr::new(172, 17, 0, 2),
            dst: Ipv4Addr::new(172, 17, 0, 3),
            ttl: 64,
        }
    }
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

impl Frame {
    fn ipv4(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HLEN + 20 + l4.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + l4.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = self.ttl;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let c = ip_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    pub fn tcp(&self, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&1000u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        t.extend_from_slice(payload);
        let c = l4_checksum(self.src, self.dst, 6, &t);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        self.ipv4(6, &t)
    }

    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(payload);
        let c = l4_checksum(self.src, self.dst, 17, &u);
        u[6..8].copy_from_slice(&c.to_be_bytes());
        self.ipv4(17, &u)
    }
}

impl Frame {
    /// An ICMP echo request (or reply) with `id`.
    pub fn icmp_echo(&self, id: u16, reply: bool) -> Vec<u8> {
        let mut m = vec![0u8; 8];
        m[0] = if reply { 0 } else { 8 };
        m[4..6].copy_from_slice(&id.to_be_bytes());
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(b"netd-ping");
        let c = ip_checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        self.ipv4(1, &m)
    }
}

impl Frame {
    /// An ICMP error (type, code) quoting the IP header and first 8 L4
    /// bytes of `about` (a whole frame).
    pub fn icmp_error(&self, ty: u8, code: u8, next_mtu: u16, about: &[u8]) -> Vec<u8> {
        let ip = &about[ETH_HLEN..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let mut m = vec![0u8; 8];
        m[0] = ty;
        m[1] = code;
        m[6..8].copy_from_slice(&next_mtu.to_be_bytes());
        m.extend_from_slice(&ip[..ihl + 8]);
        let c = ip_checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        self.ipv4(1, &m)
    }
}

/// The quoted header of an ICMP error: (src, dst, sport, dport), and
/// whether its IPv4 checksum verifies.
pub fn icmp_inner(f: &[u8]) -> ((Ipv4Addr, Ipv4Addr, u16, u16), bool) {
    let ip = &f[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let inner = &ip[ihl + 8..];
    let iihl = usize::from(inner[0] & 0x0f) * 4;
    let l4 = &inner[iihl..];
    (
        (
            Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]),
            Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]),
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        fold(sum16(&inner[..iihl])) == 0xffff,
    )
}

/// The fields tests assert on, read from a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Fields {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Ports, or for ICMP (id, 0).
    pub sport: u16,
    pub dport: u16,
}

pub fn fields(f: &[u8]) -> Fields {
    let ip = &f[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = &ip[ihl..];
    let (sport, dport) = if ip[9] == 1 {
        (u16::from_be_bytes([l4[4], l4[5]]), 0)
    } else {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    };
    Fields {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport,
        dport,
    }
}

/// True if every checksum of `frame` verifies: IPv4 header, and TCP/UDP
/// (pseudo-header included) or ICMP.
pub fn checksums_ok(frame: &[u8]) -> bool {
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    ipv4_checksum_ok(frame)
        && match ip[9] {
            1 => fold(sum16(&ip[ihl..total])) == 0xffff,
            _ => l4_checksum_ok(frame),
        }
}

/// True if the IPv4 header checksum of `frame` verifies.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    fold(sum16(&frame[ETH_HLEN..ETH_HLEN + ihl])) == 0xffff
}

/// True if the TCP/UDP checksum of `frame` verifies (a zero UDP checksum
/// means none and fails here on purpose: netd must never produce it for a
/// frame that had one).
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let seg = &ip[ihl..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    fold(sum16(&pseudo) + sum16(seg)) == 0xffff
}

/// Recomputes the IPv4 header checksum of `frame` in place.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    frame[ETH_HLEN + 10] = 0;
    frame[ETH_HLEN + 11] = 0;
    let c = ip_checksum(&frame[ETH_HLEN..ETH_HLEN + ihl]);
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
}

/// The IPv4 flags/fragment-offset field of `frame` (host order).
pub fn ipv4_frag_field(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[ETH_HLEN + 6], frame[ETH_HLEN + 7]])
}

/// Sets the IPv4 flags/offset field and the id (fixing the checksum).
pub fn set_ipv4_frag(frame: &mut [u8], id: u16, field: u16) {
    frame[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&id.to_be_bytes());
    frame[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&field.to_be_bytes());
    fix_ipv4_checksum(frame);
}

/// Splits a whole frame's IPv4 datagram into fragments of at most
/// `chunk` payload bytes (a multiple of 8), as a sender's IP layer does:
/// same id, MF on all but the last, offsets in 8-byte units. The L4
/// checksum (in the first fragment) covers the whole datagram.
pub fn fragment(frame: &[u8], id: u16, chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let hdr = &frame[..ETH_HLEN + ihl];
    let payload = &frame[ETH_HLEN + ihl..];
    let mut out = Vec::new();
    for (i, part) in payload.chunks(chunk).enumerate() {
        let mut f = hdr.to_vec();
        f.extend_from_slice(part);
        let total = (ihl + part.len()) as u16;
        f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
        let last = (i + 1) * chunk >= payload.len();
        let field = ((i * chunk / 8) as u16) | if last { 0 } else { 0x2000 };
        set_ipv4_frag(&mut f, id, field);
        out.push(f);
    }
    out
}

/// Reassembles fragments (in any order) into the datagram's frame, for
/// checksum checks of translated fragments.
pub fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<(usize, &[u8])> = frags
        .iter()
        .map(|f| {
            let ihl = usize::from(f[ETH_HLEN] & 0x0f) * 4;
            (
                usize::from(ipv4_frag_field(f) & 0x1fff) * 8,
                &f[ETH_HLEN + ihl..],
            )
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let first = frags
        .iter()
        .find(|f| ipv4_frag_field(f) & 0x1fff == 0)
        .expect("first fragment");
    let ihl = usize::from(first[ETH_HLEN] & 0x0f) * 4;
    let mut out = first[..ETH_HLEN + ihl].to_vec();
    for (_, p) in parts {
        out.extend_from_slice(p);
    }
    let total = (out.len() - ETH_HLEN) as u16;
    out[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
    set_ipv4_frag(&mut out, 0, 0);
    out
}

/// An Ethernet frame of `ethertype` with `payload`.
pub fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An Ethernet/IPv4 ARP packet (op 1 request, 2 reply).
pub fn arp(
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&0x0800u16.to_be_bytes());
    a.extend_from_slice(&[6, 4]);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    let dst = if op == 1 { [0xff; 6] } else { tha };
    ether(dst, eth_src, 0x0806, &a)
}

/// `frame` with an 802.1Q tag (VLAN `vid`) after the MAC addresses.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// A minimal IPv6 ICMPv6 echo request between two link-local addresses
/// (enough for EtherType-level policy; not checksummed).
pub fn ipv6_echo(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 8, 58, 64];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
    ether(dst_mac, src_mac, 0x86dd, &p)
}

/// `frame` with IPv4 options `opts` (a multiple of 4 bytes) after its
/// 20-byte header: IHL, total length and header checksum follow (the L4
/// checksum does not cover options).
pub fn with_ip_options(frame: &[u8], opts: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let mut f = frame[..ETH_HLEN + 20].to_vec();
    f.extend_from_slice(opts);
    f.extend_from_slice(&frame[ETH_HLEN + 20..]);
    let ip = &mut f[ETH_HLEN..];
    ip[0] = 0x40 | ((20 + opts.len()) / 4) as u8;
    let total = u16::from_be_bytes([ip[2], ip[3]]) + opts.len() as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    f
}
