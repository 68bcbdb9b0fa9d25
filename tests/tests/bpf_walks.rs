//! The eBPF datapath's packet walks under BPF_PROG_TEST_RUN: build the
//! frame, fill the maps, run the program, assert the verdict, the output
//! bytes field by field, that the IPv4 and L4 checksums verify, and the
//! conntrack entries and counters. Programs run inside a throwaway
//! namespace (the FIB lookups see its routes: uplink eth0 198.18.0.2,
//! default via 198.18.0.1); BPF_PROG_TEST_RUN's ingress device there is
//! `lo` (ifindex 1), so the endpoint under test has ifindex 1.
use std::net::Ipv4Addr;

use netd::bpf::{self, BpfLogLevel, Programs};
use netd_common::{
    Config, Endpoint, NET_CLUSTER, NET_DIRECT_ALL, NET_DIRECT_ICMP, NET_DIRECT_PORTS,
    NET_FROM_NETWORKS, NET_ICC, NET_INTERNAL, NET_MASQUERADE, ct_kind, tc,
};
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
            cluster_net: 0,
            cluster_mask: 0,
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
            ..Endpoint::default()
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
            ..Endpoint::default()
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

/// The endpoint caches (direct-mapped arrays in front of the endpoint
/// hash maps): endpoints that share a slot with another are found in the
/// hash maps all the same, by address (a peer on the fast path, a flow's
/// delivery) and by veth (the sender's own checks, anti-spoofing
/// included); a removed endpoint leaves its slot and gets nothing.
#[test]
fn endpoints_sharing_a_cache_slot_are_found_all_the_same() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let a = Endpoint {
        ifindex: LO,
        net_id: 1,
        ip: be(A_IP),
        mac: A_MAC,
        gw_mac: GW_MAC,
        ..Endpoint::default()
    };
    // X takes A's veth slot (ifindex 1 + the cache size) before A is
    // written again: A is in the hash map only.
    bpfmaps::remove_endpoint(&mut w.p, &a);
    let x = Endpoint {
        ifindex: LO + netd_common::EP_CACHE_SIZE,
        net_id: 1,
        ip: be(Ipv4Addr::new(172, 17, 0, 50)),
        mac: [2, 0x42, 0, 0, 0, 0x50],
        gw_mac: GW_MAC,
        ..Endpoint::default()
    };
    bpfmaps::add_endpoint(&mut w.p, x);
    bpfmaps::add_endpoint(&mut w.p, a);
    // C shares B's address slot (the low 12 bits: 172.17.16.3 and
    // 172.17.0.3), B holds it.
    const C_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 16, 3);
    const C_VETH: u32 = 5151;
    bpfmaps::add_endpoint(
        &mut w.p,
        Endpoint {
            ifindex: C_VETH,
            net_id: 1,
            ip: be(C_IP),
            mac: [2, 0x42, 172, 17, 16, 3],
            gw_mac: GW_MAC,
            ..Endpoint::default()
        },
    );
    let (by_ip, by_if) = bpfmaps::ep_cache_slots(&mut w.p, C_IP, LO);
    assert_eq!(
        (by_ip.ip, by_if.ifindex),
        (be(B_IP), x.ifindex),
        "both slots taken by others"
    );

    let to = |dst: Ipv4Addr| a_to(dst).tcp(40000, 80, packet::TCP_ACK, b"x");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &to(C_IP)).0, tc::ACT_REDIRECT);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &to(B_IP)).0, tc::ACT_REDIRECT);
    assert_eq!(bpfmaps::endpoint_stats(&mut w.p, C_VETH).tx_packets, 1);
    assert_eq!(bpfmaps::endpoint_stats(&mut w.p, B_VETH).tx_packets, 1);
    assert_eq!(
        bpfmaps::endpoint_stats(&mut w.p, LO).rx_packets,
        2,
        "A's own slot: its counters"
    );
    // A's checks come from the hash map: a spoofed source is dropped.
    let spoofed = Frame {
        src: Ipv4Addr::new(172, 17, 0, 50),
        ..a_to(B_IP)
    }
    .tcp(40000, 80, packet::TCP_ACK, b"x");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &spoofed).0, tc::ACT_SHOT);
    assert_eq!(w.drops("spoofed-source"), 1);
    // A flow into C (a published port) is delivered through the hash map.
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 8080, 8080, C_IP, 80);
    let (v, out) = w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(5555, 8080, TCP_SYN, b""),
    );
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(packet::fields(&out).dst, C_IP);
    assert_eq!(bpfmaps::endpoint_stats(&mut w.p, C_VETH).tx_packets, 2);

    // B goes: its slot is freed, C is still found; B gets nothing.
    let b = bpfmaps::ep_cache_slots(&mut w.p, B_IP, B_VETH).0;
    bpfmaps::remove_endpoint(&mut w.p, &b);
    assert_eq!(
        bpfmaps::ep_cache_slots(&mut w.p, C_IP, LO).0,
        Endpoint::default()
    );
    assert_eq!(w.run(bpf::FROM_CONTAINER, &to(C_IP)).0, tc::ACT_REDIRECT);
    assert_eq!(bpfmaps::endpoint_stats(&mut w.p, C_VETH).tx_packets, 3);
    // (Its address is nobody's now: the packet takes the full walk, here
    // the default route.)
    let forwarded = w.counter("forwarded");
    w.run(bpf::FROM_CONTAINER, &to(B_IP));
    assert_eq!(
        w.counter("forwarded"),
        forwarded,
        "a removed endpoint gets nothing"
    );
    assert_eq!(bpfmaps::endpoint_stats(&mut w.p, B_VETH).tx_packets, 1);
}

/// What the compact fast path at the top of `from_container` declines
/// (IPv4 options, a 0.0.0.0 source, icc=false) the full walk decides as
/// before, and a packet is counted once whichever of the two forwards it.
#[test]
fn the_full_walk_takes_what_the_compact_fast_path_declines() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let to_b = |f: Frame| {
        Frame {
            dst_mac: B_MAC,
            ..f
        }
        .tcp(40000, 80, packet::TCP_ACK, b"x")
    };
    let plain = to_b(a_to(B_IP));
    let opts = packet::with_ip_options(&plain, &[7, 3, 4, 0]);
    let zero = to_b(Frame {
        src: Ipv4Addr::UNSPECIFIED,
        ..a_to(B_IP)
    });
    for (n, f) in [&plain, &opts, &zero].into_iter().enumerate() {
        let (v, out) = w.run(bpf::FROM_CONTAINER, f);
        assert_eq!(
            (v, &out),
            (tc::ACT_REDIRECT, f),
            "frame {n}: to B unchanged"
        );
    }
    assert_eq!(w.counter("forwarded"), 3);
    assert_eq!(w.counter("from_container.packets"), 3);
    assert_eq!(w.counter("from_container.tcp"), 3);
    assert_eq!(bpfmaps::endpoint_stats(&mut w.p, LO).rx_packets, 3);
    assert_eq!(bpfmaps::endpoint_stats(&mut w.p, B_VETH).tx_packets, 3);
    // icc=false: dropped and counted by the full walk.
    let mut w = setup(NET_MASQUERADE, 1, 1024);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &plain).0, tc::ACT_SHOT);
    assert_eq!(w.drops("icc-denied"), 1);
    assert_eq!(w.counter("from_container.packets"), 1);
}

/// The same-network fast path (TCP/UDP, not fragmented): redirected
/// byte for byte (checksums as they came, whether complete or not), no
/// conntrack entry, counted like the full walk counts (packets, bytes,
/// IPv4, TCP, forwarded; the sender's rx and the peer's tx by endpoint
/// slot), and every check the full walk makes: a spoofed source, another
/// network, icc=false, a 127/8 destination. ICMP and fragments to the
/// peer take the full walk and arrive the same way.
#[test]
fn the_same_network_fast_path_forwards_counts_and_checks() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let to_b = Frame {
        dst_mac: B_MAC,
        ..a_to(B_IP)
    };
    let payload = [7u8; 1000];
    let tcp = to_b.tcp(40000, 80, packet::TCP_ACK, &payload);
    let mut udp = to_b.udp(40001, 53, b"query");
    // A CHECKSUM_PARTIAL-like UDP header (only the pseudo-header sum) is
    // left alone too.
    udp[packet::ETH_HLEN + 26] ^= 0x55;
    for f in [&tcp, &udp] {
        let (v, out) = w.run(bpf::FROM_CONTAINER, f);
        assert_eq!(v, tc::ACT_REDIRECT);
        assert_eq!(&out, f, "not rewritten");
    }
    assert!(packet::checksums_ok(&tcp));
    assert!(bpfmaps::ct(&mut w.p).is_empty(), "no conntrack");
    let c = |w: &Walk, n: &str| w.counter(n);
    assert_eq!(c(&w, "forwarded"), 2);
    assert_eq!(c(&w, "from_container.packets"), 2);
    assert_eq!(
        c(&w, "from_container.bytes"),
        (tcp.len() + udp.len()) as u64
    );
    assert_eq!(c(&w, "from_container.ipv4"), 2);
    assert_eq!(c(&w, "from_container.tcp"), 1);
    let a = bpfmaps::endpoint_stats(&mut w.p, LO);
    let b = bpfmaps::endpoint_stats(&mut w.p, B_VETH);
    assert_eq!(
        (a.rx_packets, a.rx_bytes),
        (2, (tcp.len() + udp.len()) as u64)
    );
    assert_eq!(
        (b.tx_packets, b.tx_bytes),
        (2, (tcp.len() + udp.len()) as u64)
    );
    assert_eq!((a.tx_packets, b.rx_packets), (0, 0));

    // ICMP echo and a fragmented datagram: the full walk, same result.
    let ping = to_b.icmp_echo(7, false);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &ping);
    assert_eq!((v, out == ping), (tc::ACT_REDIRECT, true));
    let frags = packet::fragment(&to_b.udp(5000, 53, &[1u8; 3000]), 0x21, 1480);
    for f in &frags {
        let (v, out) = w.run(bpf::FROM_CONTAINER, f);
        assert_eq!((v, &out == f), (tc::ACT_REDIRECT, true));
    }
    assert_eq!(c(&w, "forwarded"), 3 + frags.len() as u64);
    assert!(bpfmaps::ct(&mut w.p).is_empty());

    // Its checks.
    let spoofed = Frame {
        src: Ipv4Addr::new(172, 17, 0, 99),
        ..to_b
    }
    .tcp(1, 80, packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &spoofed).0, tc::ACT_SHOT);
    let wrong_mac = Frame {
        src_mac: [2, 0, 0, 0, 0, 9],
        ..to_b
    }
    .udp(1, 53, b"x");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &wrong_mac).0, tc::ACT_SHOT);
    assert_eq!(w.drops("spoofed-source"), 2);
    let lo = Frame {
        dst: Ipv4Addr::new(127, 0, 0, 1),
        ..to_b
    }
    .udp(1, 53, b"x");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &lo).0, tc::ACT_SHOT);
    assert_eq!(w.drops("martian"), 1);
    // icc=false, then B on another network (the endpoints follow their
    // network's flags, as the daemon writes them).
    bpfmaps::add_network(&mut w.p, 1, NET_MASQUERADE);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &tcp).0, tc::ACT_SHOT);
    assert_eq!(w.drops("icc-denied"), 1);
    bpfmaps::add_endpoint(
        &mut w.p,
        Endpoint {
            ifindex: B_VETH,
            net_id: 2,
            ip: be(B_IP),
            mac: B_MAC,
            gw_mac: GW_MAC,
            ..Endpoint::default()
        },
    );
    bpfmaps::add_network(&mut w.p, 1, NET_ICC | NET_MASQUERADE);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &udp).0, tc::ACT_SHOT);
    assert_eq!(w.drops("network-isolation"), 1);
    assert_eq!(c(&w, "forwarded"), 3 + frags.len() as u64);
}

