//! Robustness: 100,000 random and mutated frames through each program
//! (truncated headers, bad IHL, odd protocols, fragments, VLAN tags,
//! IPv6, ARP, RSTs and other non-SYN first segments, random bytes) with
//! populated maps. Every run must end in a valid verdict, the maps the
//! programs must never write (endpoints, networks, ports, config) must be
//! byte-for-byte unchanged, and the conntrack table must never hold an
//! entry a netfilter datapath would not: a frame that created a flow must
//! be one that starts a connection there (from outside: a SYN without
//! ACK/RST/FIN or a UDP datagram, to a published port of a host address;
//! from a container: its own TCP/UDP/ICMP echo, never a later fragment),
//! and the table is always made of whole flows within the bound.
use std::net::Ipv4Addr;

use netd::bpf::{self, BpfLogLevel, Programs};
use netd_common::{
    Config, Counter, Endpoint, NET_CLUSTER, NET_DIRECT_ALL, NET_DIRECT_ICMP, NET_DIRECT_PORTS,
    NET_FROM_NETWORKS, NET_ICC, NET_MASQUERADE, ct_kind, tc,
};
use netd_tests::{
    HOST_IP, OUTSIDE_IP, Testbed,
    bpfmaps::{self, be},
    packet::{self, ETH_HLEN, Frame, TCP_ACK, TCP_SYN},
    require_root,
};

const CT_SIZE: u32 = 4096;
const NAT_PORTS: (u16, u16) = (61000, 61100);

const FRAMES_PER_PROGRAM: usize = 100_000;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let a = Frame::default();
    let out = Frame {
        dst: OUTSIDE_IP,
        ..Frame::default()
    };
    let world = Frame {
        src_mac: [2, 0x42, 198, 18, 0, 1],
        dst_mac: [2, 0x42, 198, 18, 0, 2],
        src: OUTSIDE_IP,
        dst: HOST_IP,
        ttl: 64,
    };
    let mut v = vec![
        a.tcp(40000, 80, TCP_SYN, b"payload"),
        a.udp(5353, 53, b"query"),
        a.icmp_echo(9, false),
        out.tcp(40001, 443, TCP_SYN, b""),
        out.tcp(40002, 443, TCP_ACK, b"mid-stream"),
        out.udp(61002, 53, b"q"),
        out.icmp_echo(11, false),
        world.tcp(5555, 8080, TCP_SYN, b""),
        world.tcp(5556, 8080, TCP_ACK, b"not a new connection"),
        world.tcp(5557, 8080, 0x04, b""),
        world.tcp(5558, 8081, TCP_SYN | 0x04, b""),
        world.tcp(5559, 8081, TCP_SYN | TCP_ACK, b""),
        world.udp(5555, 5353, b"x"),
        world.icmp_echo(3, true),
        world.tcp(80, 61001, 0x12, b"reply"),
        Frame {
            dst: a.src,
            ..world.clone()
        }
        .udp(1, 2, b"to a container's address"),
        packet::vlan_tagged(&out.udp(1, 53, b"tagged"), 5),
        packet::ipv6_echo(a.dst_mac, a.src_mac, [0xfe; 16], [0xfe; 16]),
        packet::arp(a.src_mac, 1, a.src_mac, a.src, [0; 6], a.dst),
        packet::arp(a.src_mac, 2, a.src_mac, a.dst, a.dst_mac, a.dst),
    ];
    // Fragments, first and later, both ways.
    v.extend(packet::fragment(&out.udp(5000, 53, &[7u8; 200]), 0x99, 96));
    v.extend(packet::fragment(
        &world.udp(53, 5353, &[7u8; 200]),
        0x98,
        96,
    ));
    v.extend(packet::fragment(
        &world.udp(53, 61001, &[7u8; 200]),
        0x97,
        96,
    ));
    v
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(10) == 0 {
        let len = ETH_HLEN + rng.below(120);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut f = seeds[rng.below(seeds.len())].clone();
    let ip = ETH_HLEN;
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            // Truncate anywhere past the Ethernet header.
            0 => f.truncate(ETH_HLEN + rng.below(f.len() - ETH_HLEN + 1)),
            // Bad or odd IHL (including < 5 and > the packet).
            1 if f.len() > ip => f[ip] = 0x40 | (rng.byte() & 0x0f),
            // Odd protocols.
            2 if f.len() > ip + 9 => f[ip + 9] = rng.byte(),
            // Fragments: MF and/or an offset.
            3 if f.len() > ip + 7 => {
                f[ip + 6] = rng.byte() & 0x3f;
                f[ip + 7] = rng.byte();
            }
            // Random byte flips.
            4 | 5 => {
                let i = rng.below(f.len());
                f[i] = rng.byte();
            }
            // Another EtherType, or a VLAN tag.
            6 if rng.below(2) == 0 => f[12..14].copy_from_slice(&[0x86, 0xdd]),
            6 => f = packet::vlan_tagged(&f, rng.byte().into()),
            // TCP flags (RST, FIN, ACK, SYN in any combination).
            7 if rng.below(2) == 0 && f.len() > ip + 20 + 13 && f[ip + 9] == 6 => {
                let ihl = usize::from(f[ip] & 0x0f) * 4;
                if f.len() > ip + ihl + 13 {
                    f[ip + ihl + 13] = rng.byte() & 0x17;
                }
            }
            // Random tail.
            _ => f.extend((0..rng.below(64)).map(|_| rng.byte())),
        }
    }
    if f.len() < ETH_HLEN {
        f.resize(ETH_HLEN, 0);
    }
    f
}

