//! netd as Docker's network driver plugin (`netd daemon --docker-plugin
//! NAME`, `docker network create -d NAME`), driven by a real dockerd
//! 20.10 in the testbed's throwaway host namespace, on each datapath:
//! Docker's containers on netd's networks, published ports, masquerade,
//! icc, internal networks, isolation, `docker network connect`, a kill -9
//! of netd and of dockerd, and nothing left behind. A second part speaks
//! the protocol directly (no dockerd) to check bad input and restarts.
//!
//! The plugin socket lives where dockerd looks for it,
//! `/run/docker/plugins/NAME.sock` (global): every test uses a unique
//! NAME and removes the socket even when it fails.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use netd::{
    plugin::docker::socket_path,
    testbed::{
        HOST_IP, OUTSIDE_IP, Testbed,
        docker::{self, CONTAINERD, DOCKER_CLI, DOCKERD, Dockerd, DockerdOptions},
        image::BUSYBOX,
        require_tools, unique_stem, wait_until,
    },
};
use netd_tests::{
    daemon::{Netd, netd_bin},
    require_root,
};
use serde_json::{Value, json};

/// Readiness deadline (never an assertion on speed).
const READY: Duration = Duration::from_secs(60);
const IMAGE: &str = "netd-busybox";

/// busybox httpd on port 80 with `/cgi-bin/ip` answering the client's
/// address as the server sees it.
const HTTPD: &str = "mkdir -p /www/cgi-bin && \
    printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && \
    chmod +x /www/cgi-bin/ip && echo hello > /www/index.html && exec httpd -f -p 80 -h /www";

fn needs(test: &str, with_docker: bool) -> bool {
    if !require_root(test) {
        return false;
    }
    let bin = netd_bin().display().to_string();
    let mut tools = vec![bin.as_str(), "/usr/bin/curl"];
    if with_docker {
        tools.extend([DOCKERD, DOCKER_CLI, CONTAINERD, BUSYBOX, "/usr/bin/nsenter"]);
    }
    require_tools(test, &tools)
}

/// Removes the plugin socket on drop (netd removes it when it exits
/// cleanly; a killed netd or a failed test leaves it).
struct PluginSocket(PathBuf);

impl Drop for PluginSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// netd serving the plugin and a dockerd using it, in one testbed. Drop
/// order: dockerd first (its container removals call the plugin), then
/// netd, then the socket.
struct World {
    d: Dockerd,
    n: Netd,
    _socket: PluginSocket,
    plugin: String,
    egress_url: String,
}

impl World {
    fn start(datapath: &str) -> World {
        let plugin = unique_stem("dk");
        let socket = PluginSocket(socket_path(&plugin));
        let mut n = Netd::start_on(
            Testbed::new("e").unwrap(),
            datapath,
            &[("--docker-plugin", &plugin)],
        )
        .unwrap();
        assert!(socket.0.exists(), "plugin socket {}", socket.0.display());
        // The world: an HTTP server answering with the client address it
        // sees (who masqueraded).
        let outside = n.tb.outside.clone();
        let listen = format!("{OUTSIDE_IP}:8081");
        let bin = netd_bin().display().to_string();
        n.tb.spawn(
            &outside,
            &[&bin, "tool", "http-serve", &listen, "--name", "outside"],
        )
        .unwrap();
        let egress_url = format!("http://{listen}/");
        assert!(
            wait_until(READY, || curl(&n, &outside, &egress_url).is_some()),
            "outside server did not come up"
        );
        let d = Dockerd::start(&n.tb.host, &DockerdOptions::default()).unwrap();
        docker::busybox_image(&d, IMAGE, &[]).unwrap();
        World {
            d,
            n,
            _socket: socket,
            plugin,
            egress_url,
        }
    }

    /// `docker ARGS` must succeed; stdout.
    fn docker(&self, args: &[&str]) -> String {
        match self.d.ok(args) {
            Ok(out) => out,
            Err(e) => panic!(
                "{e:#}\n--- netd log ---\n{}\n--- dockerd log ---\n{}",
                tail(&self.n.log()),
                self.d.log_tail("dockerd.log")
            ),
        }
    }

    /// A Docker network on netd; returns Docker's id.
    fn network(&self, name: &str, args: &[&str]) -> String {
        let mut a = vec!["network", "create", "-d", &self.plugin];
        a.extend(args);
        a.push(name);
        self.docker(&a).trim().to_string()
    }

    /// A busybox container that sleeps, on `network`.
    fn sleeper(&self, name: &str, network: &str) {
        self.docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            IMAGE,
            "sleep",
            "100000",
        ]);
    }

    fn ip_of(&self, container: &str, network: &str) -> String {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        self.docker(&["inspect", "-f", &f, container])
            .trim()
            .to_string()
    }

    /// One ping from a container (to a name or an address).
    fn ping(&self, from: &str, to: &str) -> bool {
        self.d
            .docker(&["exec", from, "ping", "-c", "1", "-W", "2", to])
            .is_ok_and(|o| o.status.success())
    }

    fn ping_eventually(&self, from: &str, to: &str) {
        assert!(
            wait_until(READY, || self.ping(from, to)),
            "{from} never reached {to}\n--- netd log ---\n{}",
            tail(&self.n.log())
        );
    }

    /// The outside server's answer to a container (`timeout`, not wget
    /// -T: this busybox's wget segfaults with -T).
    fn egress(&self, from: &str) -> Option<String> {
        let out = self
            .d
            .docker(&[
                "exec",
                from,
                "timeout",
                "5",
                "wget",
                "-q",
                "-O",
                "-",
                &self.egress_url,
            ])
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A published port from the outside namespace: the body, if any.
    fn outside_get(&self, url: &str) -> Option<String> {
        curl(&self.n, &self.n.tb.outside, url)
    }

    fn netd_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.n.ok(args)).unwrap()
    }

    /// netd's view of a Docker network (by its short id).
    fn netd_network(&self, docker_id: &str) -> Value {
        self.netd_json(&["network", "inspect", &docker_id[..12]])[0].clone()
    }

    fn host_links(&self) -> Vec<String> {
        self.n.host_links()
    }
}

