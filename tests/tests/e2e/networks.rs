//! User-defined networks: isolation, connect/disconnect, icc, internal.

use netd_tests::{OUTSIDE_IP, daemon::Netd};

use super::*;

pub fn user_networks_isolation(dp: &str) {
    let n = Netd::start(dp).unwrap();
    n.ok(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        "192.168.0.0/16",
        "--gateway",
        "192.168.0.1",
        "mynet",
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "mynet"])).unwrap();
    let net = &inspect[0];
    assert_eq!(net["Name"], "mynet");
    assert_eq!(net["Driver"], "bridge");
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "192.168.0.0/16");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "192.168.0.1");
    for k in [
        "Id",
        "Created",
        "Scope",
        "EnableIPv6",
        "Internal",
        "Attachable",
        "Containers",
        "Options",
        "Labels",
    ] {
        assert!(net.get(k).is_some(), "inspect has {k}");
    }
    let ls = n.ok(&["network", "ls"]);
    for name in ["bridge", "host", "none", "mynet"] {
        assert!(ls.contains(name), "{ls}");
    }
    sleeper(&n, "t1", "mynet");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "t2",
        "--network",
        "mynet",
        "--ip",
        "192.168.0.50",
        "--",
        "sleep",
        "600",
    ]);
    n.ok(&["run", "-d", "--name", "b1", "--", "sleep", "600"]);
    assert_eq!(n.ip_of("t2"), "192.168.0.50");
    let t1 = n.ip_of("t1");
    assert!(t1.starts_with("192.168.0."), "{t1}");
    let inspect: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "mynet"])).unwrap();
    assert_eq!(inspect[0]["Containers"].as_object().unwrap().len(), 2);
    assert!(ping(&n, "t1", "192.168.0.50"), "same network");
    assert!(
        !ping(&n, "b1", "192.168.0.50"),
        "default bridge cannot reach mynet"
    );
    assert!(
        !ping(&n, "t1", &n.ip_of("b1")),
        "mynet cannot reach the default bridge"
    );

    // connect: one container, two IPs.
    n.ok(&["network", "connect", "mynet", "b1"]);
    let a = n.ok(&["exec", "b1", "--", "ip", "-o", "-4", "addr"]);
    assert!(a.contains("eth1") && a.contains("192.168.0."), "{a}");
    assert!(ping(&n, "b1", "192.168.0.50"), "after connect");
    n.ok(&["network", "disconnect", "mynet", "b1"]);
    let a = n.ok(&["exec", "b1", "--", "ip", "-o", "-4", "addr"]);
    assert!(!a.contains("eth1"), "{a}");
    assert!(!ping(&n, "b1", "192.168.0.50"), "after disconnect");

    // icc=false.
    n.ok(&["network", "create", "-o", "icc=false", "noicc"]);
    sleeper(&n, "q1", "noicc");
    sleeper(&n, "q2", "noicc");
    assert!(
        !ping(&n, "q1", &n.ip_of("q2")),
        "icc=false blocks container to container"
    );
    let gw = n.inspect("q1")["NetworkSettings"]["Gateway"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ping(&n, "q1", &gw), "icc=false still reaches the gateway");

    // Internal networks reach nothing outside their subnet.
    n.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.99.0.0/24",
        "inside",
    ]);
    sleeper(&n, "i1", "inside");
    sleeper(&n, "i2", "inside");
    assert!(ping(&n, "i1", &n.ip_of("i2")));
    assert!(
        !ping(&n, "i1", &OUTSIDE_IP.to_string()),
        "internal cannot reach the world"
    );
    assert!(
        ping(&n, "t1", &OUTSIDE_IP.to_string()),
        "a normal network reaches the world"
    );

    // rm with endpoints fails; after removing them it works.
    let e = n.fails(&["network", "rm", "mynet"]);
    assert!(e.contains("active endpoints"), "{e}");
    n.ok(&["rm", "-f", "t1", "t2"]);
    n.ok(&["network", "rm", "mynet"]);
    assert!(!n.ok(&["network", "ls"]).contains("mynet"));
}

/// A removed container leaves no flow behind: the kernel's conntrack
/// entries (netfilter datapaths) or netd's table (ebpf) of its address
/// go with it, so a later container with that address starts clean.
pub fn removed_containers_leave_no_flows(dp: &str) {
    let n = Netd::start(dp).unwrap();
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "5353:53/udp",
        "--",
        "sleep",
        "600",
    ]);
    let ip = n.ip_of("web");
    // A UDP flow from outside to the published port, and one out.
    let _ = n.tb.exec(
        &n.tb.outside,
        &[
            &me(),
            "tool",
            "udp-send",
            &format!("{}:5353", netd_tests::HOST_IP),
            "x",
            "--timeout-ms",
            "300",
        ],
    );
    let _ = n.netd(&[
        "exec",
        "web",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        &netd_tests::OUTSIDE_IP.to_string(),
    ]);
    let flows = |n: &Netd| -> usize {
        if dp == "ebpf" {
            stats(n)["ConntrackEntries"].as_u64().unwrap_or(0) as usize
        } else {
            let o = n.tb.exec(&n.tb.host, &["conntrack", "-L"]).unwrap();
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(&format!("={ip} ")))
                .count()
        }
    };
    assert!(flows(&n) > 0, "the flows exist while the container runs");
    n.ok(&["rm", "-f", "web"]);
    assert_eq!(flows(&n), 0, "no flow of {ip} outlives its container");
}
