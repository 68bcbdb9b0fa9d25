//! A benchmark, not a test (ignored by default): the embedded DNS
//! server's queries per second from one client (one query in flight) and
//! its latency p50/p99, for a container name and for a forwarded name,
//! from a container on a user-defined network to its gateway.
//!
//! ```sh
//! cargo xtask build-ebpf --release && cargo build --release -p netd
//! NETD_BIN=target/release/netd cargo test -p netd-tests --test dns_bench -- --ignored --nocapture
//! ```
use netd_tests::{OUTSIDE_IP, daemon::Netd};

fn bench(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    let me = netd_tests::daemon::netd_bin()
        .to_string_lossy()
        .into_owned();
    n.tb.spawn(
        &n.tb.outside.clone(),
        &[
            &me,
            "tool",
            "dns-serve",
            &format!("{OUTSIDE_IP}:53"),
            "--record",
            "example.test=203.0.113.7",
        ],
    )
    .unwrap();
    n.ok(&["network", "create", "mynet"]);
    for c in ["server-side", "client"] {
        n.ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            "mynet",
            "--",
            "sleep",
            "600",
        ]);
    }
    let gw = n.inspect("client")["NetworkSettings"]["Gateway"]
        .as_str()
        .unwrap()
        .to_string();
    // Baseline for the same path: a plain blocking UDP server (netd's
    // test upstream) on the gateway address, another port.
    n.tb.spawn(
        &n.tb.host.clone(),
        &[
            &me,
            "tool",
            "dns-serve",
            &format!("{gw}:5300"),
            "--record",
            "server-side=192.0.2.1",
        ],
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let secs = std::env::var("DNS_BENCH_SECS").unwrap_or_else(|_| "5".into());
    for (what, port, name) in [
        ("container name", 53, "server-side"),
        ("forwarded name", 53, "example.test"),
        (
            "baseline: blocking UDP server, same path",
            5300,
            "server-side",
        ),
    ] {
        let out = n.ok(&[
            "exec",
            "client",
            "--",
            &me,
            "tool",
            "dns-bench",
            &format!("{gw}:{port}"),
            name,
            "--secs",
            &secs,
        ]);
        println!("dns-bench {dp}, {what}: {}", out.trim());
    }
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn dns_bench_ebpf() {
    if netd_tests::require_root("dns_bench_ebpf") {
        bench("ebpf");
    }
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn dns_bench_iptables() {
    if netd_tests::require_root("dns_bench_iptables") {
        bench("iptables");
    }
}
