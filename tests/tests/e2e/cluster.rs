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
                "10.244.{j}.0/24 via 198.51.100.{j} dev eth0 proto 78 src 10.244.1.1"
            )),
            "the pod network's gateway is the source: {r}"
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

/// The address of container `name` on node `node` (1-based).
fn pod_ip(c: &Nodes, node: usize, name: &str) -> String {
    c.daemons[node - 1].ip_of(name)
}

/// Pods talk to pods across nodes by address, untranslated; egress out of
/// the cluster is masqueraded to the node's address; published ports work
/// from other nodes' pods, other nodes and the outside; `node rm` cuts the
/// route; a daemon restart (kill -9) on a node keeps everything working.
pub fn cluster_pod_traffic(dp: &str) {
    use netd::testbed::cluster::ROUTER_IP;

    use super::{curl, curl_wait, me, ping, serve_http, sleeper};

    let mut c = start_cluster(dp);
    // Servers on nodes 2 and 3 (node 2's publishes 8080), clients on 1 and 3.
    for (node, name, publish) in [(2, "s2", true), (3, "s3", false)] {
        let n = &c.daemons[node - 1];
        let mut args = vec!["run", "-d", "--name", name, "--network", "pods"];
        if publish {
            args.extend(["-p", "8080:80"]);
        }
        args.extend(["--", "sleep", "600"]);
        n.ok(&args);
        serve_http(n, name, 80);
    }
    sleeper(&c.daemons[0], "c1", "pods");
    sleeper(&c.daemons[2], "c3", "pods");
    let (c1, s2, s3) = (
        pod_ip(&c, 1, "c1"),
        pod_ip(&c, 2, "s2"),
        pod_ip(&c, 3, "s3"),
    );
    let n1 = &c.daemons[0];
    // Pod -> remote pods, by address: ping and TCP; the server sees the
    // client pod's own address.
    for (ip, name) in [(&s2, "s2"), (&s3, "s3")] {
        let body = curl_wait(n1, "c1", &format!("http://{ip}:80/"));
        assert!(
            body.contains(&format!("{name} to {c1}:")),
            "{dp}: pod -> pod untranslated: {body}"
        );
        assert!(ping(n1, "c1", ip), "{dp}: ping {ip} from c1");
    }
    // Node 1 itself (a host-network process: an API server calling a
    // webhook) reaches node 2's pod, from its pod network's gateway
    // address (the node routes' source), unmasqueraded.
    let host1 = n1
        .tb
        .ok(
            &n1.tb.host,
            &["curl", "-s", "-m", "5", &format!("http://{s2}:80/")],
        )
        .unwrap();
    assert!(
        host1.contains("s2 to 10.244.1.1:"),
        "{dp}: node 1 -> pod on node 2: {host1}"
    );
    // And the other way: a pod on node 2 opens a connection to node 1's.
    serve_http(n1, "c1", 80);
    let body = curl_wait(&c.daemons[1], "s2", &format!("http://{c1}:80/"));
    assert!(body.contains(&format!("c1 to {s2}:")), "{dp}: {body}");
    // Egress out of the cluster: masqueraded to the node's address.
    let outside = c._cluster.outside.clone();
    c.daemons[0]
        .tb
        .spawn(
            &outside,
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
    let n1 = &c.daemons[0];
    let body = curl_wait(n1, "c1", &format!("http://{ROUTER_IP}:8000/"));
    assert!(
        body.contains(&format!("to {}:", node_ip(1))),
        "{dp}: egress masqueraded to node 1: {body}"
    );
    // A port published on node 2: from a pod on node 3, from node 3
    // itself, and from outside the cluster.
    let published = format!("http://{}:8080/", node_ip(2));
    let body = curl_wait(&c.daemons[2], "c3", &published);
    assert!(body.contains("hello from s2"), "{dp}: {body}");
    let n3 = &c.daemons[2];
    let host3 = n3
        .tb
        .ok(&n3.tb.host, &["curl", "-s", "-m", "5", &published])
        .unwrap();
    assert!(
        host3.contains("hello from s2"),
        "{dp}: node 3 -> {published}: {host3}"
    );
    let out = n3
        .tb
        .ok(&outside, &["curl", "-s", "-m", "5", &published])
        .unwrap();
    assert!(
        out.contains(&format!("s2 to {ROUTER_IP}:")),
        "{dp}: outside -> {published}: {out}"
    );
    // The outside, not a cluster address, reaches no pod by routing to it
    // (nat mode), even with a route.
    n3.tb
        .ok(
            &outside,
            &[
                "ip",
                "route",
                "add",
                "10.244.2.0/24",
                "via",
                &node_ip(2).to_string(),
            ],
        )
        .unwrap();
    assert!(
        n3.tb
            .exec(
                &outside,
                &["curl", "-s", "-m", "2", &format!("http://{s2}:80/")]
            )
            .is_ok_and(|o| !o.status.success()),
        "{dp}: the outside routed to a pod"
    );
    n3.tb
        .ok(&outside, &["ip", "route", "del", "10.244.2.0/24"])
        .unwrap();
    if dp == "ebpf" {
        // Untranslated and untracked: the cluster paths carried them.
        let stats = |n: &netd_tests::daemon::Netd| -> serde_json::Value {
            serde_json::from_str(&n.ok(&["stats", "--format", "json"])).unwrap()
        };
        let s1 = stats(&c.daemons[0]);
        assert!(s1["Counters"]["cluster_out"].as_u64() > Some(0), "{s1}");
        let s2s = stats(&c.daemons[1]);
        assert!(s2s["Counters"]["cluster_in"].as_u64() > Some(0), "{s2s}");
    }

    // `node rm` cuts the route to that node's pods, only those.
    let n1 = &c.daemons[0];
    n1.ok(&["node", "rm", "node2"]);
    assert!(
        curl(n1, "c1", &format!("http://{s2}:80/")).is_none(),
        "{dp}: node rm node2: {s2} still reachable"
    );
    assert!(!ping(n1, "c1", &s2), "{dp}: node rm: ping {s2}");
    curl_wait(n1, "c1", &format!("http://{s3}:80/"));
    n1.ok(&[
        "node",
        "add",
        "node2",
        "--pod-cidr",
        "10.244.2.0/24",
        "--address",
        &node_ip(2).to_string(),
    ]);
    curl_wait(n1, "c1", &format!("http://{s2}:80/"));

    // A daemon restart on node 2 (kill -9: nothing cleaned up, state and
    // datapath adopted) keeps everything working.
    c.daemons[1].stop_daemon(true);
    c.daemons[1].start_daemon().unwrap();
    let n1 = &c.daemons[0];
    let body = curl_wait(n1, "c1", &format!("http://{s2}:80/"));
    assert!(
        body.contains(&format!("s2 to {c1}:")),
        "{dp}: after restart: {body}"
    );
    assert!(ping(n1, "c1", &s2), "{dp}: after restart: ping {s2}");
    let body = curl_wait(&c.daemons[2], "c3", &published);
    assert!(
        body.contains("hello from s2"),
        "{dp}: after restart: {body}"
    );
    let body = curl_wait(&c.daemons[1], "s2", &format!("http://{c1}:80/"));
    assert!(
        body.contains(&format!("c1 to {s2}:")),
        "{dp}: after restart: {body}"
    );
}
