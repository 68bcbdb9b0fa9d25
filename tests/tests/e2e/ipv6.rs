//! IPv6 networks: the control plane (subnets, pools, addresses, routes,
//! Docker's inspect fields, AAAA and ip6.arpa names), and IPv6 traffic
//! through the datapaths.
use std::time::Duration;

use netd_tests::{daemon::Netd, wait_until};

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

/// The outside namespace's and the host uplink's IPv6 addresses (the
/// documentation prefix; the host's default IPv6 route goes outside).
pub(super) const OUTSIDE6: &str = "2001:db8:18::1";
pub(super) const HOST6: &str = "2001:db8:18::2";

/// Gives the testbed's uplink IPv6: `OUTSIDE6/64` outside, `HOST6/64` on
/// the host's eth0 (default route via the outside), no DAD.
pub(super) fn uplink6(n: &Netd) {
    for (ns, addr) in [(&n.tb.outside, OUTSIDE6), (&n.tb.host, HOST6)] {
        n.tb.ok(ns, &["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"])
            .unwrap();
        n.tb.ok(
            ns,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )
        .unwrap();
    }
    n.tb.ok(
        &n.tb.host,
        &["ip", "-6", "route", "add", "default", "via", OUTSIDE6],
    )
    .unwrap();
}

/// An HTTP server in the outside namespace on `[OUTSIDE6]:8000`.
pub(super) fn serve_outside6(n: &mut Netd) {
    n.tb.spawn(
        &n.tb.outside.clone(),
        &[
            &me(),
            "tool",
            "http-serve",
            &format!("[{OUTSIDE6}]:8000"),
            "--name",
            "outside",
        ],
    )
    .unwrap();
}

/// Starts an HTTP server (reports the client address) in a container on
/// `[::]:port` (both families).
pub(super) fn serve_http6(n: &Netd, name: &str, port: u16) {
    serve_http6_as(n, name, port, name);
}

/// An HTTP server on `[::]:port` in container `name` that answers as
/// `label` (`hello from LABEL to ...`).
fn serve_http6_as(n: &Netd, name: &str, port: u16, label: &str) {
    let out = n.ok(&[
        "exec",
        name,
        "--",
        "sh",
        "-c",
        &format!(
            "{} tool http-serve [::]:{port} --name {label} >/dev/null 2>&1 & echo $!",
            me()
        ),
    ]);
    assert!(!out.trim().is_empty());
}

