//! Foundation: the programs load and pass the verifier, BPF_PROG_TEST_RUN
//! verdicts and counters, TCX attach on real interfaces in throwaway
//! namespaces, and the harness's cleanup (also after a panic).
use std::{net::Ipv4Addr, path::PathBuf};

use netd::bpf::{self, BpfLogLevel, Programs};
use netd_common::tc;
use netd_tests::{
    Testbed, bpfmaps,
    packet::{self, Frame, TCP_SYN},
    require_root,
};

/// Loads the programs with endpoint A (the default frame's source) on
/// BPF_PROG_TEST_RUN's ingress device (lo, ifindex 1) and B beside it.
fn load() -> Programs {
    let mut p = Programs::load(BpfLogLevel::Warn).expect("programs load and pass the verifier");
    let f = Frame::default();
    bpfmaps::add_network(&mut p, 1, netd_common::NET_ICC);
    for (ifindex, ip, mac) in [(1, f.src, f.src_mac), (77, f.dst, f.dst_mac)] {
        bpfmaps::add_endpoint(
            &mut p,
            netd_common::Endpoint {
                ifindex,
                net_id: 1,
                ip: bpfmaps::be(ip),
                mac,
                gw_mac: [2, 0, 0, 0, 0, 1],
                ..netd_common::Endpoint::default()
            },
        );
    }
    p
}

#[test]
fn test_run_counts_a_tcp_syn_and_redirects_it() {
    if !require_root("test_run_counts_a_tcp_syn_and_redirects_it") {
        return;
    }
    let mut p = load();
    let frame = Frame::default().tcp(40000, 80, TCP_SYN, b"");
    assert!(packet::ipv4_checksum_ok(&frame) && packet::l4_checksum_ok(&frame));
    let (verdict, out) = p.test_run(bpf::FROM_CONTAINER, &frame).unwrap();
    assert_eq!(
        verdict,
        tc::ACT_REDIRECT,
        "same network: straight to the peer"
    );
    assert_eq!(out, frame, "the frame is not modified");
    let c = p.counters().unwrap();
    assert_eq!(c["from_container.packets"], 1);
    assert_eq!(c["from_container.bytes"], frame.len() as u64);
    assert_eq!(c["from_container.ipv4"], 1);
    assert_eq!(c["from_container.tcp"], 1);
    assert!(p.drops().unwrap().values().all(|&d| d == 0));
}

#[test]
fn test_run_drops_a_truncated_ipv4_header_with_a_counted_reason() {
    if !require_root("test_run_drops_a_truncated_ipv4_header_with_a_counted_reason") {
        return;
    }
    let mut p = load();
    let mut frame = Frame::default().udp(5000, 53, b"x");
    // IHL 15 (60-byte header) in a frame that has 29 bytes of IP.
    frame[packet::ETH_HLEN] = 0x4f;
    let (verdict, _) = p.test_run(bpf::FROM_CONTAINER, &frame).unwrap();
    assert_eq!(verdict, tc::ACT_SHOT);
    assert_eq!(p.drops().unwrap()["malformed"], 1);
    assert_eq!(p.counters().unwrap()["from_container.ipv4"], 0);

    // Non-IP (the endpoint's own ARP) goes to the bridge and is not
    // counted as IPv4.
    let f = Frame::default();
    let arp = packet::arp(f.src_mac, 1, f.src_mac, f.src, [0; 6], f.dst);
    let (verdict, _) = p.test_run(bpf::FROM_CONTAINER, &arp).unwrap();
    assert_eq!(verdict, tc::ACT_UNSPEC);
    assert_eq!(p.drops().unwrap()["malformed"], 1);
}

#[test]
fn tcx_attached_program_counts_real_traffic_between_namespaces() {
    if !require_root("tcx_attached_program_counts_real_traffic_between_namespaces") {
        return;
    }
    let mut tb = Testbed::new("t").unwrap();
    let gw = Ipv4Addr::new(10, 200, 0, 1);
    tb.bridge("br-test", gw, 24).unwrap();
    let c1 = tb
        .container(
            "c1",
            "br-test",
            "veth-c1",
            Ipv4Addr::new(10, 200, 0, 2),
            24,
            gw,
        )
        .unwrap();
    let _c2 = tb
        .container(
            "c2",
            "br-test",
            "veth-c2",
            Ipv4Addr::new(10, 200, 0, 3),
            24,
            gw,
        )
        .unwrap();

    // c1 and c2 as netd endpoints: c1's traffic to c2 goes by
    // bpf_redirect_peer, past the bridge.
    let mut p = Programs::load(BpfLogLevel::Warn).unwrap();
    bpfmaps::add_network(&mut p, 1, netd_common::NET_ICC);
    for (veth, last) in [("veth-c1", 2u8), ("veth-c2", 3)] {
        let ip = Ipv4Addr::new(10, 200, 0, last);
        let ifindex = tb.host.run(|| Ok(netd::link::ifindex(veth))).unwrap();
        bpfmaps::add_endpoint(
            &mut p,
            netd_common::Endpoint {
                ifindex,
                net_id: 1,
                ip: bpfmaps::be(ip),
                mac: netd::link::mac_for_ip(ip),
                gw_mac: [2, 0, 0, 0, 0, 1],
                ..netd_common::Endpoint::default()
            },
        );
    }
    let link = p
        .attach_ingress(bpf::FROM_CONTAINER, &tb.host, "veth-c1")
        .unwrap();
    let links = tb.ok(&tb.host, &["bpftool", "link", "show"]).unwrap();
    assert!(!links.trim().is_empty(), "bpftool lists the tcx link");

    tb.ok(
        &c1,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.200.0.3"],
    )
    .unwrap();
    let c = p.counters().unwrap();
    assert!(c["from_container.packets"] >= 3, "{c:?}");
    assert!(c["from_container.ipv4"] >= 3, "{c:?}");
    assert!(
        c["forwarded"] >= 3,
        "echo requests went by redirect_peer: {c:?}"
    );

    p.detach(bpf::FROM_CONTAINER, link).unwrap();
    let before = p.counters().unwrap()["from_container.packets"];
    tb.ok(
        &c1,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.200.0.3"],
    )
    .unwrap();
    assert_eq!(
        p.counters().unwrap()["from_container.packets"],
        before,
        "detached: no more counting"
    );
}

#[test]
fn testbed_removes_everything_on_drop_even_after_a_panic() {
    if !require_root("testbed_removes_everything_on_drop_even_after_a_panic") {
        return;
    }
    let paths = std::sync::Mutex::new(Vec::<PathBuf>::new());
    let result = std::panic::catch_unwind(|| {
        let mut tb = Testbed::new("t").unwrap();
        tb.bridge("br-x", Ipv4Addr::new(10, 201, 0, 1), 24).unwrap();
        tb.container(
            "c",
            "br-x",
            "veth-x",
            Ipv4Addr::new(10, 201, 0, 2),
            24,
            Ipv4Addr::new(10, 201, 0, 1),
        )
        .unwrap();
        tb.spawn(&tb.outside.clone(), &["sleep", "600"]).unwrap();
        let mut p = paths.lock().unwrap();
        p.extend(tb.namespaces().iter().map(|n| n.path().to_path_buf()));
        assert!(
            p.iter().all(|p| p.exists()),
            "namespaces exist while the testbed lives"
        );
        drop(p);
        panic!("a test failing half-way");
    });
    assert!(result.is_err());
    let p = paths.lock().unwrap();
    assert_eq!(p.len(), 3);
    for path in p.iter() {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
