//! The eBPF datapath's packet walks under BPF_PROG_TEST_RUN: build the
//! frame, fill the maps, run the program, assert the verdict, the output
//! bytes field by field, that the IPv4 and L4 checksums verify, and the
//! conntrack entries and counters. Programs run inside a throwaway
//! namespace (the FIB lookups see its routes: uplink eth0 198.18.0.2,
//! default via 198.18.0.1); BPF_PROG_TEST_RUN's ingress device there is
//! `lo` (ifindex 1), so the endpoint under test has ifindex 1.
use std::net::Ipv4Addr;

use netd::bpf::{self, BpfLogLevel, Programs};
use netd_common::{Config, Endpoint, NET_ICC, NET_INTERNAL, NET_MASQUERADE, ct_kind, tc};
use netd_tests::{
    HOST_IP, OUTSIDE_IP, Testbed,
    bpfmaps::{self, be},
    packet::{self, Frame, TCP_SYN},
    require_root,
};

const A_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 2];
const B_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 3];
const GW_MAC: [u8; 6] = [0x02, 0x42, 0xaa, 0xbb, 0xcc, 0x01];
const A_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);
const NAT_MIN: u16 = 61000;
const NAT_MAX: u16 = 61009;
const LO: u32 = 1;
const B_VETH: u32 = 4242;

struct Walk {
    tb: Testbed,
    p: Programs,
}

/// A loaded datapath in a throwaway namespace: network 1 (flags), endpoint
/// A on the test-run ingress (lo), endpoint B elsewhere; `b_net` is B's
/// network id.
fn setup(flags: u32, b_net: u32, ct_entries: u32) -> Walk {
    let tb = Testbed::new("w").unwrap();
    let mut p = Programs::load_with(BpfLogLevel::Off, None, ct_entries).unwrap();
    let uplink = tb
        .host
        .run(|| Ok(unsafe { libc::if_nametoindex(c"eth0".as_ptr()) }))
        .unwrap();
    bpfmaps::set_config(
        &mut p,
        Config {
            uplink_ifindex: uplink,
            uplink_ip: be(HOST_IP),
            nat_port_min: NAT_MIN,
            nat_port_max: NAT_MAX,
            _pad: 0,
            netns_cookie: 0,
        },
    );
    bpfmaps::add_network(&mut p, 1, flags);
    bpfmaps::add_network(&mut p, 2, NET_ICC | NET_MASQUERADE);
    bpfmaps::add_endpoint(
        &mut p,
        Endpoint {
            ifindex: LO,
            net_id: 1,
            ip: be(A_IP),
            mac: A_MAC,
            gw_mac: GW_MAC,
        },
    );
    bpfmaps::add_endpoint(
        &mut p,
        Endpoint {
            ifindex: B_VETH,
            net_id: b_net,
            ip: be(B_IP),
            mac: B_MAC,
            gw_mac: GW_MAC,
        },
    );
    Walk { tb, p }
}

impl Walk {
    fn run(&mut self, prog: &str, frame: &[u8]) -> (i32, Vec<u8>) {
        let p = &mut self.p;
        self.tb.host.run(|| p.test_run(prog, frame)).unwrap()
    }
    fn drops(&self, reason: &str) -> u64 {
        self.p.drops().unwrap()[reason]
    }
    fn counter(&self, c: &str) -> u64 {
        self.p.counters().unwrap()[c]
    }
}

fn a_to(dst: Ipv4Addr) -> Frame {
    Frame {
        src_mac: A_MAC,
        dst_mac: GW_MAC,
        src: A_IP,
        dst,
        ttl: 64,
    }
}

fn world_to_host() -> Frame {
    Frame {
        src_mac: [0x02, 0x42, 198, 18, 0, 1],
        dst_mac: [0x02, 0x42, 198, 18, 0, 2],
        src: OUTSIDE_IP,
        dst: HOST_IP,
        ttl: 64,
    }
}

macro_rules! root {
    () => {
        if !require_root(module_path!()) {
            return;
        }
    };
}

#[test]
fn forward_same_network_redirects_to_the_peer_unchanged() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let frame = Frame {
        dst_mac: B_MAC,
        ..a_to(B_IP)
    }
    .tcp(40000, 80, TCP_SYN, b"");
    let (v, out) = w.run(bpf::FROM_CONTAINER, &frame);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(out, frame, "same-network forwarding does not rewrite");
    assert_eq!(w.counter("forwarded"), 1);
    assert!(
        bpfmaps::ct(&mut w.p).is_empty(),
        "no conntrack for same-network traffic"
    );
}

