//! Published ports from outside, from the host and from containers
//! (hairpin), and egress masquerade.
use std::time::Duration;

use netd_tests::{HOST_IP, OUTSIDE_IP, daemon::Netd, wait_until};

use super::*;

pub fn published_ports_and_egress(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
        "-p",
        "5354:54/udp",
        "-p",
        "9000-9001:7000-7001",
        "--",
        "sleep",
        "600",
    ]);
    serve_http(&n, "web", 80);
    serve_http(&n, "web", 7001);
    n.netd(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        &format!(
            "{} tool udp-echo 0.0.0.0:53 --name web >/dev/null 2>&1 &",
            me()
        ),
    ])
    .unwrap();
    let url = format!("http://{HOST_IP}:8080/");
    let mut body = None;
    wait_until(Duration::from_secs(10), || {
        body = outside_curl(&n, &url);
        body.is_some()
    });
    let body =
        body.unwrap_or_else(|| panic!("published port unreachable\n{}\n{}", n.log(), n.ruleset()));
    assert!(body.contains("hello from web"), "{body}");
    assert!(
        body.contains(&OUTSIDE_IP.to_string()),
        "DNAT keeps the client's address: {body}"
    );
    let body =
        outside_curl(&n, &format!("http://{HOST_IP}:9001/")).expect("range 9000-9001 -> 7000-7001");
    assert!(body.contains("hello from web"));
    let udp =
        n.tb.ok(
            &n.tb.outside,
            &[
                &me(),
                "tool",
                "udp-send",
                &format!("{HOST_IP}:5353"),
                "ping",
                "--timeout-ms",
                "1000",
            ],
        )
        .unwrap();
    assert!(udp.starts_with("web:ping"), "{udp}");
    // A published UDP port with nothing listening: the container's port
    // unreachable travels back, translated, and the client hears "refused".
    let refused =
        n.tb.exec(
            &n.tb.outside,
            &[
                &me(),
                "tool",
                "udp-send",
                &format!("{HOST_IP}:5354"),
                "x",
                "--timeout-ms",
                "1000",
            ],
        )
        .unwrap();
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("connection refused"),
        "ICMP error through the NAT: {msg}"
    );
    let port = n.ok(&["port", "web"]);
    assert!(port.contains("80/tcp -> 0.0.0.0:8080"), "{port}");
    assert!(port.contains("53/udp -> 0.0.0.0:5353"), "{port}");
    // Unpublished ports are not reachable.
    assert!(outside_curl(&n, &format!("http://{HOST_IP}:80/")).is_none());

    // -P picks free host ports for exposed ports.
    n.ok(&[
        "run", "-d", "--name", "auto", "--expose", "80", "-P", "--", "sleep", "600",
    ]);
    let p = n.ok(&["port", "auto"]);
    let hp: u16 = p.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert!(hp >= 32768, "{p}");

    // Egress: masqueraded to the uplink address.
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
    let body = curl_wait(&n, "web", &format!("http://{OUTSIDE_IP}:8000/"));
    assert!(
        body.contains(&format!("to {HOST_IP}:")),
        "egress source is the uplink address: {body}"
    );

    // Daemon restart (SIGTERM): containers keep connectivity; state survives.
    n.stop_daemon(false);
    assert!(
        outside_curl(&n, &url).is_some(),
        "published port works while the daemon is down"
    );
    n.start_daemon().unwrap();
    assert!(outside_curl(&n, &url).is_some());
    assert!(n.ok(&["port", "web"]).contains("0.0.0.0:8080"));
    // Port conflicts.
    let e = n.fails(&["create", "--name", "dup", "-p", "8080:80"]);
    assert!(e.contains("already allocated"), "{e}");
}