/// The translation of tracked flows (one store for the IPv4 checksum,
/// addresses and ports) with and without IPv4 options: masquerade out
/// and back, a published port in and back; every field, both checksums
/// and the payload.
#[test]
fn translation_keeps_checksums_with_and_without_ip_options() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    bpfmaps::add_ports(&mut w.p, 17, Ipv4Addr::UNSPECIFIED, 5353, 5353, A_IP, 53);
    // Record route (7), an empty one: 4 bytes with padding (EOL).
    let opts = [7u8, 3, 4, 0];
    for (n, with) in [false, true].into_iter().enumerate() {
        let o = |f: Vec<u8>| {
            if with {
                packet::with_ip_options(&f, &opts)
            } else {
                f
            }
        };
        // A privileged port: translated into the NAT range (address and
        // port rewritten).
        let sport = 700 + n as u16;
        let out_syn = o(a_to(OUTSIDE_IP).tcp(sport, 80, TCP_SYN, b"out"));
        assert!(packet::checksums_ok(&out_syn));
        let (v, out) = w.run(bpf::FROM_CONTAINER, &out_syn);
        assert_eq!(v, tc::ACT_REDIRECT);
        let f = packet::fields(&out);
        assert_eq!((f.src, f.dst, f.dport), (HOST_IP, OUTSIDE_IP, 80));
        assert!((NAT_MIN..=NAT_MAX).contains(&f.sport));
        assert!(packet::checksums_ok(&out), "snat, options {with}");
        assert_eq!(out.len(), out_syn.len());
        assert_eq!(&out[out.len() - 3..], b"out");
        if with {
            assert_eq!(&out[ETH_HLEN + 20..ETH_HLEN + 24], &opts, "options kept");
        }
        let back = o(world_to_host().tcp(80, f.sport, TCP_SYN | packet::TCP_ACK, b"in"));
        let (v, back) = w.run(bpf::FROM_WORLD, &back);
        assert_eq!(v, tc::ACT_REDIRECT);
        let b = packet::fields(&back);
        assert_eq!((b.dst, b.dport, b.dst_mac), (A_IP, sport, A_MAC));
        assert!(packet::checksums_ok(&back), "rev-snat, options {with}");

        let q = o(world_to_host().udp(5000 + n as u16, 5353, b"query"));
        let (v, dnated) = w.run(bpf::FROM_WORLD, &q);
        assert_eq!(v, tc::ACT_REDIRECT);
        let d = packet::fields(&dnated);
        assert_eq!((d.dst, d.dport, d.src), (A_IP, 53, OUTSIDE_IP));
        assert!(packet::checksums_ok(&dnated), "dnat, options {with}");
        let answer = o(a_to(OUTSIDE_IP).udp(53, 5000 + n as u16, b"answer"));
        let (v, out) = w.run(bpf::FROM_CONTAINER, &answer);
        assert_eq!(v, tc::ACT_REDIRECT);
        let a = packet::fields(&out);
        assert_eq!((a.src, a.sport, a.dport), (HOST_IP, 5353, 5000 + n as u16));
        assert!(packet::checksums_ok(&out), "rev-dnat, options {with}");
    }
    assert_eq!(w.counter("snat"), 2);
    assert_eq!(w.counter("rev_snat"), 2);
    assert_eq!(w.counter("dnat"), 2);
    assert_eq!(w.counter("rev_dnat"), 2);
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
    assert!(
        (NAT_MIN..=NAT_MAX).contains(&f.sport),
        "40000 is outside the NAT range: translated into it ({})",
        f.sport
    );
    assert_eq!(f.dport, 80);
    assert!(packet::checksums_ok(&out), "IPv4 and TCP checksums verify");
    assert_eq!(&out[out.len() - 5..], b"hello", "payload untouched");
    let ct = bpfmaps::ct(&mut w.p);
    assert_eq!(ct.len(), 2);
    assert!(
        ct.iter()
            .any(|(k, e)| e.kind == ct_kind::SNAT && k.sport == 40000 && e.port == f.sport)
    );
    assert!(bpfmaps::ct_consistent(&mut w.p).is_ok());
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

/// Runs `prog` on `frame` and asserts what every translated packet of
/// an established flow gets: redirected, its checksums verifying; its
/// fields and bytes, for the rest.
fn redirected(w: &mut Walk, prog: &str, frame: &[u8]) -> (packet::Fields, Vec<u8>) {
    let (v, out) = w.run(prog, frame);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert!(packet::checksums_ok(&out), "{out:02x?}");
    (packet::fields(&out), out)
}

/// The tracked fast paths (`fast.rs`): a packet of an established flow,
/// in each of the four kinds they take (SNAT out, its reply in, DNAT in,
/// its reply out), TCP and UDP, is translated (checksums verifying),
/// counted (global counters, endpoint stats) and refreshes its entry as
/// the full walk would; what they decline goes to the full walk all the
/// same: a flow's first packets (NEW entries), a FIN (its state machine:
/// CLOSING), a network made internal since the flow began (dropped).
#[test]
fn established_flows_translate_count_and_refresh_as_the_full_walk_does() {
    root!();
    use netd_common::ct_state;
    const ACK: u8 = packet::TCP_ACK;
    const FIN: u8 = 0x01;
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 9000, 9000, A_IP, 7000);
    bpfmaps::add_ports(&mut w.p, 17, Ipv4Addr::UNSPECIFIED, 9053, 9053, A_IP, 53);
    // A masqueraded TCP flow and a published port's, each established by
    // its handshake (the full walk).
    let (_, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b""),
    );
    let nat = packet::fields(&out).sport;
    w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(80, nat, TCP_SYN | ACK, b""),
    );
    w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, ACK, b""),
    );
    w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(5555, 9000, TCP_SYN, b""),
    );
    w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(7000, 5555, TCP_SYN | ACK, b""),
    );
    w.run(bpf::FROM_WORLD, &world_to_host().tcp(5555, 9000, ACK, b""));
    // A published UDP port's first datagram: a NEW flow.
    let (v, _) = w.run(bpf::FROM_WORLD, &world_to_host().udp(5353, 9053, b"q1"));
    assert_eq!(v, tc::ACT_REDIRECT);
    let ct = bpfmaps::ct(&mut w.p);
    assert_eq!(ct.len(), 6, "{ct:?}");
    assert!(
        ct.iter()
            .filter(|(k, _)| k.proto == 6)
            .all(|(_, e)| e.state == ct_state::ESTABLISHED),
        "{ct:?}"
    );
    // Every entry last seen long ago: the packets below refresh theirs.
    for (k, mut e) in ct {
        e.last_seen = 1;
        bpfmaps::ct_set(&mut w.p, &k, &e);
    }
    let names = [
        "snat",
        "rev_snat",
        "dnat",
        "rev_dnat",
        "from_container.packets",
        "from_container.ipv4",
        "from_container.tcp",
        "from_world.packets",
    ];
    let before: Vec<u64> = names.iter().map(|n| w.counter(n)).collect();
    let stats = bpfmaps::endpoint_stats(&mut w.p, LO);

    // SNAT out, and its reply in.
    let (f, out) = redirected(
        &mut w,
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, ACK, b"request"),
    );
    assert_eq!(
        (f.src, f.sport, f.dst, f.dport),
        (HOST_IP, nat, OUTSIDE_IP, 80)
    );
    assert_eq!(&out[out.len() - 7..], b"request");
    let (b, _) = redirected(
        &mut w,
        bpf::FROM_WORLD,
        &world_to_host().tcp(80, nat, ACK, b"reply"),
    );
    assert_eq!(
        (b.src, b.sport, b.dst, b.dport),
        (OUTSIDE_IP, 80, A_IP, 40000)
    );
    assert_eq!((b.dst_mac, b.src_mac), (A_MAC, GW_MAC));
    // DNAT in, and its reply out.
    let (f, _) = redirected(
        &mut w,
        bpf::FROM_WORLD,
        &world_to_host().tcp(5555, 9000, ACK, b"get"),
    );
    assert_eq!(
        (f.src, f.sport, f.dst, f.dport),
        (OUTSIDE_IP, 5555, A_IP, 7000)
    );
    assert_eq!((f.dst_mac, f.src_mac), (A_MAC, GW_MAC));
    let (b, _) = redirected(
        &mut w,
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(7000, 5555, ACK, b"ok"),
    );
    assert_eq!(
        (b.src, b.sport, b.dst, b.dport),
        (HOST_IP, 9000, OUTSIDE_IP, 5555)
    );
    let after: Vec<u64> = names.iter().map(|n| w.counter(n)).collect();
    let delta: Vec<(&str, u64)> = names
        .iter()
        .zip(after.iter().zip(&before))
        .map(|(n, (a, b))| (*n, a - b))
        .collect();
    assert_eq!(
        delta,
        [
            ("snat", 1),
            ("rev_snat", 1),
            ("dnat", 1),
            ("rev_dnat", 1),
            ("from_container.packets", 2),
            ("from_container.ipv4", 2),
            ("from_container.tcp", 2),
            ("from_world.packets", 2),
        ]
    );
    let now = bpfmaps::endpoint_stats(&mut w.p, LO);
    assert_eq!(
        (
            now.rx_packets - stats.rx_packets,
            now.tx_packets - stats.tx_packets
        ),
        (2, 2),
        "A's sent and delivered packets"
    );
    let ct = bpfmaps::ct(&mut w.p);
    assert!(
        ct.iter()
            .filter(|(k, _)| k.proto == 6)
            .all(|(_, e)| e.last_seen > 1 && e.state == ct_state::ESTABLISHED),
        "every TCP entry refreshed, still established: {ct:?}"
    );
    assert!(bpfmaps::ct_consistent(&mut w.p).is_ok());

    // UDP: the published port's next datagram (its entry stays NEW: the
    // first direction), the reply (the full walk: NEW -> ESTABLISHED),
    // the next reply.
    let (f, _) = redirected(
        &mut w,
        bpf::FROM_WORLD,
        &world_to_host().udp(5353, 9053, b"q2"),
    );
    assert_eq!(
        (f.dst, f.dport, f.src, f.sport),
        (A_IP, 53, OUTSIDE_IP, 5353)
    );
    for payload in [b"a1", b"a2"] {
        let (b, _) = redirected(
            &mut w,
            bpf::FROM_CONTAINER,
            &a_to(OUTSIDE_IP).udp(53, 5353, payload),
        );
        assert_eq!(
            (b.src, b.sport, b.dst, b.dport),
            (HOST_IP, 9053, OUTSIDE_IP, 5353)
        );
    }
    let udp: Vec<_> = bpfmaps::ct(&mut w.p)
        .into_iter()
        .filter(|(k, _)| k.proto == 17)
        .collect();
    assert!(
        udp.iter().all(|(_, e)| e.last_seen > 1)
            && udp
                .iter()
                .any(|(_, e)| e.kind == ct_kind::REV_DNAT && e.state == ct_state::ESTABLISHED),
        "{udp:?}"
    );
    // Every packet of both published flows, handshakes included.
    assert_eq!((w.counter("dnat"), w.counter("rev_dnat")), (5, 4));

    // A FIN: the full walk's state machine closes that direction.
    let (v, _) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, FIN | ACK, b""),
    );
    assert_eq!(v, tc::ACT_REDIRECT);
    assert!(
        bpfmaps::ct(&mut w.p)
            .iter()
            .any(|(_, e)| e.kind == ct_kind::SNAT && e.state == ct_state::CLOSING)
    );
    // The network made internal since: its established flows leave no more.
    bpfmaps::add_network(&mut w.p, 1, NET_ICC | NET_MASQUERADE | NET_INTERNAL);
    let (v, _) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(7000, 5555, ACK, b"more"),
    );
    assert_eq!(v, tc::ACT_SHOT);
    assert_eq!(w.drops("internal-network"), 1);
}

/// An established flow to the world caches its FIB result (next hop,
/// the uplink's MTU) in its forward entry and uses it for about a second
/// (the stamp's unit); a stale one is looked up again: after a route
/// change the flow's packets follow the new next hop, an unreachable
/// route clears the cache and hands the packet to the kernel, a smaller
/// MTU makes a packet that no longer fits go to the kernel (DF), and a
/// packet fitting again is masqueraded.
#[test]
fn a_flows_cached_next_hop_is_refreshed_when_stale() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let syn = a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &syn).0, tc::ACT_REDIRECT);
    let fwd = |w: &mut Walk| {
        bpfmaps::ct(&mut w.p)
            .into_iter()
            .find(|(_, e)| e.kind == ct_kind::SNAT)
            .unwrap()
    };
    let (k, e) = fwd(&mut w);
    assert_eq!(
        (e.addr2, e.port2),
        (be(OUTSIDE_IP), 1500),
        "the first packet cached the next hop (the default gateway) and the MTU"
    );
    assert_ne!(e.fib_stamp, 0);
    let rev = bpfmaps::ct(&mut w.p)
        .into_iter()
        .find(|(_, e)| e.kind == ct_kind::REV_SNAT)
        .unwrap()
        .1;
    assert_eq!(
        (rev.addr2, rev.port2, rev.fib_stamp),
        (0, 0, 0),
        "the reply direction caches nothing"
    );
    // Ages the forward entry's cache by a few units (what time does).
    let age = |w: &mut Walk| {
        let (k, mut e) = fwd(w);
        e.fib_stamp = e.fib_stamp.wrapping_sub(3).max(1);
        bpfmaps::ct_set(&mut w.p, &k, &e);
    };
    let ack = |len: usize| a_to(OUTSIDE_IP).tcp(40000, 80, packet::TCP_ACK, &vec![7u8; len]);

    // A new route to the destination (through a router on the link).
    let route = [
        "ip",
        "route",
        "replace",
        "198.18.0.1/32",
        "via",
        "198.18.0.3",
    ];
    w.tb.ok(&w.tb.host, &route).unwrap();
    age(&mut w);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &ack(100));
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(packet::fields(&out).src, HOST_IP);
    assert!(packet::checksums_ok(&out));
    let (_, e2) = fwd(&mut w);
    assert_eq!(
        (e2.addr2, e2.port2),
        (be(Ipv4Addr::new(198, 18, 0, 3)), 1500),
        "a stale cache is looked up again: the new next hop"
    );
    assert_ne!(e2.fib_stamp, 0);
    assert_eq!(k, fwd(&mut w).0);

    // No route any more: the kernel answers (ICMP unreachable), the cache goes.
    w.tb.ok(
        &w.tb.host,
        &["ip", "route", "replace", "unreachable", "198.18.0.1/32"],
    )
    .unwrap();
    age(&mut w);
    let data = ack(100);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &data);
    assert_eq!(
        (v, out == data),
        (tc::ACT_UNSPEC, true),
        "to the kernel, untranslated"
    );
    let (_, e3) = fwd(&mut w);
    assert_eq!(
        (e3.addr2, e3.port2, e3.fib_stamp),
        (0, 0, 0),
        "nothing cached"
    );

    // The route back, a smaller MTU: a packet that no longer fits goes to
    // the kernel with DF, one that fits leaves, and the MTU is cached.
    w.tb.ok(&w.tb.host, &["ip", "route", "del", "198.18.0.1/32"])
        .unwrap();
    let (v, _) = w.run(bpf::FROM_CONTAINER, &ack(1400));
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(fwd(&mut w).1.port2, 1500);
    w.tb.ok(&w.tb.host, &["ip", "link", "set", "eth0", "mtu", "1400"])
        .unwrap();
    age(&mut w);
    let big = ack(1400);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &big);
    assert_eq!(
        (v, out == big),
        (tc::ACT_UNSPEC, true),
        "too big now: to the kernel"
    );
    let (v, out) = w.run(bpf::FROM_CONTAINER, &ack(1300));
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(packet::fields(&out).src, HOST_IP);
    let (_, e4) = fwd(&mut w);
    assert_eq!((e4.addr2, e4.port2), (be(OUTSIDE_IP), 1400));
    assert_eq!(w.counter("frag_needed"), 1);
    assert_eq!(w.drops("fib-lookup-failed"), 0);
}

