//! netd as a CNI plugin, driven exactly as a container runtime drives it:
//! the `netd` executable found in CNI_PATH by the config's `type`, run in
//! the runtime's (the testbed host's) namespace with a clean environment
//! (`env -i` plus the CNI variables and PATH), the network configuration
//! on stdin, the result or CNI error read from stdout
//! (`netd::testbed::cni`). The daemon runs in the throwaway host namespace
//! (`netd_tests::daemon::Netd`); container namespaces are named ones, as
//! `ip netns add` makes them. Chains use the reference plugins of
//! Debian's containernetworking-plugins (CNI up to 1.0.0), and a real
//! runtime, Podman 4 with its CNI backend, runs a busybox image on netd.
//!
//! The main scenarios run once per datapath (`scenarios!`).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use netd::{
    netns::NetNs,
    testbed::{
        HOST_IP, OUTSIDE_IP,
        cni::{Attachment, Chain, CniCommand, CniRunner, Outcome, gc_config},
        image::BUSYBOX,
        podman::{self, CNI_PLUGIN_DIR, NetworkBackend, PODMAN, Podman},
        require_tools, unique_stem, wait_until,
    },
};
use netd_tests::{
    daemon::{Netd, netd_bin},
    require_root,
};
use serde_json::{Value, json};

/// Readiness deadline (servers coming up, ARP); never an assertion on speed.
const READY: Duration = Duration::from_secs(20);
const REFERENCE: &[&str] = &["/usr/lib/cni/tuning", "/usr/lib/cni/bandwidth"];

fn netd() -> String {
    netd_bin().display().to_string()
}

/// A daemon in a throwaway host namespace, and a runtime's view of it: a
/// CNI_PATH holding `netd` (installed as a runtime expects: a file named
/// after the `type`) and the reference plugins.
struct Cni {
    n: Netd,
    runner: CniRunner,
    bin_dir: PathBuf,
}

