//! Docker's gateway modes (`-o com.docker.network.bridge.gateway_mode_ipv4`,
//! short `-o gateway_mode_ipv4`): one network per mode in the usual
//! host/outside namespaces, the outside namespace routing the container
//! subnets via the host (as a neighbour doing direct routing would), and
//! what the outside can and cannot reach: the published host port, the
//! published container port and an unpublished one on the container's
//! own address, ICMP; and which source address the outside server sees
//! for the containers' egress.
use netd_tests::{HOST_IP, OUTSIDE_IP, daemon::Netd, wait_until};

use super::{curl, curl_wait, me, ping, serve_http, sleeper};

/// curl from the outside namespace (a short timeout: a dropped SYN never
/// gets an answer; the positive checks beside it show the path works).
fn outside(n: &Netd, url: &str) -> Option<String> {
    let o =
        n.tb.exec(&n.tb.outside, &["curl", "-s", "-m", "2", url])
            .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn outside_wait(n: &Netd, url: &str) -> String {
    let mut got = None;
    wait_until(std::time::Duration::from_secs(10), || {
        got = outside(n, url);
        got.is_some()
    });
    got.unwrap_or_else(|| {
        panic!(
            "{}: {url} from outside failed\n{}\n{}",
            n.datapath,
            n.ok(&["stats"]),
            n.log()
        )
    })
}

fn outside_ping(n: &Netd, ip: &str) -> bool {
    n.tb.exec(&n.tb.outside, &["ping", "-c", "1", "-W", "1", ip])
        .is_ok_and(|o| o.status.success())
}

/// A container on `net` publishing `-p HOSTPORT:80`, HTTP servers on 80
/// (published) and 81 (not); returns its address.
fn web(n: &Netd, name: &str, net: &str, host_port: u16) -> String {
    n.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "-p",
        &format!("{host_port}:80"),
        "--",
        "sleep",
        "600",
    ]);
    serve_http(n, name, 80);
    serve_http(n, name, 81);
    n.ip_of(name)
}

/// What the outside server sees as the source of `name`'s egress.
fn egress_source(n: &Netd, name: &str) -> String {
    let body = curl_wait(n, name, &format!("http://{OUTSIDE_IP}:8000/"));
    // "hello from world to IP:PORT"
    body.trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.rsplit_once(':'))
        .map(|(ip, _)| ip.to_string())
        .unwrap_or_else(|| panic!("{body}"))
}