/// Masquerade with every port of the range taken (10 here) by flows to
/// one destination: a new TCP flow is refused while they are open, and
/// takes the port of one that has closed both ways (FIN each way), as a
/// server's TIME_WAIT tuple is reused; the closed flow's two entries go,
/// counted, and a half-closed flow keeps its port.
#[test]
fn a_closed_flows_port_serves_a_new_flow_when_the_range_is_full() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    const FIN: u8 = 0x01;
    let span = usize::from(NAT_MAX - NAT_MIN + 1);
    let mut nat = Vec::new();
    // Privileged container ports: each translated into the range.
    for i in 0..span {
        let sport = 600 + i as u16;
        let (v, out) = w.run(
            bpf::FROM_CONTAINER,
            &a_to(OUTSIDE_IP).tcp(sport, 80, TCP_SYN, b""),
        );
        assert_eq!(v, tc::ACT_REDIRECT);
        nat.push((sport, packet::fields(&out).sport));
    }
    let mut ports: Vec<u16> = nat.iter().map(|n| n.1).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), span, "every port of the range in use");
    let new = a_to(OUTSIDE_IP).tcp(999, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &new).0, tc::ACT_SHOT);
    assert_eq!(w.drops("nat-ports-exhausted"), 1);
    // Flow 0 half-closed (the server's FIN only): still refused.
    let (c0, n0) = nat[0];
    let fin_in = |nat_port| world_to_host().tcp(80, nat_port, FIN | packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &fin_in(n0)).0, tc::ACT_REDIRECT);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &new).0, tc::ACT_SHOT);
    assert_eq!(w.drops("nat-ports-exhausted"), 2);
    // Then the container's FIN: closed both ways, its port is reused.
    let fin_out = a_to(OUTSIDE_IP).tcp(c0, 80, FIN | packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &fin_out).0, tc::ACT_REDIRECT);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &new);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(packet::fields(&out).sport, n0, "the closed flow's port");
    assert!(packet::checksums_ok(&out));
    assert_eq!(w.counter("ct.reused"), 1);
    let ct = bpfmaps::ct_consistent(&mut w.p).unwrap();
    assert_eq!(ct.len(), 2 * span, "the old flow's entries went");
    assert!(!ct.iter().any(|(k, _)| k.sport == c0 && k.saddr == be(A_IP)));
    // The reply reaches the new flow's socket.
    let (v, back) = w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(80, n0, TCP_SYN | packet::TCP_ACK, b""),
    );
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(packet::fields(&back).dport, 999);
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
            ..Endpoint::default()
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
    // Everything else as it came (the MACs, the destination and its
    // checksums go back in one store, the rest of the header rebuilt).
    assert_eq!(
        out[12..24],
        syn[12..24],
        "EtherType, IPv4 header to the checksum"
    );
    assert_eq!(out[26..30], syn[26..30], "source address");
    assert_eq!(out[34..36], syn[34..36], "source port");
    assert_eq!(out[38..50], syn[38..50], "the TCP header to its checksum");
    assert_eq!(out[52..], syn[52..], "and after it");
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
fn a_full_conntrack_table_keeps_established_flows_and_refuses_new_ones() {
    root!();
    // Room for one flow (two entries).
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 2);
    let first = a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b"");
    let (_, out) = w.run(bpf::FROM_CONTAINER, &first);
    let port = packet::fields(&out).sport;
    // The handshake completes: the flow is established (confirmed).
    let synack = world_to_host().tcp(80, port, TCP_SYN | packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &synack).0, tc::ACT_REDIRECT);
    let ack = a_to(OUTSIDE_IP).tcp(40000, 80, packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &ack).0, tc::ACT_REDIRECT);
    let second = a_to(OUTSIDE_IP).tcp(40001, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &second).0, tc::ACT_SHOT);
    assert_eq!(w.drops("ct-table-full"), 1);
    assert_eq!(
        w.counter("ct.evicted"),
        0,
        "an established flow is never evicted"
    );
    let again = a_to(OUTSIDE_IP).tcp(40000, 80, packet::TCP_ACK, b"more");
    let (v, out) = w.run(bpf::FROM_CONTAINER, &again);
    assert_eq!(v, tc::ACT_REDIRECT, "the established flow continues");
    assert_eq!(packet::fields(&out).src, HOST_IP);
}

#[test]
fn other_protocols_to_the_world_cannot_be_masqueraded() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    // GRE (47) to the world cannot be masqueraded: dropped, counted.
    let mut gre = a_to(OUTSIDE_IP).udp(1, 2, b"x");
    gre[packet::ETH_HLEN + 9] = 47;
    packet::fix_ipv4_checksum(&mut gre);
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

// ---- issue 11: policy holes and conntrack/NAT failure modes ----

fn world_to(dst: Ipv4Addr) -> Frame {
    Frame {
        dst,
        ..world_to_host()
    }
}

/// Item 1: nothing from outside reaches a container's address unless a
/// tracked flow lets it (TCP, UDP, ICMP; one way too).
#[test]
fn world_to_a_container_address_needs_a_flow() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    for f in [
        world_to(A_IP).tcp(5555, 22, TCP_SYN, b""),
        world_to(A_IP).udp(5555, 53, b"one way"),
        world_to(A_IP).icmp_echo(7, false),
    ] {
        assert_eq!(w.run(bpf::FROM_WORLD, &f).0, tc::ACT_SHOT, "{f:02x?}");
    }
    assert_eq!(w.drops("not-published"), 3);
    // The host's own address is the host's business.
    let host = world_to_host().udp(5555, 53, b"q");
    assert_eq!(w.run(bpf::FROM_WORLD, &host).0, tc::ACT_UNSPEC);
    assert!(bpfmaps::ct(&mut w.p).is_empty());
}

/// Item 1 with masquerade=false: the container's own flows are tracked
/// (nothing rewritten) so that their replies come in, and nothing else.
#[test]
fn without_masquerade_replies_come_in_and_nothing_else() {
    root!();
    let mut w = setup(NET_ICC, 1, 1024);
    let out = a_to(OUTSIDE_IP).udp(5000, 53, b"q");
    let (v, sent) = w.run(bpf::FROM_CONTAINER, &out);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(sent, out, "no masquerade: untouched");
    let reply = world_to(A_IP).udp(53, 5000, b"a");
    let (v, back) = w.run(bpf::FROM_WORLD, &reply);
    assert_eq!(v, tc::ACT_REDIRECT, "the reply is delivered");
    assert_eq!(packet::fields(&back).dst_mac, A_MAC);
    let other = world_to(A_IP).udp(53, 5001, b"a");
    assert_eq!(w.run(bpf::FROM_WORLD, &other).0, tc::ACT_SHOT);
    assert_eq!(w.drops("not-published"), 1);
}

/// Item 2: an internal network publishes nothing: not from the world, not
/// by hairpin, and a reply of a flow made before cannot leave.
#[test]
fn an_internal_network_publishes_nothing() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 8080, 8080, A_IP, 80);
    // A flow made while the network was not internal...
    let (v, _) = w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(5555, 8080, TCP_SYN, b""),
    );
    assert_eq!(v, tc::ACT_REDIRECT);
    bpfmaps::add_network(&mut w.p, 1, NET_ICC | NET_INTERNAL);
    // ...cannot answer now.
    let reply = a_to(OUTSIDE_IP).tcp(80, 5555, TCP_SYN | packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &reply).0, tc::ACT_SHOT);
    // A new connection from outside.
    let syn = world_to_host().tcp(5556, 8080, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &syn).0, tc::ACT_SHOT);
    // Hairpin from a container of another network (B, on the test-run
    // ingress now).
    bpfmaps::add_endpoint(
        &mut w.p,
        Endpoint {
            ifindex: LO,
            net_id: 2,
            ip: be(B_IP),
            mac: B_MAC,
            gw_mac: GW_MAC,
            ..Endpoint::default()
        },
    );
    let hairpin = Frame {
        src_mac: B_MAC,
        dst_mac: GW_MAC,
        src: B_IP,
        dst: HOST_IP,
        ttl: 64,
    }
    .tcp(40000, 8080, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &hairpin).0, tc::ACT_SHOT);
    assert_eq!(w.drops("internal-network"), 3);
}

/// Item 3: a 127.0.0.1-bound published port is the host's: a frame to
/// 127/8 from outside (or from a container) is dropped.
#[test]
fn loopback_destinations_are_martians() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let lo = Ipv4Addr::LOCALHOST;
    bpfmaps::add_ports(&mut w.p, 6, lo, 8080, 8080, A_IP, 80);
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 8081, 8081, A_IP, 80);
    let mut local: aya::maps::HashMap<&mut aya::maps::MapData, u32, u32> =
        aya::maps::HashMap::try_from(w.p.map_mut(netd_common::maps::LOCAL_ADDRS).unwrap()).unwrap();
    local.insert(be(lo), 1, 0).unwrap();
    for port in [8080, 8081] {
        let syn = world_to(lo).tcp(5555, port, TCP_SYN, b"");
        assert_eq!(w.run(bpf::FROM_WORLD, &syn).0, tc::ACT_SHOT, "{port}");
        let from_b = Frame {
            src_mac: A_MAC,
            ..a_to(lo)
        }
        .tcp(40000, port, TCP_SYN, b"");
        assert_eq!(
            w.run(bpf::FROM_CONTAINER, &from_b).0,
            tc::ACT_SHOT,
            "{port}"
        );
    }
    assert_eq!(w.drops("martian"), 4);
    assert!(bpfmaps::ct(&mut w.p).is_empty());
}

/// Item 4: fragments follow their datagram's first fragment, both ways;
/// one whose first fragment was not seen never leaves untranslated.
#[test]
fn fragments_are_translated_with_their_datagram() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let payload = vec![0x5a; 3000];
    let dgram = a_to(OUTSIDE_IP).udp(5000, 53, &payload);
    let frags = packet::fragment(&dgram, 0x4242, 1480);
    assert_eq!(frags.len(), 3);
    let mut out = Vec::new();
    for f in &frags {
        let (v, o) = w.run(bpf::FROM_CONTAINER, f);
        assert_eq!(v, tc::ACT_REDIRECT, "every fragment leaves translated");
        assert_eq!(packet::fields(&o).src, HOST_IP);
        assert!(packet::ipv4_checksum_ok(&o));
        out.push(o);
    }
    let whole = packet::reassemble(&out);
    assert!(packet::checksums_ok(&whole), "the datagram's UDP checksum");
    let nat_port = packet::fields(&whole).sport;
    assert!((NAT_MIN..=NAT_MAX).contains(&nat_port));
    assert_eq!(w.counter("fragments"), 2);

    // A fragmented reply comes back in the same way.
    let reply = world_to_host().udp(53, nat_port, &payload);
    let mut back = Vec::new();
    for f in packet::fragment(&reply, 0x77, 1480) {
        let (v, b) = w.run(bpf::FROM_WORLD, &f);
        assert_eq!(v, tc::ACT_REDIRECT);
        assert_eq!(packet::fields(&b).dst, A_IP);
        back.push(b);
    }
    let whole = packet::reassemble(&back);
    assert!(packet::checksums_ok(&whole));
    assert_eq!(packet::fields(&whole).dport, 5000);

    // A later fragment whose first one was not seen: never out as it is.
    let lone = &packet::fragment(&a_to(OUTSIDE_IP).udp(5001, 53, &payload), 0x99, 1480)[1];
    assert_eq!(w.run(bpf::FROM_CONTAINER, lone).0, tc::ACT_SHOT);
    assert_eq!(w.drops("fragment-unknown"), 1);
    // From outside: to a container's address dropped, to the host passed
    // (the host reassembles its own).
    let to_a = &packet::fragment(&world_to(A_IP).udp(53, 5000, &payload), 0x98, 1480)[1];
    assert_eq!(w.run(bpf::FROM_WORLD, to_a).0, tc::ACT_SHOT);
    let to_host = &packet::fragment(&world_to_host().udp(53, 1, &payload), 0x97, 1480)[1];
    assert_eq!(w.run(bpf::FROM_WORLD, to_host).0, tc::ACT_UNSPEC);
}