impl Cni {
    fn start(dp: &str) -> Cni {
        let n = Netd::start(dp).unwrap();
        let bin_dir = n.dir.join("cni-bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::os::unix::fs::symlink(netd_bin(), bin_dir.join("netd")).unwrap();
        let runner = CniRunner::new(&n.tb.host, &[&bin_dir, Path::new(CNI_PLUGIN_DIR)]);
        Cni { n, runner, bin_dir }
    }

    /// A single-plugin config for netd (what libcni hands the first
    /// plugin of a list): `extra` keys added.
    fn conf(&self, version: &str, name: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": name,
            "type": "netd",
            "socket": self.n.socket,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    }

    /// A container namespace (removed with the testbed).
    fn netns(&mut self, name: &str) -> NetNs {
        self.n.tb.netns(name).unwrap()
    }

    fn exec(&self, cmd: CniCommand, conf: &Value, att: Option<&Attachment>) -> Outcome {
        self.runner.exec(cmd, conf, att).unwrap()
    }

    /// The command must succeed; returns its output (ADD's result).
    fn ok(&self, cmd: CniCommand, conf: &Value, att: Option<&Attachment>) -> Value {
        let o = self.exec(cmd, conf, att);
        assert!(
            o.status.success(),
            "{} failed: {}{}\n--- daemon log ---\n{}",
            cmd.as_str(),
            o.stdout,
            o.stderr,
            self.n.log()
        );
        o.json.unwrap_or(Value::Null)
    }

    fn add(&self, conf: &Value, att: &Attachment) -> Value {
        self.ok(CniCommand::Add, conf, Some(att))
    }

    fn del(&self, conf: &Value, att: &Attachment) {
        let o = self.exec(CniCommand::Del, conf, Some(att));
        assert!(o.status.success(), "DEL failed: {}{}", o.stdout, o.stderr);
        assert!(o.stdout.trim().is_empty(), "DEL printed {}", o.stdout);
    }

    /// The command must fail with a CNI error: non-zero exit, the error
    /// object on stdout. Returns (code, msg + details).
    fn fails(&self, cmd: CniCommand, conf: &Value, att: Option<&Attachment>) -> (u64, String) {
        let o = self.exec(cmd, conf, att);
        assert!(
            !o.status.success(),
            "{} should have failed: {}",
            cmd.as_str(),
            o.stdout
        );
        cni_error(&o)
    }

    /// `netd ps` (as text).
    fn ps(&self) -> String {
        self.n.ok(&["ps"])
    }

    fn in_ns(&self, ns: &NetNs, args: &[&str]) -> String {
        self.n.tb.ok(ns, args).unwrap()
    }

    fn links_in(&self, ns: &NetNs) -> String {
        self.in_ns(ns, &["ip", "-o", "link", "show"])
    }
}

/// The CNI error object of a failed invocation: (code, msg + details).
fn cni_error(o: &Outcome) -> (u64, String) {
    let e = o
        .json
        .as_ref()
        .unwrap_or_else(|| panic!("no CNI error on stdout: {}{}", o.stdout, o.stderr));
    assert!(e["cniVersion"].is_string(), "{e}");
    let msg = e["msg"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "an error without msg: {e}");
    let code = e["code"].as_u64().unwrap_or_else(|| panic!("no code: {e}"));
    (
        code,
        format!("{msg} | {}", e["details"].as_str().unwrap_or_default()),
    )
}

/// Runs the plugin by hand as `env -i CNI_COMMAND=.. CNI_CONTAINERID=..
/// CNI_NETNS=.. CNI_IFNAME=.. CNI_PATH=.. netd < stdin` in the host
/// namespace; it must fail: (code, msg + details).
fn raw(c: &Cni, command: &str, stdin: &[u8], att: &Attachment) -> (u64, String) {
    use std::io::Write;
    let mut cmd = c.n.tb.host.command("env").unwrap();
    cmd.arg("-i")
        .arg(format!("CNI_COMMAND={command}"))
        .arg(format!("CNI_CONTAINERID={}", att.container_id))
        .arg(format!("CNI_NETNS={}", att.netns.display()))
        .arg(format!("CNI_IFNAME={}", att.ifname))
        .arg(format!("CNI_PATH={}", c.bin_dir.display()))
        .arg(c.bin_dir.join("netd"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "should have failed: {stdout}");
    let json = serde_json::from_str(&stdout).ok();
    cni_error(&Outcome {
        status: out.status,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    })
}

/// An HTTP server in `ns` answering `hello from NAME to CLIENT`.
fn serve(c: &mut Cni, ns: &NetNs, listen: &str, name: &str) {
    let ns = ns.clone();
    c.n.tb
        .spawn(
            &ns,
            &[&netd(), "tool", "http-serve", listen, "--name", name],
        )
        .unwrap();
}

fn curl(c: &Cni, ns: &NetNs, url: &str) -> Option<String> {
    let o =
        c.n.tb
            .exec(ns, &["curl", "-sS", "--max-time", "3", url])
            .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn curl_wait(c: &Cni, ns: &NetNs, url: &str) -> String {
    let mut got = None;
    wait_until(READY, || {
        got = curl(c, ns, url);
        got.is_some()
    });
    got.unwrap_or_else(|| panic!("{url} never answered\n{}", c.n.log()))
}

fn ping(c: &Cni, ns: &NetNs, ip: &str) -> bool {
    wait_until(READY, || {
        c.n.tb
            .exec(ns, &["ping", "-c", "1", "-W", "1", ip])
            .is_ok_and(|o| o.status.success())
    })
}

/// The address (without prefix) of a result's container interface.
fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn host_veths(c: &Cni) -> Vec<String> {
    c.n.host_links()
        .into_iter()
        .filter(|l| l.starts_with("vnd"))
        .collect()
}

fn outside_url(c: &mut Cni) -> String {
    let outside = c.n.tb.outside.clone();
    serve(c, &outside, &format!("{OUTSIDE_IP}:8081"), "outside");
    let url = format!("http://{OUTSIDE_IP}:8081/");
    curl_wait(c, &outside, &url);
    url
}

// ---- per-datapath scenarios ----------------------------------------------

/// STATUS; two ADDs that ping each other and reach the outside
/// masqueraded; `netd ps` and `netd stats` list them; CHECK healthy and
/// broken; netd's own commands refuse them; DEL twice, DEL without a
/// namespace, DEL of an unknown id; nothing left.
fn add_ping_check_del(dp: &str) {
    let mut c = Cni::start(dp);
    let url = outside_url(&mut c);
    let (ns1, ns2) = (c.netns("c1"), c.netns("c2"));
    let conf = c.conf("1.1.0", "cninet", json!({"subnet": "10.99.0.0/24"}));
    c.ok(CniCommand::Status, &conf, None);

    let id1 = unique_stem("ctr");
    let id2 = unique_stem("ctr");
    let mut a1 = Attachment::new(&id1, ns1.path(), "eth0");
    // The pod's name (as containerd and podman pass it) is its DNS name.
    a1.args.push(("K8S_POD_NAME".into(), "pod-one".into()));
    // Any interface name, not only eth0.
    let a2 = Attachment::new(&id2, ns2.path(), "net1");
    let r1 = c.add(&conf, &a1);
    let r2 = c.add(&conf, &a2);
    let (ip1, ip2) = (ip_of(&r1), ip_of(&r2));
    assert!(ip1.starts_with("10.99.0.") && ip2.starts_with("10.99.0."));
    assert_ne!(ip1, ip2);
    assert!(c.links_in(&ns2).contains("net1"));
    // The runtime's namespace: the address, the default route, IPv6 off.
    let addrs = c.in_ns(&ns1, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{ip1}/24")), "{addrs}");
    let routes = c.in_ns(&ns1, &["ip", "route"]);
    assert!(routes.contains("default via 10.99.0.1"), "{routes}");

    assert!(ping(&c, &ns1, &ip2), "c1 -> c2\n{}", c.n.log());
    assert!(ping(&c, &ns2, &ip1), "c2 -> c1");
    let got = curl_wait(&c, &ns1, &url);
    assert!(
        got.starts_with(&format!("hello from outside to {HOST_IP}:")),
        "not masqueraded: {got}"
    );

    // The network's embedded DNS server (the result's nameserver) knows
    // the pod by name.
    let mut answer = String::new();
    wait_until(READY, || {
        answer =
            c.n.tb
                .exec(
                    &ns2,
                    &[&netd(), "tool", "dns-query", "10.99.0.1", "pod-one"],
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
        answer.contains(&ip1)
    });
    assert!(answer.contains(&ip1), "pod-one does not resolve: {answer}");

    // First-class in the daemon.
    let ps = c.ps();
    for (id, ifname, ip) in [(&id1, "eth0", &ip1), (&id2, "net1", &ip2)] {
        let line = ps
            .lines()
            .find(|l| l.contains(&format!("{id}:{ifname}")))
            .unwrap_or_else(|| panic!("netd ps does not list {id}:{ifname}:\n{ps}"));
        assert!(
            line.contains("cninet") && line.contains(ip.as_str()),
            "{line}"
        );
    }
    let info = c.n.inspect(&format!("{id1}:eth0"));
    assert_eq!(info["Cni"]["ContainerID"], id1.as_str());
    assert_eq!(info["Cni"]["Netns"], ns1.path().to_str().unwrap());
    let stats: Value = serde_json::from_str(&c.n.ok(&["stats", "--format", "json"])).unwrap();
    assert_eq!(stats["CniAttachments"], 2, "{stats}");
    if dp == "ebpf" {
        let eps = stats["Endpoints"].as_object().unwrap();
        assert!(
            eps.keys().any(|k| k.starts_with(&format!("{id1}:eth0/"))),
            "{stats}"
        );
    }
    // netd's own container commands are not for the runtime's attachments.
    let e = c.n.fails(&["rm", "-f", &format!("{id1}:eth0")]);
    assert!(e.contains("CNI attachment"), "{e}");

    // CHECK: healthy, then broken (the address removed behind netd's back).
    let mut chk = conf.clone();
    chk["prevResult"] = r1.clone();
    c.ok(CniCommand::Check, &chk, Some(&a1));
    let mut chk2 = conf.clone();
    chk2["prevResult"] = r2.clone();
    c.ok(CniCommand::Check, &chk2, Some(&a2));
    c.in_ns(&ns2, &["ip", "addr", "flush", "dev", "net1"]);
    let (code, msg) = c.fails(CniCommand::Check, &chk2, Some(&a2));
    assert_eq!(code, 102, "{msg}");
    assert!(
        msg.contains("net1") && msg.contains("does not have address"),
        "{msg}"
    );

    // DEL twice.
    c.del(&conf, &a1);
    assert!(!c.links_in(&ns1).contains("eth0"), "eth0 left after DEL");
    c.del(&conf, &a1);
    // A broken CHECK after DEL: the attachment is gone.
    let (code, msg) = c.fails(CniCommand::Check, &chk, Some(&a1));
    assert_eq!(code, 102, "{msg}");
    // DEL without a namespace (the runtime removed it first).
    ns2.remove().unwrap();
    let gone = Attachment::new(&id2, Path::new(""), "net1");
    c.del(&conf, &gone);
    // DEL of an id netd never saw.
    c.del(&conf, &Attachment::new("never-added", ns1.path(), "eth0"));

    assert!(host_veths(&c).is_empty(), "{:?}", host_veths(&c));
    let ps = c.ps();
    assert!(!ps.contains(&id1) && !ps.contains(&id2), "{ps}");
    // Addresses are free again: the next ADD gets the first one back.
    let a3 = Attachment::new(&unique_stem("ctr"), ns1.path(), "eth0");
    let r3 = c.add(&conf, &a3);
    assert_eq!(ip_of(&r3), ip1.as_str().min(ip2.as_str()));
    c.del(&conf, &a3);
    // The runtime's namespace is never netd's to delete.
    assert!(ns1.exists());
}

/// A conflist netd -> tuning -> bandwidth (1.0.0: the reference plugins'
/// newest) with runtimeConfig.portMappings: the port answers from outside
/// (the client's address preserved), tuning's sysctl is applied in the
/// container, bandwidth finds the host veth in netd's result and shapes
/// it; CHECK passes along the chain; DEL undoes all of it.
fn chain_tuning_bandwidth_ports(dp: &str) {
    if !require_tools("chain_tuning_bandwidth_ports", REFERENCE) {
        return;
    }
    let mut c = Cni::start(dp);
    let ns = c.netns("web");
    let tuning_dir = c.n.dir.join("tuning");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "cnichain",
        "plugins": [
            {
                "type": "netd", "socket": c.n.socket, "subnet": "10.98.0.0/24",
                "capabilities": {"portMappings": true},
            },
            {
                "type": "tuning", "dataDir": tuning_dir,
                "sysctl": {"net.core.somaxconn": "511"},
            },
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        ]
    });
    let id = unique_stem("ctr");
    let mut att = Attachment::new(&id, ns.path(), "eth0");
    att.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]),
    );
    att.capability_args.insert(
        "bandwidth".into(),
        json!({"ingressRate": 1_000_000_000u64, "ingressBurst": 100_000_000u64,
               "egressRate": 1_000_000_000u64, "egressBurst": 100_000_000u64}),
    );
    let mut chain = Chain::new(&c.runner, list, att).unwrap();
    let result = chain
        .add()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.n.log()));
    assert_eq!(result["cniVersion"], "1.0.0");
    let host_veth = result["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(host_veth.starts_with("vnd"), "{result}");
    // bandwidth: a TBF on the host veth (ingress shaping) and an ifb for
    // egress, both listed in the result it passes on.
    let qdisc = c.in_ns(&c.n.tb.host, &["tc", "qdisc", "show", "dev", &host_veth]);
    assert!(qdisc.contains("tbf"), "{qdisc}");
    let ifb = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .find(|n| n.starts_with("bwp"))
        .unwrap_or_else(|| panic!("no bandwidth ifb in {result}"))
        .to_string();
    assert!(c.n.host_links().contains(&ifb));
    // tuning: the sysctl, inside the container's namespace.
    let v = c.in_ns(&ns, &["sysctl", "-n", "net.core.somaxconn"]);
    assert_eq!(v.trim(), "511");
    chain.check().unwrap();

    serve(&mut c, &ns, "0.0.0.0:80", "web");
    let outside = c.n.tb.outside.clone();
    let got = curl_wait(&c, &outside, &format!("http://{HOST_IP}:18080/"));
    assert!(
        got.starts_with(&format!("hello from web to {OUTSIDE_IP}:")),
        "{got}"
    );
    assert!(c.ps().contains("80/tcp -> 0.0.0.0:18080"), "{}", c.ps());

    chain.del().unwrap();
    assert!(!c.links_in(&ns).contains("eth0"));
    assert!(host_veths(&c).is_empty());
    assert!(!c.n.host_links().contains(&ifb), "bandwidth's ifb left");
    assert!(
        curl(&c, &outside, &format!("http://{HOST_IP}:18080/")).is_none(),
        "the port still answers after DEL"
    );
    assert!(!c.n.ruleset().contains("18080"), "{}", c.n.ruleset());
    assert!(!c.ps().contains(&id));
}