#[test]
fn icc_false_drops_container_to_container() {
    root!();
    let mut w = setup(NET_MASQUERADE, 1, 1024);
    let frame = a_to(B_IP).tcp(40000, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &frame).0, tc::ACT_SHOT);
    assert_eq!(w.drops("icc-denied"), 1);
}

#[test]
fn another_network_is_isolated() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 2, 1024);
    let frame = a_to(B_IP).tcp(40000, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &frame).0, tc::ACT_SHOT);
    assert_eq!(w.drops("network-isolation"), 1);
}

#[test]
fn spoofed_mac_or_ip_is_dropped_and_counted() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let bad_ip = a_to(B_IP);
    let frame = Frame {
        src: Ipv4Addr::new(172, 17, 0, 99),
        ..bad_ip
    }
    .tcp(1, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &frame).0, tc::ACT_SHOT);
    let frame = Frame {
        src_mac: [2, 0, 0, 0, 0, 9],
        ..a_to(B_IP)
    }
    .udp(1, 53, b"x");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &frame).0, tc::ACT_SHOT);
    assert_eq!(w.drops("spoofed-source"), 2);
}

#[test]
fn internal_network_cannot_leave() {
    root!();
    let mut w = setup(NET_ICC | NET_INTERNAL, 1, 1024);
    let frame = a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &frame).0, tc::ACT_SHOT);
    assert_eq!(w.drops("internal-network"), 1);
}

#[test]
fn snat_then_reverse_snat_tcp() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let frame = a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b"hello");
    let (v, out) = w.run(bpf::FROM_CONTAINER, &frame);
    assert_eq!(
        v,
        tc::ACT_REDIRECT,
        "out of the uplink with bpf_redirect_neigh"
    );
    let f = packet::fields(&out);
    assert_eq!(f.src, HOST_IP, "masqueraded to the uplink address");
    assert_eq!(f.dst, OUTSIDE_IP);
    assert_eq!(f.sport, 40000, "the container's own port, free: kept");
    assert_eq!(f.dport, 80);
    assert!(packet::checksums_ok(&out), "IPv4 and TCP checksums verify");
    assert_eq!(&out[out.len() - 5..], b"hello", "payload untouched");
    let ct = bpfmaps::ct(&mut w.p);
    assert_eq!(ct.len(), 2);
    assert!(
        ct.iter()
            .any(|(k, e)| e.kind == ct_kind::SNAT && k.sport == 40000 && e.port == f.sport)
    );
    assert!(
        ct.iter()
            .any(|(k, e)| e.kind == ct_kind::REV_SNAT && k.dport == f.sport && e.port == 40000)
    );

    // The reply from the world comes back to A.
    let reply = world_to_host().tcp(80, f.sport, TCP_SYN | packet::TCP_ACK, b"world");
    let (v, back) = w.run(bpf::FROM_WORLD, &reply);
    assert_eq!(
        v,
        tc::ACT_REDIRECT,
        "into the container with bpf_redirect_peer"
    );
    let b = packet::fields(&back);
    assert_eq!(
        (b.dst, b.dport, b.src, b.sport),
        (A_IP, 40000, OUTSIDE_IP, 80)
    );
    assert_eq!((b.dst_mac, b.src_mac), (A_MAC, GW_MAC));
    assert!(packet::checksums_ok(&back));
    assert_eq!((w.counter("snat"), w.counter("rev_snat")), (1, 1));

    // The same flow again reuses its port.
    let (_, again) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, packet::TCP_ACK, b""),
    );
    assert_eq!(packet::fields(&again).sport, f.sport);
    assert_eq!(bpfmaps::ct(&mut w.p).len(), 2);
}

#[test]
fn snat_keeps_a_free_original_port_and_probes_on_collision() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let (_, out) = w.run(bpf::FROM_CONTAINER, &a_to(OUTSIDE_IP).udp(61003, 53, b"q"));
    assert_eq!(packet::fields(&out).sport, 61003, "in range and free: kept");
    // Another container flow to the same destination with the same port collides.
    let frame = Frame {
        src: A_IP,
        ..a_to(OUTSIDE_IP)
    };
    let (_, out2) = w.run(bpf::FROM_CONTAINER, &Frame { ..frame }.udp(61003, 54, b"q"));
    // Different destination port: different reverse key, the port is kept too.
    assert_eq!(packet::fields(&out2).sport, 61003);
    let mut b = w;
    bpfmaps::add_endpoint(
        &mut b.p,
        Endpoint {
            ifindex: LO,
            net_id: 1,
            ip: be(B_IP),
            mac: B_MAC,
            gw_mac: GW_MAC,
        },
    );
    // B (now on the test-run ingress) uses A's tuple's port to the same destination.
    let bf = Frame {
        src_mac: B_MAC,
        dst_mac: GW_MAC,
        src: B_IP,
        dst: OUTSIDE_IP,
        ttl: 64,
    };
    let (v, out3) = b.run(bpf::FROM_CONTAINER, &bf.udp(61003, 53, b"q"));
    assert_eq!(v, tc::ACT_REDIRECT);
    let p3 = packet::fields(&out3).sport;
    assert_ne!(p3, 61003, "collision: probed to another port");
    assert!((NAT_MIN..=NAT_MAX).contains(&p3));
    assert!(packet::checksums_ok(&out3));
}

