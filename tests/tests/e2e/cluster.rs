//! A cluster of nodes: three host namespaces, each with its own daemon and
//! pod network inside 10.244.0.0/16, joined by an underlay; `netd node`
//! routes each node's pod range via its address.
use netd::testbed::cluster::{Cluster, node_ip};
use netd_tests::daemon::Netd;

/// The cluster's daemons (node N runs pods in 10.244.N.0/24).
pub struct Nodes {
    pub daemons: Vec<Netd>,
    /// Owns the underlay and outside namespaces (dropped last).
    pub _cluster: Cluster,
}

pub fn start_cluster(dp: &str) -> Nodes {
    let cluster = Cluster::new("k", 3).unwrap();
    let mut daemons = Vec::new();
    for i in 1..=3u8 {
        let n = Netd::start_on(
            cluster.node_testbed(i),
            dp,
            &[("--cluster-cidr", "10.244.0.0/16")],
        )
        .unwrap();
        let subnet = format!("10.244.{i}.0/24");
        n.ok(&["network", "create", "--subnet", &subnet, "pods"]);
        daemons.push(n);
    }
    for (i, n) in daemons.iter().enumerate() {
        for j in 1..=3u8 {
            if j as usize != i + 1 {
                n.ok(&[
                    "node",
                    "add",
                    &format!("node{j}"),
                    "--pod-cidr",
                    &format!("10.244.{j}.0/24"),
                    "--address",
                    &node_ip(j).to_string(),
                ]);
            }
        }
    }
    Nodes {
        daemons,
        _cluster: cluster,
    }
}

fn routes(n: &Netd) -> String {
    n.tb.ok(&n.tb.host, &["ip", "-4", "route", "show"]).unwrap()
}

/// Node routes: added, listed, refused when they overlap, restored after
/// a restart, removed with the node.
pub fn cluster_node_routes(dp: &str) {
    let mut c = start_cluster(dp);
    let n1 = &c.daemons[0];
    let r = routes(n1);
    for j in [2, 3] {
        assert!(
            r.contains(&format!(
                "10.244.{j}.0/24 via 198.51.100.{j} dev eth0 proto 78"
            )),
            "{r}"
        );
    }
    let ls = n1.ok(&["node", "ls"]);
    assert!(ls.contains("node2") && ls.contains("10.244.3.0/24"), "{ls}");
    for (args, needle) in [
        (
            vec![
                "node",
                "add",
                "x",
                "--pod-cidr",
                "10.244.2.128/25",
                "--address",
                "198.51.100.9",
            ],
            "overlaps node node2",
        ),
        (
            vec![
                "node",
                "add",
                "x",
                "--pod-cidr",
                "10.244.1.0/24",
                "--address",
                "198.51.100.9",
            ],
            "overlaps the local network",
        ),
        (
            vec![
                "node",
                "add",
                "node2",
                "--pod-cidr",
                "10.245.0.0/24",
                "--address",
                "198.51.100.9",
            ],
            "exists",
        ),
        (
            vec![
                "node",
                "add",
                "x",
                "--pod-cidr",
                "127.0.0.0/24",
                "--address",
                "198.51.100.9",
            ],
            "loopback",
        ),
        (vec!["node", "rm", "nosuch"], "no such node"),
    ] {
        let e = n1.fails(&args);
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    assert_eq!(routes(n1), r, "refusals change nothing");
    // A route lost while the daemon is down comes back; a stale one of
    // netd's goes.
    let n1 = &mut c.daemons[0];
    n1.stop_daemon(true);
    n1.tb
        .ok(&n1.tb.host, &["ip", "route", "del", "10.244.2.0/24"])
        .unwrap();
    n1.tb
        .ok(
            &n1.tb.host,
            &[
                "ip",
                "route",
                "add",
                "10.99.0.0/24",
                "via",
                "198.51.100.7",
                "proto",
                "78",
            ],
        )
        .unwrap();
    n1.start_daemon().unwrap();
    let r2 = routes(n1);
    assert!(r2.contains("10.244.2.0/24 via 198.51.100.2"), "{r2}");
    assert!(!r2.contains("10.99.0.0/24"), "{r2}");
    n1.ok(&["node", "rm", "node3"]);
    let r3 = routes(n1);
    assert!(!r3.contains("10.244.3.0/24"), "{r3}");
    assert!(!n1.ok(&["node", "ls"]).contains("node3"));
}