/// kill -9 of the daemon: while it is down STATUS says 50 and DEL 11 (the
/// runtime retries; nothing is lost) and the datapath keeps forwarding;
/// after the restart the attachment is still there (its veth, deleted
/// meanwhile, made again) and DEL cleans it up; an attachment whose
/// namespace went away meanwhile is released by reconcile, and no runtime
/// namespace is ever deleted.
fn kill9_then_del(dp: &str) {
    let mut c = Cni::start(dp);
    let (ns1, ns2) = (c.netns("k1"), c.netns("k2"));
    let mut conf = c.conf("1.1.0", "cnik", json!({"subnet": "10.97.0.0/24"}));
    conf["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 18090, "containerPort": 80, "protocol": "tcp"}]});
    let a1 = Attachment::new(&unique_stem("ctr"), ns1.path(), "eth0");
    let r1 = c.add(&conf, &a1);
    let plain = c.conf("1.1.0", "cnik", json!({}));
    let a2 = Attachment::new(&unique_stem("ctr"), ns2.path(), "eth0");
    let r2 = c.add(&plain, &a2);
    serve(&mut c, &ns1, "0.0.0.0:80", "k1");
    let outside = c.n.tb.outside.clone();
    let url = format!("http://{HOST_IP}:18090/");
    curl_wait(&c, &outside, &url);

    c.n.stop_daemon(true);
    let (code, msg) = c.fails(CniCommand::Status, &conf, None);
    assert_eq!(code, 50, "{msg}");
    assert!(msg.contains("not available"), "{msg}");
    let (code, msg) = c.fails(CniCommand::Del, &conf, Some(&a1));
    assert_eq!(code, 11, "{msg}");
    assert!(msg.contains(c.n.socket.to_str().unwrap()), "{msg}");
    assert!(
        curl(&c, &outside, &url).is_some(),
        "published port lost while the daemon is down"
    );
    // The runtime removes k2's namespace while netd is down, and k1's
    // veth goes missing.
    ns2.remove().unwrap();
    let veth1 = r1["interfaces"][1]["name"].as_str().unwrap().to_string();
    c.in_ns(&c.n.tb.host, &["ip", "link", "del", &veth1]);

    c.n.start_daemon().unwrap();
    c.ok(CniCommand::Status, &conf, None);
    let ps = c.ps();
    assert!(ps.contains(&a1.container_id), "{ps}");
    assert!(!ps.contains(&a2.container_id), "k2 was not released: {ps}");
    // Reconcile made k1's endpoint again, as it was.
    let mut chk = conf.clone();
    chk["prevResult"] = r1.clone();
    c.ok(CniCommand::Check, &chk, Some(&a1));
    let got = curl_wait(&c, &outside, &url);
    assert!(got.starts_with("hello from k1 to "), "{got}");
    // k2's address is free again.
    let ns3 = c.netns("k3");
    let a3 = Attachment::new(&unique_stem("ctr"), ns3.path(), "eth0");
    let r3 = c.add(&plain, &a3);
    assert_eq!(ip_of(&r3), ip_of(&r2));

    c.del(&conf, &a1);
    c.del(&plain, &a3);
    assert!(
        ns1.exists() && ns3.exists(),
        "a runtime namespace was deleted"
    );
    assert!(host_veths(&c).is_empty(), "{:?}", host_veths(&c));
    assert!(curl(&c, &outside, &url).is_none(), "port still published");
    assert!(!c.n.ruleset().contains("18090"));
    assert!(!c.ps().contains(&a1.container_id));
}

/// What the daemon says and the kernel has, with the random parts of
/// names (netd ids, bridge and veth suffixes) left out.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    ps: Vec<String>,
    networks: Vec<String>,
    links: Vec<String>,
    in_container: bool,
    rules: Vec<String>,
}

