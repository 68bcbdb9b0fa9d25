//! Name resolution scenarios (run per datapath):
//! the embedded DNS server of user-defined networks, `--link` and the
//! resolver files on the default bridge, forwarding to an upstream played
//! by the outside namespace, a taken port 53, and a fuzzer.
//!
//! Containers resolve with the tools they would have: glibc's `getent
//! hosts` (nsswitch `files dns`, the container's bind-mounted
//! resolv.conf), and `netd tool dns-query` where the answer's details
//! matter (rcode, AAAA, PTR, TCP).
use std::time::{Duration, Instant};

use netd_tests::{OUTSIDE_IP, daemon::Netd, spawn_in, wait_until};

use super::{me, ping, sleeper};

/// `getent hosts NAME` inside `from`: the first address, or None.
fn getent(n: &Netd, from: &str, name: &str) -> Option<String> {
    let o = n
        .netd(&["exec", from, "--", "getent", "hosts", name])
        .ok()?;
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// `netd tool dns-query SERVER NAME TYPE [EXTRA]` inside `from`: its
/// output (status line and answers) or its error.
fn dig(n: &Netd, from: &str, server: &str, name: &str, qtype: &str, extra: &[&str]) -> String {
    let me = me();
    let mut args = vec![
        "exec",
        from,
        "--",
        me.as_str(),
        "tool",
        "dns-query",
        server,
        name,
        qtype,
    ];
    args.extend(extra);
    let o = n.netd(&args).unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn net_inspect(n: &Netd, net: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&n.ok(&["network", "inspect", net])).unwrap();
    v[0].clone()
}

fn net_gw(n: &Netd, net: &str) -> String {
    net_inspect(n, net)["IPAM"]["Config"][0]["Gateway"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A container's address on one of its networks.
fn ip_on(n: &Netd, name: &str, net: &str) -> String {
    n.inspect(name)["NetworkSettings"]["Networks"][net]["IPAddress"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not on {net}"))
        .to_string()
}

fn arpa(ip: &str) -> String {
    let mut o: Vec<&str> = ip.split('.').collect();
    o.reverse();
    format!("{}.in-addr.arpa", o.join("."))
}

pub fn dns_names(dp: &str) {
    // getent must really ask DNS for names that are not in /etc/hosts.
    let nss = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    let hosts = nss
        .lines()
        .find(|l| l.trim_start().starts_with("hosts:"))
        .unwrap_or("");
    assert!(
        hosts.contains("dns"),
        "nsswitch.conf has no dns for hosts: {hosts:?}"
    );

    let mut n = Netd::start(dp).unwrap();
    n.ok(&["network", "create", "mynet"]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "mynet",
        "--network-alias",
        "db",
        "--network-alias",
        "cache",
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
        "mynet",
        "--hostname",
        "bhost",
        "--",
        "sleep",
        "600",
    ]);
    let (a, b) = (n.ip_of("a"), n.ip_of("b"));
    let gw = net_gw(&n, "mynet");
    let dns = &net_inspect(&n, "mynet")["DNS"];
    assert_eq!(dns["Status"], "running", "{dns}");
    assert_eq!(dns["Address"], format!("{gw}:53"));
    let resolv = n.ok(&["exec", "b", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {gw}\n")) && resolv.contains("ndots:0"),
        "{resolv}"
    );
    assert_eq!(resolv.matches("nameserver").count(), 1, "{resolv}");

    // Name, aliases, NAME.NETWORK (any case), hostname.
    for name in ["a", "db", "cache", "a.mynet", "DB.MyNet"] {
        assert_eq!(getent(&n, "b", name).as_deref(), Some(a.as_str()), "{name}");
    }
    for name in ["b", "bhost", "b.mynet"] {
        assert_eq!(getent(&n, "a", name).as_deref(), Some(b.as_str()), "{name}");
    }
    let inspect = n.inspect("a");
    let names = &inspect["NetworkSettings"]["Networks"]["mynet"]["DNSNames"];
    assert!(names.to_string().contains("\"db\""), "{names}");

    // The details: AAAA (no IPv6) is an empty NOERROR, PTR names the
    // container, unknown names are NXDOMAIN, TCP works too.
    let q = dig(&n, "a", &gw, "db", "AAAA", &[]);
    assert!(
        q.contains("status: NOERROR") && q.contains("answers: 0"),
        "{q}"
    );
    let q = dig(&n, "a", &gw, &arpa(&b), "PTR", &[]);
    assert!(
        q.contains("status: NOERROR") && q.contains("b.mynet."),
        "{q}"
    );
    assert!(q.contains(" aa "), "authoritative: {q}");
    for name in ["nope", "nope.mynet"] {
        let q = dig(&n, "a", &gw, name, "A", &[]);
        assert!(q.contains("status: NXDOMAIN"), "{name}: {q}");
    }
    let q = dig(&n, "b", &gw, "cache", "A", &["--tcp"]);
    assert!(q.contains("status: NOERROR") && q.contains(&a), "{q}");

    // A container on another network resolves none of them, and the
    // gateway of mynet refuses it.
    n.ok(&["network", "create", "other"]);
    sleeper(&n, "c", "other");
    let other_gw = net_gw(&n, "other");
    assert_eq!(getent(&n, "c", "a"), None);
    let q = dig(&n, "c", &other_gw, "a", "A", &[]);
    assert!(q.contains("status: NXDOMAIN"), "{q}");
    let q = dig(&n, "c", &gw, "a", "A", &[]);
    assert!(q.contains("status: REFUSED"), "{q}");

    // After `network connect` it does, and its alias there is seen by
    // mynet's containers; records change at once.
    n.ok(&["network", "connect", "--alias", "web2", "mynet", "c"]);
    assert_eq!(getent(&n, "c", "a").as_deref(), Some(a.as_str()));
    assert_eq!(getent(&n, "c", "db.mynet").as_deref(), Some(a.as_str()));
    let c_mynet = ip_on(&n, "c", "mynet");
    assert_eq!(getent(&n, "a", "web2").as_deref(), Some(c_mynet.as_str()));
    assert_eq!(getent(&n, "a", "c").as_deref(), Some(c_mynet.as_str()));
    n.ok(&["network", "disconnect", "mynet", "c"]);
    assert_eq!(getent(&n, "c", "a"), None);
    assert_eq!(getent(&n, "a", "web2"), None);

    // Stop and start.
    n.ok(&["stop", "b"]);
    assert_eq!(getent(&n, "a", "b"), None);
    n.ok(&["start", "b"]);
    let got = getent(&n, "a", "b");
    assert_eq!(
        got.as_deref(),
        Some(b.as_str()),
        "after start: {}\n{}\n{}",
        dig(&n, "a", &gw, "b", "A", &[]),
        n.ok(&["exec", "a", "--", "cat", "/etc/resolv.conf", "/etc/hosts"]),
        n.log()
    );

    // icc=false blocks container traffic, not DNS to the gateway.
    n.ok(&["network", "create", "-o", "icc=false", "noicc"]);
    sleeper(&n, "q1", "noicc");
    sleeper(&n, "q2", "noicc");
    let q2 = n.ip_of("q2");
    assert_eq!(getent(&n, "q1", "q2").as_deref(), Some(q2.as_str()));
    assert!(!ping(&n, "q1", "q2"), "icc=false still blocks the traffic");

    // container:NAME shares a's namespace and files: it resolves as a.
    n.ok(&["create", "--name", "side", "--network", "container:a"]);
    assert_eq!(getent(&n, "side", "b").as_deref(), Some(b.as_str()));

    // A daemon killed and started again serves the same names.
    n.stop_daemon(true);
    n.start_daemon().unwrap();
    assert_eq!(getent(&n, "a", "bhost").as_deref(), Some(b.as_str()));
    assert_eq!(net_inspect(&n, "mynet")["DNS"]["Status"], "running");
}

pub fn dns_links_and_files(dp: &str) {
    let n = Netd::start(dp).unwrap();
    sleeper(&n, "x", "bridge");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "y",
        "--link",
        "x:xalias",
        "--add-host",
        "foo.example:10.1.2.3",
        "--dns-search",
        "corp.example",
        "--dns-option",
        "ndots:2",
        "--",
        "sleep",
        "600",
    ]);
    let x = n.ip_of("x");
    // --link: one way, in /etc/hosts.
    assert_eq!(getent(&n, "y", "xalias").as_deref(), Some(x.as_str()));
    assert_eq!(getent(&n, "y", "x").as_deref(), Some(x.as_str()));
    assert_eq!(getent(&n, "x", "y"), None, "links are one way");
    assert_eq!(getent(&n, "y", "foo.example").as_deref(), Some("10.1.2.3"));
    let hosts = n.ok(&["exec", "y", "--", "cat", "/etc/hosts"]);
    assert!(hosts.starts_with("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains(&format!("{x}\txalias x\n")), "{hosts}");
    assert!(
        hosts.contains(&format!("{}\t", n.ip_of("y"))),
        "own entry: {hosts}"
    );
    // The default bridge has no embedded DNS: resolv.conf lists the
    // upstream resolvers (the daemon's --dns here), with the search and
    // options given.
    let resolv = n.ok(&["exec", "y", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {OUTSIDE_IP}\n"))
            && resolv.contains("search corp.example\n")
            && resolv.contains("options ndots:2\n")
            && !resolv.contains("172.17.0.1"),
        "{resolv}"
    );
    assert_eq!(net_inspect(&n, "bridge")["DNS"]["Enabled"], false);
    sleeper(&n, "z", "bridge");
    assert_eq!(getent(&n, "z", "x"), None, "no names on the default bridge");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "w",
        "--dns",
        "198.18.0.7",
        "--",
        "sleep",
        "600",
    ]);
    let resolv = n.ok(&["exec", "w", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 198.18.0.7\n") && resolv.matches("nameserver").count() == 1,
        "{resolv}"
    );
    let info = n.inspect("y");
    assert_eq!(info["HostConfig"]["Links"][0], "x:xalias");
    assert_eq!(info["HostConfig"]["ExtraHosts"][0], "foo.example:10.1.2.3");

    // The entry follows the target: gone while it is stopped, back after.
    n.ok(&["stop", "x"]);
    let hosts = n.ok(&["exec", "y", "--", "cat", "/etc/hosts"]);
    assert!(!hosts.contains("xalias"), "{hosts}");
    n.ok(&["start", "x"]);
    assert_eq!(getent(&n, "y", "xalias").as_deref(), Some(x.as_str()));

    // Bad input.
    for (args, needle) in [
        (
            &["create", "--link", "nosuch"][..],
            "could not get container",
        ),
        (&["create", "--network-alias", "a"][..], "user-defined"),
        (&["create", "--add-host", "nocolon"][..], "--add-host"),
        (&["create", "--add-host", "h:1.2.3"][..], "--add-host"),
        (&["create", "--dns", "not-an-ip"][..], "--dns"),
        (
            &["create", "--network", "host", "--link", "x"][..],
            "--link",
        ),
    ] {
        let e = n.fails(args);
        assert!(e.contains(needle), "netd {args:?}: {e}");
    }
}

pub fn dns_forwarding(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    let upstream = format!("{OUTSIDE_IP}:53");
    n.tb.spawn(
        &n.tb.outside.clone(),
        &[
            &me(),
            "tool",
            "dns-serve",
            &upstream,
            "--record",
            "example.test=203.0.113.7",
            "--record",
            "www.example.test=203.0.113.8",
        ],
    )
    .unwrap();
    n.ok(&["network", "create", "mynet"]);
    sleeper(&n, "a", "mynet");
    let gw = net_gw(&n, "mynet");
    // Not a container name: forwarded to the daemon's --dns.
    assert!(
        wait_until(Duration::from_secs(10), || getent(&n, "a", "example.test")
            .as_deref()
            == Some("203.0.113.7")),
        "forwarded name\n{}",
        n.log()
    );
    let q = dig(&n, "a", &gw, "www.example.test", "A", &["--tcp"]);
    assert!(q.contains("203.0.113.8"), "forwarded over TCP: {q}");
    let q = dig(&n, "a", &gw, "nothing.example.test", "A", &[]);
    assert!(q.contains("status: NXDOMAIN"), "upstream's answer: {q}");
    // The default bridge asks the upstream directly.
    sleeper(&n, "d", "bridge");
    assert_eq!(
        getent(&n, "d", "example.test").as_deref(),
        Some("203.0.113.7")
    );

    // Upstreams that do not answer: SERVFAIL within the deadline, never a
    // hang; local names keep working. 198.18.0.99 is silent (no such
    // host on the uplink), 198.18.0.2 (the host) refuses port 53.
    for (name, dead) in [("silent", "198.18.0.99"), ("refusing", "198.18.0.2")] {
        n.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "mynet",
            "--dns",
            dead,
            "--",
            "sleep",
            "600",
        ]);
        let t = Instant::now();
        let q = dig(&n, name, &gw, "example.test", "A", &[]);
        let took = t.elapsed();
        assert!(q.contains("status: SERVFAIL"), "{name}: {q}");
        assert!(took < Duration::from_secs(5), "{name}: {took:?}");
        let q = dig(&n, name, &gw, "example.test", "A", &["--tcp"]);
        assert!(q.contains("status: SERVFAIL"), "{name} over TCP: {q}");
        assert_eq!(
            getent(&n, name, "a").as_deref(),
            Some(n.ip_of("a").as_str())
        );
    }
    // An internal network forwards nothing.
    n.ok(&["network", "create", "--internal", "inside"]);
    sleeper(&n, "i", "inside");
    let q = dig(&n, "i", &net_gw(&n, "inside"), "example.test", "A", &[]);
    assert!(q.contains("status: REFUSED"), "{q}");
}

pub fn dns_port_taken(dp: &str) {
    let n = Netd::start(dp).unwrap();
    // Something else owns port 53 on every address of the host.
    let blocker = spawn_in(&n.tb.host, &[&me(), "tool", "udp-echo", "0.0.0.0:53"]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        n.tb.ok(&n.tb.host, &["ss", "-Hlun", "sport = :53"])
            .is_ok_and(|s| !s.trim().is_empty())
    }));
    n.ok(&["network", "create", "blocked"]);
    let status = net_inspect(&n, "blocked")["DNS"]["Status"].to_string();
    assert!(
        status.contains("failed") && status.contains("in use"),
        "{status}"
    );
    assert!(
        n.log().contains("embedded DNS") && n.log().contains("in use"),
        "a clear error in the log:\n{}",
        n.log()
    );
    // Only that network's DNS failed: the daemon and the network work.
    sleeper(&n, "a", "blocked");
    let gw = net_gw(&n, "blocked");
    assert!(ping(&n, "a", &gw));
    // Once the port is free, the daemon's periodic retry brings it up.
    drop(blocker);
    assert!(
        wait_until(
            Duration::from_secs(25),
            || net_inspect(&n, "blocked")["DNS"]["Status"] == "running"
        ),
        "{}",
        net_inspect(&n, "blocked")["DNS"]
    );
    sleeper(&n, "b", "blocked");
    assert_eq!(getent(&n, "b", "a").as_deref(), Some(n.ip_of("a").as_str()));

    // A removed network frees its address at once: the same subnet again
    // gets a running DNS server straight away.
    for _ in 0..2 {
        n.ok(&["network", "create", "--subnet", "10.88.0.0/24", "again"]);
        assert_eq!(net_inspect(&n, "again")["DNS"]["Status"], "running");
        n.ok(&["network", "rm", "again"]);
    }
}

