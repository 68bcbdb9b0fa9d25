//! `netd bench --quick` as a smoke test: the harness builds its
//! topologies, every datapath carries traffic in every scenario, and the
//! reports are written. It asserts that figures exist and are positive,
//! never how fast anything is.
use netd::testbed::{
    docker::{CONTAINERD, DOCKER_CLI, DOCKERD},
    image::BUSYBOX,
    require_tools,
};
use netd_tests::{daemon::netd_bin, require_root};

#[test]
fn bench_quick_produces_positive_figures_for_every_datapath() {
    if !require_root("bench_quick_produces_positive_figures_for_every_datapath") {
        return;
    }
    let out = std::env::temp_dir().join(format!("netd-bench-test-{}", std::process::id()));
    let o = std::process::Command::new(netd_bin())
        .args([
            "bench",
            "--quick",
            "--datapaths",
            "ebpf,nftables,iptables",
            // The Docker peers have a test of their own.
            "--docker",
            "no",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "netd bench failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| c2c | TCP_RR | per_sec |"), "{md}");
    assert!(out.join("charts/c2c_TCP_RR_per_sec.svg").exists());
    assert!(out.join("charts/scaling_TCP_CRR.svg").exists());
    let samples = report["samples"].as_array().unwrap();
    for dp in ["ebpf", "nftables", "iptables", "floor"] {
        assert!(
            samples.iter().any(|s| s["datapath"] == dp),
            "no samples for {dp}"
        );
    }
    for (scenario, load) in [
        ("c2c", "TCP_RR"),
        ("c2c", "TCP_CRR"),
        ("c2c", "TCP_STREAM"),
        ("dnat", "TCP_CRR"),
        ("dnat", "TCP_RR"),
        ("dnat", "TCP_STREAM"),
        ("egress", "TCP_STREAM"),
        ("egress", "TCP_CRR"),
        ("egress", "UDP_RR"),
        ("scaling_0", "TCP_CRR"),
        ("scaling_1000", "TCP_CRR"),
        ("node2node", "TCP_RR"),
        ("node2node", "TCP_CRR"),
        ("node2node", "TCP_STREAM"),
    ] {
        let floor = scenario == "node2node";
        for dp in ["ebpf", "nftables", "iptables", "floor"]
            .into_iter()
            .filter(|dp| floor || *dp != "floor")
        {
            let s = samples
                .iter()
                .find(|s| s["scenario"] == scenario && s["load"] == load && s["datapath"] == dp)
                .unwrap_or_else(|| panic!("missing {scenario} {load} {dp}"));
            let rate = s["figures"]["per_sec"]
                .as_f64()
                .or(s["figures"]["gbit_per_sec"].as_f64());
            assert!(rate.unwrap_or(0.0) > 0.0, "{scenario} {load} {dp}: {s}");
        }
    }
    let bpf = samples
        .iter()
        .find(|s| s["scenario"] == "bpf_c2c")
        .expect("bpf stats");
    assert!(
        bpf["figures"]["from_container_ns_per_packet"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{bpf}"
    );
    let n2n = samples
        .iter()
        .find(|s| s["scenario"] == "bpf_node2node")
        .expect("bpf stats of node2node");
    for fig in [
        "node1_from_container_ns_per_packet",
        "node2_from_world_ns_per_packet",
    ] {
        assert!(n2n["figures"][fig].as_f64().unwrap_or(0.0) > 0.0, "{n2n}");
    }
    assert!(md.contains("| node2node | TCP_RR | per_sec |"), "{md}");
    for dp in ["ebpf", "nftables", "iptables"] {
        let c = samples
            .iter()
            .find(|s| s["scenario"] == "control" && s["datapath"] == dp)
            .unwrap();
        assert!(c["figures"]["publish_1000_ports_ms"].as_f64().unwrap() > 0.0);
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The Docker peers (`--docker yes`): Docker's bridge and Docker on
/// netd's plugin carry c2c TCP_RR and published-port TCP_CRR, and the
/// report compares them.
#[test]
fn bench_quick_docker_peers() {
    if !require_root("bench_quick_docker_peers")
        || !require_tools(
            "bench_quick_docker_peers",
            &[DOCKERD, DOCKER_CLI, CONTAINERD, BUSYBOX, "/usr/bin/iperf3"],
        )
    {
        return;
    }
    let out = std::env::temp_dir().join(format!("netd-bench-docker-{}", std::process::id()));
    let o = std::process::Command::new(netd_bin())
        .args([
            "bench",
            "--quick",
            "--datapaths",
            "ebpf",
            "--scenarios",
            "c2c,dnat",
            "--docker",
            "yes",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "netd bench failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("docker+ebpf/docker"), "{md}");
    let samples = report["samples"].as_array().unwrap();
    for (scenario, load) in [("c2c", "TCP_RR"), ("dnat", "TCP_CRR")] {
        for peer in ["docker", "docker+ebpf"] {
            let s = samples
                .iter()
                .find(|s| s["scenario"] == scenario && s["load"] == load && s["datapath"] == peer)
                .unwrap_or_else(|| panic!("missing {scenario} {load} {peer}"));
            assert!(
                s["figures"]["per_sec"].as_f64().unwrap_or(0.0) > 0.0,
                "{scenario} {load} {peer}: {s}"
            );
        }
    }
    // Nothing of the peers is left in the output directory.
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&out);
}