/// Item 4 across isolation: a fragment goes where its first fragment
/// went, never past icc/isolation.
#[test]
fn fragments_do_not_cross_isolation() {
    root!();
    let mut w = setup(NET_MASQUERADE, 2, 1024);
    let dgram = Frame {
        dst_mac: B_MAC,
        ..a_to(B_IP)
    }
    .udp(5000, 53, &[1u8; 3000]);
    for f in packet::fragment(&dgram, 0x11, 1480) {
        assert_eq!(w.run(bpf::FROM_CONTAINER, &f).0, tc::ACT_SHOT);
    }
    assert_eq!(w.drops("network-isolation"), 3);
}

/// Item 5: a packet too big for the uplink is handed to the kernel
/// untranslated with DF set (the kernel answers "fragmentation needed"),
/// new flow or established: never sent un-NATed, never dropped silently.
#[test]
fn too_big_for_the_uplink_goes_to_the_kernel_untranslated_with_df() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    w.tb.ok(&w.tb.host, &["ip", "link", "set", "eth0", "mtu", "1400"])
        .unwrap();
    // A new flow, DF (TCP sets it).
    let big = a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, &[0u8; 1460]);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &big);
    assert_eq!((v, out == big), (tc::ACT_UNSPEC, true));
    assert!(bpfmaps::ct(&mut w.p).is_empty(), "no flow for it");
    // Not DF (a fragment, or IP_PMTUDISC_DONT): DF is set, nothing else.
    let mut nodf = a_to(OUTSIDE_IP).udp(5000, 53, &[0u8; 1472]);
    packet::set_ipv4_frag(&mut nodf, 0x1234, 0);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &nodf);
    assert_eq!(v, tc::ACT_UNSPEC);
    assert_eq!(packet::ipv4_frag_field(&out), 0x4000, "DF set");
    assert!(packet::ipv4_checksum_ok(&out));
    assert_eq!(packet::fields(&out).src, A_IP, "untranslated");
    assert_eq!(out[..ETH_HLEN + 6], nodf[..ETH_HLEN + 6]);
    assert_eq!(out[ETH_HLEN + 12..], nodf[ETH_HLEN + 12..]);
    // An established flow.
    let syn = a_to(OUTSIDE_IP).tcp(40001, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &syn).0, tc::ACT_REDIRECT);
    let data = a_to(OUTSIDE_IP).tcp(40001, 80, packet::TCP_ACK, &[1u8; 1460]);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &data);
    assert_eq!((v, out == data), (tc::ACT_UNSPEC, true));
    let fits = a_to(OUTSIDE_IP).tcp(40001, 80, packet::TCP_ACK, &[1u8; 1360]);
    let (v, out) = w.run(bpf::FROM_CONTAINER, &fits);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(packet::fields(&out).src, HOST_IP);
    assert_eq!(w.counter("frag_needed"), 3);
    assert_eq!(w.drops("fib-lookup-failed"), 0);
}

use netd_tests::packet::ETH_HLEN;

/// Item 6: only a new connection starts a published-port flow: a TCP
/// segment without SYN (a host client's reply on a port number that is
/// also published) is the host's, as is a datagram a connected host
/// socket owns.
#[test]
fn a_published_port_takes_only_new_connections() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 8080, 8080, A_IP, 80);
    bpfmaps::add_ports(&mut w.p, 17, Ipv4Addr::UNSPECIFIED, 5353, 5353, A_IP, 53);
    let synack = world_to_host().tcp(80, 8080, TCP_SYN | packet::TCP_ACK, b"");
    let (v, out) = w.run(bpf::FROM_WORLD, &synack);
    assert_eq!((v, out == synack), (tc::ACT_UNSPEC, true));
    let ack = world_to_host().tcp(80, 8080, packet::TCP_ACK, b"data");
    assert_eq!(w.run(bpf::FROM_WORLD, &ack).0, tc::ACT_UNSPEC);
    assert!(bpfmaps::ct(&mut w.p).is_empty());
    // A host UDP client bound to 5353, talking to the outside's port 53.
    let sock =
        w.tb.host
            .run(|| {
                let s = std::net::UdpSocket::bind("0.0.0.0:5353")?;
                s.connect((OUTSIDE_IP, 53))?;
                Ok(s)
            })
            .unwrap();
    let answer = world_to_host().udp(53, 5353, b"answer");
    let (v, out) = w.run(bpf::FROM_WORLD, &answer);
    assert_eq!((v, out == answer), (tc::ACT_UNSPEC, true), "the host's");
    // Another source: a new flow to the container.
    let query = world_to_host().udp(54, 5353, b"query");
    assert_eq!(w.run(bpf::FROM_WORLD, &query).0, tc::ACT_REDIRECT);
    drop(sock);
    let syn = world_to_host().tcp(5555, 8080, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &syn).0, tc::ACT_REDIRECT);
    assert_eq!(bpfmaps::ct(&mut w.p).len(), 4);
}

/// Item 7: an RST closes both directions.
#[test]
fn an_rst_closes_the_whole_flow() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let (_, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b""),
    );
    let port = packet::fields(&out).sport;
    w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(80, port, TCP_SYN | packet::TCP_ACK, b""),
    );
    w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, packet::TCP_ACK, b""),
    );
    assert!(
        bpfmaps::ct(&mut w.p)
            .iter()
            .all(|(_, e)| e.state == netd_common::ct_state::ESTABLISHED)
    );
    w.run(bpf::FROM_WORLD, &world_to_host().tcp(80, port, 0x04, b""));
    let ct = bpfmaps::ct(&mut w.p);
    assert_eq!(ct.len(), 2);
    assert!(
        ct.iter()
            .all(|(_, e)| e.state == netd_common::ct_state::CLOSING),
        "{ct:?}"
    );
}

/// Item 7: a full table makes room by evicting the oldest unconfirmed
/// flow (a SYN flood's), never an established one; new flows from
/// outside are made by a SYN only.
#[test]
fn a_full_table_evicts_unconfirmed_flows_only() {
    root!();
    // Room for two flows.
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 4);
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 8080, 8080, A_IP, 80);
    let client = |port: u16| {
        Frame {
            src: Ipv4Addr::new(198, 18, 0, 1),
            ..world_to_host()
        }
        .tcp(port, 8080, TCP_SYN, b"")
    };
    // An established connection...
    assert_eq!(w.run(bpf::FROM_WORLD, &client(1000)).0, tc::ACT_REDIRECT);
    let synack = a_to(OUTSIDE_IP).tcp(80, 1000, TCP_SYN | packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &synack).0, tc::ACT_REDIRECT);
    let ack = world_to_host().tcp(1000, 8080, packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &ack).0, tc::ACT_REDIRECT);
    // ...then a flood of SYNs that never complete.
    for port in 2000..2100 {
        assert_eq!(
            w.run(bpf::FROM_WORLD, &client(port)).0,
            tc::ACT_REDIRECT,
            "a new SYN always finds room"
        );
    }
    let ct = bpfmaps::ct_consistent(&mut w.p).unwrap();
    assert_eq!(ct.len(), 4, "within the bound");
    assert!(ct.iter().any(|(k, _)| k.sport == 1000), "established kept");
    assert!(ct.iter().any(|(k, _)| k.sport == 2099), "newest there");
    assert_eq!(w.counter("ct.evicted"), 99);
    let more = world_to_host().tcp(1000, 8080, packet::TCP_ACK, b"still");
    assert_eq!(w.run(bpf::FROM_WORLD, &more).0, tc::ACT_REDIRECT);
}

/// Item 8: masquerade keeps the container's port only inside the NAT
/// range (reserved from the host's ephemeral ports): outside it, the port
/// could be a host socket's, now or later, whatever the host has now.
#[test]
fn masquerade_keeps_a_port_only_in_the_nat_range() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let sport = |w: &mut Walk, f: Vec<u8>| {
        let (v, out) = w.run(bpf::FROM_CONTAINER, &f);
        assert_eq!(v, tc::ACT_REDIRECT);
        assert!(packet::checksums_ok(&out));
        packet::fields(&out).sport
    };
    let in_range = |p: u16| (NAT_MIN..=NAT_MAX).contains(&p);
    // (To another port: its translation cannot take 61005 from the next.)
    let p = sport(&mut w, a_to(OUTSIDE_IP).udp(40000, 54, b"q"));
    assert!(in_range(p), "{p}");
    let p = sport(&mut w, a_to(OUTSIDE_IP).tcp(40001, 80, TCP_SYN, b""));
    assert!(in_range(p), "{p}");
    assert_eq!(sport(&mut w, a_to(OUTSIDE_IP).udp(61005, 53, b"q")), 61005);
    let p = sport(&mut w, a_to(OUTSIDE_IP).tcp(80, 80, TCP_SYN, b""));
    assert!(in_range(p), "privileged: {p}");
    assert_eq!(w.drops("nat-ports-exhausted"), 0);
}

/// Item 9: two CPUs creating the same flow at once end with one flow
/// (both entries), never an orphaned reverse entry.
#[test]
fn concurrent_creation_of_one_flow_leaves_one_whole_flow() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let fd = w.p.program_fd(bpf::FROM_CONTAINER).unwrap();
    let syn = a_to(OUTSIDE_IP).udp(40000, 53, b"q");
    let rounds = 2000;
    let barrier = std::sync::Barrier::new(3);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (tb, barrier, syn) = (&w.tb, &barrier, &syn);
            s.spawn(move || {
                tb.host
                    .run(|| {
                        for _ in 0..rounds {
                            barrier.wait();
                            bpfmaps::test_run_fd(fd, syn)?;
                            barrier.wait();
                        }
                        Ok(())
                    })
                    .unwrap()
            });
        }
        for round in 0..rounds {
            barrier.wait();
            barrier.wait();
            let ct =
                bpfmaps::ct_consistent(&mut w.p).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(ct.len(), 2, "round {round}: {ct:?}");
            bpfmaps::ct_clear(&mut w.p);
        }
    });
}

/// Item 10: a veth or a network the maps do not know carries nothing.
#[test]
fn unknown_endpoints_and_networks_fail_closed() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let a = Endpoint {
        ifindex: LO,
        net_id: 1,
        ip: be(A_IP),
        mac: A_MAC,
        gw_mac: GW_MAC,
        ..Endpoint::default()
    };
    bpfmaps::remove_network(&mut w.p, 1);
    let f = a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &f).0, tc::ACT_SHOT);
    bpfmaps::remove_endpoint(&mut w.p, &a);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &f).0, tc::ACT_SHOT);
    assert_eq!(w.drops("no-endpoint"), 2);
    assert!(bpfmaps::ct(&mut w.p).is_empty());
}

/// Item 11: an ICMP error about a flow goes out only from that flow's
/// own container.
#[test]
fn icmp_errors_only_from_their_flows_container() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    bpfmaps::add_ports(&mut w.p, 17, Ipv4Addr::UNSPECIFIED, 5353, 5353, B_IP, 53);
    let (v, dnated) = w.run(bpf::FROM_WORLD, &world_to_host().udp(5555, 5353, b"q"));
    assert_eq!(v, tc::ACT_REDIRECT);
    // A (on the test-run ingress) claims B's flow is unreachable.
    let forged = a_to(OUTSIDE_IP).icmp_error(3, 3, 0, &dnated);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &forged).0, tc::ACT_SHOT);
    assert_eq!(w.drops("spoofed-source"), 1);
    assert_eq!(w.counter("icmp_errors"), 0);
}

/// Item 12 (and issue 10's isolation): containers speak IPv4 and ARP
/// only (IPv6 where the network allows it), VLAN tags included, and ARP
/// senders are checked.
#[test]
fn containers_speak_ipv4_and_honest_arp_only() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    let ll = |mac: [u8; 6]| {
        let mut a = [0u8; 16];
        a[0] = 0xfe;
        a[1] = 0x80;
        a[8..11].copy_from_slice(&[mac[0] ^ 2, mac[1], mac[2]]);
        a[11] = 0xff;
        a[12] = 0xfe;
        a[13..16].copy_from_slice(&mac[3..6]);
        a
    };
    let v6 = packet::ipv6_echo(B_MAC, A_MAC, ll(A_MAC), ll(B_MAC));
    assert_eq!(w.run(bpf::FROM_CONTAINER, &v6).0, tc::ACT_SHOT);
    let tagged = packet::vlan_tagged(&a_to(B_IP).udp(1, 2, b"x"), 7);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &tagged).0, tc::ACT_SHOT);
    let other = packet::ether(B_MAC, A_MAC, 0x88cc, &[0u8; 46]);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &other).0, tc::ACT_SHOT);
    assert_eq!(w.drops("not-ipv4"), 3);
    bpfmaps::add_network(
        &mut w.p,
        1,
        NET_ICC | NET_MASQUERADE | netd_common::NET_IPV6,
    );
    // The network has IPv6, the endpoint has no IPv6 address: still none.
    assert_eq!(w.run(bpf::FROM_CONTAINER, &v6).0, tc::ACT_SHOT);
    assert_eq!(w.drops("not-ipv4"), 4);
    bpfmaps::v6::add_endpoint(
        &mut w.p,
        netd_common::v6::Endpoint6 {
            ifindex: LO,
            net_id: 1,
            ip: bpfmaps::v6::ip6("fd00:17::2".parse().unwrap()),
            mac: A_MAC,
            gw_mac: GW_MAC,
            slot: 0,
        },
    );
    assert_eq!(w.run(bpf::FROM_CONTAINER, &v6).0, tc::ACT_SHOT);
    assert_eq!(w.drops("not-ipv4"), 5, "the network has no IPv6 side yet");
    bpfmaps::v6::add_network(&mut w.p, 1, NET_ICC | NET_MASQUERADE);
    // Its link-local, to a peer's link-local (icc on): to the bridge.
    assert_eq!(w.run(bpf::FROM_CONTAINER, &v6).0, tc::ACT_UNSPEC);

    let gw = Ipv4Addr::new(172, 17, 0, 1);
    let honest = packet::arp(A_MAC, 1, A_MAC, A_IP, [0; 6], gw);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &honest).0, tc::ACT_UNSPEC);
    let probe = packet::arp(A_MAC, 1, A_MAC, Ipv4Addr::UNSPECIFIED, [0; 6], A_IP);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &probe).0, tc::ACT_UNSPEC);
    let claims_b = packet::arp(A_MAC, 2, A_MAC, B_IP, GW_MAC, gw);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &claims_b).0, tc::ACT_SHOT);
    let other_mac = packet::arp(A_MAC, 2, B_MAC, A_IP, GW_MAC, gw);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &other_mac).0, tc::ACT_SHOT);
    assert_eq!(w.drops("spoofed-source"), 2);
}