pub fn dns_fuzz(dp: &str) {
    let n = Netd::start(dp).unwrap();
    n.ok(&["network", "create", "mynet"]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "mynet",
        "--network-alias",
        "db",
        "--",
        "sleep",
        "600",
    ]);
    sleeper(&n, "f", "mynet");
    let gw = net_gw(&n, "mynet");
    let received = |n: &Netd| {
        net_inspect(n, "mynet")["DNS"]["Stats"]["Received"]["Udp"]
            .as_u64()
            .unwrap()
    };
    let before = received(&n);
    let out = n.ok(&[
        "exec",
        "f",
        "--",
        &me(),
        "tool",
        "dns-fuzz",
        &format!("{gw}:53"),
        "--count",
        "100000",
        "--seed",
        "7",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!("dns-fuzz ({dp}): {v}");
    assert_eq!(v["udp_sent"], 100_000, "{v}");
    assert!(
        v["udp_replies"].as_u64().unwrap() > 10_000,
        "the responder answered the fuzz: {v}"
    );
    assert_eq!(v["udp_short_replies"], 0, "{v}");
    assert_eq!(v["tcp_answered_while_idle_connections"], true, "{v}");
    // The responder itself saw every datagram (none lost in a socket
    // buffer on the way).
    let seen = received(&n) - before;
    eprintln!(
        "dns-fuzz ({dp}): the responder received {seen} datagrams: {}",
        net_inspect(&n, "mynet")["DNS"]
    );
    assert!(
        seen >= 100_000,
        "the responder received {seen} datagrams: {v}"
    );
    // Still answering, and correctly.
    let a = n.ip_of("a");
    assert_eq!(getent(&n, "f", "db").as_deref(), Some(a.as_str()));
    let q = dig(&n, "f", &gw, "a.mynet", "A", &["--tcp"]);
    assert!(q.contains("status: NOERROR") && q.contains(&a), "{q}");
    n.ok(&["network", "ls"]);
    assert!(!n.log().contains("panicked"), "{}", n.log());
}
