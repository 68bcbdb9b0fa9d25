//! Scenarios only the nftables datapath has: one table, elements not
//! rules.
use std::time::Duration;

use netd_tests::{HOST_IP, OUTSIDE_IP, daemon::Netd, wait_until};

use super::*;

/// Rules and set/map elements in netd's nftables table (from `nft -j`):
/// (rules, elements by set or map name).
fn nft_counts(n: &Netd) -> (usize, std::collections::BTreeMap<String, usize>) {
    let out =
        n.tb.ok(&n.tb.host, &["nft", "-j", "list", "table", "ip", "netd"])
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut rules = 0;
    let mut elems = std::collections::BTreeMap::new();
    for o in v["nftables"].as_array().unwrap() {
        if o.get("rule").is_some() {
            rules += 1;
        }
        for kind in ["set", "map"] {
            if let Some(s) = o.get(kind) {
                let len = s["elem"].as_array().map_or(0, Vec::len);
                elems.insert(s["name"].as_str().unwrap().to_string(), len);
            }
        }
    }
    (rules, elems)
}

/// nftables only: one table of netd's own; publishing 1,000 ports adds
/// map and set elements, not rules, and the ports work.
#[test]
fn nftables_one_table_ports_are_elements() {
    if !netd_tests::require_root("nftables_one_table_ports_are_elements") {
        return;
    }
    let mut n = Netd::start("nftables").unwrap();
    let tables = n.tb.ok(&n.tb.host, &["nft", "list", "tables"]).unwrap();
    let mut listed = tables.lines().collect::<Vec<_>>();
    listed.sort();
    assert_eq!(
        listed,
        ["table bridge netd", "table ip netd", "table ip6 netd"],
        "{tables}"
    );
    // No iptables rule either.
    let ipt = n.iptables_save();
    assert!(!ipt.lines().any(|l| l.starts_with("-A")), "{ipt}");

    let (rules0, elems0) = nft_counts(&n);
    assert!(rules0 > 0);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "many",
        "-p",
        "20000-20999:20000-20999",
        "--",
        "sleep",
        "600",
    ]);
    let (rules1, elems1) = nft_counts(&n);
    assert_eq!(rules1, rules0, "publishing ports adds no rule");
    for (set, added) in [("dnat_ports", 1000), ("published", 1000), ("hairpin", 1000)] {
        assert_eq!(elems1[set], elems0[set] + added, "{set}: {elems1:?}");
    }
    let ruleset = n.nft_ruleset();
    assert!(
        ruleset.contains("tcp . 20500 : 172.17.0.2 . 20500"),
        "{ruleset}"
    );

    // One port of the range, end to end, keeping the client's address.
    serve_http(&n, "many", 20500);
    let url = format!("http://{HOST_IP}:20500/");
    let mut body = None;
    wait_until(Duration::from_secs(10), || {
        body = outside_curl(&n, &url);
        body.is_some()
    });
    let body = body.unwrap_or_else(|| panic!("{url} unreachable\n{}\n{ruleset}", n.log()));
    assert!(body.contains("hello from many"), "{body}");
    assert!(body.contains(&OUTSIDE_IP.to_string()), "{body}");
    // The host itself reaches it (output chain).
    let host =
        n.tb.ok(&n.tb.host, &["curl", "-s", "-m", "3", &url])
            .unwrap();
    assert!(host.contains("hello from many"), "from the host: {host}");
    // Hairpin: the container reaches its own published port through the
    // host's address, masqueraded to the gateway. With bridge-nf-call the
    // DNATed frame is bridged back out of the port it came in by, so the
    // port needs hairpin mode, which netd does not set (for any datapath):
    // the test sets it to check the hairpin masquerade.
    for l in n.host_links().iter().filter(|l| l.starts_with("vnd")) {
        n.tb.ok(
            &n.tb.host,
            &[
                "ip",
                "link",
                "set",
                "dev",
                l,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ],
        )
        .unwrap();
    }
    let body = curl_wait(&n, "many", &url);
    assert!(
        body.contains("hello from many to 172.17.0.1:"),
        "hairpin masquerade: {body}"
    );

    // Removing the container removes its elements.
    n.ok(&["rm", "-f", "many"]);
    assert_eq!(nft_counts(&n), (rules0, elems0));

    // A restart keeps the table (and its elements) while the daemon is
    // down, and rebuilds the same table.
    n.ok(&[
        "run", "-d", "--name", "keep", "-p", "8081:80", "--", "sleep", "600",
    ]);
    let before = n.nft_ruleset();
    n.stop_daemon(true);
    assert_eq!(n.nft_ruleset(), before, "the table outlives the daemon");
    n.start_daemon().unwrap();
    assert_eq!(n.nft_ruleset(), before, "a restart rebuilds the same table");
}

/// A measurement, not a check (`-- --ignored publish_1000_ports`): wall
/// time of `netd run -p 20000-20999:20000-20999` with each rule-based
/// datapath, side by side, and of the same run with 1,000 ports already
/// published.
#[test]
#[ignore]
fn publish_1000_ports_timing() {
    if !netd_tests::require_root("publish_1000_ports_timing") {
        return;
    }
    for dp in ["iptables", "nftables"] {
        let n = Netd::start(dp).unwrap();
        let mut times = Vec::new();
        for (i, range) in ["20000-20999", "30000-30999"].iter().enumerate() {
            let spec = format!("{range}:{range}");
            let name = format!("c{i}");
            let t = std::time::Instant::now();
            n.ok(&[
                "run", "-d", "--name", &name, "-p", &spec, "--", "sleep", "600",
            ]);
            times.push(t.elapsed());
        }
        let t = std::time::Instant::now();
        n.ok(&[
            "run", "-d", "--name", "one", "-p", "8080:80", "--", "sleep", "600",
        ]);
        times.push(t.elapsed());
        eprintln!(
            "{dp}: publish 1000 ports {:?}, 1000 more {:?}, then 1 more {:?}",
            times[0], times[1], times[2]
        );
    }
}