/// An endpoint of an IPv6-only network (no IPv4 address: 0 in the maps)
/// sends no IPv4 and no ARP at all, not even a DHCP-style 0.0.0.0 source
/// or an address probe; its IPv6 still takes the IPv6 programs.
#[test]
fn an_endpoint_without_ipv4_sends_no_ipv4_and_no_arp() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    bpfmaps::add_endpoint(
        &mut w.p,
        Endpoint {
            ifindex: LO,
            net_id: 1,
            ip: 0,
            mac: A_MAC,
            gw_mac: GW_MAC,
            ..Endpoint::default()
        },
    );
    let to_b = a_to(B_IP).tcp(40000, 80, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &to_b).0, tc::ACT_SHOT);
    let unspecified = Frame {
        src: Ipv4Addr::UNSPECIFIED,
        ..a_to(Ipv4Addr::BROADCAST)
    }
    .udp(68, 67, b"dhcp");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &unspecified).0, tc::ACT_SHOT);
    let gw = Ipv4Addr::new(172, 17, 0, 1);
    let probe = packet::arp(A_MAC, 1, A_MAC, Ipv4Addr::UNSPECIFIED, [0; 6], gw);
    assert_eq!(w.run(bpf::FROM_CONTAINER, &probe).0, tc::ACT_SHOT);
    assert_eq!(w.drops("spoofed-source"), 3);
    // Nothing was forwarded or translated.
    assert_eq!(w.counter("forwarded"), 0);
    assert_eq!(w.counter("snat"), 0);
}

/// Item 12: a flow is delivered to the endpoint that has its address now
/// (a restarted container's new veth), never to whoever got the old
/// veth's ifindex.
#[test]
fn flows_follow_the_address_not_a_stale_ifindex() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 8080, 8080, A_IP, 80);
    let syn = world_to_host().tcp(5555, 8080, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &syn).0, tc::ACT_REDIRECT);
    // A restarts on a new veth (77); C gets A's old ifindex.
    let c_mac = [2, 0x42, 172, 17, 0, 9];
    bpfmaps::add_endpoint(
        &mut w.p,
        Endpoint {
            ifindex: 77,
            net_id: 1,
            ip: be(A_IP),
            mac: A_MAC,
            gw_mac: GW_MAC,
            ..Endpoint::default()
        },
    );
    bpfmaps::add_endpoint(
        &mut w.p,
        Endpoint {
            ifindex: LO,
            net_id: 1,
            ip: be(Ipv4Addr::new(172, 17, 0, 9)),
            mac: c_mac,
            gw_mac: GW_MAC,
            ..Endpoint::default()
        },
    );
    let before = bpfmaps::endpoint_stats(&mut w.p, 77).tx_packets;
    let ack = world_to_host().tcp(5555, 8080, packet::TCP_ACK, b"data");
    let (v, out) = w.run(bpf::FROM_WORLD, &ack);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(packet::fields(&out).dst_mac, A_MAC, "to A, not to C");
    assert_eq!(bpfmaps::endpoint_stats(&mut w.p, 77).tx_packets, before + 1);
}

/// Item 12: an unreachable/blackhole/prohibit route goes to the kernel
/// (which answers ICMP), not into a silent drop.
#[test]
fn unreachable_routes_are_answered_by_the_kernel() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 1, 1024);
    w.tb.ok(
        &w.tb.host,
        &["ip", "route", "add", "unreachable", "203.0.113.0/24"],
    )
    .unwrap();
    let f = a_to(Ipv4Addr::new(203, 0, 113, 5)).tcp(40000, 80, TCP_SYN, b"");
    let (v, out) = w.run(bpf::FROM_CONTAINER, &f);
    assert_eq!((v, out == f), (tc::ACT_UNSPEC, true));
    assert_eq!(w.drops("fib-lookup-failed"), 0);
}

// ---- issue 15: gateway modes and the cluster ----

/// The cluster of these walks: 172.16.0.0/12 holds A's network
/// (172.17.0.0/16) and another node's pods (172.18.0.0/16, routed, like
/// everything else here, via the uplink's gateway).
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 5);

fn cluster_walk(flags: u32) -> Walk {
    let mut w = setup(flags, 1, 1024);
    bpfmaps::set_cluster(&mut w.p, Ipv4Addr::new(172, 16, 0, 0), 12);
    w
}

fn from_remote_pod() -> Frame {
    Frame {
        src: REMOTE_POD,
        ..world_to(A_IP)
    }
}

/// A frame of another IP protocol (GRE), for "anything" checks.
fn gre(f: &Frame) -> Vec<u8> {
    let mut frame = f.udp(1, 2, b"gre");
    frame[packet::ETH_HLEN + 9] = 47;
    packet::fix_ipv4_checksum(&mut frame);
    frame
}

/// A pod's packet to another node's pod leaves by the uplink with FIB
/// lookup + bpf_redirect_neigh, byte for byte as it came (no NAT), and no
/// conntrack entry is made; the world outside the cluster is still
/// masqueraded.
#[test]
fn a_pod_reaches_another_nodes_pod_untranslated_and_untracked() {
    root!();
    let mut w = cluster_walk(NET_ICC | NET_MASQUERADE | NET_CLUSTER);
    for frame in [
        a_to(REMOTE_POD).tcp(40000, 80, TCP_SYN, b"hi"),
        a_to(REMOTE_POD).udp(40000, 53, b"q"),
        a_to(REMOTE_POD).icmp_echo(9, false),
        gre(&a_to(REMOTE_POD)),
    ] {
        let (v, out) = w.run(bpf::FROM_CONTAINER, &frame);
        assert_eq!(v, tc::ACT_REDIRECT, "out of the uplink");
        assert_eq!(out, frame, "untouched");
    }
    assert_eq!(w.counter("cluster_out"), 4);
    assert!(bpfmaps::ct(&mut w.p).is_empty(), "no conntrack");
    // Later fragments too (no flow to find them by).
    let big = a_to(REMOTE_POD).udp(40001, 53, &[7u8; 3000]);
    for f in packet::fragment(&big, 77, 1480) {
        let (v, out) = w.run(bpf::FROM_CONTAINER, &f);
        assert_eq!((v, out == f), (tc::ACT_REDIRECT, true));
    }
    // Outside the cluster: masqueraded as ever.
    let (v, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b""),
    );
    assert_eq!((v, packet::fields(&out).src), (tc::ACT_REDIRECT, HOST_IP));
    // The gateway (the host) stays the host's; a container of this node
    // stays the ordinary path's (same network: straight to the peer).
    let (v, _) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(Ipv4Addr::new(198, 18, 0, 2)).udp(1, 53, b"q"),
    );
    assert_eq!(v, tc::ACT_UNSPEC);
    let (v, _) = w.run(
        bpf::FROM_CONTAINER,
        &Frame {
            dst_mac: B_MAC,
            ..a_to(B_IP)
        }
        .tcp(1, 80, TCP_SYN, b""),
    );
    assert_eq!((v, w.counter("forwarded")), (tc::ACT_REDIRECT, 1));
    // A network outside the cluster masquerades cluster destinations too.
    let mut w = cluster_walk(NET_ICC | NET_MASQUERADE);
    let (v, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(REMOTE_POD).tcp(40000, 80, TCP_SYN, b""),
    );
    assert_eq!((v, packet::fields(&out).src), (tc::ACT_REDIRECT, HOST_IP));
}

/// Another node's pod reaches a pod here on any port, straight into the
/// endpoint (MACs set, nothing else touched, no conntrack); a source
/// outside the cluster does not (nat mode), nor does a cluster source
/// reach a network outside the cluster.
#[test]
fn another_nodes_pod_is_delivered_straight_into_the_pod() {
    root!();
    let mut w = cluster_walk(NET_ICC | NET_MASQUERADE | NET_CLUSTER);
    for frame in [
        from_remote_pod().tcp(5555, 22, TCP_SYN, b""),
        from_remote_pod().tcp(5555, 22, packet::TCP_ACK, b"mid-flow"),
        from_remote_pod().udp(5555, 53, b"q"),
        from_remote_pod().icmp_echo(3, false),
    ] {
        let (v, out) = w.run(bpf::FROM_WORLD, &frame);
        assert_eq!(v, tc::ACT_REDIRECT, "into the pod");
        assert_eq!((out[..6] == A_MAC, out[6..12] == GW_MAC), (true, true));
        assert_eq!(out[12..], frame[12..], "nothing but the MACs changed");
    }
    let big = from_remote_pod().udp(5555, 53, &[1u8; 3000]);
    for f in packet::fragment(&big, 78, 1480) {
        assert_eq!(w.run(bpf::FROM_WORLD, &f).0, tc::ACT_REDIRECT);
    }
    assert_eq!(w.counter("cluster_in"), 7);
    assert!(bpfmaps::ct(&mut w.p).is_empty(), "no conntrack");
    let outsider = world_to(A_IP).tcp(5555, 22, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &outsider).0, tc::ACT_SHOT);
    assert_eq!(w.drops("not-published"), 1);
    let mut w = cluster_walk(NET_ICC | NET_MASQUERADE);
    let f = from_remote_pod().tcp(5555, 22, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &f).0, tc::ACT_SHOT);
}

/// `routed`: published container ports and ICMP echo by routing to the
/// container's address, untranslated, tracked so that the replies leave
/// untranslated; nothing else (unpublished ports, a mid-flow segment
/// without a flow, other protocols); the container's own connections
/// leave with its address and their replies come in.
#[test]
fn routed_mode_takes_published_container_ports_and_icmp() {
    root!();
    let mut w = setup(
        NET_ICC | NET_DIRECT_PORTS | NET_DIRECT_ICMP | NET_FROM_NETWORKS,
        1,
        1024,
    );
    bpfmaps::add_direct(&mut w.p, 6, A_IP, 80, 80);
    bpfmaps::add_direct(&mut w.p, 17, A_IP, 53, 53);
    let syn = world_to(A_IP).tcp(5555, 80, TCP_SYN, b"");
    let (v, out) = w.run(bpf::FROM_WORLD, &syn);
    assert_eq!(v, tc::ACT_REDIRECT);
    let f = packet::fields(&out);
    assert_eq!(
        (f.src, f.dst, f.sport, f.dport, f.dst_mac),
        (OUTSIDE_IP, A_IP, 5555, 80, A_MAC)
    );
    assert_eq!(out[12..], syn[12..], "untranslated");
    let ct = bpfmaps::ct_consistent(&mut w.p).unwrap();
    assert!(
        ct.iter()
            .any(|(k, e)| e.kind == ct_kind::ROUTED_IN && k.dport == 80)
    );
    assert!(
        ct.iter()
            .any(|(k, e)| e.kind == ct_kind::REV_ROUTED_IN && k.sport == 80)
    );
    // The reply leaves untranslated; the flow goes on both ways.
    let synack = a_to(OUTSIDE_IP).tcp(80, 5555, TCP_SYN | packet::TCP_ACK, b"");
    let (v, out) = w.run(bpf::FROM_CONTAINER, &synack);
    assert_eq!((v, out == synack), (tc::ACT_REDIRECT, true));
    let ack = world_to(A_IP).tcp(5555, 80, packet::TCP_ACK, b"data");
    assert_eq!(w.run(bpf::FROM_WORLD, &ack).0, tc::ACT_REDIRECT);
    // Established both ways (the tracked fast paths take these kinds
    // too): untranslated, counted as routed.
    let (ins, outs) = (w.counter("routed_in"), w.counter("routed_out"));
    let reply = a_to(OUTSIDE_IP).tcp(80, 5555, packet::TCP_ACK, b"reply");
    for _ in 0..2 {
        let (v, out) = w.run(bpf::FROM_CONTAINER, &reply);
        assert_eq!((v, out == reply), (tc::ACT_REDIRECT, true));
    }
    let more = world_to(A_IP).tcp(5555, 80, packet::TCP_ACK, b"more");
    let (v, out) = w.run(bpf::FROM_WORLD, &more);
    assert_eq!(v, tc::ACT_REDIRECT);
    assert_eq!(
        (out[12..] == more[12..], packet::fields(&out).dst_mac),
        (true, A_MAC)
    );
    assert!(
        bpfmaps::ct(&mut w.p)
            .iter()
            .filter(|(k, _)| k.proto == 6)
            .all(|(_, e)| e.state == netd_common::ct_state::ESTABLISHED)
    );
    assert_eq!(
        (w.counter("routed_in") - ins, w.counter("routed_out") - outs),
        (1, 2)
    );
    // UDP to the published port, ICMP echo and its reply.
    assert_eq!(
        w.run(bpf::FROM_WORLD, &world_to(A_IP).udp(5555, 53, b"q"))
            .0,
        tc::ACT_REDIRECT
    );
    assert_eq!(
        w.run(bpf::FROM_WORLD, &world_to(A_IP).icmp_echo(9, false))
            .0,
        tc::ACT_REDIRECT
    );
    let (v, out) = w.run(bpf::FROM_CONTAINER, &a_to(OUTSIDE_IP).icmp_echo(9, true));
    assert_eq!((v, packet::fields(&out).src), (tc::ACT_REDIRECT, A_IP));
    assert!(bpfmaps::ct_consistent(&mut w.p).is_ok());
    let routed_in = w.counter("routed_in");
    // Nothing else gets in.
    for f in [
        world_to(A_IP).tcp(5556, 81, TCP_SYN, b""),
        world_to(A_IP).tcp(5557, 80, packet::TCP_ACK, b"no flow"),
        world_to(A_IP).udp(5555, 54, b"q"),
        world_to(A_IP).icmp_echo(10, true),
        gre(&world_to(A_IP)),
    ] {
        assert_eq!(w.run(bpf::FROM_WORLD, &f).0, tc::ACT_SHOT, "{f:02x?}");
    }
    assert_eq!(w.drops("not-published"), 5);
    assert_eq!(w.counter("routed_in"), routed_in);
    // The container's own connection: its address out, the reply in.
    let (v, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(41000, 443, TCP_SYN, b""),
    );
    assert_eq!((v, packet::fields(&out).src), (tc::ACT_REDIRECT, A_IP));
    let back = world_to(A_IP).tcp(443, 41000, TCP_SYN | packet::TCP_ACK, b"");
    assert_eq!(w.run(bpf::FROM_WORLD, &back).0, tc::ACT_REDIRECT);
    assert!(w.counter("routed_out") >= 3);
    assert_eq!(w.counter("snat"), 0, "nothing masqueraded");
}