/// httpd's REMOTE_ADDR: busybox httpd listens on IPv6 too and shows an
/// IPv4 client as `[::ffff:A.B.C.D]`.
fn client_ip(body: &str) -> String {
    let b = body.trim();
    b.strip_prefix("[::ffff:")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(b)
        .to_string()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn curl(n: &Netd, ns: &netd::netns::NetNs, url: &str) -> Option<String> {
    let out =
        n.tb.exec(ns, &["curl", "-sS", "--max-time", "3", url])
            .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn scenario(datapath: &str) {
    let w = World::start(datapath);
    let short = |id: &str| id[..12].to_string();

    // A network with Docker's IPAM data: subnet and gateway as given.
    let net1 = w.network(
        "net1",
        &["--subnet", "10.11.0.0/24", "--gateway", "10.11.0.254"],
    );
    let n1 = w.netd_network(&net1);
    assert_eq!(n1["Name"], short(&net1));
    assert_eq!(n1["Driver"], format!("docker:{}", w.plugin));
    assert_eq!(n1["IPAM"]["Config"][0]["Subnet"], "10.11.0.0/24");
    assert_eq!(n1["IPAM"]["Config"][0]["Gateway"], "10.11.0.254");
    let ls = w.n.ok(&["network", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.contains(&short(&net1)) && l.contains(&format!("docker:{}", w.plugin))),
        "{ls}"
    );
    // netd does not remove what Docker owns.
    let err = w.n.fails(&["network", "rm", &short(&net1)]);
    assert!(err.contains("docker network rm"), "{err}");

    // Two containers ping each other by name (Docker's DNS in the
    // container, netd's datapath between them); a web server publishes
    // 18080.
    w.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "net1",
        "-p",
        "18080:80",
        IMAGE,
        "sh",
        "-c",
        HTTPD,
    ]);
    w.sleeper("c1", "net1");
    w.sleeper("c2", "net1");
    w.ping_eventually("c1", "c2");
    w.ping_eventually("c2", "c1");
    assert!(w.ip_of("c1", "net1").starts_with("10.11.0."));
    // The container's default route is netd's gateway: no docker_gwbridge.
    let routes = w.docker(&["exec", "c1", "ip", "route"]);
    assert!(routes.contains("default via 10.11.0.254"), "{routes}");
    assert!(
        !w.docker(&["network", "ls"]).contains("docker_gwbridge"),
        "Docker added its gateway bridge"
    );

    // Egress leaves masqueraded to the uplink address.
    let mut got = None;
    wait_until(READY, || {
        got = w.egress("c1");
        got.is_some()
    });
    let got = got.expect("c1 never reached the outside server");
    assert!(
        got.starts_with(&format!("hello from outside to {HOST_IP}:")),
        "egress: {got:?}"
    );

    // The published port from the outside, the client's address kept.
    let url = format!("http://{HOST_IP}:18080/cgi-bin/ip");
    let mut body = None;
    wait_until(READY, || {
        body = w.outside_get(&url);
        body.is_some()
    });
    let body = body.unwrap_or_else(|| {
        panic!(
            "{url} never answered\n--- netd log ---\n{}",
            tail(&w.n.log())
        )
    });
    assert_eq!(
        client_ip(&body),
        OUTSIDE_IP.to_string(),
        "the server saw {body:?}"
    );
    let nat =
        w.n.tb
            .ok(&w.n.tb.host, &["iptables-save", "-t", "nat"])
            .unwrap();
    match datapath {
        // Published in eBPF: not one DNAT rule (Docker installs none for
        // a plugin's network either).
        "ebpf" => assert!(!nat.contains("DNAT"), "{nat}"),
        "iptables" => assert!(nat.contains("--dport 18080 -j DNAT"), "{nat}"),
        _ => {
            let nft = w.n.nft_ruleset();
            assert!(nft.contains("18080"), "{nft}");
        }
    }
    // netd sees Docker's endpoints.
    let n1 = w.netd_network(&net1);
    assert_eq!(n1["Containers"].as_object().unwrap().len(), 3, "{n1}");
    if datapath == "ebpf" {
        let stats = w.netd_json(&["stats", "--format", "json"]);
        let eps = stats["Endpoints"].as_object().unwrap();
        assert!(
            eps.keys().filter(|k| k.starts_with("docker-")).count() >= 3,
            "{stats}"
        );
    }

    // icc=false: no traffic between containers of the network; the way
    // out still works.
    w.network(
        "noicc",
        &[
            "--subnet",
            "10.12.0.0/24",
            "-o",
            "com.docker.network.bridge.enable_icc=false",
        ],
    );
    w.sleeper("i1", "noicc");
    w.sleeper("i2", "noicc");
    assert!(wait_until(READY, || w.egress("i1").is_some()));
    let i2 = w.ip_of("i2", "noicc");
    assert!(!w.ping("i1", &i2), "icc=false let i1 reach i2");

    // --internal: containers reach each other, never the outside.
    w.network("int", &["--internal", "--subnet", "10.13.0.0/24"]);
    w.sleeper("n1", "int");
    w.sleeper("n2", "int");
    w.ping_eventually("n1", "n2");
    assert!(w.egress("n1").is_none(), "an internal network reached out");
    let routes = w.docker(&["exec", "n1", "ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");

    // Isolation between netd networks.
    let n2 = w.ip_of("n2", "int");
    assert!(!w.ping("c1", &n2), "net1 reached the internal network");
    assert!(!w.ping("c1", &i2), "net1 reached noicc");

    // docker network connect: c1 gets a second interface on int.
    w.docker(&["network", "connect", "int", "c1"]);
    w.ping_eventually("c1", "n2");
    let int =
        w.d.ok(&["network", "inspect", "-f", "{{.Id}}", "int"])
            .unwrap();
    let ni = w.netd_network(int.trim());
    assert_eq!(ni["Containers"].as_object().unwrap().len(), 3, "{ni}");

    // --ipv6: Docker's IPAM gives both pools; netd's network is dual
    // stack with Docker's IPv6 subnet and gateway, the container gets
    // Docker's IPv6 address and an IPv6 default route via netd's bridge.
    let net6 = w.network(
        "net6",
        &[
            "--ipv6",
            "--subnet",
            "10.14.0.0/24",
            "--subnet",
            "fd00:14::/64",
        ],
    );
    let n6 = w.netd_network(&net6);
    assert_eq!(n6["EnableIPv6"], true, "{n6}");
    let configs = n6["IPAM"]["Config"].as_array().unwrap();
    assert!(
        configs
            .iter()
            .any(|c| c["Subnet"] == "fd00:14::/64" && c["Gateway"] == "fd00:14::1"),
        "{n6}"
    );
    w.sleeper("s1", "net6");
    w.sleeper("s2", "net6");
    let v6 = |c: &str| {
        let f = "{{(index .NetworkSettings.Networks \"net6\").GlobalIPv6Address}}";
        w.docker(&["inspect", "-f", f, c]).trim().to_string()
    };
    let (s1, s2) = (v6("s1"), v6("s2"));
    assert!(
        s1.starts_with("fd00:14::") && s2.starts_with("fd00:14::"),
        "{s1} {s2}"
    );
    assert_ne!(s1, s2);
    let addrs = w.docker(&["exec", "s1", "ip", "-6", "addr"]);
    assert!(addrs.contains(&format!("{s1}/64")), "{addrs}");
    let routes = w.docker(&["exec", "s1", "ip", "-6", "route"]);
    assert!(routes.contains("default via fd00:14::1"), "{routes}");
    // netd knows the endpoints' IPv6 addresses (its datapath and DNS
    // use them).
    let n6 = w.netd_network(&net6);
    let eps = n6["Containers"].as_object().unwrap();
    for a in [&s1, &s2] {
        assert!(
            eps.values().any(|e| e["IPv6Address"] == format!("{a}/64")),
            "{a} not in {n6}"
        );
    }
    // IPv6 between the two through netd's datapath (Docker's addresses).
    w.ping_eventually("s1", &s2);
    w.ping_eventually("s2", &s1);
    w.docker(&["rm", "-f", "s1", "s2"]);
    w.docker(&["network", "rm", "net6"]);
    assert!(
        !w.n.ok(&["network", "ls"]).contains(&short(&net6)),
        "net6 left behind"
    );

    // kill -9 of netd: traffic keeps flowing (pinned programs, rules).
    let mut w = w;
    w.n.stop_daemon(true);
    assert_eq!(
        w.outside_get(&url).map(|b| client_ip(&b)),
        Some(OUTSIDE_IP.to_string()),
        "the published port died with netd"
    );
    assert!(w.ping("c1", "c2"), "c1 -> c2 died with netd");
    // A restart serves the plugin again: a new container joins.
    w.n.start_daemon().unwrap();
    w.sleeper("c3", "net1");
    w.ping_eventually("c3", "c1");
    w.ping_eventually("c1", "c3");
    assert!(w.outside_get(&url).is_some());
    // web, c1, c2, c3.
    let n1 = w.netd_network(&net1);
    assert_eq!(n1["Containers"].as_object().unwrap().len(), 4, "{n1}");

    // docker rm -f closes the port.
    w.docker(&["rm", "-f", "web"]);
    assert!(w.outside_get(&url).is_none(), "18080 still answers");
    let n1 = w.netd_network(&net1);
    assert_eq!(n1["Containers"].as_object().unwrap().len(), 3, "{n1}");

    // docker network rm leaves no veth and no netd network behind.
    w.docker(&["rm", "-f", "c1", "c2", "c3", "i1", "i2", "n1", "n2"]);
    w.docker(&["network", "rm", "net1", "noicc", "int"]);
    let nets = w.netd_json(&["network", "inspect", "bridge"]);
    assert_eq!(nets[0]["Name"], "bridge");
    let ls = w.n.ok(&["network", "ls"]);
    assert!(!ls.contains("docker:"), "{ls}");
    let links = w.host_links();
    assert!(
        !links
            .iter()
            .any(|l| l.starts_with("vnd") || l.starts_with("vnc") || l.starts_with("netd-")),
        "{links:?}"
    );
    let state = std::fs::read_to_string(w.n.dir.join("state/state.json")).unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    assert!(
        state["containers"].as_object().unwrap().is_empty(),
        "{state}"
    );
}

#[test]
fn docker_containers_on_netd_ebpf() {
    if needs("docker_containers_on_netd_ebpf", true) {
        scenario("ebpf");
    }
}

#[test]
fn docker_containers_on_netd_iptables() {
    if needs("docker_containers_on_netd_iptables", true) {
        scenario("iptables");
    }
}

#[test]
fn docker_containers_on_netd_nftables() {
    if needs("docker_containers_on_netd_nftables", true) {
        scenario("nftables");
    }
}

/// dockerd restarts: a clean stop removes its endpoints through the
/// plugin; a kill -9 makes Docker forget them without a word (their
/// veths die with the sandboxes), and netd drops them, so the restarted
/// containers get their address and port again, nothing duplicated.
#[test]
fn dockerd_restarts_leave_nothing_duplicated() {
    if !needs("dockerd_restarts_leave_nothing_duplicated", true) {
        return;
    }
    let mut w = World::start("ebpf");
    let net = w.network("rnet", &["--subnet", "10.21.0.0/24"]);
    w.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "rnet",
        "-p",
        "18081:80",
        IMAGE,
        "sh",
        "-c",
        HTTPD,
    ]);
    let url = format!("http://{HOST_IP}:18081/index.html");
    assert!(wait_until(READY, || w.outside_get(&url).is_some()));
    let count = |w: &World| {
        w.netd_network(&net)["Containers"]
            .as_object()
            .unwrap()
            .len()
    };
    assert_eq!(count(&w), 1);

    // SIGTERM: dockerd stops the container (Revoke, Leave, DeleteEndpoint).
    w.d.restart_dockerd(&DockerdOptions::default(), false)
        .unwrap();
    assert_eq!(count(&w), 0, "a clean dockerd stop left endpoints");
    w.docker(&["start", "web"]);
    assert!(wait_until(READY, || w.outside_get(&url).is_some()));
    assert_eq!(count(&w), 1);

    // kill -9: the next dockerd finds the container dead and drops its
    // endpoint without calling the plugin.
    w.d.restart_dockerd(&DockerdOptions::default(), true)
        .unwrap();
    w.docker(&["start", "web"]);
    assert!(
        wait_until(READY, || w.outside_get(&url).is_some()),
        "web did not come back\n--- netd log ---\n{}",
        tail(&w.n.log())
    );
    assert!(
        wait_until(READY, || count(&w) == 1),
        "endpoints: {}",
        w.netd_network(&net)
    );
    let ports: Vec<Value> = w.netd_network(&net)["Containers"]
        .as_object()
        .unwrap()
        .keys()
        .map(|id| w.netd_json(&["inspect", id])[0]["PortBindings"].clone())
        .collect();
    assert_eq!(ports, vec![json!(["80/tcp -> 0.0.0.0:18081"])]);
    w.docker(&["rm", "-f", "web"]);
    w.docker(&["network", "rm", "rnet"]);
    assert!(!w.host_links().iter().any(|l| l.starts_with("vnd")));
}

