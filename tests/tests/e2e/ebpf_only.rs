//! Scenarios only the eBPF datapath has: its counters, its restart
//! under traffic.
use std::time::Duration;

use netd_tests::{HOST_IP, OUTSIDE_IP, daemon::Netd, wait_until};

use super::*;

/// ebpf only: the programs do the work (counters say so), no iptables
/// rule and no kernel conntrack entry is involved, drops are counted.
#[test]
fn ebpf_kernel_programs_carry_the_traffic() {
    if !netd_tests::require_root("ebpf_kernel_programs_carry_the_traffic") {
        return;
    }
    let mut n = Netd::start("ebpf").unwrap();
    sleeper(&n, "a", "bridge");
    n.ok(&[
        "run", "-d", "--name", "b", "-p", "8080:80", "--", "sleep", "600",
    ]);
    serve_http(&n, "b", 80);
    let b = n.ip_of("b");
    let body = curl_wait(&n, "a", &format!("http://{b}/"));
    assert!(body.contains("hello from b"), "{body}");
    let url = format!("http://{HOST_IP}:8080/");
    assert!(wait_until(Duration::from_secs(10), || outside_curl(
        &n, &url
    )
    .is_some()));
    n.tb.spawn(
        &n.tb.outside.clone(),
        &[
            &me(),
            "tool",
            "http-serve",
            "0.0.0.0:8000",
            "--name",
            "world",
        ],
    )
    .unwrap();
    let body = curl_wait(&n, "a", &format!("http://{OUTSIDE_IP}:8000/"));
    assert!(
        body.contains(&format!("to {HOST_IP}:")),
        "masqueraded: {body}"
    );
    assert!(
        ping(&n, "a", &OUTSIDE_IP.to_string()),
        "ICMP echo through the NAT"
    );

    let s = stats(&n);
    for c in [
        "forwarded",
        "dnat",
        "rev_dnat",
        "snat",
        "rev_snat",
        "ct.created",
    ] {
        assert!(s["Counters"][c].as_u64().unwrap() > 0, "{c}: {s}");
    }
    let eb = &s["Endpoints"]["b/eth0"];
    assert!(
        eb["rx_packets"].as_u64().unwrap() > 0 && eb["tx_packets"].as_u64().unwrap() > 0,
        "{s}"
    );
    assert!(s["ConntrackEntries"].as_u64().unwrap() > 0);

    // No iptables rule, no kernel conntrack entry for container traffic.
    let rules = n.iptables_save();
    assert!(
        !rules.contains("NETD") && !rules.lines().any(|l| l.starts_with("-A")),
        "{rules}"
    );
    let ct = n.tb.exec(&n.tb.host, &["conntrack", "-L"]).unwrap();
    let listed = String::from_utf8_lossy(&ct.stdout);
    assert!(
        !listed.contains(&b) && !listed.contains("172.17."),
        "kernel conntrack: {listed}"
    );

    // A container that forges its source address is dropped and counted.
    n.ok(&[
        "exec",
        "a",
        "--",
        "ip",
        "addr",
        "add",
        "172.17.0.250/16",
        "dev",
        "eth0",
    ]);
    let _ = n.netd(&[
        "exec",
        "a",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "-I",
        "172.17.0.250",
        &b,
    ]);
    assert!(stats(&n)["Drops"]["spoofed-source"].as_u64().unwrap() > 0);

    // icc=false and isolation drops are counted.
    n.ok(&["network", "create", "-o", "icc=false", "noicc"]);
    sleeper(&n, "q1", "noicc");
    sleeper(&n, "q2", "noicc");
    assert!(!ping(&n, "q1", &n.ip_of("q2")));
    assert!(!ping(&n, "q1", &b));
    let d = &stats(&n)["Drops"];
    assert!(d["icc-denied"].as_u64().unwrap() > 0, "{d}");
    assert!(d["network-isolation"].as_u64().unwrap() > 0, "{d}");

    // Removing a container removes its conntrack entries.
    n.ok(&["rm", "-f", "b"]);
    let before = stats(&n)["ConntrackEntries"].as_u64().unwrap();
    n.ok(&["rm", "-f", "a"]);
    let after = stats(&n)["ConntrackEntries"].as_u64().unwrap();
    assert!(after < before || before == 0, "{before} -> {after}");
    assert_eq!(after, 0, "every flow belonged to a or b");
}

/// ebpf only: a long-lived TCP stream (masqueraded) and a published-port
/// connection survive a kill -9 and a restart of the daemon: the pinned
/// programs and maps keep forwarding, the new daemon adopts them.
#[test]
fn ebpf_restart_under_traffic() {
    if !netd_tests::require_root("ebpf_restart_under_traffic") {
        return;
    }
    let mut n = Netd::start("ebpf").unwrap();
    n.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "5202:5201",
        "--",
        "iperf3",
        "-s",
        "-p",
        "5201",
    ]);
    sleeper(&n, "cli", "bridge");
    n.tb.spawn(&n.tb.outside.clone(), &["iperf3", "-s", "-p", "5201"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The client runs in the container's namespace directly, not through
    // `netd exec`: an exec's answer (its exit code) comes from the daemon,
    // and this daemon is about to be killed.
    let sandbox = n.inspect("cli")["NetworkSettings"]["SandboxKey"]
        .as_str()
        .unwrap()
        .to_string();
    let egress = std::thread::spawn(move || {
        netd::netns::NetNs::at(sandbox)
            .command("iperf3")
            .unwrap()
            .args([
                "-c",
                &OUTSIDE_IP.to_string(),
                "-p",
                "5201",
                "-t",
                "6",
                "-b",
                "200M",
            ])
            .output()
            .unwrap()
    });
    let ingress =
        n.tb.outside
            .command("iperf3")
            .unwrap()
            .args([
                "-c",
                &HOST_IP.to_string(),
                "-p",
                "5202",
                "-t",
                "6",
                "-b",
                "200M",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    n.stop_daemon(true);
    std::thread::sleep(Duration::from_millis(500));
    n.start_daemon().unwrap();
    let e = egress.join().unwrap();
    let i = ingress.wait_with_output().unwrap();
    assert!(
        e.status.success(),
        "egress stream: {}{}",
        String::from_utf8_lossy(&e.stdout),
        String::from_utf8_lossy(&e.stderr)
    );
    assert!(
        i.status.success(),
        "published-port stream: {}{}",
        String::from_utf8_lossy(&i.stdout),
        String::from_utf8_lossy(&i.stderr)
    );
    let s = stats(&n);
    assert!(
        s["Counters"]["snat"].as_u64().unwrap() > 0 && s["Counters"]["dnat"].as_u64().unwrap() > 0,
        "{s}"
    );
}