/// `nat-unprotected`: anything routed to the container's address gets in
/// (new TCP connections, datagrams, other protocols), and the replies
/// leave with the container's address, not masqueraded; the container's
/// own connections are masqueraded as in `nat`.
#[test]
fn nat_unprotected_takes_anything_and_replies_unmasqueraded() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE | NET_DIRECT_ALL, 1, 1024);
    for f in [
        world_to(A_IP).tcp(5555, 22, TCP_SYN, b""),
        world_to(A_IP).udp(5555, 9999, b"q"),
        world_to(A_IP).icmp_echo(4, false),
        gre(&world_to(A_IP)),
    ] {
        let (v, out) = w.run(bpf::FROM_WORLD, &f);
        assert_eq!((v, out[12..] == f[12..]), (tc::ACT_REDIRECT, true));
    }
    let (v, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(22, 5555, TCP_SYN | packet::TCP_ACK, b""),
    );
    let f = packet::fields(&out);
    assert_eq!(
        (v, f.src, f.sport),
        (tc::ACT_REDIRECT, A_IP, 22),
        "not masqueraded"
    );
    let (v, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(41000, 443, TCP_SYN, b""),
    );
    assert_eq!((v, packet::fields(&out).src), (tc::ACT_REDIRECT, HOST_IP));
    assert_eq!(w.counter("snat"), 1);
}

/// `routed` from another network: a container of network 1 (nat) reaches
/// B's published container port on a routed network 2 with its own
/// address, and B's reply comes back into it; B's unpublished port stays
/// isolated.
#[test]
fn a_routed_networks_published_port_from_another_network() {
    root!();
    let mut w = setup(NET_ICC | NET_MASQUERADE, 2, 1024);
    bpfmaps::add_network(
        &mut w.p,
        2,
        NET_ICC | NET_DIRECT_PORTS | NET_DIRECT_ICMP | NET_FROM_NETWORKS,
    );
    bpfmaps::add_direct(&mut w.p, 6, B_IP, 80, 80);
    let syn = a_to(B_IP).tcp(40000, 80, TCP_SYN, b"");
    let (v, out) = w.run(bpf::FROM_CONTAINER, &syn);
    assert_eq!(v, tc::ACT_REDIRECT);
    let f = packet::fields(&out);
    assert_eq!(
        (f.src, f.dst, f.dst_mac, f.src_mac),
        (A_IP, B_IP, B_MAC, GW_MAC)
    );
    let unpublished = a_to(B_IP).tcp(40001, 81, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &unpublished).0, tc::ACT_SHOT);
    assert_eq!(w.drops("network-isolation"), 1);
    // B answers (B on the test-run ingress now, A elsewhere).
    let (a, b) = (
        Endpoint {
            ifindex: B_VETH,
            net_id: 1,
            ip: be(A_IP),
            mac: A_MAC,
            gw_mac: GW_MAC,
            ..Endpoint::default()
        },
        Endpoint {
            ifindex: LO,
            net_id: 2,
            ip: be(B_IP),
            mac: B_MAC,
            gw_mac: GW_MAC,
            ..Endpoint::default()
        },
    );
    for e in [&a, &b] {
        bpfmaps::remove_endpoint(&mut w.p, e);
    }
    bpfmaps::remove_endpoint(&mut w.p, &Endpoint { ifindex: LO, ..a });
    bpfmaps::add_endpoint(&mut w.p, a);
    bpfmaps::add_endpoint(&mut w.p, b);
    let reply = Frame {
        src_mac: B_MAC,
        dst_mac: GW_MAC,
        src: B_IP,
        dst: A_IP,
        ttl: 64,
    }
    .tcp(80, 40000, TCP_SYN | packet::TCP_ACK, b"");
    let (v, out) = w.run(bpf::FROM_CONTAINER, &reply);
    assert_eq!(v, tc::ACT_REDIRECT);
    let f = packet::fields(&out);
    assert_eq!(
        (f.src, f.dst, f.dst_mac),
        (B_IP, A_IP, A_MAC),
        "back into A"
    );
    // B cannot open a connection into A's (nat) network.
    let new = Frame {
        src_mac: B_MAC,
        dst_mac: GW_MAC,
        src: B_IP,
        dst: A_IP,
        ttl: 64,
    }
    .tcp(41000, 22, TCP_SYN, b"");
    assert_eq!(w.run(bpf::FROM_CONTAINER, &new).0, tc::ACT_SHOT);
}

/// A measurement, not a check (`-- --ignored hot_path_cost`): the
/// kernel's run time of each hot path on a fixed frame (BPF_PROG_TEST_RUN,
/// one run per call: a rewriting program must see a fresh frame each
/// time), median and minimum of 20,000 runs (the minimum is the
/// steadier figure on a shared machine): first the floor (`tc_pass`, a
/// program that does nothing: what the harness adds to every figure, its
/// clock reads included), then container to container, an established
/// masqueraded flow out and its reply in, an established published-port
/// flow in and its reply out, a pod to another node's pod and back (the
/// cluster paths), an established connection routed to the container's
/// address (nat-unprotected) and its reply out. The redirect itself is
/// not executed by BPF_PROG_TEST_RUN: this is the programs' own cost.
#[test]
#[ignore]
fn hot_path_cost() {
    root!();
    let mut w = setup(
        NET_ICC | NET_MASQUERADE | NET_CLUSTER | NET_DIRECT_ALL,
        1,
        1024,
    );
    bpfmaps::set_cluster(&mut w.p, Ipv4Addr::new(172, 16, 0, 0), 12);
    bpfmaps::add_ports(&mut w.p, 6, Ipv4Addr::UNSPECIFIED, 8080, 8080, A_IP, 80);
    // The next hop resolved, as on a live host (the FIB lookup succeeds).
    w.tb.ok(
        &w.tb.host,
        &[
            "ip",
            "neigh",
            "replace",
            "198.18.0.1",
            "lladdr",
            "02:42:c6:12:00:01",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    let payload = [0u8; 1400];
    // The flows, established.
    let (_, out) = w.run(
        bpf::FROM_CONTAINER,
        &a_to(OUTSIDE_IP).tcp(40000, 80, TCP_SYN, b""),
    );
    let nat = packet::fields(&out).sport;
    w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(80, nat, TCP_SYN | packet::TCP_ACK, b""),
    );
    w.run(
        bpf::FROM_WORLD,
        &world_to_host().tcp(5555, 8080, TCP_SYN, b""),
    );
    w.run(bpf::FROM_WORLD, &world_to(A_IP).tcp(5556, 80, TCP_SYN, b""));
    let paths: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "floor (tc_pass: an empty program)",
            bpf::TC_PASS,
            a_to(OUTSIDE_IP).tcp(40000, 80, packet::TCP_ACK, &payload),
        ),
        (
            "floor (from_world, arp: pass)",
            bpf::FROM_WORLD,
            packet::arp(A_MAC, 1, A_MAC, A_IP, [0; 6], HOST_IP),
        ),
        (
            "c2c",
            bpf::FROM_CONTAINER,
            Frame {
                dst_mac: B_MAC,
                ..a_to(B_IP)
            }
            .tcp(40000, 80, packet::TCP_ACK, &payload),
        ),
        (
            "egress out (snat)",
            bpf::FROM_CONTAINER,
            a_to(OUTSIDE_IP).tcp(40000, 80, packet::TCP_ACK, &payload),
        ),
        (
            "egress reply in (rev-snat)",
            bpf::FROM_WORLD,
            world_to_host().tcp(80, nat, packet::TCP_ACK, &payload),
        ),
        (
            "published in (dnat)",
            bpf::FROM_WORLD,
            world_to_host().tcp(5555, 8080, packet::TCP_ACK, &payload),
        ),
        (
            "published reply out (rev-dnat)",
            bpf::FROM_CONTAINER,
            a_to(OUTSIDE_IP).tcp(80, 5555, packet::TCP_ACK, &payload),
        ),
        (
            "cluster out (pod -> remote pod)",
            bpf::FROM_CONTAINER,
            a_to(REMOTE_POD).tcp(40000, 80, packet::TCP_ACK, &payload),
        ),
        (
            "cluster in (remote pod -> pod)",
            bpf::FROM_WORLD,
            from_remote_pod().tcp(80, 40000, packet::TCP_ACK, &payload),
        ),
        (
            "routed in (routed-in flow)",
            bpf::FROM_WORLD,
            world_to(A_IP).tcp(5556, 80, packet::TCP_ACK, &payload),
        ),
        (
            "routed reply out",
            bpf::FROM_CONTAINER,
            a_to(OUTSIDE_IP).tcp(80, 5556, packet::TCP_ACK, &payload),
        ),
    ];
    for (name, prog, frame) in &paths {
        let fd = w.p.program_fd(prog).unwrap();
        let best =
            w.tb.host
                .run(|| {
                    let mut runs = Vec::with_capacity(20_000);
                    for _ in 0..20_000 {
                        let (v, ns) = bpfmaps::test_run_repeat(fd, frame, 1)?;
                        assert!(
                            v == tc::ACT_REDIRECT || name.starts_with("floor"),
                            "{name}: verdict {v}"
                        );
                        runs.push(ns);
                    }
                    runs.sort_unstable();
                    Ok((runs[0], runs[runs.len() / 2]))
                })
                .unwrap();
        eprintln!(
            "{name:32} {:>5} ns/packet (median), {:>5} (min)",
            best.1, best.0
        );
    }
}

/// IPv6 walks (issue 16): the eBPF datapath's IPv6 programs under
/// BPF_PROG_TEST_RUN. The host namespace's uplink gets 2001:db8:18::2/64
/// (default via 2001:db8:18::1, the outside); containers A and B are
/// fd00:17::2 and ::3.
mod v6 {
    use std::net::Ipv6Addr;

    use netd_common::v6::Endpoint6;
    use netd_tests::{
        bpfmaps::v6 as maps6,
        packet6::{self, Frame6, NH_UDP, fields6, link_local},
    };

    use super::*;

    const A6: &str = "fd00:17::2";
    const B6: &str = "fd00:17::3";
    const HOST6: &str = "2001:db8:18::2";
    const OUT6: &str = "2001:db8:18::1";
    const OUT_MAC: [u8; 6] = [0x02, 0x42, 198, 18, 0, 1];
    const HOST_MAC: [u8; 6] = [0x02, 0x42, 198, 18, 0, 2];

    fn a6() -> Ipv6Addr {
        A6.parse().unwrap()
    }
    fn b6() -> Ipv6Addr {
        B6.parse().unwrap()
    }
    fn host6() -> Ipv6Addr {
        HOST6.parse().unwrap()
    }
    fn out6() -> Ipv6Addr {
        OUT6.parse().unwrap()
    }

