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

/// The testbed's uplink with IPv6: host eth0 2001:db8:18::2/64 (default
/// via the outside, 2001:db8:18::1/64).
fn uplink_ipv6(n: &Netd) {
    let (host, outside) = (n.tb.host.clone(), n.tb.outside.clone());
    netd::testbed::block_on(async move {
        let h = netd::link::Netlink::in_ns(&host)?;
        let hi = h.index_of("eth0").await?;
        h.add_addr6(hi, "2001:db8:18::2".parse()?, 64).await?;
        let o = netd::link::Netlink::in_ns(&outside)?;
        let oi = o.index_of("eth0").await?;
        o.add_addr6(oi, "2001:db8:18::1".parse()?, 64).await?;
        h.add_default_route6("2001:db8:18::1".parse()?).await?;
        anyhow::Ok(())
    })
    .unwrap();
}

fn ping6(n: &Netd, from: &str, ip: &str) -> bool {
    n.netd(&["exec", from, "--", "ping", "-6", "-c", "1", "-W", "1", ip])
        .is_ok_and(|o| o.status.success())
}

fn curl6(n: &Netd, from: &str, url: &str) -> Option<String> {
    let o = n
        .netd(&["exec", from, "--", "curl", "-g", "-s", "-m", "3", url])
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn serve_http6(n: &Netd, name: &str, port: u16) {
    let out = n
        .netd(&[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            &format!(
                "{} tool http-serve [::]:{port} --name {name} >/dev/null 2>&1 & echo $!",
                me()
            ),
        ])
        .unwrap();
    assert!(out.status.success());
}

/// ebpf only (until the shared `ipv6_traffic` scenario runs on every
/// datapath): real IPv6 traffic through the eBPF programs. Containers of
/// a dual-stack network reach each other (ping6, TCP, their own
/// addresses seen) with bpf_redirect_peer; the outside sees them
/// masqueraded to the host's IPv6 address (NAT66); a port published on
/// 0.0.0.0 is reached over IPv6 from outside with the client's address
/// kept; icc=false, another network and an IPv4-only network get no
/// IPv6 through; the IPv6 counters say the programs did it.
#[test]
fn ebpf_ipv6_traffic() {
    if !netd_tests::require_root("ebpf_ipv6_traffic") {
        return;
    }
    let mut n = Netd::start("ebpf").unwrap();
    uplink_ipv6(&n);
    n.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.77.0.0/24",
        "--subnet",
        "fd00:77::/64",
        "v6a",
    ]);
    n.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.78.0.0/24",
        "--subnet",
        "fd00:78::/64",
        "v6b",
    ]);
    n.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.79.0.0/24",
        "--subnet",
        "fd00:79::/64",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "noicc",
    ]);
    n.ok(&["network", "create", "--subnet", "10.80.0.0/24", "v4only"]);
    sleeper(&n, "a", "v6a");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "v6a",
        "-p",
        "8081:80",
        "-p",
        "[::]:8082:80",
        "--",
        "sleep",
        "600",
    ]);
    sleeper(&n, "c", "v6b");
    sleeper(&n, "i1", "noicc");
    sleeper(&n, "i2", "noicc");
    sleeper(&n, "v4", "v4only");
    serve_http6(&n, "b", 80);
    serve_http6(&n, "c", 80);
    serve_http6(&n, "i2", 80);

    // Same network: ping6 and TCP, the client's own address seen.
    assert!(
        wait_until(Duration::from_secs(10), || ping6(&n, "a", "fd00:77::3")),
        "ping6 a -> b\n{}",
        n.log()
    );
    let mut body = None;
    wait_until(Duration::from_secs(10), || {
        body = curl6(&n, "a", "http://[fd00:77::3]:80/");
        body.is_some()
    });
    let body = body.unwrap_or_else(|| panic!("a -> b over IPv6\n{}", n.log()));
    assert!(body.contains("hello from b to [fd00:77::2]:"), "{body}");

    // The world: masqueraded to the host's IPv6 address.
    n.tb.spawn(
        &n.tb.outside.clone(),
        &[&me(), "tool", "http-serve", "[::]:8000", "--name", "world"],
    )
    .unwrap();
    let mut body = None;
    wait_until(Duration::from_secs(10), || {
        body = curl6(&n, "a", "http://[2001:db8:18::1]:8000/");
        body.is_some()
    });
    let body = body.unwrap_or_else(|| panic!("a -> world over IPv6\n{}", n.log()));
    assert!(body.contains("to [2001:db8:18::2]:"), "NAT66: {body}");
    assert!(
        ping6(&n, "a", "2001:db8:18::1"),
        "ICMPv6 echo through NAT66"
    );

    // A port published on 0.0.0.0, over IPv6 from outside: the client kept.
    let url = "http://[2001:db8:18::2]:8081/";
    let mut body = None;
    wait_until(Duration::from_secs(10), || {
        body =
            n.tb.exec(&n.tb.outside, &["curl", "-g", "-s", "-m", "3", url])
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        body.is_some()
    });
    let body = body.unwrap_or_else(|| panic!("outside -> [host]:8081\n{}", n.log()));
    assert!(body.contains("hello from b to [2001:db8:18::1]:"), "{body}");

    // From the host itself, no proxy: [::1] and the host's IPv6 address
    // on an IPv6-only binding (the cgroup programs send the socket to the
    // container's IPv6 address), and [::1] on 0.0.0.0.
    for url in [
        "http://[::1]:8082/",
        "http://[2001:db8:18::2]:8082/",
        "http://[::1]:8081/",
    ] {
        let o = n.host(true, &["curl", "-g", "-s", "-m", "3", url]);
        let body = String::from_utf8_lossy(&o.stdout);
        assert!(body.contains("hello from b"), "{url}: {body}\n{}", n.log());
    }

    // Nothing else: another network, icc=false, an IPv4-only network, a
    // container's address from outside.
    assert!(
        curl6(&n, "a", "http://[fd00:78::2]:80/").is_none(),
        "isolation"
    );
    assert!(
        curl6(&n, "i1", "http://[fd00:79::3]:80/").is_none(),
        "icc=false"
    );
    assert!(!ping6(&n, "i1", "fd00:79::3"), "icc=false (ICMPv6)");
    assert!(
        !ping6(&n, "v4", "fd00:77::2"),
        "an IPv4-only network has no IPv6"
    );
    let direct =
        n.tb.exec(
            &n.tb.outside,
            &["curl", "-g", "-s", "-m", "2", "http://[fd00:77::3]:80/"],
        )
        .unwrap();
    assert!(
        !direct.status.success(),
        "no route, and not-published anyway"
    );

    let s = stats(&n);
    for c in [
        "from_container.ipv6",
        "from_world.ipv6",
        "snat",
        "rev_snat",
        "dnat",
        "rev_dnat",
        "forwarded",
    ] {
        assert!(s["Counters"][c].as_u64().unwrap_or(0) > 0, "{c}: {s}");
    }
    for d in ["icc-denied", "network-isolation"] {
        assert!(s["Drops"][d].as_u64().unwrap_or(0) > 0, "{d}: {s}");
    }

    // kill -9: the pinned maps and jump table keep IPv6 forwarding (the
    // container's namespace entered directly: `netd exec` needs the
    // daemon); a restarted daemon's programs take over.
    let sandbox = n.inspect("a")["NetworkSettings"]["SandboxKey"]
        .as_str()
        .unwrap()
        .to_string();
    n.stop_daemon(true);
    let a_ns = netd::netns::NetNs::at(sandbox);
    let ping_a = |dst: &str| {
        a_ns.command("ping")
            .unwrap()
            .args(["-6", "-c", "1", "-W", "1", dst])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(ping_a("fd00:77::3"), "c2c without a daemon");
    assert!(ping_a("2001:db8:18::1"), "NAT66 without a daemon");
    n.start_daemon().unwrap();
    let mut body = None;
    wait_until(Duration::from_secs(10), || {
        body = curl6(&n, "a", "http://[2001:db8:18::1]:8000/");
        body.is_some()
    });
    let body = body.unwrap_or_else(|| panic!("after a restart\n{}", n.log()));
    assert!(body.contains("to [2001:db8:18::2]:"), "{body}");
    assert!(ping_a("fd00:77::3"));
}