pub fn host_curl(n: &Netd, in_cgroup: bool, url: &str) -> Option<String> {
    let o = n.host(in_cgroup, &["curl", "-g", "-s", "-m", "3", url]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Published ports from the host itself (loopback and the uplink
/// address) and from containers through a host address (hairpin), with no
/// proxy process (the netfilter datapaths serve [::1] with the daemon's
/// userland proxy); a 127.0.0.1-bound port is reachable only there.
pub fn host_and_hairpin(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
        "-p",
        "127.0.0.1:8090:80",
        "--",
        "sleep",
        "600",
    ]);
    serve_http(&n, "web", 80);
    n.netd(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        &format!(
            "{} tool udp-echo 0.0.0.0:53 --name web >/dev/null 2>&1 &",
            me()
        ),
    ])
    .unwrap();
    let port = n.ok(&["port", "web"]);
    assert!(
        port.contains("80/tcp -> 127.0.0.1:8090") && port.contains("80/tcp -> 0.0.0.0:8080"),
        "{port}"
    );

    // From the host: loopback and the uplink address.
    let mut got = None;
    wait_until(Duration::from_secs(10), || {
        got = host_curl(&n, true, "http://127.0.0.1:8080/");
        got.is_some()
    });
    let body = got.unwrap_or_else(|| panic!("host -> 127.0.0.1:8080 failed\n{}", n.log()));
    assert!(body.contains("hello from web"), "{body}");
    let body =
        host_curl(&n, true, &format!("http://{HOST_IP}:8080/")).expect("host -> uplink address");
    assert!(body.contains("hello from web"));
    assert!(
        host_curl(&n, true, "http://127.0.0.1:8090/").is_some(),
        "127.0.0.1-bound port from the host"
    );
    // UDP request/response from the host.
    let o = n.host(
        true,
        &[
            &me(),
            "tool",
            "udp-send",
            "127.0.0.1:5353",
            "hi",
            "--timeout-ms",
            "1000",
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("web:hi"),
        "{o:?}"
    );

    // The 127.0.0.1-bound port is not reachable from the outside namespace.
    assert!(outside_curl(&n, &format!("http://{HOST_IP}:8090/")).is_none());

    // Hairpin: from a container on the same network, from another
    // network, and from the target itself, through the host's address.
    sleeper(&n, "same", "bridge");
    n.ok(&["network", "create", "other"]);
    sleeper(&n, "far", "other");
    let url = format!("http://{HOST_IP}:8080/");
    for from in ["same", "far", "web"] {
        let body = curl_wait(&n, from, &url);
        assert!(
            body.contains("hello from web"),
            "hairpin from {from}: {body}"
        );
    }
    if dp == "ebpf" {
        // IPv6 loopback (dual-stack socket, v4-mapped rewrite).
        let body = host_curl(&n, true, "http://[::1]:8080/").expect("host -> [::1]:8080");
        assert!(body.contains("hello from web"), "{body}");
        // A host process outside the datapath's cgroup is unaffected.
        assert!(
            host_curl(&n, false, "http://127.0.0.1:8080/").is_none(),
            "scoped to its cgroup"
        );
        let s = stats(&n);
        assert!(s["Counters"]["host_sockets"].as_u64().unwrap() > 0, "{s}");
        assert!(s["Counters"]["hairpin"].as_u64().unwrap() > 0, "{s}");
        // No proxy process: nothing in the host namespace listens on 8080.
        let ss = n.tb.ok(&n.tb.host, &["ss", "-ltn"]).unwrap();
        assert!(!ss.contains(":8080"), "{ss}");
    } else {
        // IPv6 loopback: the daemon's userland proxy (as docker-proxy),
        // to the container's IPv4 address on this IPv4-only network,
        // from the bridge's address; the 127.0.0.1-bound port is not on
        // [::1].
        let body = host_curl(&n, false, "http://[::1]:8080/").expect("host -> [::1]:8080");
        assert!(body.contains("hello from web to 172.17.0.1:"), "{body}");
        let udp = n.host(
            false,
            &[
                &me(),
                "tool",
                "udp-send",
                "[::1]:5353",
                "hi6",
                "--timeout-ms",
                "1000",
            ],
        );
        let udp = String::from_utf8_lossy(&udp.stdout);
        assert!(udp.starts_with("web:hi6 from 172.17.0.1:"), "{udp}");
        assert!(host_curl(&n, false, "http://[::1]:8090/").is_none());
        let ss = n.tb.ok(&n.tb.host, &["ss", "-ltnp"]).unwrap();
        assert!(
            ss.lines()
                .any(|l| l.contains("[::1]:8080") && l.contains("netd")),
            "{ss}"
        );
    }
    n.stop_daemon(false);
}
