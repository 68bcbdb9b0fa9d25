//! IPv6-only networks (`--ipv4=false`, Docker 28's): what a create needs,
//! containers with an IPv6 address and no IPv4 one, and their traffic
//! through every datapath: between containers (by name, through the
//! embedded DNS server on the bridge's IPv6 address), out with NAT66, in
//! through a published port, and no IPv4 at all.
use netd_tests::daemon::Netd;

use super::ipv6::{
    HOST6, OUTSIDE6, curl6, curl6_wait, host_curl_wait, ping6, serve_http6, serve_outside6,
    tb_curl, tb_curl_wait, uplink6,
};
use super::*;

pub fn ipv6_only_networks(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    uplink6(&n);

    // What a create needs, and what it refuses (nothing is left behind).
    let links = n.host_links();
    let err = n.fails(&["network", "create", "--ipv4=false", "nov4"]);
    assert!(err.contains("--ipv4=false needs --ipv6"), "{err}");
    let err = n.fails(&[
        "network",
        "create",
        "--ipv6",
        "--ipv4=false",
        "--subnet",
        "10.70.0.0/24",
        "nov4",
    ]);
    assert!(err.contains("IPv4 --subnet"), "{err}");
    assert_eq!(n.host_links(), links, "a refused create left a link");
    assert!(!n.ok(&["network", "ls"]).contains("nov4"));

    n.ok(&[
        "network",
        "create",
        "--ipv6",
        "--ipv4=false",
        "--subnet",
        "fd00:70::/64",
        "v6only",
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "v6only"])).unwrap();
    let net = &inspect[0];
    assert_eq!(net["EnableIPv4"], false, "{net}");
    assert_eq!(net["EnableIPv6"], true, "{net}");
    let cfg = net["IPAM"]["Config"].as_array().unwrap();
    assert_eq!(cfg.len(), 1, "{net}");
    assert_eq!(cfg[0]["Subnet"], "fd00:70::/64", "{net}");
    assert_eq!(cfg[0]["Gateway"], "fd00:70::1", "{net}");
    // The bridge has the IPv6 gateway and no IPv4 address.
    let bridge = net["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap();
    let v4 =
        n.tb.ok(
            &n.tb.host,
            &["ip", "-4", "-o", "addr", "show", "dev", bridge],
        )
        .unwrap();
    assert!(v4.trim().is_empty(), "{dp}: the bridge has IPv4: {v4}");

    // No IPv4 address can be asked for on it, nor an IPv4 host address
    // published (nothing is left behind).
    let err = n.fails(&[
        "run",
        "-d",
        "--name",
        "x",
        "--network",
        "v6only",
        "--ip",
        "10.70.0.5",
        "--",
        "true",
    ]);
    assert!(err.contains("IPv6-only"), "{err}");
    let err = n.fails(&[
        "run",
        "-d",
        "--name",
        "x",
        "--network",
        "v6only",
        "-p",
        "127.0.0.1:9000:80",
        "--",
        "sleep",
        "600",
    ]);
    assert!(err.contains("IPv6-only"), "{err}");
    assert!(!n.ok(&["ps", "-a"]).contains(" x"), "a refused run stayed");

    sleeper(&n, "a", "v6only");
    sleeper(&n, "b", "v6only");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "v6only",
        "-p",
        "8081:80",
        "--",
        "sleep",
        "600",
    ]);
    let settings = n.inspect("a")["NetworkSettings"].clone();
    assert_eq!(settings["IPAddress"], "", "{settings}");
    assert_eq!(settings["GlobalIPv6Address"], "fd00:70::2", "{settings}");
    assert_eq!(settings["IPv6Gateway"], "fd00:70::1", "{settings}");
    let b6 = n.inspect("b")["NetworkSettings"]["GlobalIPv6Address"]
        .as_str()
        .unwrap()
        .to_string();
    // In the container: an IPv6 address and default route, no IPv4.
    let v4 = n.ok(&[
        "exec", "a", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
    ]);
    assert!(v4.trim().is_empty(), "{dp}: {v4}");
    let routes = n.ok(&["exec", "a", "--", "ip", "-6", "route"]);
    assert!(routes.contains("default via fd00:70::1"), "{dp}: {routes}");
    let resolv = n.ok(&["exec", "a", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver fd00:70::1"), "{dp}: {resolv}");

    for c in ["a", "web"] {
        serve_http6(&n, c, 80);
    }
    // Between containers: ping6, and TCP by name (AAAA from the embedded
    // DNS server on the bridge's IPv6 address).
    assert!(
        ping6(&n, "b", "fd00:70::2", &[]),
        "{dp}: ping6\n{}",
        n.log()
    );
    let got = curl6_wait(&n, "b", "http://a/", &[]);
    assert!(
        got.contains("hello from a") && got.contains(&format!("to [{b6}]:")),
        "{dp}: {got}"
    );

    // Egress: NAT66 to the host's uplink address.
    serve_outside6(&mut n);
    let got = curl6_wait(&n, "a", &format!("http://[{OUTSIDE6}]:8000/"), &[]);
    assert!(got.contains(&format!("to [{HOST6}]:")), "{dp}: {got}");

    // A published port: over IPv6 from outside, client address kept; the
    // host's IPv4 address has nothing to reach on that port.
    let got = tb_curl_wait(&n, &n.tb.outside, &format!("http://[{HOST6}]:8081/"));
    assert!(
        got.contains("hello from web") && got.contains(&format!("to [{OUTSIDE6}]:")),
        "{dp}: {got}"
    );
    assert!(
        tb_curl(&n, &n.tb.outside, "http://198.18.0.2:8081/").is_none(),
        "{dp}: an IPv6-only container was reached over IPv4"
    );
    // ... and from the host's own processes on [::1] (eBPF: the socket
    // programs; iptables/nftables: the userland proxy).
    let got = host_curl_wait(&n, dp, "http://[::1]:8081/");
    assert!(got.contains("hello from web"), "{dp}: {got}");
    let ports = n.ok(&["port", "web"]);
    assert!(
        ports.contains("[::]:8081") && !ports.contains("0.0.0.0"),
        "{dp}: {ports}"
    );

    // No IPv4 between containers of the network, even with addresses the
    // containers give themselves: dropped at the bridge port.
    for (c, addr) in [("a", "10.70.0.5/24"), ("b", "10.70.0.6/24")] {
        n.ok(&["exec", c, "--", "ip", "addr", "add", addr, "dev", "eth0"]);
    }
    let o = n
        .netd(&[
            "exec",
            "b",
            "--",
            "ping",
            "-4",
            "-c",
            "1",
            "-W",
            "1",
            "10.70.0.5",
        ])
        .unwrap();
    assert!(
        !o.status.success(),
        "{dp}: IPv4 crossed an IPv6-only network"
    );
    assert!(
        curl6(&n, "b", "http://10.70.0.5/", &[]).is_none(),
        "{dp}: TCP over IPv4 crossed an IPv6-only network"
    );
    // ... while IPv6 still works.
    assert!(ping6(&n, "b", "fd00:70::2", &[]), "{dp}: ping6 after");

    // Restart keeps it: the network, the addresses, name resolution.
    n.ok(&["stop", "a"]);
    n.ok(&["start", "a"]);
    let settings = n.inspect("a")["NetworkSettings"].clone();
    assert_eq!(settings["IPAddress"], "", "{settings}");
    assert_eq!(settings["GlobalIPv6Address"], "fd00:70::2", "{settings}");
    for c in ["a", "b", "web"] {
        n.ok(&["rm", "-f", c]);
    }
    n.ok(&["network", "rm", "v6only"]);
}