/// The ports of `ip_local_reserved_ports`' syntax ("1000-1001,8080").
fn port_list(v: &str) -> std::collections::BTreeSet<u16> {
    let mut out = std::collections::BTreeSet::new();
    for part in v.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap());
    }
    out
}

/// ebpf: published ports are reserved from the host's ephemeral ports
/// beside the administrator's own reservations, however long their list
/// (one longer than 32 characters once came back cut from the sysctl,
/// and netd took the cut for the administrator's list), and leave with
/// their container.
#[test]
fn ebpf_reserved_ports_keep_the_administrators() {
    if !netd_tests::require_root("ebpf_reserved_ports_keep_the_administrators") {
        return;
    }
    let tb = netd_tests::Testbed::new("e").unwrap();
    let admin = "1000-1001,1003-1004,1006-1007,1009-1010,1012-1013,1015-1016,1018-1019";
    let key = "net.ipv4.ip_local_reserved_ports";
    tb.ok(&tb.host, &["sysctl", "-qw", &format!("{key}={admin}")])
        .unwrap();
    let n = Netd::start_on(tb, "ebpf", &[]).unwrap();
    let reserved = || port_list(&n.tb.ok(&n.tb.host, &["sysctl", "-n", key]).unwrap());
    // The administrator's ports are all below 8000, netd's all above.
    let below = |r: &std::collections::BTreeSet<u16>| -> std::collections::BTreeSet<u16> {
        r.range(..8000).copied().collect()
    };
    n.ok(&["create", "--name", "web", "-p", "8080:80"]);
    let r = reserved();
    assert!(r.contains(&8080), "published port not reserved: {r:?}");
    assert_eq!(below(&r), port_list(admin), "the administrator's list");
    n.ok(&["rm", "-f", "web"]);
    let r = reserved();
    assert!(!r.contains(&8080), "unpublished port still reserved");
    assert_eq!(below(&r), port_list(admin), "the administrator's list");
}