/// `curl -g -s URL` from a container; None when it fails.
pub(super) fn curl6(n: &Netd, from: &str, url: &str, extra: &[&str]) -> Option<String> {
    let mut args = vec!["exec", from, "--", "curl", "-g", "-s", "-m", "3"];
    args.extend_from_slice(extra);
    args.push(url);
    let o = n.netd(&args).ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub(super) fn curl6_wait(n: &Netd, from: &str, url: &str, extra: &[&str]) -> String {
    let mut got = None;
    wait_until(Duration::from_secs(10), || {
        got = curl6(n, from, url, extra);
        got.is_some()
    });
    got.unwrap_or_else(|| panic!("curl {url} from {from} failed\n{}", n.log()))
}

pub(super) fn ping6(n: &Netd, from: &str, ip: &str, extra: &[&str]) -> bool {
    let mut args = vec!["exec", from, "--", "ping", "-6", "-c", "1", "-W", "1"];
    args.extend_from_slice(extra);
    args.push(ip);
    n.netd(&args).is_ok_and(|o| o.status.success())
}

/// `curl` in a testbed namespace (outside, or the host's own processes).
pub(super) fn tb_curl(n: &Netd, ns: &::netd::netns::NetNs, url: &str) -> Option<String> {
    let o = n.tb.exec(ns, &["curl", "-g", "-s", "-m", "3", url]).ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub(super) fn tb_curl_wait(n: &Netd, ns: &::netd::netns::NetNs, url: &str) -> String {
    let mut got = None;
    wait_until(Duration::from_secs(10), || {
        got = tb_curl(n, ns, url);
        got.is_some()
    });
    got.unwrap_or_else(|| panic!("curl {url} failed\n{}", n.log()))
}

/// A published port from the host's own processes: in the test's cgroup
/// on ebpf (where its socket programs are), from the host namespace on
/// the netfilter datapaths.
pub(super) fn host_curl_wait(n: &Netd, dp: &str, url: &str) -> String {
    if dp != "ebpf" {
        return tb_curl_wait(n, &n.tb.host, url);
    }
    let mut got = None;
    wait_until(Duration::from_secs(10), || {
        let o = n.host(true, &["curl", "-g", "-s", "-m", "3", url]);
        got = o
            .status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned());
        got.is_some()
    });
    got.unwrap_or_else(|| panic!("curl {url} from the host failed\n{}", n.log()))
}

/// Runs a command as the host's own process (in the test's cgroup on
/// ebpf, where its socket programs apply).
fn host_run(n: &Netd, dp: &str, args: &[&str]) -> std::process::Output {
    if dp == "ebpf" {
        n.host(true, args)
    } else {
        n.tb.exec(&n.tb.host, args).unwrap()
    }
}

/// `netd tool udp-send [::1]:PORT MSG` from the host; the reply.
fn host_udp6(n: &Netd, dp: &str, port: u16, msg: &str) -> Option<String> {
    let o = host_run(
        n,
        dp,
        &[
            &me(),
            "tool",
            "udp-send",
            &format!("[::1]:{port}"),
            msg,
            "--timeout-ms",
            "1000",
        ],
    );
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `[::1]:PORT` from the host, TCP (a half-close included) and UDP, on a
/// container of `v6a` that publishes `-p 8086:80 -p 8088:81 -p
/// 5356:53/udp`; after `rm` neither answers (on
/// the netfilter datapaths the userland proxy's listeners follow the
/// container). On the netfilter datapaths, a port another process of the
/// host holds on [::1] refuses the container's start with "address
/// already in use" and leaves that process its port.
fn loopback6(n: &mut Netd, dp: &str) {
    n.ok(&[
        "run",
        "-d",
        "--name",
        "lo6",
        "--network",
        "v6a",
        "-p",
        "8086:80",
        "-p",
        "8088:81",
        "-p",
        "5356:53/udp",
        "--",
        "sleep",
        "600",
    ]);
    serve_http6(n, "lo6", 80);
    n.ok(&[
        "exec",
        "lo6",
        "--",
        "sh",
        "-c",
        &format!(
            "{} tool udp-echo [::]:53 --name lo6 >/dev/null 2>&1 &",
            me()
        ),
    ]);
    let got = host_curl_wait(n, dp, "http://[::1]:8086/");
    assert!(got.contains("hello from lo6"), "{dp}: [::1]:8086: {got}");
    // A half-close travels: the server reads to the client's FIN, then
    // answers on the still open other direction.
    n.ok(&[
        "exec",
        "lo6",
        "--",
        "sh",
        "-c",
        &format!(
            "{} tool eof-serve [::]:81 --name lo6 >/dev/null 2>&1 &",
            me()
        ),
    ]);
    let mut eof = None;
    wait_until(Duration::from_secs(10), || {
        let o = host_run(n, dp, &[&me(), "tool", "eof-send", "[::1]:8088", "hello"]);
        eof = o
            .status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned());
        eof.is_some()
    });
    let eof = eof.unwrap_or_else(|| panic!("{dp}: half-close through [::1]:8088\n{}", n.log()));
    assert_eq!(eof.trim(), "lo6 got 5 bytes", "{dp}");
    let mut udp = None;
    wait_until(Duration::from_secs(10), || {
        udp = host_udp6(n, dp, 5356, "ping");
        udp.is_some()
    });
    let udp = udp.unwrap_or_else(|| panic!("{dp}: no UDP reply from [::1]:5356\n{}", n.log()));
    assert!(udp.starts_with("lo6:ping from "), "{dp}: {udp}");
    if dp != "ebpf" {
        assert!(
            udp.contains("from [fd00:67::1]:"),
            "{dp}: UDP through the proxy comes from the gateway: {udp}"
        );
    }
    // A second datagram of the same client (the proxy's flow) answers too.
    let again = host_udp6(n, dp, 5356, "again").unwrap_or_default();
    assert!(again.starts_with("lo6:again from "), "{dp}: {again}");
    n.ok(&["rm", "-f", "lo6"]);
    // Gone: the TCP port is refused at once (curl's exit code 7), UDP
    // answers nothing.
    let mut code = None;
    wait_until(Duration::from_secs(10), || {
        let o = host_run(
            n,
            dp,
            &["curl", "-g", "-s", "-m", "3", "http://[::1]:8086/"],
        );
        code = o.status.code();
        code == Some(7)
    });
    assert_eq!(code, Some(7), "{dp}: [::1]:8086 after rm\n{}", n.log());
    assert!(
        host_udp6(n, dp, 5356, "gone").is_none(),
        "{dp}: [::1]:5356/udp answered after rm"
    );
    if dp == "ebpf" {
        return;
    }
    // A port another process of the host holds on [::1]: the container
    // does not start, the process keeps its port, the rest works.
    n.tb.spawn(
        &n.tb.host.clone(),
        &[
            &me(),
            "tool",
            "http-serve",
            "[::1]:8087",
            "--name",
            "hostproc",
        ],
    )
    .unwrap();
    let got = tb_curl_wait(n, &n.tb.host, "http://[::1]:8087/");
    assert!(got.contains("hello from hostproc"), "{got}");
    let e = n.fails(&[
        "run",
        "-d",
        "--name",
        "taken",
        "--network",
        "v6a",
        "-p",
        "8087:80",
        "--",
        "sleep",
        "600",
    ]);
    assert!(
        e.contains("[::1]:8087/tcp") && e.contains("in use"),
        "{dp}: {e}"
    );
    // `run` undoes what it made: no container is left.
    assert!(
        !n.netd(&["inspect", "taken"]).unwrap().status.success(),
        "{dp}: nothing changed"
    );
    let got = tb_curl_wait(n, &n.tb.host, "http://[::1]:8087/");
    assert!(got.contains("hello from hostproc"), "{dp}: {got}");
    let got = host_curl_wait(n, dp, "http://[::1]:8080/");
    assert!(got.contains("hello from web"), "{dp}: {got}");
}

/// IPv6 traffic through every datapath, dual-stack networks:
/// ping6 and TCP between containers (NDP through the bridge), NAT66 to an
/// IPv6 server outside (seen from the host's address), a published port
/// over IPv6 from outside (client address kept) and from the host's own
/// processes, icc=false and isolation over IPv6, a spoofed source dropped
/// at the bridge, AAAA then a connection by name, and a datapath switch
/// that removes the IPv6 rules.
pub fn ipv6_traffic(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    uplink6(&n);
    let net = |name: &str, v4: &str, v6: &str, opts: &[&str]| {
        let mut args = vec![
            "network", "create", "--ipv6", "--subnet", v4, "--subnet", v6,
        ];
        args.extend_from_slice(opts);
        args.push(name);
        n.ok(&args);
    };
    net("v6a", "10.67.0.0/24", "fd00:67::/64", &[]);
    net("v6b", "10.68.0.0/24", "fd00:68::/64", &[]);
    net("v6q", "10.69.0.0/24", "fd00:69::/64", &["-o", "icc=false"]);
    sleeper(&n, "a", "v6a");
    sleeper(&n, "b", "v6a");
    sleeper(&n, "other", "v6b");
    sleeper(&n, "q1", "v6q");
    sleeper(&n, "q2", "v6q");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "v6a",
        "-p",
        "8080:80",
        // A range: over IPv6 on ebpf, prefix blocks of one LPM entry each
        // (18179/16, 18180/15), the port offset kept.
        "-p",
        "18179-18181:79-81",
        "--",
        "sleep",
        "600",
    ]);
    let v6 = |c: &str| {
        n.inspect(c)["NetworkSettings"]["GlobalIPv6Address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b, web, q2) = (v6("a"), v6("b"), v6("web"), v6("q2"));
    assert_eq!(a, "fd00:67::2");
    for c in ["a", "web", "q2"] {
        serve_http6(&n, c, 80);
    }
    serve_http6_as(&n, "web", 81, "web81");

    // Containers of one network: ping6 and TCP, each sees the other's
    // own IPv6 address (neighbour discovery works through the bridge).
    assert!(ping6(&n, "b", &a, &[]), "{dp}: ping6 b -> a\n{}", n.log());
    let got = curl6_wait(&n, "b", &format!("http://[{a}]/"), &[]);
    assert!(got.contains(&format!("to [{b}]:")), "{dp}: {got}");
    // The gateway (the host's bridge address) answers too.
    assert!(ping6(&n, "b", "fd00:67::1", &[]));

    // A source the container does not own is dropped at the bridge.
    n.ok(&[
        "exec",
        "b",
        "--",
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:67::99/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    assert!(
        !ping6(&n, "b", &a, &["-I", "fd00:67::99"]),
        "{dp}: a spoofed IPv6 source crossed the bridge"
    );
    assert!(ping6(&n, "b", &a, &["-I", &b]), "{dp}: the own address");
    n.ok(&[
        "exec",
        "b",
        "--",
        "ip",
        "-6",
        "addr",
        "del",
        "fd00:67::99/64",
        "dev",
        "eth0",
    ]);

    // NAT66: an IPv6 server outside sees the host's uplink address.
    serve_outside6(&mut n);
    let got = curl6_wait(&n, "a", &format!("http://[{OUTSIDE6}]:8000/"), &[]);
    assert!(
        got.contains(&format!("to [{HOST6}]:")),
        "{dp}: NAT66 to the host's address: {got}"
    );
    assert!(ping6(&n, "a", OUTSIDE6, &[]), "{dp}: ping6 out");

    // A published port over IPv6 from outside: the client address kept.
    let url = format!("http://[{HOST6}]:8080/");
    let got = tb_curl_wait(&n, &n.tb.outside, &url);
    assert!(
        got.contains("hello from web") && got.contains(&format!("to [{OUTSIDE6}]:")),
        "{dp}: {got}"
    );
    // The last port of a published range, to its own container port.
    let got = tb_curl_wait(&n, &n.tb.outside, &format!("http://[{HOST6}]:18181/"));
    assert!(
        got.contains("hello from web81 "),
        "{dp}: a published range over IPv6: {got}"
    );
    // ... over IPv4 too (0.0.0.0 is both families).
    let got = tb_curl_wait(&n, &n.tb.outside, "http://198.18.0.2:8080/");
    // (A [::] socket sees the IPv4 client as ::ffff:198.18.0.1.)
    assert!(
        got.contains("hello from web to [::ffff:198.18.0.1]:"),
        "{dp}: {got}"
    );
    // The container's address is not reachable by routing (nat mode's
    // raw protection), even with a route to it.
    n.tb.ok(
        &n.tb.outside,
        &["ip", "-6", "route", "add", "fd00:67::/64", "via", HOST6],
    )
    .unwrap();
    assert!(
        tb_curl(&n, &n.tb.outside, &format!("http://[{web}]/")).is_none(),
        "{dp}: a nat network's container reached by routing over IPv6"
    );
    // The host's own processes, by the host's IPv6 address (on ebpf the
    // cgroup socket programs do it, for the processes of their cgroup).
    let got = host_curl_wait(&n, dp, &url);
    assert!(got.contains("hello from web"), "{dp}: {got}");
    // [::1] too: on ebpf connect6 sends the socket to the container (by
    // its IPv4 address for a 0.0.0.0 binding, as before IPv6); on the
    // netfilter datapaths the daemon's userland proxy listens there and
    // connects to the container's IPv6 address from the host's address
    // on the bridge (the gateway), as docker-proxy does.
    let got = host_curl_wait(&n, dp, "http://[::1]:8080/");
    assert!(got.contains("hello from web"), "{dp}: [::1]: {got}");
    if dp != "ebpf" {
        assert!(
            got.contains("to [fd00:67::1]:"),
            "{dp}: [::1] through the proxy comes from the gateway: {got}"
        );
    }
    loopback6(&mut n, dp);
    // ... and `localhost` (::1 and 127.0.0.1).
    let got = host_curl_wait(&n, dp, "http://localhost:8080/");
    assert!(got.contains("hello from web"), "{dp}: localhost: {got}");

    // icc=false over IPv6: no ping6, no TCP between q1 and q2 (global and
    // link-local), both still reach the world.
    assert!(!ping6(&n, "q1", &q2, &[]), "{dp}: icc=false ping6");
    assert!(
        curl6(&n, "q1", &format!("http://[{q2}]/"), &[]).is_none(),
        "{dp}: icc=false TCP over IPv6"
    );
    let ll = n.ok(&[
        "exec", "q2", "--", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
    ]);
    let ll = ll
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("q2's link-local address: {ll}"))
        .to_string();
    assert!(
        !ping6(&n, "q1", &format!("{ll}%eth0"), &[]),
        "{dp}: icc=false link-local ping6"
    );
    let got = curl6_wait(&n, "q1", &format!("http://[{OUTSIDE6}]:8000/"), &[]);
    assert!(got.contains(&format!("to [{HOST6}]:")), "{dp}: {got}");

    // Isolation: another network's container reaches neither a's
    // address nor its network, but the world.
    assert!(!ping6(&n, "other", &a, &[]), "{dp}: isolation ping6");
    assert!(
        curl6(&n, "other", &format!("http://[{a}]/"), &[]).is_none(),
        "{dp}: isolation TCP over IPv6"
    );
    curl6_wait(&n, "other", &format!("http://[{OUTSIDE6}]:8000/"), &[]);

    // Names: AAAA from the embedded DNS, then a connection by name over
    // IPv6.
    let aaaa = n.ok(&[
        "exec",
        "b",
        "--",
        &me(),
        "tool",
        "dns-query",
        "10.67.0.1",
        "a",
        "AAAA",
    ]);
    assert!(aaaa.contains(&a), "{aaaa}");
    let got = curl6_wait(&n, "b", "http://a/", &["-6"]);
    assert!(
        got.contains(&format!("hello from a to [{b}]:")),
        "{dp}: {got}"
    );

    // gateway_mode_ipv6=routed (IPv4 stays nat): the outside routes to the
    // container's IPv6 address and reaches its published container port
    // and ICMPv6, not another port; the container's own connections keep
    // its address (no NAT66); the host port is IPv4's only.
    n.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.70.0.0/24",
        "--subnet",
        "fd00:70::/64",
        "-o",
        "gateway_mode_ipv6=routed",
        "v6r",
    ]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "r",
        "--network",
        "v6r",
        "-p",
        "8090:80",
        "--",
        "sleep",
        "600",
    ]);
    let r = n.inspect("r")["NetworkSettings"]["GlobalIPv6Address"]
        .as_str()
        .unwrap()
        .to_string();
    serve_http6(&n, "r", 80);
    serve_http6(&n, "r", 81);
    n.tb.ok(
        &n.tb.outside,
        &["ip", "-6", "route", "add", "fd00:70::/64", "via", HOST6],
    )
    .unwrap();
    let got = tb_curl_wait(&n, &n.tb.outside, &format!("http://[{r}]:80/"));
    assert!(
        got.contains(&format!("hello from r to [{OUTSIDE6}]:")),
        "{dp}: routed IPv6: {got}"
    );
    assert!(
        tb_curl(&n, &n.tb.outside, &format!("http://[{r}]:81/")).is_none(),
        "{dp}: an unpublished port of a routed IPv6 network"
    );
    let ping_r =
        n.tb.exec(&n.tb.outside, &["ping", "-6", "-c", "1", "-W", "1", &r])
            .unwrap();
    assert!(
        ping_r.status.success(),
        "{dp}: ICMPv6 into a routed network"
    );
    let got = curl6_wait(&n, "r", &format!("http://[{OUTSIDE6}]:8000/"), &[]);
    assert!(
        got.contains(&format!("to [{r}]:")),
        "{dp}: no NAT66 in routed: {got}"
    );
    assert!(
        tb_curl(&n, &n.tb.outside, &format!("http://[{HOST6}]:8090/")).is_none(),
        "{dp}: no IPv6 DNAT in routed"
    );
    let got = tb_curl_wait(&n, &n.tb.outside, "http://198.18.0.2:8090/");
    assert!(got.contains("hello from r"), "{dp}: IPv4 stays nat: {got}");
    let inspect: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "v6r"])).unwrap();
    assert_eq!(
        inspect[0]["Options"]["com.docker.network.bridge.gateway_mode_ipv6"],
        "routed"
    );

    // An internal network keeps IPv6 inside: its containers talk to each
    // other, not to the world.
    n.ok(&[
        "network",
        "create",
        "--internal",
        "--ipv6",
        "--subnet",
        "10.71.0.0/24",
        "--subnet",
        "fd00:71::/64",
        "v6i",
    ]);
    sleeper(&n, "i1", "v6i");
    sleeper(&n, "i2", "v6i");
    let i2 = n.inspect("i2")["NetworkSettings"]["GlobalIPv6Address"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ping6(&n, "i1", &i2, &[]),
        "{dp}: inside an internal network"
    );
    assert!(
        !ping6(&n, "i1", OUTSIDE6, &[]),
        "{dp}: IPv6 left an internal network"
    );

    // gateway_mode_ipv6=isolated: no IPv6 address of the host on the
    // bridge (IPv4's stays), so not even the host answers over IPv6.
    n.ok(&[
        "network",
        "create",
        "--internal",
        "--ipv6",
        "--subnet",
        "10.72.0.0/24",
        "--subnet",
        "fd00:72::/64",
        "-o",
        "gateway_mode_ipv6=isolated",
        "v6iso",
    ]);
    sleeper(&n, "s1", "v6iso");
    let v: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "v6iso"])).unwrap();
    let br = v[0]["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap()
        .to_string();
    let addrs =
        n.tb.ok(&n.tb.host, &["ip", "-o", "addr", "show", "dev", &br])
            .unwrap();
    assert!(
        addrs.contains("10.72.0.1/24") && !addrs.contains("fd00:72::"),
        "{dp}: {addrs}"
    );
    assert!(!ping6(&n, "s1", "fd00:72::1", &[]), "{dp}: isolated IPv6");
    assert!(ping(&n, "s1", "10.72.0.1"), "{dp}: IPv4 keeps its gateway");

    // Switching datapaths removes the IPv6 rules too.
    let ip6_rules = |n: &Netd| {
        let ip6t = n.tb.ok(&n.tb.host, &["ip6tables-save"]).unwrap_or_default();
        let nft = n.nft_ruleset();
        (ip6t.contains("NETD"), nft.contains("table ip6 netd"))
    };
    let mine = ip6_rules(&n);
    assert_eq!(mine, (dp == "iptables", dp == "nftables"), "{dp}");
    n.stop_daemon(false);
    n.datapath = if dp == "iptables" {
        "nftables"
    } else {
        "iptables"
    }
    .into();
    n.start_daemon().unwrap();
    let after = ip6_rules(&n);
    assert_eq!(
        after,
        (n.datapath == "iptables", n.datapath == "nftables"),
        "{dp}: switched to {}",
        n.datapath
    );
    // ... and the other datapath carries the same IPv6 traffic.
    let got = curl6_wait(&n, "b", &format!("http://[{a}]/"), &[]);
    assert!(got.contains(&format!("to [{b}]:")), "{got}");
    let got = tb_curl_wait(&n, &n.tb.outside, &url);
    assert!(got.contains(&format!("to [{OUTSIDE6}]:")), "{got}");
    // [::1] from the host: the restarted daemon's userland proxy listens
    // again, from the state (a netfilter datapath either way now).
    let got = tb_curl_wait(&n, &n.tb.host, "http://[::1]:8080/");
    assert!(
        got.contains("hello from web to [fd00:67::1]:"),
        "{dp}: [::1] after switching to {}: {got}",
        n.datapath
    );
    // --userland-proxy=false (Docker's flag): [::1] is refused at once,
    // as before the proxy (not DNATed, nothing listens); IPv4 loopback
    // and the host's IPv6 address keep working.
    n.stop_daemon(false);
    n.flags.push(("--userland-proxy".into(), "false".into()));
    n.start_daemon().unwrap();
    let mut code = None;
    wait_until(Duration::from_secs(10), || {
        let o =
            n.tb.exec(
                &n.tb.host,
                &["curl", "-g", "-s", "-m", "3", "http://[::1]:8080/"],
            )
            .unwrap();
        code = o.status.code();
        code == Some(7)
    });
    assert_eq!(code, Some(7), "{dp}: [::1] without the userland proxy");
    let got = tb_curl_wait(&n, &n.tb.host, "http://127.0.0.1:8080/");
    assert!(got.contains("hello from web"), "{dp}: {got}");
    let got = tb_curl_wait(&n, &n.tb.host, &url);
    assert!(got.contains("hello from web"), "{dp}: {got}");
}