// ---- the protocol spoken directly (no dockerd) --------------------------

/// One call: (HTTP status, content type, JSON answer).
fn call(socket: &Path, method: &str, body: &Value) -> (u16, String, Value) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket"])
        .arg(socket)
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/vnd.docker.plugins.v1+json",
        ])
        // The body on stdin: a big one does not fit in an argument.
        .args(["--data-binary", "@-"])
        .args(["-w", "\n%{http_code} %{content_type}"])
        .arg(format!("http://plugin/{method}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            let mut stdin = c.stdin.take().expect("piped");
            stdin.write_all(body.to_string().as_bytes())?;
            drop(stdin);
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, meta) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, ctype) = meta.split_once(' ').unwrap_or((meta, ""));
    (
        code.parse().unwrap_or(0),
        ctype.to_string(),
        serde_json::from_str(json).unwrap_or(Value::Null),
    )
}

fn ok(socket: &Path, method: &str, body: &Value) -> Value {
    let (code, _, v) = call(socket, method, body);
    assert_eq!(code, 200, "{method} {body}: {v}");
    assert!(v.get("Err").is_none(), "{method}: {v}");
    v
}

fn err(socket: &Path, method: &str, body: &Value) -> String {
    let (code, _, v) = call(socket, method, body);
    assert_ne!(code, 200, "{method} {body} was accepted: {v}");
    v["Err"]
        .as_str()
        .unwrap_or_else(|| panic!("{method}: no Err in {v}"))
        .to_string()
}