#[test]
fn snat_udp_without_checksum_stays_without_and_icmp_echo_works() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let mut frame = a_to(OUTSIDE_IP).udp(5000, 53, b"q");
    let l4 = packet::ETH_HLEN + 20;
    frame[l4 + 6] = 0;
    frame[l4 + 7] = 0;
    let (v, out) = w.run(bpf::FROM_CONTAINER, &frame);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(
        &out[l4 + 6..l4 + 8],
        &[0, 0],
        "a zero UDP checksum means none and stays so"
    );
    assert!(packet::ipv4_checksum_ok(&out));

    let (v, out) = w.run(bpf::FROM_CONTAINER, &a_to(OUTSIDE_IP).icmp_echo(777, false));
    assert_eq!(v, tc::ACT_REDIRECT);
    let f = packet::fields(&out);
    assert_eq!(f.src, HOST_IP);
    assert!(packet::checksums_ok(&out));
    let reply = world_to_host().icmp_echo(f.sport, true);
    let (v, back) = w.run(bpf::FROM_WORLD, &reply);
    assert_eq!(v, tc::ACT_REDIRECT);
    let b = packet::fields(&back);
    assert_eq!((b.dst, b.sport), (A_IP, 777), "echo id restored");
    assert!(packet::checksums_ok(&back));
}

#[test]
fn dnat_to_a_published_range_then_reverse_dnat() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    // 0.0.0.0:9000-9001 -> A:7000-7001.
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 9000, 9001, A_IP, 7000);
    let syn = world_to_host().tcp(5555, 9001, TCP_SYN, b"");
    let (v, out) = w.run(bpf::FROM_WORLD, &syn);
    assert_eq!(v, tc::ACT_REDIRECT);
    let f = packet::fields(&out);
    assert_eq!((f.dst, f.dport), (A_IP, 7001), "range offset kept");
    assert_eq!(
        (f.src, f.sport),
        (OUTSIDE_IP, 5555),
        "the client's address is preserved"
    );
    assert_eq!((f.dst_mac, f.src_mac), (A_MAC, GW_MAC));
    assert!(packet::checksums_ok(&out));
    let ct = bpfmaps::ct(&mut w.p);
    assert!(
        ct.iter()
            .any(|(_, e)| e.kind == ct_kind::DNAT && e.port == 7001)
    );
    assert!(
        ct.iter()
            .any(|(_, e)| e.kind == ct_kind::REV_DNAT && e.port == 9001)
    );

    // A's reply leaves as the host's published port.
    let reply = Frame {
        src_mac: A_MAC,
        dst_mac: GW_MAC,
        src: A_IP,
        dst: OUTSIDE_IP,
        ttl: 64,
    }
    .tcp(7001, 5555, TCP_SYN | packet::TCP_ACK, b"");
    let (v, back) = w.run(bpf::FROM_CONTAINER, &reply);
    assert_eq!(v, tc::ACT_REDIRECT);
    let b = packet::fields(&back);
    assert_eq!(
        (b.src, b.sport, b.dst, b.dport),
        (HOST_IP, 9001, OUTSIDE_IP, 5555)
    );
    assert!(packet::checksums_ok(&back));
    assert_eq!((w.counter("dnat"), w.counter("rev_dnat")), (1, 1));

    // An unpublished port is not ours.
    let (v, _) = w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(5555, 9002, TCP_SYN, b""),
    );
    assert_eq!(v, tc::ACT_UNSPEC);
}

#[test]
fn a_full_conntrack_table_refuses_new_flows_and_keeps_established_ones() {
    root!();
    // Room for one flow (two entries).
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 2);
    let first = a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &first).0, tc::ACT_REDIRECT);
    let second = a_to(OUTSIDE_IP).tcp(40001, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &second).0, tc::ACT_SHOT);
    assert_eq!(w.drops("ct-table-full"), 1);
    let again = a_to(OUTSIDE_IP).tcp(40000, 80, packet::TCP_ACK, b"more");
    let (v, out) = w.run(bpf::FROM_CONTAINER, &again);
    assert_eq!(v, tc::ACT_REDIRECT, "the established flow continues");
    assert_eq!(packet::fields(&out).src, HOST_IP);
}

