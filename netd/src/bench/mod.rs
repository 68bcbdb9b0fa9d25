//! `netd bench`: the datapaths side by side on the same topology and load,
//! measured in alternating rounds (A B C A B C ...) in one run, against
//! the bare-veth floor; reported as medians, min-max and ratios.
//!
//! Every datapath gets its own throwaway host/outside namespaces and
//! daemon, all built before the first measurement, so a round visits each
//! in turn with nothing rebuilt in between. Servers run on CPU 0, clients
//! on CPU 1 (when there are two). Load generators (`netd tool`):
//! - TCP_RR: one connection, 1-byte request, 1-byte response, back to back;
//!   transactions/s and latency p50/p99 of each exchange.
//! - TCP_CRR: connect, 1-byte request, 1-byte response, client closes;
//!   connections/s and latency p50/p99 of connect..close.
//! - UDP_RR: 1-byte datagram and its echo, back to back.
//! - TCP_STREAM: iperf3, one flow, Gbit/s received.
//!
//! `node2node` builds a two-node cluster per datapath (`testbed::cluster`:
//! node namespaces on an underlay, a daemon with `--cluster-cidr` on
//! each, a pod network per node, each node `node add`ed on the other) and
//! measures a pod on node 1 against a pod on node 2 by address, beside a
//! routed floor: two plain namespaces behind veths in the same two node
//! namespaces, routed over the same underlay by static routes (no bridge,
//! no rule, no program).
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    api::Client,
    link::{Netlink, mac_for_ip},
    netns::NetNs,
    testbed::{
        self, HOST_IP, OUTSIDE_IP, Testbed,
        cluster::{Cluster, node_ip},
    },
};

mod docker;

pub struct Opts {
    pub datapaths: Vec<String>,
    /// The Docker peers: `Some(true)` required, `Some(false)` never,
    /// `None` when dockerd is installed.
    pub docker: Option<bool>,
    pub scenarios: Vec<String>,
    pub rounds: u32,
    pub duration: f64,
    pub ports: Vec<u32>,
    pub out: PathBuf,
    pub quick: bool,
}

pub const ALL_SCENARIOS: [&str; 7] = [
    "c2c",
    "dnat",
    "egress",
    "scaling",
    "control",
    "bpf",
    "node2node",
];
/// The cluster CIDR of `node2node`; node N's pods are 10.244.N.0/24.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const RR_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const STREAM_PORT: u16 = 5201;
const SCALE_PORT: u16 = 7500;