const NET: &str = "aaaa1111bbbb2222cccc3333dddd4444eeee5555ffff6666aaaa7777bbbb8888";
const EP1: &str = "1111aaaa2222bbbb3333cccc4444dddd5555eeee6666ffff7777aaaa8888bbbb";
const EP2: &str = "2222aaaa2222bbbb3333cccc4444dddd5555eeee6666ffff7777aaaa8888bbbb";

fn create_network(extra: Value) -> Value {
    let mut v = json!({
        "NetworkID": NET,
        "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.31.0.0/24", "Gateway": "10.31.0.1/24"}],
        "IPv6Data": [],
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn endpoint(ep: &str, address: &str, mac: &str) -> Value {
    json!({"NetworkID": NET, "EndpointID": ep,
           "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
           "Options": {}})
}

fn portmap(ep: &str, maps: Value) -> Value {
    json!({"NetworkID": NET, "EndpointID": ep, "Options": {"com.docker.network.portmap": maps}})
}

/// What must not change when a call is refused.
fn snapshot(n: &Netd) -> (String, Vec<String>, String) {
    (
        n.ok(&["network", "ls"]),
        n.host_links(),
        std::fs::read_to_string(n.dir.join("state/state.json"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("boot_id"))
            .collect(),
    )
}

#[test]
fn plugin_protocol_answers_and_refuses_bad_input() {
    if !needs("plugin_protocol_answers_and_refuses_bad_input", false) {
        return;
    }
    let plugin = unique_stem("dkp");
    let guard = PluginSocket(socket_path(&plugin));
    let mut n = Netd::start_on(
        Testbed::new("e").unwrap(),
        "ebpf",
        &[("--docker-plugin", &plugin)],
    )
    .unwrap();
    let s = guard.0.clone();

    // Activation, capabilities, Docker's content type and error shape.
    let (code, ctype, v) = call(&s, "Plugin.Activate", &Value::Null);
    assert_eq!(
        (code, ctype.as_str()),
        (200, "application/vnd.docker.plugins.v1+json")
    );
    assert_eq!(v, json!({"Implements": ["NetworkDriver"]}));
    let v = ok(&s, "NetworkDriver.GetCapabilities", &Value::Null);
    assert_eq!(v["Scope"], "local");
    let (code, _, v) = call(&s, "NetworkDriver.AllocateNetwork", &json!({}));
    assert_eq!(code, 404);
    assert!(
        v["Err"].as_str().unwrap().contains("does not implement"),
        "{v}"
    );
    ok(
        &s,
        "NetworkDriver.DiscoverNew",
        &json!({"DiscoveryType": 1, "DiscoveryData": {}}),
    );

    // Bad networks change nothing.
    let before = snapshot(&n);
    for (body, want) in [
        (
            create_network(json!({"Options": {"com.docker.network.enable_ipv6": true}})),
            "no IPv6 pool",
        ),
        (
            create_network(json!({"IPv4Data": [
                {"Pool": "10.31.0.0/24", "Gateway": "10.31.0.1/24"},
                {"Pool": "10.32.0.0/24", "Gateway": "10.32.0.1/24"}]})),
            "one IPv4 subnet",
        ),
        (
            create_network(
                json!({"Options": {"com.docker.network.generic": {"com.docker.network.bridge.enable_icc": "maybe"}}}),
            ),
            "expected true or false",
        ),
        (
            create_network(json!({"Options": {"com.docker.network.generic": {"foo": "bar"}}})),
            "unknown network option",
        ),
        (
            create_network(
                json!({"IPv4Data": [{"Pool": "127.0.0.0/24", "Gateway": "127.0.0.1/24"}]}),
            ),
            "loopback",
        ),
        (
            create_network(
                json!({"IPv4Data": [{"Pool": "10.31.0.0/24", "Gateway": "10.32.0.1/24"}]}),
            ),
            "outside the subnet",
        ),
        (
            create_network(json!({"NetworkID": "../x"})),
            "invalid network id",
        ),
        (json!({"NetworkID": 5}), "malformed"),
    ] {
        let e = err(&s, "NetworkDriver.CreateNetwork", &body);
        assert!(e.contains(want), "{body}: {e}");
    }
    assert_eq!(snapshot(&n), before);

    // A good one, asked twice (Docker replays): one network.
    let generic = json!({"Options": {"com.docker.network.generic": {
        "com.docker.network.bridge.name": "dkp-br0", "com.docker.network.driver.mtu": "1400"}}});
    ok(
        &s,
        "NetworkDriver.CreateNetwork",
        &create_network(generic.clone()),
    );
    ok(&s, "NetworkDriver.CreateNetwork", &create_network(generic));
    let v: Value = serde_json::from_str(&n.ok(&["network", "inspect", &NET[..12]])).unwrap();
    assert_eq!(v[0]["Options"]["com.docker.network.bridge.name"], "dkp-br0");
    assert_eq!(v[0]["Options"]["com.docker.network.driver.mtu"], "1400");
    assert_eq!(v[0]["Owner"]["network"], NET);
    let e = err(
        &s,
        "NetworkDriver.CreateNetwork",
        &create_network(json!({"IPv4Data": [{"Pool": "10.33.0.0/24", "Gateway": "10.33.0.1/24"}]})),
    );
    assert!(e.contains("another subnet"), "{e}");
    // netd's own containers stay off Docker's networks.
    let e = n.fails(&["create", "--name", "mine", "--network", &NET[..12]]);
    assert!(e.contains("belongs to Docker"), "{e}");

    // Endpoints: bad ones change nothing.
    let before = snapshot(&n);
    for (body, want) in [
        (endpoint(EP1, "10.99.0.2/24", ""), "outside the subnet"),
        (endpoint(EP1, "10.31.0.2/16", ""), "does not match"),
        (endpoint(EP1, "10.31.0.1/24", ""), "gateway"),
        (
            endpoint(EP1, "10.31.0.2/24", "01:00:5e:00:00:01"),
            "multicast",
        ),
        (endpoint(EP1, "10.31.0.2/24", "zz"), "MAC"),
        (
            json!({"NetworkID": NET, "EndpointID": EP1, "Interface": {"Address": "10.31.0.2/24", "AddressIPv6": "fd00::2/64"}}),
            "has no IPv6",
        ),
        (
            json!({"NetworkID": "bbbb", "EndpointID": EP1, "Interface": {"Address": "10.31.0.2/24"}}),
            "not found",
        ),
    ] {
        let e = err(&s, "NetworkDriver.CreateEndpoint", &body);
        assert!(e.contains(want), "{body}: {e}");
    }
    assert_eq!(snapshot(&n), before);

    // Docker gave the address: netd answers the MAC it chose (02:42 +
    // the address); given a MAC too, an empty Interface.
    let v = ok(
        &s,
        "NetworkDriver.CreateEndpoint",
        &endpoint(EP1, "10.31.0.2/24", ""),
    );
    assert_eq!(v, json!({"Interface": {"MacAddress": "02:42:0a:1f:00:02"}}));
    let v = ok(
        &s,
        "NetworkDriver.CreateEndpoint",
        &endpoint(EP1, "10.31.0.2/24", ""),
    );
    assert_eq!(
        v,
        json!({"Interface": {"MacAddress": "02:42:0a:1f:00:02"}}),
        "replay"
    );
    let v = ok(
        &s,
        "NetworkDriver.CreateEndpoint",
        &endpoint(EP2, "10.31.0.3/24", "02:00:00:00:00:33"),
    );
    assert_eq!(v, json!({"Interface": {}}));
    let v = ok(
        &s,
        "NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP1, "SandboxKey": "/var/run/docker/netns/abc", "Options": {}}),
    );
    assert_eq!(v["InterfaceName"]["DstPrefix"], "eth");
    assert_eq!(v["Gateway"], "10.31.0.1");
    let src = v["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
    assert!(n.host_links().contains(&src), "{src} for Docker to move");
    let e = err(
        &s,
        "NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP1, "SandboxKey": "relative"}),
    );
    assert!(e.contains("SandboxKey"), "{e}");

    // Port bindings: checked as -p is; a conflict names the binding.
    let before = snapshot(&n);
    for (maps, want) in [
        (
            json!([{"Proto": 132, "Port": 80, "HostPort": 8080}]),
            "SCTP",
        ),
        (
            json!([{"Proto": 6, "Port": 0, "HostPort": 8080}]),
            "container port 0",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostPort": 9000, "HostPortEnd": 8000}]),
            "ends before",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostIP": "nope", "HostPort": 8080}]),
            "host IP",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostIP": "192.0.2.7", "HostPort": 8080}]),
            "no such address",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostPort": 70000}]),
            "invalid",
        ),
    ] {
        let e = err(
            &s,
            "NetworkDriver.ProgramExternalConnectivity",
            &portmap(EP1, maps.clone()),
        );
        assert!(e.contains(want), "{maps}: {e}");
    }
    assert_eq!(snapshot(&n), before);
    // TCP, UDP, a host address, an ephemeral port, a pick from a range.
    ok(
        &s,
        "NetworkDriver.ProgramExternalConnectivity",
        &portmap(
            EP1,
            json!([
                {"Proto": 6, "Port": 80, "HostPort": 18090, "HostPortEnd": 18090},
                {"Proto": 17, "Port": 53, "HostIP": "127.0.0.1", "HostPort": 18053},
                {"Proto": 6, "Port": 81},
                {"Proto": 6, "Port": 82, "HostPort": 18090, "HostPortEnd": 18092},
            ]),
        ),
    );
    let c: Value = serde_json::from_str(&n.ok(&["inspect", &EP1[..12]])).unwrap();
    assert_eq!(c[0]["Name"], format!("/docker-{}", &EP1[..12]));
    assert_eq!(
        c[0]["PortBindings"],
        json!([
            "80/tcp -> 0.0.0.0:18090",
            "53/udp -> 127.0.0.1:18053",
            "81/tcp -> 0.0.0.0:32768",
            "82/tcp -> 0.0.0.0:18091",
        ])
    );
    assert_eq!(
        c[0]["NetworkSettings"]["SandboxKey"],
        "/var/run/docker/netns/abc"
    );
    let e = err(
        &s,
        "NetworkDriver.ProgramExternalConnectivity",
        &portmap(EP2, json!([{"Proto": 6, "Port": 80, "HostPort": 18090}])),
    );
    assert!(e.contains("already allocated"), "{e}");
    // An endpoint netd does not know: an error, never "not implemented".
    let (code, _, v) = call(
        &s,
        "NetworkDriver.ProgramExternalConnectivity",
        &portmap(EP1.replace('1', "9").as_str(), json!([])),
    );
    assert!(code != 200 && code != 404, "{code} {v}");
    // The API leaves Docker's endpoints alone.
    let e = n.fails(&["rm", "-f", &EP1[..12]]);
    assert!(e.contains("Docker endpoint"), "{e}");
    let e = n.fails(&["network", "rm", &NET[..12]]);
    assert!(e.contains("docker network rm"), "{e}");

    // A restart keeps the network, endpoints and ports.
    n.stop_daemon(true);
    n.start_daemon().unwrap();
    let c: Value = serde_json::from_str(&n.ok(&["inspect", &EP1[..12]])).unwrap();
    assert_eq!(c[0]["PortBindings"].as_array().unwrap().len(), 4);
    ok(
        &s,
        "NetworkDriver.RevokeExternalConnectivity",
        &json!({"NetworkID": NET, "EndpointID": EP1}),
    );
    let c: Value = serde_json::from_str(&n.ok(&["inspect", &EP1[..12]])).unwrap();
    assert_eq!(c[0]["PortBindings"], json!([]));
    // A big range (one binding per port, as Docker sends it).
    let big: Vec<Value> = (0..5000)
        .map(|i| json!({"Proto": 6, "Port": 20000 + i, "HostPort": 40000 + i, "HostPortEnd": 40000 + i}))
        .collect();
    ok(
        &s,
        "NetworkDriver.ProgramExternalConnectivity",
        &portmap(EP2, json!(big)),
    );
    let c: Value = serde_json::from_str(&n.ok(&["inspect", &EP2[..12]])).unwrap();
    assert_eq!(c[0]["PortBindings"].as_array().unwrap().len(), 5000);
    ok(
        &s,
        "NetworkDriver.RevokeExternalConnectivity",
        &json!({"NetworkID": NET, "EndpointID": EP2}),
    );
    let v = ok(
        &s,
        "NetworkDriver.EndpointOperInfo",
        &json!({"NetworkID": NET, "EndpointID": EP1}),
    );
    assert_eq!(v["Value"]["IPv4Address"], "10.31.0.2");

    // A second daemon cannot take the plugin over.
    let other = n
        .daemon_command_with(&[
            ("--state-dir", &n.dir.join("state2").display().to_string()),
            ("--exec-root", &n.dir.join("run2").display().to_string()),
            ("--socket", &n.dir.join("netd2.sock").display().to_string()),
        ])
        .output()
        .unwrap();
    assert!(!other.status.success());
    let e = String::from_utf8_lossy(&other.stderr);
    assert!(e.contains("another process serves"), "{e}");
    assert!(s.exists(), "the refused daemon removed the live socket");

    // Removing: idempotent, and nothing left.
    for ep in [EP1, EP2] {
        let r = json!({"NetworkID": NET, "EndpointID": ep});
        ok(&s, "NetworkDriver.Leave", &r);
        ok(&s, "NetworkDriver.DeleteEndpoint", &r);
        ok(&s, "NetworkDriver.DeleteEndpoint", &r);
    }
    ok(
        &s,
        "NetworkDriver.DeleteNetwork",
        &json!({"NetworkID": NET}),
    );
    ok(
        &s,
        "NetworkDriver.DeleteNetwork",
        &json!({"NetworkID": NET}),
    );
    let links = n.host_links();
    assert!(
        !links.iter().any(|l| l.starts_with("vn") || l == "dkp-br0"),
        "{links:?}"
    );
    // A clean exit removes the socket.
    n.stop_daemon(false);
    assert!(!s.exists(), "the plugin socket outlived the daemon");
}

// ---- crash safety of the plugin's operations ------------------------------

/// A plugin call: method and body.
type Call = (&'static str, fn() -> Value);

fn cn() -> Value {
    create_network(json!({"Options": {"com.docker.network.generic": {
        "com.docker.network.bridge.name": "dkf-br0"}}}))
}
fn dn() -> Value {
    json!({"NetworkID": NET})
}
fn ce() -> Value {
    endpoint(EP1, "10.31.0.2/24", "")
}
fn ep() -> Value {
    json!({"NetworkID": NET, "EndpointID": EP1})
}
fn join() -> Value {
    json!({"NetworkID": NET, "EndpointID": EP1, "SandboxKey": "/var/run/docker/netns/f1", "Options": {}})
}
fn program() -> Value {
    portmap(
        EP1,
        json!([{"Proto": 6, "Port": 80, "HostPort": 8090}, {"Proto": 17, "Port": 53, "HostPort": 8053}]),
    )
}

const CREATE_NETWORK: Call = ("NetworkDriver.CreateNetwork", cn);
const DELETE_NETWORK: Call = ("NetworkDriver.DeleteNetwork", dn);
const CREATE_ENDPOINT: Call = ("NetworkDriver.CreateEndpoint", ce);
const DELETE_ENDPOINT: Call = ("NetworkDriver.DeleteEndpoint", ep);
const JOIN: Call = ("NetworkDriver.Join", join);
const LEAVE: Call = ("NetworkDriver.Leave", ep);
const PROGRAM: Call = ("NetworkDriver.ProgramExternalConnectivity", program);
const REVOKE: Call = ("NetworkDriver.RevokeExternalConnectivity", ep);
const RESET: &[Call] = &[DELETE_ENDPOINT, DELETE_NETWORK];

struct PluginOp {
    name: &'static str,
    setup: &'static [Call],
    run: Call,
    removal: bool,
}

const PLUGIN_OPS: &[PluginOp] = &[
    PluginOp {
        name: "network-create",
        setup: &[],
        run: CREATE_NETWORK,
        removal: false,
    },
    PluginOp {
        name: "docker-endpoint",
        setup: &[CREATE_NETWORK],
        run: CREATE_ENDPOINT,
        removal: false,
    },
    PluginOp {
        name: "docker-program",
        setup: &[CREATE_NETWORK, CREATE_ENDPOINT, JOIN],
        run: PROGRAM,
        removal: false,
    },
    PluginOp {
        name: "docker-revoke",
        setup: &[CREATE_NETWORK, CREATE_ENDPOINT, JOIN, PROGRAM],
        run: REVOKE,
        removal: true,
    },
    PluginOp {
        name: "docker-leave",
        setup: &[CREATE_NETWORK, CREATE_ENDPOINT, JOIN, PROGRAM],
        run: LEAVE,
        removal: true,
    },
    PluginOp {
        name: "docker-endpoint-rm",
        setup: &[CREATE_NETWORK, CREATE_ENDPOINT, JOIN, PROGRAM],
        run: DELETE_ENDPOINT,
        removal: true,
    },
    PluginOp {
        name: "docker-network-rm",
        setup: &[CREATE_NETWORK],
        run: DELETE_NETWORK,
        removal: true,
    },
];

/// What the plugin's operations change: networks, links, the endpoint's
/// bindings and sandbox, the datapath's rules.
fn plugin_snapshot(n: &Netd) -> Vec<String> {
    let mut v: Vec<String> = n
        .ok(&["network", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(|s| format!("network {s}")))
        .collect();
    v.extend(
        n.host_links()
            .into_iter()
            .filter(|l| l.starts_with("dkf") || l.starts_with("vn"))
            .map(|l| format!("link {}", &l[..3])),
    );
    let out = n.netd(&["inspect", &EP1[..12]]).unwrap();
    let c: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for c in c.as_array().into_iter().flatten() {
        v.push(format!(
            "endpoint {} {} {}",
            c["Name"], c["PortBindings"], c["NetworkSettings"]["SandboxKey"]
        ));
    }
    let mut rules: Vec<String> = n
        .ruleset()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
        .map(|l| format!("rule {l}"))
        .collect();
    rules.sort();
    v.extend(rules);
    v
}

fn calls(s: &Path, list: &[Call]) {
    for (m, body) in list {
        ok(s, m, &body());
    }
}

fn best_effort_calls(s: &Path, list: &[Call]) {
    for (m, body) in list {
        // Undoing what may or may not have happened.
        let _ = call(s, m, &body());
    }
}

/// A kill -9 at every step of every plugin operation: after a restart
/// the state and the kernel are the ones before or after the operation,
/// and a committed removal is finished.
#[test]
fn plugin_operations_survive_a_kill_at_every_step() {
    if !needs("plugin_operations_survive_a_kill_at_every_step", false) {
        return;
    }
    let plugin = unique_stem("dkf");
    let guard = PluginSocket(socket_path(&plugin));
    let s = guard.0.clone();
    let mut n = Netd::start_on(
        Testbed::new("e").unwrap(),
        "iptables",
        &[("--docker-plugin", &plugin)],
    )
    .unwrap();
    let baseline = plugin_snapshot(&n);
    let trace = n.dir.join("fault-trace");
    let mut walked = 0;
    for op in PLUGIN_OPS {
        n.stop_daemon(false);
        n.start_daemon_with(&[("NETD_FAULT_TRACE", trace.to_str().unwrap())])
            .unwrap();
        calls(&s, op.setup);
        let before = plugin_snapshot(&n);
        std::fs::write(&trace, "").unwrap();
        ok(&s, op.run.0, &(op.run.1)());
        let after = plugin_snapshot(&n);
        assert_ne!(before, after, "{}: changed nothing", op.name);
        let steps: Vec<String> = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert!(
            steps
                .iter()
                .any(|st| st.starts_with(&format!("{}/", op.name))),
            "{}: no fault point traced: {steps:?}",
            op.name
        );
        best_effort_calls(&s, RESET);
        assert_eq!(plugin_snapshot(&n), baseline, "{}: reset", op.name);
        n.stop_daemon(false);
        n.start_daemon().unwrap();
        let committed_at = steps.iter().position(|st| st.ends_with("/save"));
        for (i, step) in steps.iter().enumerate() {
            calls(&s, op.setup);
            assert_eq!(plugin_snapshot(&n), before, "{step}: setup");
            n.stop_daemon(false);
            n.start_daemon_with(&[("NETD_FAULT", step)]).unwrap();
            let _ = call(&s, op.run.0, &(op.run.1)());
            let status = n.reap_daemon();
            assert!(
                status.is_some_and(|st| !st.success()),
                "{step}: the daemon should have been killed there\n{}",
                n.log()
            );
            n.start_daemon().unwrap();
            let got = plugin_snapshot(&n);
            assert!(
                got == before || got == after,
                "{step}: neither before nor after:\n got    {got:?}\n before {before:?}\n after  {after:?}"
            );
            if op.removal && committed_at.is_some_and(|c| i > c) {
                assert_eq!(got, after, "{step}: a committed removal is finished");
            }
            best_effort_calls(&s, RESET);
            assert_eq!(plugin_snapshot(&n), baseline, "{step}: reset");
            walked += 1;
        }
    }
    eprintln!(
        "walked {walked} fault points over {} plugin operations",
        PLUGIN_OPS.len()
    );
}