#[test]
fn fragments_and_other_protocols_pass_untranslated() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let mut frag = a_to(OUTSIDE_IP).udp(5000, 53, b"q");
    frag[packet::ETH_HLEN + 6] = 0x20; // MF
    let (v, out) = w.run(bpf::FROM_CONTAINER, &frag);
    assert_eq!((v, out == frag), (tc::ACT_UNSPEC, true));
    // GRE (47) to the world cannot be masqueraded: dropped, counted.
    let mut gre = a_to(OUTSIDE_IP).udp(1, 2, b"x");
    gre[packet::ETH_HLEN + 9] = 47;
    assert_eq!(w.run(bpf::FROM_CONTAINER, &gre).0, tc::ACT_SHOT);
    assert_eq!(w.drops("unsupported"), 1);
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_back() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    // A masqueraded UDP flow out...
    let (_, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).udp(5000, 53, b"query"),
    );
    let nat_port = packet::fields(&out).sport;
    // ...and the world says "fragmentation needed" about it.
    let err = world_to_host().icmp_error(3, 4, 1400, &out);
    let (v, back) = w.run(bpf::FROM_WORLD, &err);
    assert_eq!(v, tc::ACT_REDIRECT, "into the container");
    let f = packet::fields(&back);
    assert_eq!(
        (f.src, f.dst),
        (OUTSIDE_IP, A_IP),
        "outer destination restored"
    );
    let (inner, inner_ok) = packet::icmp_inner(&back);
    assert_eq!(
        inner,
        (A_IP, OUTSIDE_IP, 5000, 53),
        "quoted packet restored (was {HOST_IP}:{nat_port})"
    );
    assert!(inner_ok, "inner IPv4 checksum verifies");
    assert!(
        packet::checksums_ok(&back),
        "outer IPv4 and ICMP checksums verify"
    );
    assert_eq!(
        back[packet::ETH_HLEN + 20 + 6..packet::ETH_HLEN + 20 + 8],
        1400u16.to_be_bytes(),
        "next-hop MTU kept"
    );

    // A published UDP port; the container answers "port unreachable".
    bpfmaps::add_ports(&mut w.p, 17, Ipv4Addr::UNSPECIFIED, 5353, 5353, A_IP, 53);
    let (_, dnated) = w.run(bpf::FROM_WORLD, &world_to_host().udp(5555, 5353, b"q"));
    assert_eq!(packet::fields(&dnated).dst, A_IP);
    let unreach = Frame {
        src_mac: A_MAC,
        dst_mac: GW_MAC,
        src: A_IP,
        dst: OUTSIDE_IP,
        ttl: 64,
    }
    .icmp_error(3, 3, 0, &dnated);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &unreach);
    assert_eq!(v, tc::ACT_REDIRECT, "out of the uplink");
    let f = packet::fields(&out);
    assert_eq!(
        (f.src, f.dst),
        (HOST_IP, OUTSIDE_IP),
        "outer source is the host's"
    );
    let (inner, inner_ok) = packet::icmp_inner(&out);
    assert_eq!(
        inner,
        (OUTSIDE_IP, HOST_IP, 5555, 5353),
        "quoted packet as the client sent it"
    );
    assert!(inner_ok && packet::checksums_ok(&out));
    assert_eq!(w.counter("icmp_errors"), 2);
}

#[test]
fn a_reopened_tuple_keeps_its_translation_and_starts_anew() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let syn = a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b"");
    let (_, out) = w.run(bpf::FROM_CONTAINER, &syn);
    let port = packet::fields(&out).sport;
    let fin = 0x01 | packet::TCP_ACK;
    w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, fin, b""),
    );
    let closing = bpfmaps::ct(&mut w.p);
    assert!(
        closing
            .iter()
            .any(|(k, e)| k.sport == 40000 && e.state == netd_common::ct_state::CLOSING)
    );
    // The container reuses its port for a new connection (after its own
    // TIME_WAIT): same translation, so the server sees the tuple it knows.
    let (v, again) = w.run(bpf::FROM_CONTAINER, &syn);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(packet::fields(&again).sport, port);
    let ct = bpfmaps::ct(&mut w.p);
    assert_eq!(ct.len(), 2);
    assert!(
        ct.iter()
            .any(|(k, e)| k.sport == 40000 && e.state == netd_common::ct_state::NEW)
    );
}