/// `netd-0123456789` -> `netd-X`, `vnd012345678` -> `vndX`.
fn unrandom(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        let hex = |t: &str, n: usize| t.len() >= n && t[..n].bytes().all(|b| b.is_ascii_hexdigit());
        if let Some(t) = rest.strip_prefix("netd-")
            && hex(t, 10)
        {
            out.push_str("netd-X");
            rest = &t[10..];
        } else if let Some(t) = rest.strip_prefix("vnd")
            && hex(t, 9)
        {
            out.push_str("vndX");
            rest = &t[9..];
        } else {
            let ch = rest.chars().next().expect("not empty");
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    out
}

fn snapshot(c: &Cni, ns: &NetNs) -> Snapshot {
    let sorted = |it: Vec<String>| {
        let mut v = it;
        v.sort();
        v
    };
    Snapshot {
        // Without the CONTAINER ID column (netd's random id).
        ps: c
            .ps()
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .collect(),
        networks: sorted(
            c.n.ok(&["network", "ls"])
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .collect(),
        ),
        links: sorted(c.n.host_links().iter().map(|l| unrandom(l)).collect()),
        in_container: c.links_in(ns).contains("eth0"),
        rules: sorted(
            c.n.rules()
                .lines()
                .map(unrandom)
                .chain(ebpf_state(c))
                .filter(|l| !l.is_empty())
                .collect(),
        ),
    }
}

/// The eBPF datapath's side (it installs no rules): the pinned TCX links
/// of the veths that exist (one per container veth), the published ports
/// map, the number of endpoints. (Pins of veths that vanished while the
/// daemon was down are left out: the datapath does not remove them yet,
/// for netd's own containers either.)
fn ebpf_state(c: &Cni) -> Vec<String> {
    if c.n.datapath != "ebpf" {
        return vec![];
    }
    let bpffs = c.n.dir.join("bpffs");
    let links = c.n.host_links();
    let mut v: Vec<String> = std::fs::read_dir(bpffs.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pin| !pin.starts_with("vnd") || links.contains(pin))
        .map(|pin| format!("pinned link {}", unrandom(&pin)))
        .collect();
    let dump = |map: &str| -> Value {
        let path = bpffs
            .join("maps")
            .join(format!("{map}_{}", netd_common::MAP_VERSION));
        let out =
            c.n.tb
                .ok(
                    &c.n.tb.host,
                    &[
                        "bpftool",
                        "-j",
                        "map",
                        "dump",
                        "pinned",
                        path.to_str().unwrap(),
                    ],
                )
                .unwrap();
        serde_json::from_str(&out).unwrap()
    };
    v.push(format!("ports map {}", dump("NETD_PORTS")));
    let eps = dump("NETD_EP").as_array().map_or(0, Vec::len);
    v.push(format!("endpoints map: {eps} entries"));
    v
}

/// Crash safety: a kill -9 of the daemon at every step of ADD (which
/// also creates the network) and DEL (`NETD_FAULT=OP/STEP`, debug
/// builds). After the restart the state and the kernel are the ones
/// before the operation or after it, never a mix; a DEL past its commit
/// is finished, not undone.
fn fault_injection_walk(dp: &str) {
    let mut c = Cni::start(dp);
    let ns = c.netns("f1");
    let mut conf = c.conf("1.1.0", "cnifault", json!({"subnet": "10.91.0.0/24"}));
    conf["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 18091, "containerPort": 80, "protocol": "tcp"}]});
    let att = Attachment::new("faultctr", ns.path(), "eth0");
    let trace = c.n.dir.join("fault-trace");
    let reset = |c: &Cni| {
        c.del(&conf, &att);
        if c.n.ok(&["network", "ls"]).contains("cnifault") {
            c.n.ok(&["network", "rm", "cnifault"]);
        }
    };
    let baseline = snapshot(&c, &ns);
    let mut walked = 0;
    for (op, command, setup) in [
        ("cni-add", CniCommand::Add, false),
        ("cni-del", CniCommand::Del, true),
    ] {
        c.n.stop_daemon(false);
        c.n.start_daemon_with(&[("NETD_FAULT_TRACE", trace.to_str().unwrap())])
            .unwrap();
        if setup {
            c.add(&conf, &att);
        }
        let before = snapshot(&c, &ns);
        std::fs::write(&trace, "").unwrap();
        c.ok(command, &conf, Some(&att));
        let after = snapshot(&c, &ns);
        assert_ne!(before, after, "{op} changed nothing");
        let steps: Vec<String> = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .filter(|s| s.starts_with(&format!("{op}/")))
            .map(str::to_string)
            .collect();
        assert!(!steps.is_empty(), "{op}: no fault point traced");
        reset(&c);
        assert_eq!(snapshot(&c, &ns), baseline, "{op}: reset");
        c.n.stop_daemon(false);
        c.n.start_daemon().unwrap();
        let committed_at = steps.iter().position(|s| s.ends_with("/save"));
        for (i, step) in steps.iter().enumerate() {
            if setup {
                c.add(&conf, &att);
            }
            assert_eq!(snapshot(&c, &ns), before, "{step}: setup");
            c.n.stop_daemon(false);
            c.n.start_daemon_with(&[("NETD_FAULT", step)]).unwrap();
            let o = c.exec(command, &conf, Some(&att));
            assert!(
                !o.status.success(),
                "{step}: the plugin did not notice the crash"
            );
            assert_eq!(
                cni_error(&o).0,
                11,
                "{step}: a lost daemon is try-again-later"
            );
            let status = c.n.reap_daemon();
            assert!(
                status.is_some_and(|s| !s.success()),
                "{step}: the daemon should have been killed there\n{}",
                c.n.log()
            );
            c.n.start_daemon().unwrap();
            let got = snapshot(&c, &ns);
            assert!(
                got == before || got == after,
                "{dp} {step}: neither the state before nor the one after:\n got    {got:?}\n before {before:?}\n after  {after:?}\n{}",
                c.n.log()
            );
            if op == "cni-del" && committed_at.is_some_and(|at| i > at) {
                assert_eq!(got, after, "{step}: a committed DEL is finished");
            }
            reset(&c);
            assert_eq!(snapshot(&c, &ns), baseline, "{step}: reset");
            walked += 1;
        }
    }
    eprintln!("{dp}: walked {walked} CNI fault points");
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        scenarios!(@datapath ebpf: $($name),*);
        scenarios!(@datapath iptables: $($name),*);
        scenarios!(@datapath nftables: $($name),*);
    };
    (@datapath $dp:ident: $($name:ident),*) => {
        mod $dp {
            $(
                #[test]
                fn $name() {
                    if !netd_tests::require_root(concat!(stringify!($dp), "::", stringify!($name))) {
                        return;
                    }
                    super::$name(stringify!($dp));
                }
            )*
        }
    };
}

scenarios!(
    add_ping_check_del,
    chain_tuning_bandwidth_ports,
    kill9_then_del,
    fault_injection_walk,
);

// ---- once (the datapath does not matter) --------------------------------

#[test]
fn version_needs_no_daemon() {
    if !require_root("version_needs_no_daemon") {
        return;
    }
    let c = Cni::start("iptables");
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let versions = c.runner.versions("netd", v).unwrap();
        for want in ["0.4.0", "1.0.0", "1.1.0"] {
            assert!(versions.contains(&want.to_string()), "{versions:?}");
        }
    }
    let out = c.ok(
        CniCommand::Version,
        &json!({"cniVersion": "1.0.0", "type": "netd"}),
        None,
    );
    assert_eq!(out["cniVersion"], "1.0.0");
}