/// A netd daemon in a testbed's host namespace, with its own state,
/// exec root, bpffs and cgroup; stopped (`--cleanup-on-exit`) and its
/// leftovers removed on drop.
pub(crate) struct Daemon {
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    pub client: Client,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `netd daemon --datapath dp` (plus `extra` flags) in `tb`'s
    /// host namespace and waits until it answers.
    pub(crate) fn start(
        tb: &Testbed,
        dp: &str,
        out: &Path,
        me: &str,
        extra: &[&str],
    ) -> Result<Daemon> {
        let dir = out.join(format!("tmp-{}", tb.stem));
        std::fs::create_dir_all(&dir)?;
        let cgroup = crate::cgroup::cgroup2_root()?.join(&tb.stem);
        std::fs::create_dir_all(&cgroup)?;
        let socket = dir.join("netd.sock");
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let child = Command::new(me)
            .args(["-H"])
            .arg(&socket)
            .args(["daemon", "--datapath", dp, "--cleanup-on-exit", "--netns"])
            .arg(tb.host.path())
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--exec-root")
            .arg(dir.join("run"))
            .arg("--bpffs")
            .arg(dir.join("bpffs"))
            .arg("--cgroup")
            .arg(&cgroup)
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the daemon")?;
        let d = Daemon {
            dir,
            cgroup,
            client: Client::new(socket),
            child: Some(child),
        };
        if !testbed::wait_until(Duration::from_secs(30), || d.client.get("/_ping").is_ok()) {
            bail!("the {dp} daemon did not start: {}", d.log());
        }
        Ok(d)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut d) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
        if let Ok(procs) = std::fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for p in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        for e in std::fs::read_dir(self.dir.join("run/netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let ns = NetNs::at(e.path());
            if let Ok(ino) = ns.inode() {
                for p in crate::netns::pids_in(ino) {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            let _ = ns.remove();
        }
        // The namespace directory is a (shared) mount of its own, as is
        // the daemon's bpffs.
        for m in ["run/netns", "bpffs"] {
            let _ = nix::mount::umount2(&self.dir.join(m), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One datapath's world: namespaces, daemon, containers. (The daemon
/// goes before the namespaces.)
struct Instance {
    dp: String,
    d: Daemon,
    tb: Testbed,
    me: String,
    b_ip: String,
}

fn pin(cpu: usize) -> Vec<String> {
    if num_cpus() > 1 {
        vec!["taskset".into(), "-c".into(), cpu.to_string()]
    } else {
        vec![]
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The servers every target runs: RR, UDP echo and iperf3.
fn servers(me: &str) -> String {
    format!(
        "{me} tool rr-server 0.0.0.0:{RR_PORT} & {me} tool udp-echo 0.0.0.0:{UDP_PORT} & iperf3 -s -p {STREAM_PORT} >/dev/null 2>&1 & wait"
    )
}

impl Instance {
    fn start(dp: &str, out: &Path, me: &str) -> Result<Instance> {
        let tb = Testbed::new("bench")?;
        let d = Daemon::start(&tb, dp, out, me, &[])?;
        let mut i = Instance {
            dp: dp.into(),
            d,
            tb,
            me: me.into(),
            b_ip: String::new(),
        };
        // b: the servers, published; a: the client.
        let mut srv = pin(0);
        srv.extend(["sh".into(), "-c".into(), servers(me)]);
        i.run_detached(
            "b",
            &[
                &format!("{RR_PORT}:{RR_PORT}"),
                &format!("{UDP_PORT}:{UDP_PORT}/udp"),
                &format!("{STREAM_PORT}:{STREAM_PORT}"),
            ],
            &srv,
        )?;
        i.create("a", &[])?;
        let v = i.d.client.get("/containers/b/json")?;
        i.b_ip = v["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // The world runs the same servers.
        let out = i.tb.outside.clone();
        let mut cmd = vec!["sh".to_string(), "-c".into(), servers(me)];
        let mut pinned = pin(0);
        pinned.append(&mut cmd);
        let args: Vec<&str> = pinned.iter().map(String::as_str).collect();
        i.tb.spawn(&out, &args)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(i)
    }

    fn create(&self, name: &str, publish: &[&str]) -> Result<()> {
        self.d.client.post(
            "/containers/create",
            &json!({ "Name": name, "Publish": publish }),
        )?;
        Ok(())
    }

    /// `netd run -d` equivalent: a container whose main process is `cmd`.
    fn run_detached(&self, name: &str, publish: &[&str], cmd: &[String]) -> Result<()> {
        let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        self.d.client.post(
            "/containers/create",
            &json!({ "Name": name, "Publish": publish, "Cmd": cmd, "Env": env }),
        )?;
        self.d
            .client
            .post(&format!("/containers/{name}/start"), &json!({}))?;
        Ok(())
    }

    /// Runs a client inside container `name` (pinned to CPU 1), through
    /// `netd exec`, and returns its output.
    fn in_container(&self, name: &str, args: &[String]) -> Result<String> {
        let mut full = pin(1);
        full.extend(args.iter().cloned());
        let out = Command::new(&self.me)
            .arg("-H")
            .arg(&self.d.client.socket)
            .args(["exec", name, "--"])
            .args(&full)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "{args:?} in {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn in_ns(&self, ns: &NetNs, args: &[String]) -> Result<String> {
        let mut full = pin(1);
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.tb.ok(ns, &refs)
    }
}

/// The floor: a bare veth pair between two namespaces, same servers.
struct Floor {
    tb: Testbed,
}

impl Floor {
    fn start(me: &str) -> Result<Floor> {
        // Reuses the testbed's host <-> outside veth: nothing else on it.
        let mut tb = Testbed::new("floor")?;
        let peer = tb.outside.clone();
        // No forwarding, no bridge, no rule, no program: host and outside
        // are just the two ends of one veth pair.
        let mut cmd = pin(0);
        cmd.extend(["sh".into(), "-c".into(), servers(me)]);
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        tb.spawn(&peer, &args)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Floor { tb })
    }
}

/// `node2node` on one datapath: a two-node cluster, the servers in pod
/// `b` on node 2, the client pod `a` on node 1. (Daemons go before the
/// node namespaces, those before the cluster's.)
struct Node2Node {
    dp: String,
    d: Vec<Daemon>,
    _nodes: Vec<Testbed>,
    _cluster: Cluster,
    me: String,
    server_ip: String,
}

impl Node2Node {
    fn start(dp: &str, out: &Path, me: &str) -> Result<Node2Node> {
        let cluster = Cluster::new("b2n", 2)?;
        let nodes = vec![cluster.node_testbed(1), cluster.node_testbed(2)];
        let mut d = Vec::new();
        for tb in &nodes {
            d.push(Daemon::start(
                tb,
                dp,
                out,
                me,
                &["--cluster-cidr", CLUSTER_CIDR],
            )?);
        }
        for (i, daemon) in d.iter().enumerate() {
            let (n, other) = (i as u8 + 1, 2 - i as u8);
            daemon.client.post(
                "/networks/create",
                &json!({ "Name": "pods", "Subnet": format!("10.244.{n}.0/24") }),
            )?;
            daemon.client.post(
                "/nodes",
                &json!({
                    "Name": format!("node{other}"),
                    "PodCidr": format!("10.244.{other}.0/24"),
                    "Address": node_ip(other).to_string(),
                }),
            )?;
        }
        let mut srv = pin(0);
        srv.extend(["sh".into(), "-c".into(), servers(me)]);
        let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        d[1].client.post(
            "/containers/create",
            &json!({ "Name": "b", "Network": "pods", "Cmd": srv, "Env": env }),
        )?;
        d[1].client.post("/containers/b/start", &json!({}))?;
        d[0].client.post(
            "/containers/create",
            &json!({ "Name": "a", "Network": "pods" }),
        )?;
        let v = d[1].client.get("/containers/b/json")?;
        let server_ip = v["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        std::thread::sleep(Duration::from_millis(500));
        Ok(Node2Node {
            dp: dp.into(),
            d,
            _nodes: nodes,
            _cluster: cluster,
            me: me.into(),
            server_ip,
        })
    }

    /// Runs `load` in pod a (node 1) against pod b (node 2).
    fn measure(&self, load: Load, secs: f64) -> Result<BTreeMap<String, f64>> {
        let mut full = pin(1);
        full.extend(load.args(&self.me, &self.server_ip, port_of(load), secs));
        let out = Command::new(&self.me)
            .arg("-H")
            .arg(&self.d[0].client.socket)
            .args(["exec", "a", "--"])
            .args(&full)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "node2node {} on {}: {}",
                load.name(),
                self.dp,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        load.parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The floor of `node2node`: namespaces a (10.244.1.2) and b (10.244.2.2)
/// behind plain veths in two node namespaces that route each other's
/// /24 via the underlay; the same servers in b.
struct RoutedFloor {
    node1: Testbed,
    _node2: Testbed,
    _cluster: Cluster,
    /// Removed last, once the servers in them are gone.
    pods: Pods,
}

struct Pods(Vec<NetNs>);

impl Drop for Pods {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = p.remove();
        }
    }
}

impl RoutedFloor {
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);

    fn start(me: &str) -> Result<RoutedFloor> {
        let cluster = Cluster::new("bfl", 2)?;
        let mut f = RoutedFloor {
            node1: cluster.node_testbed(1),
            _node2: cluster.node_testbed(2),
            _cluster: cluster,
            pods: Pods(Vec::new()),
        };
        for n in [1u8, 2] {
            let pod = NetNs::create_named(&format!("{}-p{n}", f.node1.stem))?;
            f.pods.0.push(pod.clone());
            let node = f._cluster.nodes[n as usize - 1].clone();
            let (gw, ip) = (Ipv4Addr::new(10, 244, n, 1), Ipv4Addr::new(10, 244, n, 2));
            let other = 3 - n;
            testbed::block_on(async move {
                let nl = Netlink::in_ns(&node)?;
                let v = nl
                    .create_veth("pod", "eth0", &pod, mac_for_ip(ip), 1500)
                    .await?;
                nl.add_addr(v, gw, 24).await?;
                nl.set_up(v).await?;
                nl.replace_route(Ipv4Addr::new(10, 244, other, 0), 24, node_ip(other), None)
                    .await?;
                let pn = Netlink::in_ns(&pod)?;
                let lo = pn.index_of("lo").await?;
                pn.set_up(lo).await?;
                let e = pn.index_of("eth0").await?;
                pn.add_addr(e, ip, 24).await?;
                pn.set_up(e).await?;
                pn.add_default_route(gw).await?;
                anyhow::Ok(())
            })
            .context("wiring the routed floor")?;
        }
        let mut cmd = pin(0);
        cmd.extend(["sh".into(), "-c".into(), servers(me)]);
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let server = f.pods.0[1].clone();
        f.node1.spawn(&server, &args)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(f)
    }

    fn measure(&self, me: &str, load: Load, secs: f64) -> Result<BTreeMap<String, f64>> {
        let mut full = pin(1);
        full.extend(load.args(me, &Self::SERVER.to_string(), port_of(load), secs));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        load.parse(&self.node1.ok(&self.pods.0[0], &refs)?)
    }
}

/// A client command and how to read its figures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Rr,
    Crr,
    UdpRr,
    Stream,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Rr => "TCP_RR",
            Load::Crr => "TCP_CRR",
            Load::UdpRr => "UDP_RR",
            Load::Stream => "TCP_STREAM",
        }
    }

    fn args(self, me: &str, ip: &str, port: u16, secs: f64) -> Vec<String> {
        let to = format!("{ip}:{port}");
        let s = format!("{secs}");
        match self {
            Load::Rr => vec![
                me.into(),
                "tool".into(),
                "rr-client".into(),
                to,
                "--secs".into(),
                s,
            ],
            Load::Crr => vec![
                me.into(),
                "tool".into(),
                "crr-client".into(),
                to,
                "--secs".into(),
                s,
            ],
            Load::UdpRr => {
                vec![
                    me.into(),
                    "tool".into(),
                    "udp-rr-client".into(),
                    to,
                    "--secs".into(),
                    s,
                ]
            }
            Load::Stream => vec![
                "iperf3".into(),
                "-c".into(),
                ip.into(),
                "-p".into(),
                port.to_string(),
                "-t".into(),
                (secs.ceil() as u64).max(1).to_string(),
                "-J".into(),
            ],
        }
    }

    /// Figures from the client's output.
    fn parse(self, out: &str) -> Result<BTreeMap<String, f64>> {
        let v: Value =
            serde_json::from_str(out.trim()).with_context(|| format!("client output {out:?}"))?;
        let mut m = BTreeMap::new();
        match self {
            Load::Stream => {
                let bps = v["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .context("iperf3 reported no throughput")?;
                m.insert("gbit_per_sec".into(), bps / 1e9);
            }
            _ => {
                let rate = v["transactions_per_sec"]
                    .as_f64()
                    .or(v["connections_per_sec"].as_f64())
                    .context("no rate")?;
                m.insert("per_sec".into(), rate);
                m.insert("p50_us".into(), v["p50_us"].as_f64().unwrap_or(0.0));
                m.insert("p99_us".into(), v["p99_us"].as_f64().unwrap_or(0.0));
                if let Some(f) = v["failed_connects"].as_f64() {
                    m.insert("failed_connects".into(), f);
                }
            }
        }
        Ok(m)
    }
}

/// One measurement: (scenario, metric, datapath, round) -> figures.
#[derive(serde::Serialize)]
struct Sample {
    scenario: String,
    load: String,
    datapath: String,
    round: u32,
    figures: BTreeMap<String, f64>,
}

struct Progress {
    done: usize,
    total: usize,
    start: Instant,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let width = 30;
        let filled = width * self.done / self.total.max(1);
        eprint!(
            "\r[{}{}] {}/{} {:>5.0}s  {what:<48}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Traffic scenarios: (scenario, load, where the client runs, target).
fn traffic_plan(scenarios: &[String]) -> Vec<(&'static str, Load)> {
    let mut plan = Vec::new();
    let has = |s: &str| scenarios.iter().any(|x| x == s);
    if has("c2c") {
        plan.extend([("c2c", Load::Rr), ("c2c", Load::Crr), ("c2c", Load::Stream)]);
    }
    if has("dnat") {
        plan.extend([
            ("dnat", Load::Crr),
            ("dnat", Load::Rr),
            ("dnat", Load::Stream),
        ]);
    }
    if has("egress") {
        plan.extend([
            ("egress", Load::Stream),
            ("egress", Load::Crr),
            ("egress", Load::UdpRr),
        ]);
    }
    plan
}

/// The server port a load talks to.
fn port_of(load: Load) -> u16 {
    match load {
        Load::Stream => STREAM_PORT,
        Load::UdpRr => UDP_PORT,
        _ => RR_PORT,
    }
}

/// What the traffic rounds visit in turn: netd's datapaths and the
/// Docker peers.
enum Target<'a> {
    Netd(&'a Instance),
    Docker(&'a docker::Peer),
}

impl Target<'_> {
    fn name(&self) -> &str {
        match self {
            Target::Netd(i) => &i.dp,
            Target::Docker(p) => &p.name,
        }
    }

    fn measure(&self, scenario: &str, load: Load, secs: f64) -> Result<BTreeMap<String, f64>> {
        match self {
            Target::Netd(i) => measure(i, scenario, load, secs),
            Target::Docker(p) => p.measure(scenario, load, secs),
        }
    }
}

fn measure(i: &Instance, scenario: &str, load: Load, secs: f64) -> Result<BTreeMap<String, f64>> {
    let port = port_of(load);
    let out = match scenario {
        "c2c" => i.in_container("a", &load.args(&i.me, &i.b_ip, port, secs))?,
        "dnat" => i.in_ns(
            &i.tb.outside,
            &load.args(&i.me, &HOST_IP.to_string(), port, secs),
        )?,
        "egress" => i.in_container("a", &load.args(&i.me, &OUTSIDE_IP.to_string(), port, secs))?,
        other => bail!("unknown traffic scenario {other}"),
    };
    load.parse(&out)
}

fn measure_floor(f: &Floor, me: &str, load: Load, secs: f64) -> Result<BTreeMap<String, f64>> {
    let port = if load == Load::Stream {
        STREAM_PORT
    } else {
        RR_PORT
    };
    let mut full = pin(1);
    full.extend(load.args(me, &OUTSIDE_IP.to_string(), port, secs));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    load.parse(&f.tb.ok(&f.tb.host, &refs)?)
}

/// BPF run time per packet of each program attached in `i` during `f`.
fn bpf_ns_per_packet(
    i: &Instance,
    f: impl FnOnce() -> Result<()>,
) -> Result<BTreeMap<String, f64>> {
    bpf_ns_per_packet_of(&[("", &i.d)], f)
}

/// BPF run time per packet of each program the daemons attached during
/// `f`, figures named `PREFIX<program>_ns_per_packet`.
fn bpf_ns_per_packet_of(
    daemons: &[(&str, &Daemon)],
    f: impl FnOnce() -> Result<()>,
) -> Result<BTreeMap<String, f64>> {
    let prog_ids = |pin: &Path| -> Option<(String, u64)> {
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(pin)
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let id = v["prog_id"].as_u64()?;
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
            .ok()?;
        let p: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some((p["name"].as_str()?.to_string(), id))
    };
    let mut progs = BTreeMap::new();
    for (prefix, d) in daemons {
        let links = d.dir.join("bpffs/links");
        for e in std::fs::read_dir(&links).into_iter().flatten().flatten() {
            if let Some((name, id)) = prog_ids(&e.path())
                && !name.starts_with("netd_")
            {
                progs.insert(format!("{prefix}{name}"), id);
            }
        }
    }
    let read = |id: u64| -> (u64, u64) {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output();
        let v: Value = out
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or_default();
        (
            v["run_time_ns"].as_u64().unwrap_or(0),
            v["run_cnt"].as_u64().unwrap_or(0),
        )
    };
    let before: BTreeMap<&String, (u64, u64)> =
        progs.iter().map(|(n, id)| (n, read(*id))).collect();
    f()?;
    let mut out = BTreeMap::new();
    for (n, id) in &progs {
        let (t1, c1) = read(*id);
        let (t0, c0) = before[n];
        if c1 > c0 {
            out.insert(
                format!("{n}_ns_per_packet"),
                (t1 - t0) as f64 / (c1 - c0) as f64,
            );
            out.insert(format!("{n}_packets"), (c1 - c0) as f64);
        }
    }
    Ok(out)
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// BPF map memory (memlock) of the maps a daemon holds open.
fn bpf_memlock_bytes(pid: u32) -> f64 {
    let mut total = 0.0;
    let mut seen = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let get = |k: &str| {
            info.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        };
        if let (Some(id), Some(mem)) = (get("map_id:"), get("memlock:"))
            && seen.insert(id as u64)
        {
            total += mem;
        }
    }
    total
}

/// Control-plane timings (milliseconds) on one instance.
fn control(i: &Instance, quick: bool) -> Result<BTreeMap<String, f64>> {
    let (containers, ports) = if quick {
        (10u32, 1000u32)
    } else {
        (100, 10_000)
    };
    let mut m = BTreeMap::new();
    let t = Instant::now();
    for n in 0..containers {
        i.create(&format!("cp{n}"), &[])?;
    }
    m.insert(
        format!("create_{containers}_containers_ms"),
        t.elapsed().as_secs_f64() * 1e3,
    );
    let range = format!("30000-{}:30000-{}", 30000 + ports - 1, 30000 + ports - 1);
    let t = Instant::now();
    i.create("ports", &[&range])?;
    m.insert(
        format!("publish_{ports}_ports_ms"),
        t.elapsed().as_secs_f64() * 1e3,
    );
    m.insert(
        format!("publish_{ports}_ports_datapath_ms"),
        last_sync_ms(i)?,
    );
    // netd, like Docker, publishes ports when a container is created: the
    // whole figure includes the container; `_datapath_ms` is the
    // datapath's own share (its sync).
    let t = Instant::now();
    i.create("one", &["45000:80"])?;
    m.insert("add_one_port_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    m.insert("add_one_port_datapath_ms".into(), last_sync_ms(i)?);
    let t = Instant::now();
    i.d.client.delete("/containers/one?force=1")?;
    m.insert("remove_one_port_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    m.insert("remove_one_port_datapath_ms".into(), last_sync_ms(i)?);
    m.insert("daemon_rss_kib".into(), rss_kib(i.d.pid()));
    if i.dp == "ebpf" {
        m.insert(
            "bpf_map_memlock_kib".into(),
            bpf_memlock_bytes(i.d.pid()) / 1024.0,
        );
    }
    for n in 0..containers {
        i.d.client.delete(&format!("/containers/cp{n}?force=1"))?;
    }
    i.d.client.delete("/containers/ports?force=1")?;
    Ok(m)
}

fn last_sync_ms(i: &Instance) -> Result<f64> {
    let v = i.d.client.get("/info")?;
    Ok(v["LastSyncMicros"].as_f64().unwrap_or(0.0) / 1000.0)
}

/// Publishes `n` other ports (one range), then the target after them.
fn scaling_setup(i: &Instance, n: u32) -> Result<()> {
    let _ = i.d.client.delete("/containers/filler?force=1");
    let _ = i.d.client.delete("/containers/t?force=1");
    if n > 0 {
        let range = format!("20000-{}:20000-{}", 20000 + n - 1, 20000 + n - 1);
        i.create("filler", &[&range])?;
    }
    let mut srv = pin(0);
    srv.extend([
        i.me.clone(),
        "tool".into(),
        "rr-server".into(),
        format!("0.0.0.0:{RR_PORT}"),
    ]);
    i.run_detached("t", &[&format!("{SCALE_PORT}:{RR_PORT}")], &srv)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

pub fn run(mut o: Opts) -> Result<()> {
    if !testbed::is_root() {
        bail!("netd bench builds network namespaces: run it as root");
    }
    if o.quick {
        o.rounds = 1;
        o.duration = 0.5;
        if o.ports == [0, 1000, 10000] {
            o.ports = vec![0, 1000];
        }
    }
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    std::fs::create_dir_all(&o.out)?;
    for dp in &o.datapaths {
        dp.parse::<crate::datapath::Kind>()?;
    }
    eprintln!(
        "netd bench: datapaths {}, {} rounds of {} s, scenarios {}",
        o.datapaths.join(","),
        o.rounds,
        o.duration,
        o.scenarios.join(",")
    );
    let with_docker = match o.docker {
        Some(true) if !docker::available() => bail!(
            "--docker yes needs dockerd, containerd, the docker CLI, busybox-static and iperf3 (cargo xtask setup installs them)"
        ),
        Some(d) => d,
        None => docker::available(),
    };
    let mut instances = Vec::new();
    for dp in &o.datapaths {
        instances.push(Instance::start(dp, &o.out, &me)?);
    }
    // Docker's bridge, then Docker on netd's plugin per datapath.
    let mut peers = Vec::new();
    if with_docker {
        peers.push(docker::Peer::start(None, &o.out, &me)?);
        for dp in &o.datapaths {
            peers.push(docker::Peer::start(Some(dp), &o.out, &me)?);
        }
    } else if o.docker.is_none() {
        eprintln!("netd bench: dockerd is not installed: no Docker peers");
    }
    let targets: Vec<Target> = instances
        .iter()
        .map(Target::Netd)
        .chain(peers.iter().map(Target::Docker))
        .collect();
    let peer_names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
    let floor = Floor::start(&me)?;
    let plan = traffic_plan(&o.scenarios);
    let has = |s: &str| o.scenarios.iter().any(|x| x == s);
    // node2node: a two-node cluster per datapath, and the routed floor.
    let mut n2n = Vec::new();
    let mut routed_floor = None;
    if has("node2node") {
        for dp in &o.datapaths {
            n2n.push(Node2Node::start(dp, &o.out, &me)?);
        }
        routed_floor = Some(RoutedFloor::start(&me)?);
    }
    let n2n_loads = [Load::Rr, Load::Crr, Load::Stream];
    let n2n_bpf = has("bpf") && n2n.iter().any(|n| n.dp == "ebpf");
    let scaling = if has("scaling") {
        o.ports.clone()
    } else {
        vec![]
    };
    let floor_loads: Vec<Load> = plan
        .iter()
        .filter(|(s, _)| *s == "c2c")
        .map(|(_, l)| *l)
        .collect();
    let total = o.rounds as usize
        * (plan.len() * targets.len()
            + (scaling.len() + usize::from(has("bpf")) * 3) * instances.len()
            + floor_loads.len()
            + if n2n.is_empty() {
                0
            } else {
                n2n_loads.len() * (n2n.len() + 1) + usize::from(n2n_bpf)
            })
        + usize::from(has("control")) * instances.len();
    let mut pr = Progress {
        done: 0,
        total,
        start: Instant::now(),
    };
    let mut samples = Vec::new();

    // Warm-up: every path once, briefly.
    if !o.quick {
        for t in &targets {
            for (s, l) in &plan {
                // A failure shows in the measured rounds.
                if let Err(e) = t.measure(s, *l, 0.3) {
                    tracing::debug!("warm-up {s} on {}: {e:#}", t.name());
                }
            }
        }
        for n in &n2n {
            for l in n2n_loads {
                if let Err(e) = n.measure(l, 0.3) {
                    tracing::debug!("warm-up node2node on {}: {e:#}", n.dp);
                }
            }
        }
    }
    for (scenario, load) in &plan {
        for round in 1..=o.rounds {
            for t in &targets {
                pr.step(&format!(
                    "{scenario} {} {} round {round}",
                    load.name(),
                    t.name()
                ));
                let figures = t
                    .measure(scenario, *load, o.duration)
                    .with_context(|| format!("{scenario} {} on {}", load.name(), t.name()))?;
                samples.push(Sample {
                    scenario: scenario.to_string(),
                    load: load.name().into(),
                    datapath: t.name().to_string(),
                    round,
                    figures,
                });
            }
            if *scenario == "c2c" {
                pr.step(&format!("c2c {} floor round {round}", load.name()));
                let figures = measure_floor(&floor, &me, *load, o.duration)?;
                samples.push(Sample {
                    scenario: "c2c".into(),
                    load: load.name().into(),
                    datapath: "floor".into(),
                    round,
                    figures,
                });
            }
        }
    }
    if let Some(rf) = &routed_floor {
        for load in n2n_loads {
            for round in 1..=o.rounds {
                for n in &n2n {
                    pr.step(&format!("node2node {} {} round {round}", load.name(), n.dp));
                    let figures = n
                        .measure(load, o.duration)
                        .with_context(|| format!("node2node {} on {}", load.name(), n.dp))?;
                    samples.push(Sample {
                        scenario: "node2node".into(),
                        load: load.name().into(),
                        datapath: n.dp.clone(),
                        round,
                        figures,
                    });
                }
                pr.step(&format!("node2node {} floor round {round}", load.name()));
                let figures = rf.measure(&me, load, o.duration)?;
                samples.push(Sample {
                    scenario: "node2node".into(),
                    load: load.name().into(),
                    datapath: "floor".into(),
                    round,
                    figures,
                });
            }
        }
    }
    for n in &scaling {
        for i in &instances {
            scaling_setup(i, *n)?;
        }
        for round in 1..=o.rounds {
            for i in &instances {
                pr.step(&format!("scaling {n} ports {} round {round}", i.dp));
                let mut full = pin(1);
                full.extend(Load::Crr.args(&me, &HOST_IP.to_string(), SCALE_PORT, o.duration));
                let figures = Load::Crr.parse(&i.in_ns(&i.tb.outside, &full[pin(1).len()..])?)?;
                samples.push(Sample {
                    scenario: format!("scaling_{n}"),
                    load: "TCP_CRR".into(),
                    datapath: i.dp.clone(),
                    round,
                    figures,
                });
            }
        }
    }
    if has("bpf") {
        for i in instances.iter().filter(|i| i.dp == "ebpf") {
            let old =
                std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
            std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
                .context("enabling kernel.bpf_stats_enabled")?;
            let result = (|| -> Result<()> {
                for round in 1..=o.rounds {
                    for s in ["c2c", "dnat", "egress"] {
                        pr.step(&format!("bpf stats {s} round {round}"));
                        let figures = bpf_ns_per_packet(i, || {
                            measure(i, s, Load::Stream, o.duration).map(|_| ())
                        })?;
                        samples.push(Sample {
                            scenario: format!("bpf_{s}"),
                            load: "TCP_STREAM".into(),
                            datapath: i.dp.clone(),
                            round,
                            figures,
                        });
                    }
                    // Pod -> remote pod: node 1's from_container sends
                    // the data out (cluster out), node 2's from_world
                    // delivers it (cluster in); the ACKs go the other way.
                    if let Some(n) = n2n.iter().find(|n| n.dp == "ebpf") {
                        pr.step(&format!("bpf stats node2node round {round}"));
                        let figures = bpf_ns_per_packet_of(
                            &[("node1_", &n.d[0]), ("node2_", &n.d[1])],
                            || n.measure(Load::Stream, o.duration).map(|_| ()),
                        )?;
                        samples.push(Sample {
                            scenario: "bpf_node2node".into(),
                            load: "TCP_STREAM".into(),
                            datapath: "ebpf".into(),
                            round,
                            figures,
                        });
                    }
                }
                Ok(())
            })();
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", old.trim());
            result?;
        }
    }
    if has("control") {
        for i in &instances {
            pr.step(&format!("control plane {}", i.dp));
            let figures = control(i, o.quick)?;
            samples.push(Sample {
                scenario: "control".into(),
                load: "control".into(),
                datapath: i.dp.clone(),
                round: 1,
                figures,
            });
        }
    }
    eprintln!();
    drop(targets);
    drop(peers);
    drop(instances);
    drop(floor);
    drop(n2n);
    drop(routed_floor);
    let report = report(&o, &peer_names, &samples)?;
    println!("{report}");
    Ok(())
}

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    json!({ "kernel": kernel.trim(), "cpu_model": cpu, "cores": num_cpus() })
}

/// Writes report.json, report.md and the SVG charts; returns the markdown table.
fn report(o: &Opts, peers: &[String], samples: &[Sample]) -> Result<String> {
    // (scenario, load, figure) -> datapath -> values
    type Key = (String, String, String);
    let mut by: BTreeMap<Key, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for s in samples {
        for (f, v) in &s.figures {
            by.entry((s.scenario.clone(), s.load.clone(), f.clone()))
                .or_default()
                .entry(s.datapath.clone())
                .or_default()
                .push(*v);
        }
    }
    let mut cols: Vec<String> = o.datapaths.clone();
    cols.extend(peers.iter().cloned());
    if samples.iter().any(|s| s.datapath == "floor") {
        cols.push("floor".into());
    }
    let mut md = String::from("| scenario | load | figure |");
    for c in &cols {
        md.push_str(&format!(" {c} median (min-max) |"));
    }
    let has_ipt = cols.iter().any(|c| c == "iptables");
    let ratio_cols: Vec<&String> = cols
        .iter()
        .filter(|c| *c != "iptables" && *c != "floor" && !c.starts_with("docker"))
        .collect();
    // Docker on netd against Docker's own bridge.
    let docker_cols: Vec<&String> = if cols.iter().any(|c| c == "docker") {
        cols.iter().filter(|c| c.starts_with("docker+")).collect()
    } else {
        vec![]
    };
    for c in &ratio_cols {
        if has_ipt {
            md.push_str(&format!(" {c}/iptables |"));
        }
        md.push_str(&format!(" {c}/floor |"));
    }
    for c in &docker_cols {
        md.push_str(&format!(" {c}/docker |"));
    }
    md.push('\n');
    md.push_str(&"|---".repeat(
        3 + cols.len() + ratio_cols.len() * (1 + usize::from(has_ipt)) + docker_cols.len(),
    ));
    md.push_str("|\n");
    let mut medians: BTreeMap<Key, BTreeMap<String, f64>> = BTreeMap::new();
    for (k, per) in &by {
        md.push_str(&format!("| {} | {} | {} |", k.0, k.1, k.2));
        let mut med = BTreeMap::new();
        for c in &cols {
            match per.get(c) {
                Some(v) => {
                    let mut v = v.clone();
                    let (lo, hi) = v
                        .iter()
                        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
                    let m = median(&mut v);
                    med.insert(c.clone(), m);
                    md.push_str(&format!(" {} ({}-{}) |", fmt(m), fmt(lo), fmt(hi)));
                }
                None => md.push_str(" - |"),
            }
        }
        for c in &ratio_cols {
            let r = |base: &str| match (med.get(*c), med.get(base)) {
                (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            if has_ipt {
                md.push_str(&format!(" {} |", r("iptables")));
            }
            md.push_str(&format!(" {} |", r("floor")));
        }
        for c in &docker_cols {
            md.push_str(&match (med.get(*c), med.get("docker")) {
                (Some(a), Some(b)) if *b != 0.0 => format!(" {:.2}x |", a / b),
                _ => " - |".into(),
            });
        }
        md.push('\n');
        medians.insert(k.clone(), med);
    }
    let cmd: Vec<String> = std::env::args().collect();
    let machine = machine();
    let full_md = format!(
        "# netd bench\n\n`{}`\n\nMachine: {} ({} cores), kernel {}. {} round(s) of {} s per figure, datapaths measured in alternating rounds; medians with min-max; rates per second, latencies in microseconds. Ratios compare medians (for latencies, lower is better).\n\n{md}",
        cmd.join(" "),
        machine["cpu_model"].as_str().unwrap_or(""),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or(""),
        o.rounds,
        o.duration
    );
    std::fs::write(o.out.join("report.md"), &full_md)?;
    let raw = json!({
        "command": cmd,
        "machine": machine,
        "rounds": o.rounds,
        "duration_secs": o.duration,
        "datapaths": o.datapaths,
        "docker_peers": peers,
        "samples": samples,
    });
    std::fs::write(o.out.join("report.json"), serde_json::to_vec_pretty(&raw)?)?;
    charts(&o.out, &cols, &medians, &o.ports)?;
    Ok(full_md)
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const COLORS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f", "#9467bd"];

/// One SVG bar chart per (scenario, load, figure); a line chart of CRR
/// against the number of published ports.
fn charts(
    out: &Path,
    cols: &[String],
    medians: &BTreeMap<(String, String, String), BTreeMap<String, f64>>,
    ports: &[u32],
) -> Result<()> {
    let dir = out.join("charts");
    std::fs::create_dir_all(&dir)?;
    for ((scenario, load, figure), med) in medians {
        if scenario.starts_with("scaling_") {
            continue;
        }
        let max = med.values().cloned().fold(0.0, f64::max).max(1e-9);
        let (w, bar, gap) = (520.0, 28.0, 12.0);
        let h = 60.0 + cols.len() as f64 * (bar + gap);
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<text x='10' y='20' font-size='14'>{scenario} {load}: {figure} (median)</text>\n"
        );
        for (n, c) in cols.iter().enumerate() {
            let Some(v) = med.get(c) else { continue };
            let y = 40.0 + n as f64 * (bar + gap);
            let len = (w - 200.0) * v / max;
            svg.push_str(&format!(
                "<text x='10' y='{}'>{c}</text><rect x='90' y='{y}' width='{len:.1}' height='{bar}' fill='{}'/><text x='{:.1}' y='{}'>{}</text>\n",
                y + bar * 0.65,
                COLORS[n % COLORS.len()],
                95.0 + len,
                y + bar * 0.65,
                fmt(*v)
            ));
        }
        svg.push_str("</svg>\n");
        std::fs::write(dir.join(format!("{scenario}_{load}_{figure}.svg")), svg)?;
    }
    // CRR against published ports.
    let points: Vec<(u32, &BTreeMap<String, f64>)> = ports
        .iter()
        .filter_map(|n| {
            medians
                .get(&(format!("scaling_{n}"), "TCP_CRR".into(), "per_sec".into()))
                .map(|m| (*n, m))
        })
        .collect();
    if points.len() > 1 {
        let (w, h, pad) = (560.0, 320.0, 50.0);
        let max_y = points
            .iter()
            .flat_map(|(_, m)| m.values())
            .cloned()
            .fold(0.0, f64::max)
            .max(1e-9);
        let xs = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (points.len() - 1) as f64;
        let ys = |v: f64| h - pad - (h - 2.0 * pad) * v / max_y;
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<text x='10' y='20' font-size='14'>TCP_CRR to the last-published port vs other published ports</text>\n"
        );
        for (i, (n, _)) in points.iter().enumerate() {
            svg.push_str(&format!(
                "<text x='{:.1}' y='{}'>{n}</text>\n",
                xs(i) - 10.0,
                h - pad + 20.0
            ));
        }
        for (ci, c) in cols.iter().enumerate() {
            let pts: Vec<String> = points
                .iter()
                .enumerate()
                .filter_map(|(i, (_, m))| m.get(c).map(|v| format!("{:.1},{:.1}", xs(i), ys(*v))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let color = COLORS[ci % COLORS.len()];
            svg.push_str(&format!(
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n",
                pts.join(" ")
            ));
            svg.push_str(&format!(
                "<text x='{}' y='{}' fill='{color}'>{c}</text>\n",
                w - pad - 60.0,
                40.0 + ci as f64 * 16.0
            ));
        }
        svg.push_str("</svg>\n");
        std::fs::write(dir.join("scaling_TCP_CRR.svg"), svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn parses_generator_output() {
        let f = Load::Rr.parse(r#"{"transactions_per_sec": 1000, "p50_us": 9.5, "p99_us": 20.0, "transactions": 5000}"#).unwrap();
        assert_eq!(f["per_sec"], 1000.0);
        let s = Load::Stream
            .parse(r#"{"end": {"sum_received": {"bits_per_second": 2.5e10}}}"#)
            .unwrap();
        assert_eq!(s["gbit_per_sec"], 25.0);
        assert!(Load::Crr.parse("not json").is_err());
    }

    #[test]
    fn plan_follows_the_scenarios() {
        let p = traffic_plan(&["c2c".into(), "egress".into()]);
        assert_eq!(p.len(), 6);
        assert!(p.iter().all(|(s, _)| *s == "c2c" || *s == "egress"));
    }
}
