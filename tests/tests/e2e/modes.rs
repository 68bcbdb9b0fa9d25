//! The four modes: bridge, host, none, container:NAME.

use netd_tests::{HOST_IP, daemon::Netd};

use super::*;

pub fn four_modes(dp: &str) {
    let n = Netd::start(dp).unwrap();
    // Default bridge.
    n.ok(&["run", "-d", "--name", "web", "--", "sleep", "600"]);
    let web = n.inspect("web");
    let ip = web["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip.starts_with("172.17.0."), "{ip}");
    assert_eq!(web["NetworkSettings"]["Gateway"], "172.17.0.1");
    assert_eq!(web["NetworkSettings"]["IPPrefixLen"], 16);
    let mac = web["NetworkSettings"]["MacAddress"].as_str().unwrap();
    assert!(mac.starts_with("02:42:ac:11:00:"), "{mac}");
    let addrs = n.ok(&[
        "exec", "web", "--", "ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    assert!(addrs.contains(&format!("{ip}/16")), "{addrs}");
    // Host reaches the container; the container reaches the host's uplink address.
    assert!(
        n.tb.exec(&n.tb.host, &["ping", "-c", "1", "-W", "2", &ip])
            .unwrap()
            .status
            .success()
    );
    n.ok(&["run", "-d", "--name", "web2", "--", "sleep", "600"]);
    let ip2 = n.ip_of("web2");
    assert!(
        ping(&n, "web", &ip2),
        "containers on the default bridge reach each other"
    );

    // Host mode: the host's interfaces.
    n.ok(&["create", "--name", "h", "--network", "host"]);
    let links = n.ok(&["exec", "h", "--", "ip", "-o", "-4", "addr"]);
    assert!(
        links.contains(&HOST_IP.to_string()),
        "host mode sees the uplink: {links}"
    );
    let warn = n
        .netd(&["create", "--name", "h2", "--network", "host", "-p", "80:80"])
        .unwrap();
    assert!(warn.status.success());
    assert!(String::from_utf8_lossy(&warn.stderr).contains("discarded"));

    // None: only lo.
    n.ok(&["create", "--name", "lonely", "--network", "none"]);
    let l = n.ok(&["exec", "lonely", "--", "ip", "-o", "link"]);
    assert_eq!(l.lines().count(), 1, "{l}");
    assert!(l.contains("lo"));

    // container:NAME shares the namespace (same IP, talk over lo).
    serve_http(&n, "web", 8080);
    n.ok(&["create", "--name", "side", "--network", "container:web"]);
    let addrs = n.ok(&[
        "exec", "side", "--", "ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    assert!(addrs.contains(&ip), "{addrs}");
    let body = curl_wait(&n, "side", "http://127.0.0.1:8080/");
    assert!(body.contains("hello from web"), "{body}");
    let e = n.fails(&[
        "create",
        "--name",
        "side2",
        "--network",
        "container:web",
        "-p",
        "80:80",
    ]);
    assert!(
        e.contains("Conflicting options: port publishing and the container type network mode"),
        "{e}"
    );

    // ps / rm
    let ps = n.ok(&["ps"]);
    for name in ["web", "web2", "h", "lonely", "side"] {
        assert!(ps.contains(name), "{ps}");
    }
    n.ok(&["rm", "-f", "side"]);
    n.ok(&["stop", "web2"]);
    assert!(!n.ok(&["ps"]).contains("web2"));
    assert!(n.ok(&["ps", "-a"]).contains("web2"));
    n.ok(&["rm", "web2"]);
}
