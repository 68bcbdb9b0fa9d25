//! Crafting Ethernet/IPv6 frames (TCP, UDP, ICMPv6 echo, Neighbour
//! Discovery, ICMPv6 errors, extension headers, fragments) with correct
//! checksums, and checking checksums and fields of frames the programs
//! rewrote.
use std::net::Ipv6Addr;

use crate::packet::ETH_HLEN;

pub const NH_TCP: u8 = 6;
pub const NH_UDP: u8 = 17;
pub const NH_ICMP6: u8 = 58;
pub const NH_HOP: u8 = 0;
pub const NH_FRAG: u8 = 44;
pub const NH_DEST: u8 = 60;

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of an upper-layer segment with the IPv6 pseudo-header.
pub fn csum6(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, seg: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(seg.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, nh]);
    let c = !fold(sum16(&p) + sum16(seg));
    if c == 0 && nh == NH_UDP { 0xffff } else { c }
}

#[derive(Clone, Debug)]
pub struct Frame6 {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Extension headers before the upper-layer one: (next-header value
    /// of the header, its bytes without the next-header byte).
    pub ext: Vec<(u8, Vec<u8>)>,
}

impl Frame6 {
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr) -> Frame6 {
        Frame6 {
            src_mac,
            dst_mac,
            src,
            dst,
            ext: vec![],
        }
    }

    /// With a hop-by-hop (or destination options) header of 8 bytes.
    pub fn with_opts(mut self, kind: u8) -> Frame6 {
        self.ext.push((kind, vec![0, 1, 4, 0, 0, 0, 0]));
        self
    }

    /// The frame: Ethernet, IPv6, extension headers, `nh` + `l4`.
    pub fn raw(&self, nh: u8, l4: &[u8]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(nh, |e| e.0);
            exts.push(next);
            exts.extend_from_slice(body);
        }
        let first = self.ext.first().map_or(nh, |e| e.0);
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
        f.push(first);
        f.push(64);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&exts);
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
        let c = csum6(self.src, self.dst, NH_TCP, &t);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        self.raw(NH_TCP, &t)
    }

    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(payload);
        let c = csum6(self.src, self.dst, NH_UDP, &u);
        u[6..8].copy_from_slice(&c.to_be_bytes());
        self.raw(NH_UDP, &u)
    }

    /// An ICMPv6 message (type, code, the 4 bytes after the checksum, body).
    pub fn icmp6(&self, ty: u8, code: u8, word: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = vec![ty, code, 0, 0];
        m.extend_from_slice(&word);
        m.extend_from_slice(body);
        let c = csum6(self.src, self.dst, NH_ICMP6, &m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        self.raw(NH_ICMP6, &m)
    }

    pub fn echo(&self, id: u16, reply: bool) -> Vec<u8> {
        let mut w = [0u8; 4];
        w[0..2].copy_from_slice(&id.to_be_bytes());
        w[2..4].copy_from_slice(&1u16.to_be_bytes());
        self.icmp6(if reply { 129 } else { 128 }, 0, w, b"netd-ping6")
    }

    /// A neighbour advertisement (136) or solicitation (135) for `target`.
    pub fn nd(&self, ty: u8, target: Ipv6Addr) -> Vec<u8> {
        let flags = if ty == 136 { [0x60, 0, 0, 0] } else { [0; 4] };
        let mut body = target.octets().to_vec();
        // Link-layer address option (source for NS, target for NA).
        body.extend_from_slice(&[if ty == 136 { 2 } else { 1 }, 1]);
        body.extend_from_slice(&self.src_mac);
        self.icmp6(ty, 0, flags, &body)
    }

    /// An ICMPv6 error quoting `about` (a whole frame) from its IPv6
    /// header on.
    pub fn error(&self, ty: u8, code: u8, word: u32, about: &[u8]) -> Vec<u8> {
        self.icmp6(ty, code, word.to_be_bytes(), &about[ETH_HLEN..])
    }

    /// A fragment of a datagram (`nh` + `l4` cut at `offset` bytes,
    /// `len` bytes of it), with a fragment header.
    pub fn fragment(&self, nh: u8, l4: &[u8], id: u32, offset: usize, len: usize) -> Vec<u8> {
        let end = (offset + len).min(l4.len());
        let more = u16::from(end < l4.len());
        let mut f = Frame6 {
            ext: self.ext.clone(),
            ..self.clone()
        };
        let mut body = vec![0u8];
        body.extend_from_slice(&(((offset / 8) as u16) << 3 | more).to_be_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        f.ext.push((NH_FRAG, body));
        f.raw(nh, &l4[offset..end])
    }
}

/// The upper-layer segment of a TCP/UDP datagram from `Frame6::tcp`/`udp`
/// (for fragmenting it).
pub fn segment(frame: &[u8]) -> Vec<u8> {
    frame[ETH_HLEN + 40..].to_vec()
}

/// Fields of an IPv6 frame without extension headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Fields6 {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub nh: u8,
    pub sport: u16,
    pub dport: u16,
}

pub fn fields6(f: &[u8]) -> Fields6 {
    let ip = &f[ETH_HLEN..];
    let l4 = &ip[40..];
    let (sport, dport) = if ip[6] == NH_ICMP6 {
        (u16::from_be_bytes([l4[4], l4[5]]), 0)
    } else {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    };
    Fields6 {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        src: Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap()),
        dst: Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()),
        nh: ip[6],
        sport,
        dport,
    }
}

/// Whether the upper-layer checksum (TCP, UDP, ICMPv6; no extension
/// headers) verifies against the frame's own addresses.
pub fn checksum6_ok(f: &[u8]) -> bool {
    let ip = &f[ETH_HLEN..];
    let (src, dst) = (
        Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap()),
        Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()),
    );
    let seg = &ip[40..];
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(seg.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, ip[6]]);
    fold(sum16(&p) + sum16(seg)) == 0xffff
}

/// The EUI-64 link-local address of `mac`.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}