    /// A dual-stack walk: network 1 (`flags` | NET_IPV6) with A on the
    /// test-run ingress, B on network `b_net` (flags as `setup`'s).
    fn setup6(flags: u32, b_net: u32) -> Walk {
        setup6_ct(flags, b_net, 1024)
    }

    fn setup6_ct(flags: u32, b_net: u32, ct_entries: u32) -> Walk {
        let mut w = setup(flags | netd_common::NET_IPV6, b_net, ct_entries);
        bpfmaps::add_network(
            &mut w.p,
            2,
            NET_ICC | NET_MASQUERADE | netd_common::NET_IPV6,
        );
        maps6::add_network(&mut w.p, 1, flags);
        maps6::add_network(&mut w.p, 2, NET_ICC | NET_MASQUERADE);
        let host = w.tb.host.clone();
        netd::testbed::block_on(async move {
            let n = netd::link::Netlink::in_ns(&host)?;
            let i = n.index_of("eth0").await?;
            n.add_addr6(i, host6(), 64).await?;
            n.add_default_route6(out6()).await?;
            anyhow::Ok(())
        })
        .unwrap();
        w.tb.host
            .run(|| netd::netns::sysctl_write("net/ipv6/conf/all/forwarding", "1"))
            .unwrap();
        maps6::set_uplink(&mut w.p, host6());
        maps6::add_endpoint(
            &mut w.p,
            Endpoint6 {
                ifindex: LO,
                net_id: 1,
                ip: maps6::ip6(a6()),
                mac: A_MAC,
                gw_mac: GW_MAC,
                slot: 0,
            },
        );
        maps6::add_endpoint(
            &mut w.p,
            Endpoint6 {
                ifindex: B_VETH,
                net_id: b_net,
                ip: maps6::ip6(b6()),
                mac: B_MAC,
                gw_mac: GW_MAC,
                slot: 0,
            },
        );
        w
    }

    fn a_to6(dst: Ipv6Addr) -> Frame6 {
        Frame6::new(A_MAC, GW_MAC, a6(), dst)
    }

    fn world6() -> Frame6 {
        Frame6::new(OUT_MAC, HOST_MAC, out6(), host6())
    }

    #[test]
    fn forward6_same_network_icc_and_isolation() {
        root!();
        let mut w = setup6(NET_ICC | NET_MASQUERADE, 1);
        let frame = Frame6 {
            dst_mac: B_MAC,
            ..a_to6(b6())
        }
        .tcp(40000, 80, TCP_SYN, b"hi");
        let (v, out) = w.run(bpf::FROM_CONTAINER, &frame);
        assert_eq!(v, tc::ACT_REDIRECT, "bpf_redirect_peer into B");
        assert_eq!(out, frame, "same-network forwarding does not rewrite");
        assert_eq!(w.counter("forwarded"), 1);
        assert_eq!(w.counter("from_container.ipv6"), 1);
        assert!(maps6::ct(&mut w.p).is_empty(), "no conntrack");
        // Hop-by-hop and destination options are walked.
        let ext = Frame6 {
            dst_mac: B_MAC,
            ..a_to6(b6())
        }
        .with_opts(packet6::NH_HOP)
        .with_opts(packet6::NH_DEST)
        .udp(5353, 53, b"q");
        assert_eq!(w.run(bpf::FROM_CONTAINER, &ext).0, tc::ACT_REDIRECT);

        let mut w = setup6(NET_MASQUERADE, 1);
        assert_eq!(w.run(bpf::FROM_CONTAINER, &frame).0, tc::ACT_SHOT);
        assert_eq!(w.drops("icc-denied"), 1);
        // icc=false holds for link-local unicast to a peer too, not to the bridge.
        let ll = Frame6::new(A_MAC, B_MAC, link_local(A_MAC), link_local(B_MAC)).echo(7, false);
        assert_eq!(w.run(bpf::FROM_CONTAINER, &ll).0, tc::ACT_SHOT);
        assert_eq!(w.drops("icc-denied"), 2);
        let to_gw =
            Frame6::new(A_MAC, GW_MAC, link_local(A_MAC), link_local(GW_MAC)).echo(7, false);
        assert_eq!(w.run(bpf::FROM_CONTAINER, &to_gw).0, tc::ACT_UNSPEC);

        let mut w = setup6(NET_ICC | NET_MASQUERADE, 2);
        assert_eq!(w.run(bpf::FROM_CONTAINER, &frame).0, tc::ACT_SHOT);
        assert_eq!(w.drops("network-isolation"), 1);

        let mut w = setup6(NET_ICC | NET_INTERNAL, 1);
        let out = a_to6(out6()).tcp(40000, 80, TCP_SYN, b"");
        assert_eq!(w.run(bpf::FROM_CONTAINER, &out).0, tc::ACT_SHOT);
        assert_eq!(w.drops("internal-network"), 1);
    }

    #[test]
    fn spoofed6_source_and_neighbour_discovery() {
        root!();
        let mut w = setup6(NET_ICC | NET_MASQUERADE, 1);
        let other: Ipv6Addr = "fd00:17::99".parse().unwrap();
        let spoofed = Frame6::new(A_MAC, B_MAC, other, b6()).tcp(1, 80, TCP_SYN, b"");
        assert_eq!(w.run(bpf::FROM_CONTAINER, &spoofed).0, tc::ACT_SHOT);
        let unspecified = Frame6::new(A_MAC, B_MAC, Ipv6Addr::UNSPECIFIED, b6()).udp(1, 53, b"x");
        assert_eq!(w.run(bpf::FROM_CONTAINER, &unspecified).0, tc::ACT_SHOT);
        let other_ll =
            Frame6::new(A_MAC, GW_MAC, link_local(B_MAC), link_local(GW_MAC)).echo(1, false);
        assert_eq!(w.run(bpf::FROM_CONTAINER, &other_ll).0, tc::ACT_SHOT);
        let bad_mac = Frame6 {
            src_mac: B_MAC,
            ..a_to6(out6())
        }
        .udp(1, 53, b"x");
        assert_eq!(w.run(bpf::FROM_CONTAINER, &bad_mac).0, tc::ACT_SHOT);
        assert_eq!(w.drops("spoofed-source"), 4);

        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        let mcast = [0x33, 0x33, 0, 0, 0, 1];
        // An advertisement for B's address (or B's link-local) from A.
        for target in [b6(), link_local(B_MAC)] {
            let na = Frame6::new(A_MAC, mcast, link_local(A_MAC), all_nodes).nd(136, target);
            assert_eq!(w.run(bpf::FROM_CONTAINER, &na).0, tc::ACT_SHOT);
        }
        // A DAD probe for B's address.
        let snm: Ipv6Addr = "ff02::1:ff00:3".parse().unwrap();
        let dad = Frame6::new(
            A_MAC,
            [0x33, 0x33, 0xff, 0, 0, 3],
            Ipv6Addr::UNSPECIFIED,
            snm,
        )
        .nd(135, b6());
        assert_eq!(w.run(bpf::FROM_CONTAINER, &dad).0, tc::ACT_SHOT);
        // Router advertisements: containers are not routers.
        let ra = Frame6::new(A_MAC, mcast, link_local(A_MAC), all_nodes).icmp6(
            134,
            0,
            [64, 0, 0, 0],
            &[0; 8],
        );
        assert_eq!(w.run(bpf::FROM_CONTAINER, &ra).0, tc::ACT_SHOT);
        assert_eq!(w.drops("spoofed-nd"), 4);
        // Its own: advertisements, DAD, solicitations for others, RS.
        let na = Frame6::new(A_MAC, mcast, link_local(A_MAC), all_nodes).nd(136, a6());
        assert_eq!(w.run(bpf::FROM_CONTAINER, &na).0, tc::ACT_UNSPEC);
        let dad = Frame6::new(
            A_MAC,
            [0x33, 0x33, 0xff, 0, 0, 2],
            Ipv6Addr::UNSPECIFIED,
            snm,
        )
        .nd(135, a6());
        assert_eq!(w.run(bpf::FROM_CONTAINER, &dad).0, tc::ACT_UNSPEC);
        let ns = Frame6::new(A_MAC, [0x33, 0x33, 0xff, 0, 0, 3], a6(), snm).nd(135, b6());
        assert_eq!(w.run(bpf::FROM_CONTAINER, &ns).0, tc::ACT_UNSPEC);
        let rs = Frame6::new(
            A_MAC,
            [0x33, 0x33, 0, 0, 0, 2],
            link_local(A_MAC),
            "ff02::2".parse().unwrap(),
        )
        .icmp6(133, 0, [0; 4], &[]);
        assert_eq!(w.run(bpf::FROM_CONTAINER, &rs).0, tc::ACT_UNSPEC);
        assert_eq!(w.drops("spoofed-nd"), 4);
        assert_eq!(w.drops("spoofed-source"), 4);

        // Extension headers netd does not walk, or too many.
        let esp = a_to6(b6()).raw(50, &[0u8; 16]);
        assert_eq!(w.run(bpf::FROM_CONTAINER, &esp).0, tc::ACT_SHOT);
        let mut deep = a_to6(b6());
        for _ in 0..6 {
            deep = deep.with_opts(packet6::NH_DEST);
        }
        assert_eq!(
            w.run(bpf::FROM_CONTAINER, &deep.udp(1, 2, b"x")).0,
            tc::ACT_SHOT
        );
        assert_eq!(w.drops("ipv6-ext-header"), 2);
        let truncated = &a_to6(b6()).tcp(1, 2, TCP_SYN, b"")[..14 + 40 + 8];
        assert_eq!(w.run(bpf::FROM_CONTAINER, truncated).0, tc::ACT_SHOT);
        assert_eq!(w.drops("malformed"), 1);
    }

    #[test]
    fn nat66_out_and_back_with_checksums() {
        root!();
        let mut w = setup6(NET_ICC | NET_MASQUERADE, 1);
        let syn = a_to6(out6()).tcp(40000, 80, TCP_SYN, b"hello");
        let (v, out) = w.run(bpf::FROM_CONTAINER, &syn);
        assert_eq!(
            v,
            tc::ACT_REDIRECT,
            "out of the uplink (bpf_redirect_neigh)"
        );
        let f = fields6(&out);
        assert_eq!((f.src, f.dst, f.dport), (host6(), out6(), 80));
        assert!((NAT_MIN..=NAT_MAX).contains(&f.sport), "{}", f.sport);
        assert!(
            packet6::checksum6_ok(&out),
            "TCP checksum with the new pseudo-header"
        );
        assert_eq!(&out[out.len() - 5..], b"hello");
        let ct = maps6::ct(&mut w.p);
        assert_eq!(ct.len(), 2);
        assert!(
            ct.iter()
                .any(|(k, e)| e.kind == ct_kind::SNAT && k.sport == 40000 && e.port == f.sport)
        );
        assert!(
            ct.iter()
                .any(|(k, e)| e.kind == ct_kind::REV_SNAT && k.dport == f.sport && e.port == 40000)
        );

        let reply = world6().tcp(80, f.sport, TCP_SYN | packet::TCP_ACK, b"world");
        let (v, back) = w.run(bpf::FROM_WORLD, &reply);
        assert_eq!(v, tc::ACT_REDIRECT, "into A (bpf_redirect_peer)");
        let b = fields6(&back);
        assert_eq!((b.src, b.sport, b.dst, b.dport), (out6(), 80, a6(), 40000));
        assert_eq!((b.dst_mac, b.src_mac), (A_MAC, GW_MAC));
        assert!(packet6::checksum6_ok(&back));
        assert_eq!((w.counter("snat"), w.counter("rev_snat")), (1, 1));
        assert_eq!(w.counter("from_world.ipv6"), 1);

        // UDP (its checksum too) and ICMPv6 echo (the id translated).
        let (v, out) = w.run(bpf::FROM_CONTAINER, &a_to6(out6()).udp(61003, 53, b"query"));
        assert_eq!(v, tc::ACT_REDIRECT);
        let u = fields6(&out);
        assert_eq!(
            (u.src, u.sport),
            (host6(), 61003),
            "in range and free: kept"
        );
        assert!(packet6::checksum6_ok(&out));
        let (v, out) = w.run(bpf::FROM_CONTAINER, &a_to6(out6()).echo(7, false));
        assert_eq!(v, tc::ACT_REDIRECT);
        let e = fields6(&out);
        assert_eq!(e.src, host6());
        assert!(
            packet6::checksum6_ok(&out),
            "ICMPv6 checksum covers the pseudo-header"
        );
        let (v, back) = w.run(bpf::FROM_WORLD, &world6().echo(e.sport, true));
        assert_eq!(v, tc::ACT_REDIRECT);
        let eb = fields6(&back);
        assert_eq!((eb.dst, eb.sport), (a6(), 7));
        assert!(packet6::checksum6_ok(&back));

        // Nothing reaches A's address from outside without a flow.
        let direct = Frame6::new(OUT_MAC, HOST_MAC, out6(), a6()).tcp(5555, 22, TCP_SYN, b"");
        assert_eq!(w.run(bpf::FROM_WORLD, &direct).0, tc::ACT_SHOT);
        assert_eq!(w.drops("not-published"), 1);
        // The host's own traffic passes.
        let host = world6().tcp(5555, 22, TCP_SYN, b"");
        assert_eq!(w.run(bpf::FROM_WORLD, &host).0, tc::ACT_UNSPEC);
    }