/// ADD in each version's shape, then GC removes the one attachment of
/// three that the runtime no longer lists.
#[test]
fn result_shapes_and_gc() {
    if !require_root("result_shapes_and_gc") {
        return;
    }
    let mut c = Cni::start("ebpf");
    let mut atts = Vec::new();
    for (i, v) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let ns = c.netns(&format!("s{i}"));
        let conf = c.conf(v, "cnishape", json!({"subnet": "10.96.0.0/24"}));
        let att = Attachment::new(&unique_stem("ctr"), ns.path(), "eth0");
        let r = c.add(&conf, &att);
        assert_eq!(r["cniVersion"], v, "{r}");
        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3, "{r}");
        assert!(ifs[0]["name"].as_str().unwrap().starts_with("netd-"), "{r}");
        assert!(ifs[0].get("sandbox").is_none() && ifs[1].get("sandbox").is_none());
        let host = ifs[1]["name"].as_str().unwrap();
        assert!(c.n.host_links().contains(&host.to_string()), "{r}");
        assert_eq!(ifs[2]["name"], "eth0");
        assert_eq!(ifs[2]["sandbox"], ns.path().to_str().unwrap());
        // The container's MAC, as the kernel has it.
        let link = c.in_ns(&ns, &["ip", "-o", "link", "show", "eth0"]);
        let mac = ifs[2]["mac"].as_str().unwrap();
        assert!(link.contains(&format!("link/ether {mac} ")), "{r}\n{link}");
        let ip = &r["ips"][0];
        assert_eq!(ip["interface"], 2);
        assert_eq!(ip["gateway"], "10.96.0.1");
        assert!(ip["address"].as_str().unwrap().ends_with("/24"));
        assert_eq!(
            ip.get("version").and_then(Value::as_str),
            (v == "0.4.0").then_some("4"),
            "{r}"
        );
        let mtu = v == "1.1.0";
        assert_eq!(ifs[1].get("mtu").is_some(), mtu, "{r}");
        assert_eq!(ifs[2].get("mtu").is_some(), mtu, "{r}");
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.96.0.1"}])
        );
        // A user-defined network: its embedded DNS server.
        assert_eq!(r["dns"]["nameservers"], json!(["10.96.0.1"]));
        atts.push(att);
    }
    let list = json!({"cniVersion": "1.1.0", "name": "cnishape",
        "plugins": [{"type": "netd", "socket": c.n.socket}]});
    // GC is 1.1.0: an older config is refused.
    let old = gc_config(
        &json!({"cniVersion": "1.0.0", "name": "cnishape",
        "plugins": [{"type": "netd", "socket": c.n.socket}]}),
        0,
        &[],
    )
    .unwrap();
    assert_eq!(c.fails(CniCommand::Gc, &old, None).0, 1);
    let keep: Vec<(&str, &str)> = atts[..2]
        .iter()
        .map(|a| (a.container_id.as_str(), "eth0"))
        .collect();
    let gc = gc_config(&list, 0, &keep).unwrap();
    c.ok(CniCommand::Gc, &gc, None);
    let ps = c.ps();
    assert!(
        ps.contains(&atts[0].container_id) && ps.contains(&atts[1].container_id),
        "{ps}"
    );
    assert!(!ps.contains(&atts[2].container_id), "GC kept it: {ps}");
    assert_eq!(host_veths(&c).len(), 2);
    // GC of another network touches nothing of this one.
    let other = gc_config(
        &json!({"cniVersion": "1.1.0", "name": "othernet",
        "plugins": [{"type": "netd", "socket": c.n.socket}]}),
        0,
        &[],
    )
    .unwrap();
    c.ok(CniCommand::Gc, &other, None);
    assert_eq!(host_veths(&c).len(), 2);
    c.ok(CniCommand::Gc, &gc_config(&list, 0, &[]).unwrap(), None);
    assert!(host_veths(&c).is_empty());
}

