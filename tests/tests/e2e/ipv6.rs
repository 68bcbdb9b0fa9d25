//! IPv6 networks: the control plane (subnets, pools, addresses, routes,
//! Docker's inspect fields, AAAA and ip6.arpa names).
use netd_tests::daemon::Netd;

use super::*;

fn addrs6(n: &Netd, c: &str) -> String {
    n.ok(&[
        "exec", c, "--", "ip", "-6", "-o", "addr", "show", "scope", "global",
    ])
}

/// Dual-stack networks: a given IPv6 subnet or a /64 of the ULA pool,
/// `--ip6`, addresses and the default route in the container, inspect,
/// AAAA and PTR; IPv4-only networks keep IPv6 off in their containers.
pub fn ipv6_control_plane(dp: &str) {
    let n = Netd::start(dp).unwrap();
    n.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.66.0.0/24",
        "--subnet",
        "fd00:66::/64",
        "--gateway",
        "fd00:66::1",
        "v6net",
    ]);
    n.ok(&["network", "create", "--ipv6", "auto6"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "v6net", "auto6"])).unwrap();
    assert_eq!(inspect[0]["EnableIPv6"], true, "{inspect}");
    let cfg = &inspect[0]["IPAM"]["Config"];
    assert_eq!(cfg[1]["Subnet"], "fd00:66::/64", "{cfg}");
    assert_eq!(cfg[1]["Gateway"], "fd00:66::1", "{cfg}");
    let auto = inspect[1]["IPAM"]["Config"][1]["Subnet"].as_str().unwrap();
    assert!(auto.starts_with("fd") && auto.ends_with("::/64"), "{auto}");
    // Containers: the next free address, or --ip6.
    n.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "v6net",
        "--",
        "sleep",
        "600",
    ]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "v6net",
        "--ip6",
        "fd00:66::99",
        "--",
        "sleep",
        "600",
    ]);
    let a = n.inspect("a");
    let ns = &a["NetworkSettings"];
    assert_eq!(ns["GlobalIPv6Address"], "fd00:66::2", "{ns}");
    assert_eq!(ns["GlobalIPv6PrefixLen"], 64);
    assert_eq!(ns["IPv6Gateway"], "fd00:66::1");
    assert_eq!(ns["Networks"]["v6net"]["GlobalIPv6Address"], "fd00:66::2");
    assert!(
        addrs6(&n, "a").contains("fd00:66::2/64"),
        "{}",
        addrs6(&n, "a")
    );
    assert!(addrs6(&n, "b").contains("fd00:66::99/64"));
    let r = n.ok(&["exec", "a", "--", "ip", "-6", "route", "show", "default"]);
    assert!(r.contains("via fd00:66::1"), "{r}");
    let net: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "v6net"])).unwrap();
    let eps = net[0]["Containers"].as_object().unwrap();
    assert!(
        eps.values().any(|e| e["IPv6Address"] == "fd00:66::99/64"),
        "{net}"
    );
    // Names: AAAA and PTR from the network's embedded DNS server.
    let gw = "10.66.0.1";
    let aaaa = n.ok(&[
        "exec",
        "a",
        "--",
        &me(),
        "tool",
        "dns-query",
        gw,
        "b",
        "AAAA",
    ]);
    assert!(aaaa.contains("fd00:66::99"), "{aaaa}");
    let ptr = n.ok(&[
        "exec",
        "a",
        "--",
        &me(),
        "tool",
        "dns-query",
        gw,
        "9.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.6.0.0.0.0.d.f.ip6.arpa",
        "PTR",
    ]);
    assert!(ptr.contains("b.v6net"), "{ptr}");
    // A container on an IPv4-only network has no IPv6 at all.
    n.ok(&["run", "-d", "--name", "v4", "--", "sleep", "600"]);
    let v4 = n.ok(&[
        "exec", "v4", "--", "ip", "-6", "-o", "addr", "show", "dev", "eth0",
    ]);
    assert!(
        v4.trim().is_empty(),
        "IPv6 is off on an IPv4-only network: {v4}"
    );
    // Published ports on a dual-stack container: one host port number for
    // both families (0.0.0.0 serves IPv4 and IPv6, shown twice as Docker
    // shows it), for -p HOSTPORT:PORT and for -P.
    n.ok(&[
        "run",
        "-d",
        "--name",
        "pub",
        "--network",
        "v6net",
        "-p",
        "18090:80",
        "--expose",
        "81",
        "-P",
        "--",
        "sleep",
        "600",
    ]);
    let lines = n.ok(&["port", "pub"]);
    assert!(lines.contains("80/tcp -> 0.0.0.0:18090"), "{lines}");
    assert!(lines.contains("80/tcp -> [::]:18090"), "{lines}");
    let ports = &n.inspect("pub")["NetworkSettings"]["Ports"]["81/tcp"];
    assert_eq!(ports.as_array().map(Vec::len), Some(2), "{ports}");
    assert_eq!(ports[0]["HostIp"], "0.0.0.0", "{ports}");
    assert_eq!(ports[1]["HostIp"], "::", "{ports}");
    assert_eq!(ports[0]["HostPort"], ports[1]["HostPort"], "{ports}");
    // [::] claims the port on IPv6 only: 127.0.0.1 may take it; 0.0.0.0
    // may not.
    n.ok(&[
        "run",
        "-d",
        "--name",
        "only6",
        "--network",
        "v6net",
        "-p",
        "[::]:18091:80",
        "--",
        "sleep",
        "600",
    ]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "lo4",
        "-p",
        "127.0.0.1:18091:80",
        "--",
        "sleep",
        "600",
    ]);
    let e = n.fails(&[
        "run", "-d", "--name", "all", "-p", "18091:80", "--", "sleep", "600",
    ]);
    assert!(e.contains("already allocated"), "{e}");
    n.ok(&["rm", "-f", "pub", "only6", "lo4"]);
    // Addresses are released with the container and reused.
    n.ok(&["rm", "-f", "a"]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "c",
        "--network",
        "v6net",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(
        n.inspect("c")["NetworkSettings"]["GlobalIPv6Address"],
        "fd00:66::2"
    );
    // Bad input changes nothing.
    for (args, needle) in [
        (
            vec!["network", "create", "--subnet", "fd00:77::/64", "x"],
            "needs --ipv6",
        ),
        (
            vec![
                "network",
                "create",
                "--ipv6",
                "--subnet",
                "fd00:66::/64",
                "x",
            ],
            "overlaps",
        ),
        (
            vec!["network", "create", "--ipv6", "--subnet", "fe80::/64", "x"],
            "link-local",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "x",
                "--ip6",
                "fd00:1::5",
                "--",
                "true",
            ],
            "needs a network with IPv6",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "x",
                "--network",
                "v6net",
                "--ip6",
                "fd00:99::5",
                "--",
                "true",
            ],
            "outside the subnet",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "x",
                "--network",
                "v6net",
                "--ip6",
                "fd00:66::99",
                "--",
                "true",
            ],
            "in use",
        ),
    ] {
        let e = n.fails(&args);
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    assert!(!n.ok(&["ps", "-a"]).contains(" x "));
}