    #[test]
    fn dnat6_published_port_and_reverse() {
        root!();
        let mut w = setup6(NET_ICC | NET_MASQUERADE, 1);
        // 0.0.0.0 / [::] bindings: the wildcard.
        maps6::add_port(&mut w.p, 6, Ipv6Addr::UNSPECIFIED, 8080, a6(), 80);
        let syn = world6().tcp(5555, 8080, TCP_SYN, b"GET");
        let (v, inn) = w.run(bpf::FROM_WORLD, &syn);
        assert_eq!(v, tc::ACT_REDIRECT);
        let f = fields6(&inn);
        assert_eq!(
            (f.src, f.sport, f.dst, f.dport),
            (out6(), 5555, a6(), 80),
            "client kept"
        );
        assert_eq!((f.dst_mac, f.src_mac), (A_MAC, GW_MAC));
        assert!(packet6::checksum6_ok(&inn));
        assert_eq!(w.counter("dnat"), 1);
        // A non-SYN to a published port without a flow is the host's.
        let ack = world6().tcp(5556, 8080, packet::TCP_ACK, b"");
        assert_eq!(w.run(bpf::FROM_WORLD, &ack).0, tc::ACT_UNSPEC);

        let reply = a_to6(out6()).tcp(80, 5555, TCP_SYN | packet::TCP_ACK, b"200");
        let (v, out) = w.run(bpf::FROM_CONTAINER, &reply);
        assert_eq!(v, tc::ACT_REDIRECT);
        let r = fields6(&out);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (host6(), 8080, out6(), 5555)
        );
        assert!(packet6::checksum6_ok(&out));
        assert_eq!(w.counter("rev_dnat"), 1);

        // UDP on a host address binding.
        maps6::add_port(&mut w.p, 17, host6(), 5353, a6(), 53);
        let (v, inn) = w.run(bpf::FROM_WORLD, &world6().udp(4444, 5353, b"q"));
        assert_eq!(v, tc::ACT_REDIRECT);
        let u = fields6(&inn);
        assert_eq!((u.dst, u.dport, u.nh), (a6(), 53, NH_UDP));
        assert!(packet6::checksum6_ok(&inn));
    }

    #[test]
    fn icmp6_packet_too_big_translated_back() {
        root!();
        let mut w = setup6(NET_ICC | NET_MASQUERADE, 1);
        let (_, out) = w.run(
            bpf::FROM_CONTAINER,
            &a_to6(out6()).tcp(40000, 80, TCP_SYN, &[7u8; 64]),
        );
        let nat_port = fields6(&out).sport;
        // A router on the way says the translated packet is too big.
        let router: Ipv6Addr = "2001:db8:99::1".parse().unwrap();
        let ptb = Frame6::new(OUT_MAC, HOST_MAC, router, host6()).error(2, 0, 1280, &out);
        let (v, back) = w.run(bpf::FROM_WORLD, &ptb);
        assert_eq!(v, tc::ACT_REDIRECT, "into A");
        let b = fields6(&back);
        assert_eq!((b.src, b.dst), (router, a6()), "outer destination: A");
        let inner = &back[14 + 40 + 8..];
        let inner_src = Ipv6Addr::from(<[u8; 16]>::try_from(&inner[8..24]).unwrap());
        let inner_sport = u16::from_be_bytes([inner[40], inner[41]]);
        assert_eq!(
            (inner_src, inner_sport),
            (a6(), 40000),
            "the quoted packet is A's again"
        );
        assert_ne!(nat_port, 40000);
        assert_eq!(
            u32::from_be_bytes(back[14 + 40 + 4..14 + 40 + 8].try_into().unwrap()),
            1280
        );
        assert!(
            packet6::checksum6_ok(&back),
            "ICMPv6 checksum: pseudo-header and quoted packet"
        );
        assert_eq!(w.counter("icmp_errors"), 1);

        // A's own error about a published-port flow goes out as the host's.
        maps6::add_port(&mut w.p, 17, Ipv6Addr::UNSPECIFIED, 5353, a6(), 53);
        let (_, dnated) = w.run(bpf::FROM_WORLD, &world6().udp(4444, 5353, b"q"));
        let unreach = a_to6(out6()).error(1, 4, 0, &dnated);
        let (v, out) = w.run(bpf::FROM_CONTAINER, &unreach);
        assert_eq!(v, tc::ACT_REDIRECT);
        let o = fields6(&out);
        assert_eq!((o.src, o.dst), (host6(), out6()));
        let inner = &out[14 + 40 + 8..];
        let inner_dst = Ipv6Addr::from(<[u8; 16]>::try_from(&inner[24..40]).unwrap());
        let inner_dport = u16::from_be_bytes([inner[42], inner[43]]);
        assert_eq!((inner_dst, inner_dport), (host6(), 5353));
        assert!(packet6::checksum6_ok(&out));
        assert_eq!(w.counter("icmp_errors"), 2);
    }

    #[test]
    fn fragments6_follow_their_datagram() {
        root!();
        let mut w = setup6(NET_ICC | NET_MASQUERADE, 1);
        let dgram = a_to6(out6()).udp(40000, 53, &[9u8; 64]);
        let seg = packet6::segment(&dgram);
        let first = a_to6(out6()).fragment(NH_UDP, &seg, 77, 0, 32);
        let second = a_to6(out6()).fragment(NH_UDP, &seg, 77, 32, 64);
        let (v, f1) = w.run(bpf::FROM_CONTAINER, &first);
        assert_eq!(v, tc::ACT_REDIRECT);
        let (v, f2) = w.run(bpf::FROM_CONTAINER, &second);
        assert_eq!(
            v,
            tc::ACT_REDIRECT,
            "a later fragment with its datagram's flow"
        );
        let src = |f: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
        assert_eq!((src(&f1), src(&f2)), (host6(), host6()));
        assert_eq!(w.counter("fragments"), 1);
        // A later fragment whose first one was not seen.
        let orphan = a_to6(out6()).fragment(NH_UDP, &seg, 78, 32, 64);
        assert_eq!(w.run(bpf::FROM_CONTAINER, &orphan).0, tc::ACT_SHOT);
        assert_eq!(w.drops("fragment-unknown"), 1);
    }

    /// Gateway modes over IPv6 (they follow the network's mode): `routed`
    /// sends the containers' own addresses out (tracked, so replies come
    /// in) and lets ICMPv6 echo and published container ports in by
    /// address; `nat` lets nothing in by address.
    #[test]
    fn gateway_modes6_routed_in_and_out() {
        root!();
        let mut w = setup6(NET_ICC | NET_DIRECT_PORTS | NET_DIRECT_ICMP, 1);
        let (v, out) = w.run(
            bpf::FROM_CONTAINER,
            &a_to6(out6()).tcp(40000, 80, TCP_SYN, b""),
        );
        assert_eq!(v, tc::ACT_REDIRECT);
        let f = fields6(&out);
        assert_eq!((f.src, f.sport), (a6(), 40000), "no NAT66 in routed mode");
        assert_eq!(out, a_to6(out6()).tcp(40000, 80, TCP_SYN, b""));
        let reply = Frame6::new(OUT_MAC, HOST_MAC, out6(), a6()).tcp(
            80,
            40000,
            TCP_SYN | packet::TCP_ACK,
            b"",
        );
        let (v, back) = w.run(bpf::FROM_WORLD, &reply);
        assert_eq!(v, tc::ACT_REDIRECT, "the reply of a routed flow");
        assert_eq!(fields6(&back).dst, a6());
        assert!(packet6::checksum6_ok(&back));
        let echo = Frame6::new(OUT_MAC, HOST_MAC, out6(), a6()).echo(5, false);
        assert_eq!(
            w.run(bpf::FROM_WORLD, &echo).0,
            tc::ACT_REDIRECT,
            "ICMPv6 echo in"
        );
        let unpublished = Frame6::new(OUT_MAC, HOST_MAC, out6(), a6()).tcp(5555, 22, TCP_SYN, b"");
        assert_eq!(w.run(bpf::FROM_WORLD, &unpublished).0, tc::ACT_SHOT);
        assert_eq!(w.drops("not-published"), 1);
        assert!(w.counter("routed_in") >= 2 && w.counter("routed_out") >= 1);
    }

    /// ns per packet of the IPv6 paths (BPF_PROG_TEST_RUN, median of
    /// 20,000 runs, 1400-byte payloads, flows established), to compare with
    /// `hot_path_cost`: `cargo test --test bpf_walks -- --ignored hot_path_cost6 --nocapture`.
    #[test]
    #[ignore]
    fn hot_path_cost6() {
        root!();
        let mut w = setup6(NET_ICC | NET_MASQUERADE, 1);
        maps6::add_port(&mut w.p, 6, Ipv6Addr::UNSPECIFIED, 8080, a6(), 80);
        w.tb.ok(
            &w.tb.host,
            &[
                "ip",
                "-6",
                "neigh",
                "replace",
                OUT6,
                "lladdr",
                "02:42:c6:12:00:01",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
        let payload = [0u8; 1400];
        let (_, out) = w.run(
            bpf::FROM_CONTAINER,
            &a_to6(out6()).tcp(40000, 80, TCP_SYN, b""),
        );
        let nat = fields6(&out).sport;
        w.run(
            bpf::FROM_WORLD,
            &world6().tcp(80, nat, TCP_SYN | packet::TCP_ACK, b""),
        );
        w.run(bpf::FROM_WORLD, &world6().tcp(5555, 8080, TCP_SYN, b""));
        let paths: Vec<(&str, &str, Vec<u8>)> = vec![
            (
                "c2c6",
                bpf::FROM_CONTAINER,
                Frame6 {
                    dst_mac: B_MAC,
                    ..a_to6(b6())
                }
                .tcp(40000, 80, packet::TCP_ACK, &payload),
            ),
            (
                "egress6 out (nat66)",
                bpf::FROM_CONTAINER,
                a_to6(out6()).tcp(40000, 80, packet::TCP_ACK, &payload),
            ),
            (
                "egress6 reply in (rev-nat66)",
                bpf::FROM_WORLD,
                world6().tcp(80, nat, packet::TCP_ACK, &payload),
            ),
            (
                "published6 in (dnat)",
                bpf::FROM_WORLD,
                world6().tcp(5555, 8080, packet::TCP_ACK, &payload),
            ),
            (
                "published6 reply out (rev-dnat)",
                bpf::FROM_CONTAINER,
                a_to6(out6()).tcp(80, 5555, packet::TCP_ACK, &payload),
            ),
        ];
        for (name, prog, frame) in &paths {
            let fd = w.p.program_fd(prog).unwrap();
            let best =
                w.tb.host
                    .run(|| {
                        let mut runs = Vec::with_capacity(20_000);
                        for _ in 0..20_000 {
                            let (v, ns) = bpfmaps::test_run_repeat(fd, frame, 1)?;
                            assert!(v == tc::ACT_REDIRECT, "{name}: verdict {v}");
                            runs.push(ns);
                        }
                        runs.sort_unstable();
                        Ok(runs[runs.len() / 2])
                    })
                    .unwrap();
            eprintln!("{name:32} {best:>5} ns/packet (median)");
        }
    }

    /// A full IPv6 table evicts the oldest unconfirmed flow (evict6, then
    /// the program runs again); with only confirmed flows left the new one
    /// is refused and counted.
    #[test]
    fn full_table6_evicts_unconfirmed_flows_only() {
        root!();
        let mut w = setup6_ct(NET_ICC | NET_MASQUERADE, 1, 4);
        maps6::add_port(&mut w.p, 6, Ipv6Addr::UNSPECIFIED, 8080, a6(), 80);
        for sport in [5001, 5002] {
            let (v, _) = w.run(bpf::FROM_WORLD, &world6().tcp(sport, 8080, TCP_SYN, b""));
            assert_eq!(v, tc::ACT_REDIRECT);
        }
        assert_eq!(maps6::ct(&mut w.p).len(), 4, "two flows fill it");
        let (v, _) = w.run(bpf::FROM_WORLD, &world6().tcp(5003, 8080, TCP_SYN, b""));
        assert_eq!(v, tc::ACT_REDIRECT, "room made");
        assert_eq!(w.counter("ct.evicted"), 1);
        let ct = maps6::ct(&mut w.p);
        assert_eq!(ct.len(), 4);
        assert!(!ct.iter().any(|(k, _)| k.sport == 5001), "the oldest went");
        // Both flows confirmed (the clients' ACKs): nothing to evict.
        for sport in [5002, 5003] {
            w.run(
                bpf::FROM_WORLD,
                &world6().tcp(sport, 8080, packet::TCP_ACK, b""),
            );
        }
        let (v, _) = w.run(bpf::FROM_WORLD, &world6().tcp(5004, 8080, TCP_SYN, b""));
        assert_eq!(v, tc::ACT_SHOT);
        assert_eq!(w.drops("ct-table-full"), 1);
        assert_eq!(w.counter("ct.evicted"), 1);
        // From a container too: no room, refused and counted.
        let (v, _) = w.run(bpf::FROM_CONTAINER, &a_to6(out6()).udp(40000, 53, b"q"));
        assert_eq!(v, tc::ACT_SHOT);
        assert_eq!(w.drops("ct-table-full"), 2);
    }
}
