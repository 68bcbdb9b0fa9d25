//! `netd bench --quick` as a smoke test: the harness builds its
//! topologies, every datapath carries traffic in every scenario and CPU
//! placement, and the reports are written (targets, program sizes,
//! placements, peers). It asserts that figures exist and are positive,
//! never how fast anything is.
use netd::testbed::{
    docker::{CONTAINERD, DOCKER_CLI, DOCKERD},
    image::BUSYBOX,
    podman::PODMAN,
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
            // The peers have a test of their own.
            "--peers",
            "none",
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
    // The IPv6 variants, on netd's datapaths.
    assert!(md.contains("| c2c6 | TCP_RR | per_sec |"), "{md}");
    assert!(md.contains("| dnat6 | TCP_CRR | per_sec |"), "{md}");
    // The report leads with the same-CPU placement and its targets.
    let same = md.find("## `same`").expect("a same-CPU table");
    assert!(md.find("## `cross`").unwrap() > same);
    assert!(
        md.find("## Targets (`same` placement)").unwrap() < same,
        "{md}"
    );
    assert!(
        md.contains("| c2c TCP_RR, ebpf / bare veth | >= 0.97x |"),
        "{md}"
    );
    assert!(md.contains("ebpf/iptables") && md.contains("ebpf/floor"));
    assert!(md.contains("| from_container |"), "program sizes: {md}");
    for p in ["same", "cross", "free"] {
        assert!(
            out.join(format!("charts/{p}_c2c_TCP_RR_per_sec.svg"))
                .exists()
        );
    }
    assert!(out.join("charts/scaling_TCP_CRR.svg").exists());
    assert!(
        out.join("charts/control_control_publish_1000_ports_ms.svg")
            .exists()
    );
    assert_eq!(
        report["placements"],
        serde_json::json!(["same", "cross", "free"])
    );
    let targets = report["targets"].as_array().unwrap();
    assert!(targets.len() >= 12, "{targets:?}");
    assert!(
        targets
            .iter()
            .all(|t| ["met", "missed", "not measured"].contains(&t["verdict"].as_str().unwrap()))
    );
    let progs = report["programs"].as_array().unwrap();
    for name in ["from_container", "from_world"] {
        let p = progs.iter().find(|p| p["Name"] == name).unwrap();
        for f in ["Insns", "VerifiedInsns", "JitedBytes"] {
            assert!(p[f].as_u64().unwrap() > 0, "{name} {f}: {p}");
        }
    }
    let samples = report["samples"].as_array().unwrap();
    for dp in ["ebpf", "nftables", "iptables", "floor"] {
        for p in ["same", "cross", "free"] {
            assert!(
                samples
                    .iter()
                    .any(|s| s["datapath"] == dp && s["placement"] == p),
                "no {p} samples for {dp}"
            );
        }
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
            let found: Vec<&serde_json::Value> = samples
                .iter()
                .filter(|s| s["scenario"] == scenario && s["load"] == load && s["datapath"] == dp)
                .collect();
            assert!(!found.is_empty(), "missing {scenario} {load} {dp}");
            for s in found {
                let rate = s["figures"]["per_sec"]
                    .as_f64()
                    .or(s["figures"]["gbit_per_sec"].as_f64());
                assert!(rate.unwrap_or(0.0) > 0.0, "{scenario} {load} {dp}: {s}");
            }
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
    // XDP on the uplink: the published-port loads with and without a
    // no-op XDP program, side by side.
    assert!(
        md.contains("## XDP on the uplink (`same` placement)"),
        "{md}"
    );
    for scenario in ["uplink_tc", "uplink_xdp"] {
        for (load, fig) in [
            ("TCP_CRR", "per_sec"),
            ("TCP_RR", "per_sec"),
            ("TCP_STREAM", "gbit_per_sec"),
        ] {
            let s = samples
                .iter()
                .find(|s| s["scenario"] == scenario && s["load"] == load && s["datapath"] == "ebpf")
                .unwrap_or_else(|| panic!("missing {scenario} {load}"));
            assert!(s["figures"][fig].as_f64().unwrap_or(0.0) > 0.0, "{s}");
        }
    }
    assert_eq!(
        report["xdp"].as_array().map(Vec::len),
        Some(3),
        "{}",
        report["xdp"]
    );
    for dp in ["ebpf", "nftables", "iptables"] {
        let c = samples
            .iter()
            .find(|s| s["scenario"] == "control" && s["datapath"] == dp)
            .unwrap();
        assert!(c["figures"]["publish_1000_ports_ms"].as_f64().unwrap() > 0.0);
        assert!(c["figures"]["create_10_containers_ms"].as_f64().unwrap() > 0.0);
    }
    // The conntrack GC, on a full table: a pass over every entry, then
    // one that removes the idle ones.
    let c = samples
        .iter()
        .find(|s| s["scenario"] == "control" && s["datapath"] == "ebpf")
        .unwrap();
    assert!(
        c["figures"]["gc_entries"].as_f64().unwrap() >= 262_000.0,
        "{c}"
    );
    assert!(c["figures"]["gc_pass_ms"].as_f64().unwrap() > 0.0, "{c}");
    // The idle pass removes the entries the bench wrote (the table less
    // the bench's own flows).
    assert!(
        c["figures"]["gc_expired"].as_f64().unwrap() >= 200_000.0,
        "{c}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// The real peers (`--peers docker,podman`): Docker's bridge and Podman
/// with netavark carry c2c TCP_RR and published-port TCP_CRR in each
/// placement asked for, and the report compares ebpf with them.
#[test]
fn bench_quick_real_peers() {
    if !require_root("bench_quick_real_peers")
        || !require_tools(
            "bench_quick_real_peers",
            &[
                DOCKERD,
                DOCKER_CLI,
                CONTAINERD,
                BUSYBOX,
                PODMAN,
                "/usr/lib/podman/netavark",
                "/usr/bin/iperf3",
            ],
        )
    {
        return;
    }
    let out = std::env::temp_dir().join(format!("netd-bench-peers-{}", std::process::id()));
    let o = std::process::Command::new(netd_bin())
        .args([
            "bench",
            "--quick",
            "--datapaths",
            "ebpf",
            "--scenarios",
            "c2c,dnat",
            "--cpus",
            "same,free",
            "--peers",
            "docker,podman",
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
    assert!(
        md.contains("ebpf/docker") && md.contains("ebpf/podman"),
        "{md}"
    );
    assert!(
        md.contains("| c2c TCP_RR, ebpf / Docker | >= 1.30x |"),
        "{md}"
    );
    assert_eq!(report["peers"], serde_json::json!(["docker", "podman"]));
    let samples = report["samples"].as_array().unwrap();
    for (scenario, load) in [("c2c", "TCP_RR"), ("dnat", "TCP_CRR")] {
        for peer in ["docker", "podman"] {
            for p in ["same", "free"] {
                let s = samples
                    .iter()
                    .find(|s| {
                        s["scenario"] == scenario
                            && s["load"] == load
                            && s["datapath"] == peer
                            && s["placement"] == p
                    })
                    .unwrap_or_else(|| panic!("missing {scenario} {load} {peer} {p}"));
                assert!(
                    s["figures"]["per_sec"].as_f64().unwrap_or(0.0) > 0.0,
                    "{scenario} {load} {peer}: {s}"
                );
            }
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

/// Docker on netd's plugin (`--peers docker+netd`, or the older
/// `--docker yes`): measured beside Docker's own bridge, with the
/// docker+DATAPATH/docker ratio.
#[test]
fn bench_quick_docker_on_netd() {
    if !require_root("bench_quick_docker_on_netd")
        || !require_tools(
            "bench_quick_docker_on_netd",
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
            "c2c",
            "--cpus",
            "same",
            "--docker",
            "yes",
            "--peers",
            "none",
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
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("docker+ebpf/docker"), "{md}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["peers"],
        serde_json::json!(["docker", "docker+ebpf"])
    );
    let _ = std::fs::remove_dir_all(&out);
}