/// What a frame is, as far as starting a flow goes.
fn starts_a_flow_from_world(f: &[u8], published: &[(u8, u16)]) -> bool {
    if f.len() < ETH_HLEN + 20 || f[12..14] != [0x08, 0x00] || f[0] & 1 == 1 {
        return false;
    }
    let ip = &f[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    if ip[0] >> 4 != 4 || ihl < 20 || frag & 0x1fff != 0 || dst != HOST_IP {
        return false;
    }
    let proto = ip[9];
    let Some(l4) = ip.get(ihl..ihl + if proto == 6 { 20 } else { 8 }) else {
        return false;
    };
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    if !published.contains(&(proto, dport)) {
        return false;
    }
    match proto {
        6 => l4[13] & 0x17 == TCP_SYN,
        17 => true,
        _ => false,
    }
}

fn starts_a_flow_from_container(f: &[u8], src: Ipv4Addr) -> bool {
    if f.len() < ETH_HLEN + 20 || f[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &f[ETH_HLEN..];
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    frag & 0x1fff == 0 && s == src && matches!(ip[9], 1 | 6 | 17)
}

/// The table is whole flows, within its bound, each entry one a netfilter
/// datapath could hold: SNAT ports in the NAT range, DNAT to published
/// ports of a host address, every container address a live endpoint.
fn check_table(p: &mut netd::bpf::Programs, endpoints: &[Ipv4Addr], published: &[(u8, u16)]) {
    let ct = bpfmaps::ct_consistent(p).unwrap();
    assert!(ct.len() <= CT_SIZE as usize);
    for (k, e) in &ct {
        assert!(
            endpoints.iter().any(|ip| be(*ip) == e.container_ip),
            "{k:?} {e:?}"
        );
        match e.kind {
            ct_kind::SNAT => assert!(
                (NAT_PORTS.0..=NAT_PORTS.1).contains(&e.port) && e.addr == be(HOST_IP),
                "{k:?} {e:?}"
            ),
            ct_kind::DNAT => assert!(
                k.daddr == be(HOST_IP) && published.contains(&(k.proto, k.dport)),
                "{k:?} {e:?}"
            ),
            _ => {}
        }
    }
}

#[test]
fn random_and_mutated_frames_get_valid_verdicts_and_leave_control_maps_alone() {
    if !require_root("random_and_mutated_frames_get_valid_verdicts_and_leave_control_maps_alone") {
        return;
    }
    let tb = Testbed::new("f").unwrap();
    let mut p = Programs::load_with(BpfLogLevel::Off, None, CT_SIZE).unwrap();
    let uplink = tb.host.run(|| Ok(netd::link::ifindex("eth0"))).unwrap();
    bpfmaps::set_config(
        &mut p,
        Config {
            uplink_ifindex: uplink,
            uplink_ip: be(HOST_IP),
            nat_port_min: NAT_PORTS.0,
            nat_port_max: NAT_PORTS.1,
            _pad: 0,
            netns_cookie: 0,
            cluster_net: 0,
            cluster_mask: 0,
        },
    );
    bpfmaps::add_network(&mut p, 1, NET_ICC | NET_MASQUERADE);
    let d = Frame::default();
    for (ifindex, ip, mac) in [(1, d.src, d.src_mac), (55, d.dst, d.dst_mac)] {
        bpfmaps::add_endpoint(
            &mut p,
            Endpoint {
                ifindex,
                net_id: 1,
                ip: be(ip),
                mac,
                gw_mac: [2, 0, 0, 0, 0, 1],
                ..netd_common::Endpoint::default()
            },
        );
    }
    bpfmaps::add_ports(&mut p, 6, Ipv4Addr::UNSPECIFIED, 8080, 8081, d.src, 80);
    bpfmaps::add_ports(&mut p, 17, Ipv4Addr::UNSPECIFIED, 5353, 5353, d.dst, 53);
    let published = [(6u8, 8080u16), (6, 8081), (17, 5353)];
    let endpoints = [d.src, d.dst];
    let before = bpfmaps::control_maps_snapshot(&mut p);

    run_fuzz(
        &tb,
        &mut p,
        &seeds(),
        0x6e65_7464_2d66_757a,
        &|f: &[u8]| starts_a_flow_from_world(f, &published),
        &|f: &[u8]| starts_a_flow_from_container(f, d.src),
        &|p: &mut Programs| check_table(p, &endpoints, &published),
    );
    assert_eq!(
        bpfmaps::control_maps_snapshot(&mut p),
        before,
        "control-plane maps untouched"
    );
    let c = p.counters().unwrap();
    assert_eq!(c["from_container.packets"], FRAMES_PER_PROGRAM as u64);
    assert_eq!(c["from_world.packets"], FRAMES_PER_PROGRAM as u64);
}

/// Runs FRAMES_PER_PROGRAM mutated frames through each program: every
/// verdict valid, every frame that created a flow one that `world_ok` /
/// `container_ok` says starts a connection, `check` on the table every
/// 10,000 frames and at the end.
fn run_fuzz(
    tb: &Testbed,
    p: &mut Programs,
    seeds: &[Vec<u8>],
    seed: u64,
    world_ok: &(dyn Fn(&[u8]) -> bool + Sync),
    container_ok: &(dyn Fn(&[u8]) -> bool + Sync),
    check: &(dyn Fn(&mut Programs) + Sync),
) {
    let mut rng = Rng(seed);
    let valid = [tc::ACT_UNSPEC, tc::ACT_OK, tc::ACT_SHOT, tc::ACT_REDIRECT];
    for prog in [bpf::FROM_CONTAINER, bpf::FROM_WORLD] {
        let mut verdicts = std::collections::BTreeMap::new();
        // The kernel itself refuses some frames before any program runs
        // (BPF_PROG_TEST_RUN validates e.g. a truncated IPv4 header):
        // those are counted apart, and generation goes on until
        // FRAMES_PER_PROGRAM frames have run through the program.
        let mut refused = 0u64;
        let mut created_flows = 0u64;
        let mut created = bpfmaps::counter(p, Counter::CtCreated);
        tb.host
            .run(|| {
                let mut ran = 0;
                while ran < FRAMES_PER_PROGRAM {
                    let f = mutate(&mut rng, seeds);
                    let v = match p.test_run(prog, &f) {
                        Ok((v, _)) => v,
                        Err(e) if format!("{e:?}").contains("code: 22") => {
                            refused += 1;
                            assert!(refused < 10 * FRAMES_PER_PROGRAM as u64);
                            continue;
                        }
                        Err(e) => panic!("{prog}: frame {f:02x?}: {e:#}"),
                    };
                    assert!(
                        valid.contains(&v),
                        "{prog}: frame {ran} {f:02x?} got verdict {v}"
                    );
                    let now = bpfmaps::counter(p, Counter::CtCreated);
                    if now != created {
                        created_flows += 1;
                        let ok = if prog == bpf::FROM_WORLD {
                            world_ok(&f)
                        } else {
                            container_ok(&f)
                        };
                        assert!(ok, "{prog}: frame {ran} {f:02x?} created a flow");
                        created = now;
                    }
                    if ran % 10_000 == 0 {
                        check(p);
                    }
                    *verdicts.entry(v).or_insert(0u64) += 1;
                    ran += 1;
                }
                Ok(())
            })
            .unwrap();
        eprintln!("{prog}: {refused} frames refused by the kernel before the program ran");
        eprintln!("{prog}: verdicts {verdicts:?}, {created_flows} frames created flows");
        assert!(
            verdicts.len() >= 2,
            "the mutations exercise more than one path: {verdicts:?}"
        );
        assert!(created_flows > 0, "some frames start flows");
        check(p);
    }
}

/// The cluster of the modes run: 172.16.0.0/12 holds both endpoints and
/// another node's pods (172.18.0.0/16).
fn in_cluster(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> 20 == u32::from(Ipv4Addr::new(172, 16, 0, 0)) >> 20
}

/// A frame's IPv4 (src, dst, proto, L4 bytes) when it is a whole first
/// fragment (or no fragment) with a sane header.
fn first_ipv4(f: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, &[u8])> {
    if f.len() < ETH_HLEN + 20 || f[12..14] != [0x08, 0x00] || f[0] & 1 == 1 {
        return None;
    }
    let ip = &f[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if ip[0] >> 4 != 4 || ihl < 20 || frag & 0x1fff != 0 {
        return None;
    }
    Some((
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        ip[9],
        ip.get(ihl..)?,
    ))
}

/// Issue 15's paths under the same mutations: A (172.17.0.2) on a
/// `routed` pod network of a cluster (its TCP port 80 published), B
/// (172.17.0.3) on a `nat-unprotected` network. Flows from outside start
/// only with a new connection the mode lets in (A: a SYN to port 80 or an
/// ICMP echo request, never from a cluster address, which goes in
/// untracked; B: any SYN, datagram or echo request); from A only with its
/// own connections outside the cluster (a pod's cluster traffic is never
/// tracked); nothing is ever masqueraded or DNATed.
#[test]
fn mutated_frames_through_the_gateway_modes_and_the_cluster() {
    if !require_root("mutated_frames_through_the_gateway_modes_and_the_cluster") {
        return;
    }
    let tb = Testbed::new("f").unwrap();
    let mut p = Programs::load_with(BpfLogLevel::Off, None, CT_SIZE).unwrap();
    let uplink = tb.host.run(|| Ok(netd::link::ifindex("eth0"))).unwrap();
    bpfmaps::set_config(
        &mut p,
        Config {
            uplink_ifindex: uplink,
            uplink_ip: be(HOST_IP),
            nat_port_min: NAT_PORTS.0,
            nat_port_max: NAT_PORTS.1,
            _pad: 0,
            netns_cookie: 0,
            cluster_net: 0,
            cluster_mask: 0,
        },
    );
    bpfmaps::set_cluster(&mut p, Ipv4Addr::new(172, 16, 0, 0), 12);
    bpfmaps::add_network(
        &mut p,
        1,
        NET_ICC | NET_DIRECT_PORTS | NET_DIRECT_ICMP | NET_FROM_NETWORKS | NET_CLUSTER,
    );
    bpfmaps::add_network(&mut p, 2, NET_ICC | NET_MASQUERADE | NET_DIRECT_ALL);
    let d = Frame::default();
    for (ifindex, net, ip, mac) in [(1, 1, d.src, d.src_mac), (55, 2, d.dst, d.dst_mac)] {
        bpfmaps::add_endpoint(
            &mut p,
            Endpoint {
                ifindex,
                net_id: net,
                ip: be(ip),
                mac,
                gw_mac: [2, 0, 0, 0, 0, 1],
                ..Endpoint::default()
            },
        );
    }
    bpfmaps::add_direct(&mut p, 6, d.src, 80, 80);
    let remote = Ipv4Addr::new(172, 18, 0, 5);
    let world = |dst: Ipv4Addr, src: Ipv4Addr| Frame {
        src_mac: [2, 0x42, 198, 18, 0, 1],
        dst_mac: [2, 0x42, 198, 18, 0, 2],
        src,
        dst,
        ttl: 64,
    };
    let a = Frame {
        dst_mac: [2, 0, 0, 0, 0, 1],
        ..d.clone()
    };
    let mut seeds = seeds();
    seeds.extend([
        world(d.src, OUTSIDE_IP).tcp(5555, 80, TCP_SYN, b""),
        world(d.src, OUTSIDE_IP).tcp(5556, 80, TCP_ACK, b"mid"),
        world(d.src, OUTSIDE_IP).tcp(5557, 81, TCP_SYN, b""),
        world(d.src, OUTSIDE_IP).udp(5555, 80, b"u"),
        world(d.src, OUTSIDE_IP).icmp_echo(5, false),
        world(d.dst, OUTSIDE_IP).tcp(5558, 22, TCP_SYN, b""),
        world(d.dst, OUTSIDE_IP).udp(5559, 9, b"u"),
        world(d.dst, OUTSIDE_IP).icmp_echo(6, false),
        world(d.src, remote).tcp(5560, 22, TCP_SYN, b""),
        world(d.dst, remote).udp(5561, 9, b"u"),
        a.tcp(40000, 80, TCP_SYN, b""),
        Frame {
            dst: remote,
            ..a.clone()
        }
        .tcp(40001, 80, TCP_SYN, b""),
        Frame {
            dst: remote,
            ..a.clone()
        }
        .udp(40002, 53, b"q"),
        Frame {
            dst: OUTSIDE_IP,
            ..a.clone()
        }
        .tcp(80, 5555, TCP_SYN | TCP_ACK, b""),
        Frame {
            dst: OUTSIDE_IP,
            ..a.clone()
        }
        .icmp_echo(5, true),
    ]);
    seeds.extend(packet::fragment(
        &world(d.src, remote).udp(53, 5353, &[7u8; 200]),
        0x96,
        96,
    ));
    let endpoints = [d.src, d.dst];
    let before = bpfmaps::control_maps_snapshot(&mut p);
    let world_ok = |f: &[u8]| -> bool {
        let Some((src, dst, proto, l4)) = first_ipv4(f) else {
            return false;
        };
        let syn = proto == 6 && l4.len() >= 20 && l4[13] & 0x17 == TCP_SYN;
        let echo = proto == 1 && l4.len() >= 8 && l4[0] == 8;
        let dport = if l4.len() >= 4 {
            u16::from_be_bytes([l4[2], l4[3]])
        } else {
            0
        };
        if dst == d.src {
            !in_cluster(src) && ((syn && dport == 80) || echo)
        } else if dst == d.dst {
            syn || (proto == 17 && l4.len() >= 8) || echo
        } else {
            false
        }
    };
    let container_ok = |f: &[u8]| -> bool {
        starts_a_flow_from_container(f, d.src)
            && first_ipv4(f).is_some_and(|(_, dst, _, _)| !in_cluster(dst))
    };
    let check = |p: &mut Programs| {
        let ct = bpfmaps::ct_consistent(p).unwrap();
        assert!(ct.len() <= CT_SIZE as usize);
        for (k, e) in &ct {
            assert!(
                endpoints.iter().any(|ip| be(*ip) == e.container_ip),
                "{k:?} {e:?}"
            );
            assert!(
                !matches!(
                    e.kind,
                    ct_kind::SNAT | ct_kind::DNAT | ct_kind::HAIRPIN | ct_kind::REV_HAIRPIN
                ) || (e.kind == ct_kind::SNAT && e.container_ip == be(d.dst)),
                "nothing translated: {k:?} {e:?}"
            );
        }
    };
    run_fuzz(
        &tb,
        &mut p,
        &seeds,
        0x6d6f_6465_732d_6675,
        &world_ok,
        &container_ok,
        &check,
    );
    assert_eq!(
        bpfmaps::control_maps_snapshot(&mut p),
        before,
        "control-plane maps untouched"
    );
}

/// IPv6 (issue 16) under the same mutations: extension headers (walked,
/// unknown, too many, bad lengths), truncated headers, fragments (first
/// and later, both ways), Neighbour Discovery, ICMPv6 errors. A
/// dual-stack network (A fd00:17::2 on the test-run ingress, B ::3),
/// ports published over IPv6 on [::]. Flows start only as netfilter's
/// would: from outside a SYN (no ACK/RST/FIN) or a datagram to a
/// published port of the host's IPv6 address, never a later fragment;
/// from A its own TCP/UDP/ICMPv6 echo; every entry is a whole flow,
/// masqueraded to the host's IPv6 address inside the NAT range, DNATed
/// only for published ports.
mod v6 {
    use std::net::Ipv6Addr;

    use netd_common::{NET_IPV6, v6::Endpoint6};
    use netd_tests::{
        bpfmaps::v6 as maps6,
        packet6::{Frame6, NH_DEST, NH_HOP, NH_TCP, NH_UDP, segment},
    };

    use super::*;

    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 2);
    const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 3);
    const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
    const OUT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);

    /// (src, dst, upper-layer protocol, its bytes, a later fragment) of
    /// an IPv6 frame whose extension headers parse as netd walks them.
    fn upper(f: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, u8, &[u8], bool)> {
        if f.len() < ETH_HLEN + 40 || f[12..14] != [0x86, 0xdd] || f[0] & 1 == 1 {
            return None;
        }
        let ip = &f[ETH_HLEN..];
        if ip[0] >> 4 != 6 {
            return None;
        }
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
        let (mut nh, mut off, mut later) = (ip[6], 40usize, false);
        for _ in 0..5 {
            match nh {
                0 | 43 | 60 => {
                    let h = ip.get(off..off + 2)?;
                    nh = h[0];
                    off += (usize::from(h[1]) + 1) * 8;
                }
                44 => {
                    let h = ip.get(off..off + 8)?;
                    nh = h[0];
                    later = u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0;
                    off += 8;
                }
                50 | 51 | 135 | 139 | 140 | 253 | 254 => return None,
                _ => return Some((src, dst, nh, ip.get(off..)?, later)),
            }
        }
        None
    }

    fn seeds6() -> Vec<Vec<u8>> {
        let a = Frame6::new(A_MAC, GW, A6, B6);
        let out = Frame6::new(A_MAC, GW, A6, OUT6);
        let world = Frame6::new(OUT_MAC, HOST_MAC, OUT6, HOST6);
        let mcast = [0x33, 0x33, 0, 0, 0, 1];
        let all: Ipv6Addr = "ff02::1".parse().unwrap();
        let ll = netd_tests::packet6::link_local(A_MAC);
        let nat_out = out.tcp(40000, 80, TCP_SYN, b"x");
        let mut v = vec![
            a.tcp(40000, 80, TCP_SYN, b"payload"),
            a.udp(5353, 53, b"query"),
            a.echo(9, false),
            a.clone()
                .with_opts(NH_HOP)
                .with_opts(NH_DEST)
                .tcp(1, 2, TCP_SYN, b""),
            out.tcp(40001, 443, TCP_SYN, b""),
            out.tcp(40002, 443, TCP_ACK, b"mid-stream"),
            out.udp(61002, 53, b"q"),
            out.echo(11, false),
            out.clone().with_opts(NH_HOP).udp(61003, 53, b"q"),
            out.raw(50, &[0u8; 24]),
            Frame6::new(A_MAC, mcast, ll, all).nd(136, A6),
            Frame6::new(A_MAC, mcast, ll, all).nd(136, B6),
            Frame6::new(A_MAC, mcast, Ipv6Addr::UNSPECIFIED, all).nd(135, A6),
            Frame6::new(A_MAC, mcast, ll, all).icmp6(134, 0, [64, 0, 0, 0], &[0; 8]),
            Frame6::new(A_MAC, GW, A6, OUT6).error(1, 4, 0, &world.udp(4444, 5353, b"q")),
            world.tcp(5555, 8080, TCP_SYN, b""),
            world.tcp(5556, 8080, TCP_ACK, b"not a new connection"),
            world.tcp(5557, 8080, 0x04, b""),
            world.tcp(5558, 8080, TCP_SYN | 0x04, b""),
            world.tcp(5559, 8080, TCP_SYN | TCP_ACK, b""),
            world.udp(5555, 5353, b"x"),
            world.echo(3, true),
            world.tcp(80, 61001, 0x12, b"reply"),
            world
                .clone()
                .with_opts(NH_DEST)
                .tcp(5560, 8080, TCP_SYN, b""),
            world.error(2, 0, 1280, &nat_out),
            Frame6::new(OUT_MAC, HOST_MAC, OUT6, A6).udp(1, 2, b"to a container's address"),
        ];
        // Fragments, first and later, both ways.
        for (f, nh, l4) in [
            (
                out.clone(),
                NH_UDP,
                segment(&out.udp(5000, 53, &[7u8; 200])),
            ),
            (
                world.clone(),
                NH_UDP,
                segment(&world.udp(53, 5353, &[7u8; 200])),
            ),
            (
                world.clone(),
                NH_TCP,
                segment(&world.tcp(5561, 8080, TCP_SYN, &[7u8; 200])),
            ),
        ] {
            v.push(f.fragment(nh, &l4, 0x99, 0, 96));
            v.push(f.fragment(nh, &l4, 0x99, 96, 200));
        }
        v
    }

    const A_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 2];
    const B_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 3];
    const GW: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OUT_MAC: [u8; 6] = [2, 0x42, 198, 18, 0, 1];
    const HOST_MAC: [u8; 6] = [2, 0x42, 198, 18, 0, 2];

    fn mutate6(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
        if rng.below(10) == 0 {
            let len = ETH_HLEN + rng.below(140);
            let mut f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            return f;
        }
        let mut f = seeds[rng.below(seeds.len())].clone();
        let ip = ETH_HLEN;
        for _ in 0..1 + rng.below(3) {
            match rng.below(8) {
                0 => f.truncate(ETH_HLEN + rng.below(f.len() - ETH_HLEN + 1)),
                // The next header: another extension header or protocol.
                1 if f.len() > ip + 6 => {
                    f[ip + 6] = [0, 43, 44, 60, 6, 17, 58, 50, 59, rng.byte()][rng.below(10)]
                }
                // An extension header's next header / length.
                2 if f.len() > ip + 41 => {
                    let i = ip + 40 + rng.below(2);
                    f[i] = rng.byte();
                }
                // Fragment offsets and M flags where a fragment header is.
                3 if f.len() > ip + 43 => f[ip + 42 + rng.below(2)] = rng.byte(),
                4 | 5 => {
                    let i = rng.below(f.len());
                    f[i] = rng.byte();
                }
                // TCP flags (no extension headers).
                6 if f.len() > ip + 40 + 13 && f[ip + 6] == 6 => {
                    f[ip + 40 + 13] = rng.byte() & 0x17;
                }
                6 => f[12..14].copy_from_slice(&[0x08, 0x00]),
                _ => f.extend((0..rng.below(64)).map(|_| rng.byte())),
            }
        }
        if f.len() < ETH_HLEN {
            f.resize(ETH_HLEN, 0);
        }
        f
    }

    #[test]
    fn mutated_ipv6_frames_get_valid_verdicts_and_start_only_real_flows() {
        if !require_root("mutated_ipv6_frames_get_valid_verdicts_and_start_only_real_flows") {
            return;
        }
        let tb = Testbed::new("f").unwrap();
        let host = tb.host.clone();
        netd::testbed::block_on(async move {
            let n = netd::link::Netlink::in_ns(&host)?;
            let i = n.index_of("eth0").await?;
            n.add_addr6(i, HOST6, 64).await?;
            n.add_default_route6(OUT6).await?;
            anyhow::Ok(())
        })
        .unwrap();
        tb.host
            .run(|| netd::netns::sysctl_write("net/ipv6/conf/all/forwarding", "1"))
            .unwrap();
        let mut p = Programs::load_with(BpfLogLevel::Off, None, CT_SIZE).unwrap();
        let uplink = tb.host.run(|| Ok(netd::link::ifindex("eth0"))).unwrap();
        bpfmaps::set_config(
            &mut p,
            Config {
                uplink_ifindex: uplink,
                uplink_ip: be(HOST_IP),
                nat_port_min: NAT_PORTS.0,
                nat_port_max: NAT_PORTS.1,
                _pad: 0,
                netns_cookie: 0,
                cluster_net: 0,
                cluster_mask: 0,
            },
        );
        maps6::set_uplink(&mut p, HOST6);
        bpfmaps::add_network(&mut p, 1, NET_ICC | NET_MASQUERADE | NET_IPV6);
        maps6::add_network(&mut p, 1, NET_ICC | NET_MASQUERADE);
        let d = Frame::default();
        for (ifindex, ip, ip6, mac) in [(1, d.src, A6, A_MAC), (55, d.dst, B6, B_MAC)] {
            bpfmaps::add_endpoint(
                &mut p,
                Endpoint {
                    ifindex,
                    net_id: 1,
                    ip: be(ip),
                    mac,
                    gw_mac: GW,
                    ..Endpoint::default()
                },
            );
            maps6::add_endpoint(
                &mut p,
                Endpoint6 {
                    ifindex,
                    net_id: 1,
                    ip: maps6::ip6(ip6),
                    mac,
                    gw_mac: GW,
                    slot: 0,
                },
            );
        }
        maps6::add_port(&mut p, 6, Ipv6Addr::UNSPECIFIED, 8080, A6, 80);
        maps6::add_port(&mut p, 17, Ipv6Addr::UNSPECIFIED, 5353, B6, 53);
        let published = [(6u8, 8080u16), (17, 5353)];
        let before = bpfmaps::control_maps_snapshot(&mut p);
        let world_ok = |f: &[u8]| -> bool {
            let Some((_, dst, nh, l4, later)) = upper(f) else {
                return false;
            };
            if later || dst != HOST6 || l4.len() < 8 {
                return false;
            }
            let dport = u16::from_be_bytes([l4[2], l4[3]]);
            published.contains(&(nh, dport))
                && match nh {
                    6 => l4.len() >= 20 && l4[13] & 0x17 == TCP_SYN,
                    17 => true,
                    _ => false,
                }
        };
        let container_ok = |f: &[u8]| -> bool {
            upper(f).is_some_and(|(src, _, nh, l4, later)| {
                !later
                    && src == A6
                    && (matches!(nh, 6 | 17)
                        || (nh == 58 && l4.first().is_some_and(|t| matches!(t, 128 | 129))))
            })
        };
        let check = |p: &mut Programs| {
            let ct: std::collections::BTreeMap<_, _> = maps6::ct(p).into_iter().collect();
            assert!(ct.len() <= CT_SIZE as usize);
            for (k, e) in &ct {
                let rk = k.reverse(e);
                let re = ct.get(&rk).unwrap_or_else(|| panic!("orphan {k:?} {e:?}"));
                assert_eq!(rk.reverse(re), *k, "{k:?} {e:?}");
                assert!(
                    [A6, B6].iter().any(|a| maps6::ip6(*a) == e.container_ip),
                    "{k:?} {e:?}"
                );
                match e.kind {
                    ct_kind::SNAT => assert!(
                        (NAT_PORTS.0..=NAT_PORTS.1).contains(&e.port)
                            && e.addr == maps6::ip6(HOST6),
                        "{k:?} {e:?}"
                    ),
                    ct_kind::DNAT => assert!(
                        k.daddr == maps6::ip6(HOST6) && published.contains(&(k.proto, k.dport)),
                        "{k:?} {e:?}"
                    ),
                    _ => {}
                }
            }
        };
        // Mutated IPv6 seeds (run_fuzz's mutations are IPv4-shaped: these
        // frames go through mutate6 first, then as seeds).
        let mut rng = Rng(0x7636_2d66_757a_7a21);
        let seeds = seeds6();
        let mut mutated: Vec<Vec<u8>> = seeds.clone();
        mutated.extend((0..2000).map(|_| mutate6(&mut rng, &seeds)));
        run_fuzz(
            &tb,
            &mut p,
            &mutated,
            0x6970_7636_2d66_757a,
            &world_ok,
            &container_ok,
            &check,
        );
        assert_eq!(
            bpfmaps::control_maps_snapshot(&mut p),
            before,
            "control-plane maps untouched"
        );
        let c = p.counters().unwrap();
        assert!(
            c["from_container.ipv6"] > 0 && c["from_world.ipv6"] > 0,
            "{c:?}"
        );
        let drops = p.drops().unwrap();
        assert!(drops["ipv6-ext-header"] > 0, "{drops:?}");
    }
}