/// Dual stack: `subnet6` (or `"ipv6": true`) gives the network IPv6; the
/// attachment gets an address of each family (runtimeConfig.ips may ask
/// for both), an IPv6 default route, a result listing both in each
/// version's shape; CHECK checks the IPv6 address too; mismatches and an
/// IPv6 address for an IPv4-only config are CNI errors that change nothing.
#[test]
fn dual_stack_attachments() {
    if !require_root("dual_stack_attachments") {
        return;
    }
    let mut c = Cni::start("iptables");
    let (ns1, ns2, ns3) = (c.netns("d1"), c.netns("d2"), c.netns("d3"));
    let conf = c.conf(
        "0.4.0",
        "cnidual",
        json!({"subnet": "10.95.0.0/24", "subnet6": "fd00:95::/64"}),
    );
    let a1 = Attachment::new(&unique_stem("ctr"), ns1.path(), "eth0");
    let r1 = c.add(&conf, &a1);
    let ips = r1["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{r1}");
    assert_eq!(ips[1]["version"], "6", "{r1}");
    assert_eq!(ips[1]["interface"], 2, "{r1}");
    assert_eq!(ips[1]["gateway"], "fd00:95::1", "{r1}");
    let addr6 = ips[1]["address"].as_str().unwrap().to_string();
    assert!(
        addr6.starts_with("fd00:95::") && addr6.ends_with("/64"),
        "{r1}"
    );
    assert_eq!(
        r1["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.95.0.1"}, {"dst": "::/0", "gw": "fd00:95::1"}])
    );
    let have = c.in_ns(&ns1, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
    assert!(have.contains(&addr6), "{have}");
    let routes = c.in_ns(&ns1, &["ip", "-6", "route"]);
    assert!(routes.contains("default via fd00:95::1"), "{routes}");
    let net: Value = serde_json::from_str(&c.n.ok(&["network", "inspect", "cnidual"])).unwrap();
    assert_eq!(net[0]["EnableIPv6"], true, "{net}");

    // Both addresses asked for (capability ips), in the 1.0.0 shape.
    let mut conf2 = c.conf(
        "1.0.0",
        "cnidual",
        json!({"subnet": "10.95.0.0/24", "subnet6": "fd00:95::/64"}),
    );
    conf2["runtimeConfig"] = json!({"ips": ["10.95.0.9/24", "fd00:95::9/64"]});
    let a2 = Attachment::new(&unique_stem("ctr"), ns2.path(), "eth0");
    let r2 = c.add(&conf2, &a2);
    assert_eq!(
        r2["ips"],
        json!([
            {"interface": 2, "address": "10.95.0.9/24", "gateway": "10.95.0.1"},
            {"interface": 2, "address": "fd00:95::9/64", "gateway": "fd00:95::1"},
        ]),
        "{r2}"
    );
    // CHECK: healthy, then the IPv6 address removed behind netd's back.
    let mut chk = conf2.clone();
    chk["prevResult"] = r2.clone();
    c.ok(CniCommand::Check, &chk, Some(&a2));
    c.in_ns(
        &ns2,
        &["ip", "-6", "addr", "del", "fd00:95::9/64", "dev", "eth0"],
    );
    let (code, msg) = c.fails(CniCommand::Check, &chk, Some(&a2));
    assert_eq!(code, 102, "{msg}");
    assert!(msg.contains("fd00:95::9/64"), "{msg}");

    // Errors that change nothing: another IPv6 subnet for the network, an
    // address taken, an IPv6 address for an IPv4-only config.
    let before = (c.ps(), host_veths(&c));
    let a3 = Attachment::new(&unique_stem("ctr"), ns3.path(), "eth0");
    let other = c.conf(
        "1.0.0",
        "cnidual",
        json!({"subnet": "10.95.0.0/24", "subnet6": "fd00:96::/64"}),
    );
    let (_, msg) = c.fails(CniCommand::Add, &other, Some(&a3));
    assert!(
        msg.contains("fd00:95::/64") && msg.contains("fd00:96::/64"),
        "{msg}"
    );
    let (_, msg) = c.fails(CniCommand::Add, &conf2, Some(&a3));
    assert!(
        msg.contains("fd00:95::9") || msg.contains("10.95.0.9"),
        "{msg}"
    );
    let mut v4only = c.conf("1.0.0", "cnifour", json!({"subnet": "10.94.0.0/24"}));
    v4only["runtimeConfig"] = json!({"ips": ["fd00:94::9/64"]});
    let (code, msg) = c.fails(CniCommand::Add, &v4only, Some(&a3));
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("no IPv6"), "{msg}");
    assert_eq!(
        (c.ps(), host_veths(&c)),
        before,
        "a failed ADD changed something"
    );
    assert!(
        c.links_in(&ns3).lines().count() == 1,
        "{}",
        c.links_in(&ns3)
    );

    // "ipv6": true alone: a /64 of the daemon's IPv6 pool.
    let pool = c.conf(
        "1.0.0",
        "cnipool",
        json!({"subnet": "10.93.0.0/24", "ipv6": true}),
    );
    let r3 = c.add(&pool, &a3);
    let a = r3["ips"][1]["address"].as_str().unwrap();
    assert!(a.starts_with("fd") && a.ends_with("/64"), "{r3}");

    // DEL releases both addresses: the same ones can be asked for again.
    c.del(&conf2, &a2);
    let r2 = c.add(&conf2, &a2);
    assert_eq!(r2["ips"][1]["address"], "fd00:95::9/64", "{r2}");
    for (conf, a) in [(&conf, &a1), (&conf2, &a2), (&pool, &a3)] {
        c.del(conf, a);
    }
    assert!(host_veths(&c).is_empty());
}

