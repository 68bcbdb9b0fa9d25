//! Daemon restarts: kill -9 in the middle of an operation, reconcile.
use std::time::Duration;

use netd_tests::{
    HOST_IP,
    daemon::{Netd, netd_bin},
    wait_until,
};

use super::*;

pub fn kill9_and_reconcile(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    n.ok(&[
        "run", "-d", "--name", "keep", "-p", "8081:80", "--", "sleep", "600",
    ]);
    serve_http(&n, "keep", 80);
    let url = format!("http://{HOST_IP}:8081/");
    assert!(wait_until(Duration::from_secs(10), || outside_curl(
        &n, &url
    )
    .is_some()));
    // Start an operation and kill the daemon while it runs.
    let mut child = std::process::Command::new(netd_bin())
        .arg("-H")
        .arg(&n.socket)
        .args(["create", "--name", "half", "-p", "8082:80"])
        .spawn()
        .unwrap();
    n.stop_daemon(true);
    let _ = child.wait();
    // Leftovers a crash can leave: a veth of this instance (marked with
    // its alias) that the state does not know; and another instance's
    // veth, which must survive.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(n.dir.join("state/state.json")).unwrap()).unwrap();
    let marker = format!("netd:{}", state["instance"].as_str().unwrap());
    for (name, peer, alias) in [
        ("vndstale01", "vndstale02", marker.as_str()),
        ("vndother01", "vndother02", "netd:0therins"),
    ] {
        n.tb.ok(
            &n.tb.host,
            &[
                "ip", "link", "add", name, "type", "veth", "peer", "name", peer,
            ],
        )
        .unwrap();
        n.tb.ok(&n.tb.host, &["ip", "link", "set", name, "alias", alias])
            .unwrap();
    }
    assert!(
        outside_curl(&n, &url).is_some(),
        "published port works while the daemon is dead"
    );
    n.start_daemon().unwrap();
    let links = n.host_links();
    assert!(
        !links.iter().any(|l| l.starts_with("vndstale")),
        "stale veth removed: {links:?}"
    );
    assert!(
        links.iter().any(|l| l == "vndother01"),
        "another instance's veth is left alone: {links:?}"
    );
    n.tb.ok(&n.tb.host, &["ip", "link", "del", "vndother01"])
        .unwrap();
    let links = n.host_links();
    assert!(outside_curl(&n, &url).is_some());
    // Whatever happened to "half", the state and the kernel agree.
    let ps = n.ok(&["ps", "-a"]);
    let veths: Vec<&String> = links.iter().filter(|l| l.starts_with("vnd")).collect();
    let running = ps.lines().skip(1).filter(|l| l.contains("running")).count();
    assert_eq!(
        veths.len(),
        running,
        "one veth per running bridge container: {veths:?}\n{ps}"
    );
    assert_eq!(
        n.netns_files().len(),
        running,
        "one namespace per running container"
    );
}