pub fn gateway_modes(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    // The outside namespace routes the container subnets via the host.
    n.tb.ok(
        &n.tb.outside,
        &[
            "ip",
            "route",
            "add",
            "10.10.0.0/16",
            "via",
            &HOST_IP.to_string(),
        ],
    )
    .unwrap();
    let outside_ns = n.tb.outside.clone();
    n.tb.spawn(
        &outside_ns,
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
    n.ok(&["network", "create", "--subnet", "10.10.1.0/24", "natnet"]);
    n.ok(&[
        "network",
        "create",
        "--subnet",
        "10.10.2.0/24",
        "-o",
        "gateway_mode_ipv4=nat-unprotected",
        "unpnet",
    ]);
    n.ok(&[
        "network",
        "create",
        "--subnet",
        "10.10.3.0/24",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv4=routed",
        "rtdnet",
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "rtdnet", "unpnet"])).unwrap();
    assert_eq!(
        inspect[0]["Options"]["com.docker.network.bridge.gateway_mode_ipv4"], "routed",
        "{inspect}"
    );
    assert_eq!(
        inspect[1]["Options"]["com.docker.network.bridge.gateway_mode_ipv4"],
        "nat-unprotected"
    );
    let nat = web(&n, "nat", "natnet", 8091);
    let unp = web(&n, "unp", "unpnet", 8092);
    let rtd = web(&n, "rtd", "rtdnet", 8093);
    let host = |p: u16| format!("http://{HOST_IP}:{p}/");
    let at = |ip: &str, p: u16| format!("http://{ip}:{p}/");

    // nat: the published host port; nothing by routing to the container.
    let body = outside_wait(&n, &host(8091));
    assert!(body.contains(&format!("nat to {OUTSIDE_IP}:")), "{body}");
    assert!(
        outside(&n, &at(&nat, 80)).is_none(),
        "{dp}: nat: {nat}:80 routed"
    );
    assert!(
        outside(&n, &at(&nat, 81)).is_none(),
        "{dp}: nat: {nat}:81 routed"
    );
    assert!(!outside_ping(&n, &nat), "{dp}: nat: ping {nat}");
    assert_eq!(
        egress_source(&n, "nat"),
        HOST_IP.to_string(),
        "{dp}: nat egress"
    );

    // nat-unprotected: the published host port, and every port by routing.
    let body = outside_wait(&n, &host(8092));
    assert!(body.contains(&format!("unp to {OUTSIDE_IP}:")), "{body}");
    for p in [80, 81] {
        let body = outside_wait(&n, &at(&unp, p));
        assert!(
            body.contains(&format!("unp to {OUTSIDE_IP}:")),
            "{dp}: {body}"
        );
    }
    assert!(outside_ping(&n, &unp), "{dp}: nat-unprotected: ping {unp}");
    assert_eq!(
        egress_source(&n, "unp"),
        HOST_IP.to_string(),
        "{dp}: unp egress"
    );

    // routed: no host port; the published container port and ICMP by
    // routing, not the unpublished one; the container's own address out.
    let body = outside_wait(&n, &at(&rtd, 80));
    assert!(
        body.contains(&format!("rtd to {OUTSIDE_IP}:")),
        "{dp}: {body}"
    );
    assert!(
        outside(&n, &at(&rtd, 81)).is_none(),
        "{dp}: routed: {rtd}:81"
    );
    assert!(
        outside(&n, &host(8093)).is_none(),
        "{dp}: routed: host port 8093"
    );
    assert!(outside_ping(&n, &rtd), "{dp}: routed: ping {rtd}");
    assert_eq!(egress_source(&n, "rtd"), rtd, "{dp}: routed egress");
    let port = n.ok(&["port", "rtd"]);
    assert_eq!(port.trim(), format!("80/tcp -> {rtd}:80"), "{port}");
    let ports = &n.inspect("rtd")["NetworkSettings"]["Ports"]["80/tcp"][0];
    assert_eq!(ports["HostPort"], "", "{ports}");
    // Another container may publish the same host port: routed claims none.
    n.ok(&[
        "create",
        "--name",
        "samehost",
        "--network",
        "natnet",
        "-p",
        "8093:80",
    ]);
    n.ok(&["rm", "-f", "samehost"]);

    // Other networks: a routed network's published container port (and
    // ICMP) by routing, nothing else; the other modes stay isolated.
    let body = curl_wait(&n, "nat", &at(&rtd, 80));
    assert!(body.contains(&format!("rtd to {nat}:")), "{dp}: {body}");
    assert!(
        curl(&n, "nat", &at(&rtd, 81)).is_none(),
        "{dp}: nat -> {rtd}:81"
    );
    assert!(ping(&n, "nat", &rtd), "{dp}: nat -> ping {rtd}");
    assert!(
        curl(&n, "nat", &at(&unp, 80)).is_none(),
        "{dp}: nat -> {unp}:80"
    );
    assert!(
        curl(&n, "rtd", &at(&nat, 80)).is_none(),
        "{dp}: rtd -> {nat}:80"
    );

    // Everything survives a daemon restart (state and datapath).
    n.stop_daemon(false);
    n.start_daemon().unwrap();
    outside_wait(&n, &at(&rtd, 80));
    outside_wait(&n, &at(&unp, 81));
    outside_wait(&n, &host(8091));
    assert!(
        outside(&n, &at(&nat, 80)).is_none(),
        "{dp}: nat after restart"
    );

    // isolated: internal only, and the bridge has no address on the host.
    let e = n.fails(&[
        "network",
        "create",
        "-o",
        "gateway_mode_ipv4=isolated",
        "isonet",
    ]);
    assert!(e.contains("internal"), "{e}");
    n.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.10.4.0/24",
        "-o",
        "gateway_mode_ipv4=isolated",
        "isonet",
    ]);
    sleeper(&n, "iso1", "isonet");
    sleeper(&n, "iso2", "isonet");
    let iso1 = n.ip_of("iso1");
    let iso2 = n.ip_of("iso2");
    let net: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "isonet"])).unwrap();
    let bridge = net[0]["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap_or_else(|| panic!("{net}"))
        .to_string();
    let addrs =
        n.tb.ok(&n.tb.host, &["ip", "-4", "addr", "show", "dev", &bridge])
            .unwrap();
    assert!(
        !addrs.contains("inet "),
        "isolated: no host address: {addrs}"
    );
    assert!(ping(&n, "iso1", &iso2), "{dp}: isolated: containers meet");
    assert!(!ping(&n, "iso1", "10.10.4.1"), "{dp}: isolated: no gateway");
    assert!(
        curl(&n, "iso1", &format!("http://{OUTSIDE_IP}:8000/")).is_none(),
        "{dp}: isolated: no way out"
    );
    assert!(!outside_ping(&n, &iso1), "{dp}: isolated: not from outside");
}