/// IPv6-only attachments (`"ipv4": false`, as `--ipv4=false`): the
/// network is created without IPv4, the result lists the IPv6 address,
/// its `::/0` route and the DNS server on the IPv6 gateway, the
/// attachments reach each other over IPv6 and have no IPv4; CHECK passes;
/// configs that contradict it change nothing.
#[test]
fn ipv6_only_attachments() {
    if !require_root("ipv6_only_attachments") {
        return;
    }
    let mut c = Cni::start("ebpf");
    let (ns1, ns2, ns3) = (c.netns("s1"), c.netns("s2"), c.netns("s3"));
    let conf = c.conf(
        "1.0.0",
        "cnisix",
        json!({"ipv4": false, "subnet6": "fd00:92::/64"}),
    );
    let a1 = Attachment::new(&unique_stem("ctr"), ns1.path(), "eth0");
    let a2 = Attachment::new(&unique_stem("ctr"), ns2.path(), "eth0");
    let r1 = c.add(&conf, &a1);
    assert_eq!(
        r1["ips"],
        json!([{"interface": 2, "address": "fd00:92::2/64", "gateway": "fd00:92::1"}]),
        "{r1}"
    );
    assert_eq!(r1["routes"], json!([{"dst": "::/0", "gw": "fd00:92::1"}]));
    assert_eq!(r1["dns"]["nameservers"], json!(["fd00:92::1"]), "{r1}");
    let r2 = c.add(&conf, &a2);
    assert_eq!(r2["ips"][0]["address"], "fd00:92::3/64", "{r2}");
    let v4 = c.in_ns(&ns1, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(v4.trim().is_empty(), "{v4}");
    c.in_ns(&ns2, &["ping", "-6", "-c", "1", "-W", "2", "fd00:92::2"]);
    let net: Value = serde_json::from_str(&c.n.ok(&["network", "inspect", "cnisix"])).unwrap();
    assert_eq!(net[0]["EnableIPv4"], false, "{net}");
    let mut chk = conf.clone();
    chk["prevResult"] = r1.clone();
    c.ok(CniCommand::Check, &chk, Some(&a1));

    // Contradictions change nothing: IPv4 turned off without IPv6, an
    // IPv4 subnet with "ipv4": false, an IPv4 address asked for, and an
    // existing IPv6-only network with an IPv4 subnet (or a network with
    // IPv4 with "ipv4": false).
    let before = (c.ps(), host_veths(&c));
    let a3 = Attachment::new(&unique_stem("ctr"), ns3.path(), "eth0");
    for (extra, want) in [
        (json!({"ipv4": false}), "IPv4 or IPv6 must be enabled"),
        (
            json!({"ipv4": false, "ipv6": true, "subnet": "10.92.0.0/24"}),
            "\"ipv4\": false",
        ),
        (json!({"subnet": "10.92.0.0/24"}), "none (IPv6-only)"),
    ] {
        let bad = c.conf("1.0.0", "cnisix", extra);
        let (code, msg) = c.fails(CniCommand::Add, &bad, Some(&a3));
        assert_eq!(code, 7, "{msg}");
        assert!(msg.contains(want), "{msg}");
    }
    let mut with_v4 = conf.clone();
    with_v4["runtimeConfig"] = json!({"ips": ["10.92.0.9/24"]});
    let (code, msg) = c.fails(CniCommand::Add, &with_v4, Some(&a3));
    assert_eq!(code, 7, "{msg}");
    c.n.ok(&["network", "create", "--subnet", "10.91.0.0/24", "cnifourx"]);
    let off = c.conf("1.0.0", "cnifourx", json!({"ipv4": false, "ipv6": true}));
    let (_, msg) = c.fails(CniCommand::Add, &off, Some(&a3));
    assert!(msg.contains("exists with IPv4"), "{msg}");
    assert_eq!(
        (c.ps(), host_veths(&c)),
        before,
        "a failed ADD changed something"
    );
    for a in [&a1, &a2] {
        c.del(&conf, a);
    }
    assert!(host_veths(&c).is_empty());
}

/// Bad configs and environments get a CNI error with the spec's code and
/// a message naming the problem, and change nothing.
#[test]
fn bad_input_is_a_cni_error_and_changes_nothing() {
    if !require_root("bad_input_is_a_cni_error_and_changes_nothing") {
        return;
    }
    let mut c = Cni::start("iptables");
    let ns = c.netns("b1");
    let good = c.conf("1.0.0", "cnibad", json!({"subnet": "10.95.0.0/24"}));
    // One attachment first, so conflicts have something to conflict with.
    let mut first = good.clone();
    first["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 18095, "containerPort": 80, "protocol": "tcp"}]});
    let a0 = Attachment::new(&unique_stem("ctr"), ns.path(), "eth0");
    c.add(&first, &a0);
    let before = (c.n.host_links(), c.ps(), c.n.rules());

    let ns2 = c.netns("b2");
    let att = Attachment::new(&unique_stem("ctr"), ns2.path(), "eth0");
    let with = |extra: Value| {
        let mut v = good.clone();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let cases: Vec<(&str, Value, u64, &str)> = vec![
        (
            "old version",
            with(json!({"cniVersion": "0.2.0"})),
            1,
            "incompatible CNI versions",
        ),
        (
            "no name",
            json!({"cniVersion": "1.0.0", "type": "netd", "socket": c.n.socket}),
            7,
            "network name",
        ),
        (
            "ipam",
            with(json!({"ipam": {"type": "host-local"}})),
            2,
            "ipam",
        ),
        (
            "bad subnet",
            with(json!({"name": "fresh", "subnet": "10.94.0.0/33"})),
            7,
            "invalid subnet",
        ),
        (
            "subnet overlaps",
            with(json!({"name": "fresh", "subnet": "10.95.0.0/16"})),
            7,
            "overlaps",
        ),
        (
            "unknown network",
            with(json!({"name": "nosuchnet", "subnet": null})),
            7,
            "does not exist",
        ),
        (
            "other subnet",
            with(json!({"subnet": "10.93.0.0/24"})),
            7,
            "exists with subnet",
        ),
        (
            "gateway outside",
            with(json!({"name": "fresh", "subnet": "10.92.0.0/24", "gateway": "10.91.0.1"})),
            7,
            "outside the subnet",
        ),
        (
            "ip outside",
            with(json!({"runtimeConfig": {"ips": ["10.1.2.3/24"]}})),
            7,
            "outside the subnet",
        ),
        (
            "ipv6 ip",
            with(json!({"runtimeConfig": {"ips": ["fd00::2/64"]}})),
            7,
            "no IPv6",
        ),
        (
            "bad mac",
            with(json!({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}})),
            7,
            "multicast",
        ),
        (
            "sctp",
            with(
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 9, "containerPort": 9, "protocol": "sctp"}]}}),
            ),
            7,
            "sctp",
        ),
        (
            "port taken",
            with(
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 18095, "containerPort": 81, "protocol": "tcp"}]}}),
            ),
            101,
            "already allocated",
        ),
        (
            "daemon down",
            with(json!({"socket": "/nonexistent/netd.sock"})),
            11,
            "not available",
        ),
    ];
    for (what, conf, code, needle) in &cases {
        let (got, msg) = c.fails(CniCommand::Add, conf, Some(&att));
        assert_eq!(got, *code, "{what}: {msg}");
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} does not say {needle:?}"
        );
    }
    // Not JSON at all, and an unknown command: straight through `env -i`.
    let (code, msg) = raw(&c, "ADD", b"{\"cniVersion\": ", &att);
    assert_eq!(code, 6, "{msg}");
    let (code, msg) = raw(&c, "FROB", br#"{"cniVersion": "1.0.0", "name": "x"}"#, &att);
    assert_eq!(code, 4, "{msg}");
    assert!(msg.contains("CNI_COMMAND"), "{msg}");
    // The environment.
    let envs: Vec<(&str, Attachment, &str)> = vec![
        (
            "ifname",
            Attachment::new("c-1", ns2.path(), "a/b"),
            "CNI_IFNAME",
        ),
        (
            "container id",
            Attachment::new("-x", ns2.path(), "eth0"),
            "CNI_CONTAINERID",
        ),
        (
            "netns",
            Attachment::new("c-1", Path::new("/nonexistent/ns"), "eth0"),
            "CNI_NETNS",
        ),
    ];
    for (what, a, needle) in &envs {
        let (got, msg) = c.fails(CniCommand::Add, &good, Some(a));
        assert_eq!(got, 4, "{what}: {msg}");
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // The same attachment twice, and an interface name already taken.
    let (got, msg) = c.fails(CniCommand::Add, &good, Some(&a0));
    assert_eq!(got, 101, "{msg}");
    let taken = Attachment::new(&unique_stem("ctr"), ns.path(), "eth0");
    let (got, msg) = c.fails(CniCommand::Add, &good, Some(&taken));
    assert_eq!(got, 101, "{msg}");
    assert!(msg.contains("already exists"), "{msg}");
    // CHECK needs 0.4.0 and a prevResult.
    let mut old = good.clone();
    old["cniVersion"] = json!("0.3.1");
    assert_eq!(c.fails(CniCommand::Check, &old, Some(&a0)).0, 1);
    assert_eq!(c.fails(CniCommand::Check, &good, Some(&a0)).0, 7);

    assert_eq!(
        (c.n.host_links(), c.ps(), c.n.rules()),
        before,
        "bad input changed something"
    );
    assert!(
        !c.links_in(&ns2).contains("eth0"),
        "an interface was left in the namespace"
    );
    let nets = c.n.ok(&["network", "ls"]);
    assert!(
        !nets.contains("fresh") && !nets.contains("nosuchnet"),
        "{nets}"
    );
    c.del(&good, &a0);
}

/// A real runtime: Podman 4 with its CNI backend runs a busybox image on
/// a netd conflist (netd then tuning, portMappings from `-p`), the port
/// answers from outside, egress is masqueraded, `podman rm` DELs.
#[test]
fn podman_runs_busybox_on_netd() {
    if !require_root("podman_runs_busybox_on_netd")
        || !require_tools(
            "podman_runs_busybox_on_netd",
            &[PODMAN, BUSYBOX, "/usr/sbin/runc", "/usr/lib/cni/tuning"],
        )
    {
        return;
    }
    let mut c = Cni::start("ebpf");
    let url = outside_url(&mut c);
    let pm = Podman::new(
        &c.n.tb.host,
        NetworkBackend::Cni,
        &[&c.bin_dir, Path::new(CNI_PLUGIN_DIR)],
    )
    .unwrap();
    let net = unique_stem("pmnet").replace('-', "");
    pm.write_conflist(&json!({
        "cniVersion": "1.0.0",
        "name": net,
        "plugins": [
            {
                "type": "netd", "socket": c.n.socket, "subnet": "10.90.0.0/24",
                "capabilities": {"portMappings": true},
            },
            {"type": "tuning", "dataDir": c.n.dir.join("tuning"), "sysctl": {"net.core.somaxconn": "511"}},
        ]
    }))
    .unwrap();
    podman::busybox_image(&pm, "netd-busybox", &[]).unwrap();
    pm.ok(&[
        "run",
        "-d",
        "--name",
        "pweb",
        "--network",
        &net,
        "-p",
        "18085:80",
        "netd-busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-podman > /www/index.html && exec httpd -f -p 80 -h /www",
    ])
    .unwrap_or_else(|e| panic!("{e:#}\n--- daemon log ---\n{}", c.n.log()));
    let ps = c.ps();
    let line = ps
        .lines()
        .find(|l| l.contains(&net))
        .unwrap_or_else(|| panic!("netd ps does not list podman's container:\n{ps}"));
    assert!(
        line.contains("10.90.0.") && line.contains("18085"),
        "{line}"
    );
    // Podman's own container id and namespace; its container name came
    // as K8S_POD_NAME: the attachment's DNS name.
    let info = c.n.inspect(line.split_whitespace().nth(1).unwrap());
    assert_eq!(info["Config"]["Hostname"], "pweb", "{info}");
    assert_eq!(info["Cni"]["IfName"], "eth0");
    assert!(
        info["Cni"]["Netns"]
            .as_str()
            .unwrap()
            .starts_with("/run/netns/")
    );
    let outside = c.n.tb.outside.clone();
    let body = curl_wait(&c, &outside, &format!("http://{HOST_IP}:18085/index.html"));
    assert_eq!(body.trim(), "hello-podman");
    let got = pm
        .ok(&[
            "exec", "pweb", "timeout", "10", "wget", "-q", "-O", "-", &url,
        ])
        .unwrap();
    assert!(
        got.starts_with(&format!("hello from outside to {HOST_IP}:")),
        "egress: {got:?}"
    );
    pm.ok(&["rm", "-f", "-t", "0", "pweb"]).unwrap();
    assert!(!c.ps().contains(&net), "podman rm did not DEL: {}", c.ps());
    assert!(host_veths(&c).is_empty());
    assert!(curl(&c, &outside, &format!("http://{HOST_IP}:18085/")).is_none());
}
