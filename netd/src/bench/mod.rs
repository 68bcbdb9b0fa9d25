//! `netd bench`: the datapaths side by side on the same topology and load,
//! measured in alternating rounds (A B C A B C ...) in one run, against
//! the bare-veth floor and real peers (Docker, Podman); reported as
//! medians, min-max and ratios with their noise, per CPU placement, and
//! against the targets of the performance issue.
//!
//! The floors' client and servers run as a container's processes do, each
//! in a session and a cgroup of its own (`floor_procs`): a floor differs
//! from the containers in the datapath only.
//!
//! Every datapath and peer gets its own throwaway host/outside namespaces
//! and daemon, all built before the first measurement, so a round visits
//! each in turn with nothing rebuilt in between. Each request/response
//! load runs in every CPU placement asked for (`--cpus`):
//! - `same`: client and servers on CPU 0: a transaction costs what its
//!   packets cost, the datapath's share included, with no cross-CPU
//!   wake-up in the way. The report leads with it.
//! - `cross`: servers on CPU 0, client on CPU 1: each transaction pays
//!   two cross-CPU wake-ups (on this kind of VM ~90 us, which hides the
//!   datapath).
//! - `free`: no pinning, the scheduler's choice.
//!
//! Load generators (`netd tool`):
//! - TCP_RR: one connection, 1-byte request, 1-byte response, back to back;
//!   transactions/s and latency p50/p99 of each exchange.
//! - TCP_CRR: connect, 1-byte request, 1-byte response, server closes
//!   first (served where it is accepted: no thread per connection);
//!   connections/s and latency p50/p99 of connect..close.
//! - UDP_RR: 1-byte datagram and its echo, back to back.
//! - TCP_STREAM: iperf3, one flow, Gbit/s received.
//!
//! `xdp` measures the published-port loads (`dnat`) on the ebpf datapath
//! in alternating rounds with and without a no-op XDP program
//! (`xdp_pass`) on the host's uplink, in the lead placement: what XDP on
//! that interface costs before any program does any work, the least an
//! XDP variant of `from_world` would add (samples `uplink_tc` and
//! `uplink_xdp`, and a section of the report).
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

use self::floor_procs::FloorProcs;
use crate::{
    api::Client,
    bpf,
    link::{Netlink, mac_for_ip},
    netns::NetNs,
    testbed::{
        self, HOST_IP, OUTSIDE_IP, Testbed,
        cluster::{Cluster, node_ip},
    },
};

mod floor_procs;
mod peer;
mod report;

pub use peer::KINDS as PEER_KINDS;

pub struct Opts {
    pub datapaths: Vec<String>,
    /// The peers to measure (`docker`, `podman`, `docker+netd`).
    pub peers: Vec<String>,
    /// Peers that `auto` asked for: one whose tools are missing is left
    /// out (and reported); any other missing peer is an error.
    pub optional_peers: Vec<String>,
    pub cpus: Vec<Placement>,
    pub scenarios: Vec<String>,
    pub rounds: u32,
    pub duration: f64,
    pub ports: Vec<u32>,
    pub out: PathBuf,
    pub quick: bool,
}

pub const ALL_SCENARIOS: [&str; 10] = [
    "c2c",
    "dnat",
    "c2c6",
    "dnat6",
    "egress",
    "scaling",
    "control",
    "bpf",
    "node2node",
    "xdp",
];
/// The published-port loads `xdp` measures with and without a no-op XDP
/// program on the ebpf host's uplink.
const XDP_LOADS: [Load; 3] = [Load::Crr, Load::Rr, Load::Stream];
/// The cluster CIDR of `node2node`; node N's pods are 10.244.N.0/24.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const RR_PORT: u16 = 7000;
/// The IPv6 scenarios' request/response server (container b, `[::]`).
const RR6_PORT: u16 = 7010;
/// The default bridge's IPv6 subnet when an IPv6 scenario runs.
const BENCH_CIDR6: &str = "fd00:be::/64";
const UDP_PORT: u16 = 7001;
const STREAM_PORT: u16 = 5201;
const SCALE_PORT: u16 = 7500;

/// Where the client and the servers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placement {
    Same,
    Cross,
    Free,
}

impl Placement {
    pub const ALL: [Placement; 3] = [Placement::Same, Placement::Cross, Placement::Free];

    pub fn name(self) -> &'static str {
        match self {
            Placement::Same => "same",
            Placement::Cross => "cross",
            Placement::Free => "free",
        }
    }

    /// The client's CPU (None: unpinned).
    fn client(self) -> Option<usize> {
        match self {
            Placement::Same => Some(0),
            Placement::Cross => Some(1),
            Placement::Free => None,
        }
    }

    /// The servers' CPU (None: every CPU).
    fn servers(self) -> Option<usize> {
        match self {
            Placement::Same | Placement::Cross => Some(0),
            Placement::Free => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Placement::Same => {
                "client and servers pinned to CPU 0: a transaction costs what its packets cost on one CPU, the datapath's share included"
            }
            Placement::Cross => {
                "servers on CPU 0, client on CPU 1: every transaction pays two cross-CPU wake-ups, which dominate on a VM"
            }
            Placement::Free => "nothing pinned: where the scheduler puts them",
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Placement> {
        match s {
            "same" => Ok(Placement::Same),
            "cross" => Ok(Placement::Cross),
            "free" => Ok(Placement::Free),
            other => bail!("unknown CPU placement {other:?}: expected same, cross or free"),
        }
    }
}

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
    /// b's IPv6 address (IPv6 scenarios only).
    b_ip6: String,
}

/// `taskset -c CPU` (nothing for None, or on a single CPU).
fn taskset(cpu: Option<usize>) -> Vec<String> {
    match cpu {
        Some(c) if num_cpus() > 1 => vec!["taskset".into(), "-c".into(), c.to_string()],
        _ => vec![],
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The inode of a network namespace file.
fn netns_inode(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .ino())
}

/// Pins every thread of every process in the namespaces `ns` to `cpu`
/// (None: every CPU). Threads started later inherit it.
fn place(ns: &[u64], cpu: Option<usize>) {
    use nix::{sched::CpuSet, unistd::Pid};
    let mut set = CpuSet::new();
    for c in 0..num_cpus() {
        if cpu.is_none_or(|x| x == c) {
            let _ = set.set(c);
        }
    }
    for ino in ns {
        for pid in crate::netns::pids_in(*ino) {
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Some(tid) = t.file_name().to_str().and_then(|t| t.parse().ok()) {
                    let _ = nix::sched::sched_setaffinity(Pid::from_raw(tid), &set);
                }
            }
        }
    }
}

/// The servers every target runs: RR, UDP echo and iperf3.
fn servers(me: &str) -> String {
    format!(
        "{me} tool rr-server 0.0.0.0:{RR_PORT} & {me} tool udp-echo 0.0.0.0:{UDP_PORT} & iperf3 -s -p {STREAM_PORT} >/dev/null 2>&1 & wait"
    )
}

impl Instance {
    /// With `ipv6`, the default bridge is dual stack (`--ipv6
    /// --fixed-cidr-v6`), the uplink has IPv6 addresses, and b also
    /// serves TCP_RR/CRR on `[::]:RR6_PORT`, published as the others (a
    /// binding on 0.0.0.0 serves both families).
    fn start(dp: &str, out: &Path, me: &str, ipv6: bool) -> Result<Instance> {
        let tb = Testbed::new("bench")?;
        let flags: &[&str] = if ipv6 {
            &["--ipv6", "--fixed-cidr-v6", BENCH_CIDR6]
        } else {
            &[]
        };
        if ipv6 {
            tb.uplink6()?;
        }
        let d = Daemon::start(&tb, dp, out, me, flags)?;
        let mut i = Instance {
            dp: dp.into(),
            d,
            tb,
            me: me.into(),
            b_ip: String::new(),
            b_ip6: String::new(),
        };
        // b: the servers, published; a: the client.
        let mut script = servers(me);
        if ipv6 {
            script = format!("{me} tool rr-server [::]:{RR6_PORT} & {script}");
        }
        let srv = vec!["sh".into(), "-c".into(), script];
        i.run_detached(
            "b",
            &[
                &format!("{RR_PORT}:{RR_PORT}"),
                &format!("{RR6_PORT}:{RR6_PORT}"),
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
        i.b_ip6 = v["NetworkSettings"]["GlobalIPv6Address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if ipv6 && i.b_ip6.is_empty() {
            bail!("container b got no IPv6 address on the dual-stack default bridge");
        }
        // The world runs the same servers.
        let out = i.tb.outside.clone();
        let srv = servers(me);
        i.tb.spawn(&out, &["sh", "-c", &srv])?;
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

    /// The network namespace of container `name`.
    fn container_netns(&self, name: &str) -> Result<u64> {
        let v = self.d.client.get(&format!("/containers/{name}/json"))?;
        let key = v["NetworkSettings"]["SandboxKey"]
            .as_str()
            .context("no SandboxKey")?
            .to_string();
        netns_inode(Path::new(&key))
    }

    /// The namespaces whose processes are servers: container b's and the
    /// outside's.
    fn server_namespaces(&self) -> Result<Vec<u64>> {
        Ok(vec![self.container_netns("b")?, self.tb.outside.inode()?])
    }

    /// Runs a client inside container `name` (on CPU `cpu`), through
    /// `netd exec`, and returns its output.
    fn in_container(&self, name: &str, cpu: Option<usize>, args: &[String]) -> Result<String> {
        let mut full = taskset(cpu);
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

    fn in_ns(&self, ns: &NetNs, cpu: Option<usize>, args: &[String]) -> Result<String> {
        let mut full = taskset(cpu);
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.tb.ok(ns, &refs)
    }

    fn stats(&self) -> Result<Value> {
        self.d.client.get("/stats")
    }
}

/// The floor: a bare veth pair between two namespaces, same servers,
/// its processes placed as a container's are (`floor_procs`).
struct Floor {
    tb: Testbed,
    /// Dropped after `tb` (its processes gone).
    procs: FloorProcs,
}

impl Floor {
    fn start(me: &str) -> Result<Floor> {
        // Reuses the testbed's host <-> outside veth: nothing else on it.
        let mut tb = Testbed::new("floor")?;
        let procs = FloorProcs::new(&tb.stem)?;
        let peer = tb.outside.clone();
        // No forwarding, no bridge, no rule, no program: host and outside
        // are just the two ends of one veth pair.
        let srv = servers(me);
        procs.spawn(&mut tb, &peer, &["sh", "-c", &srv])?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Floor { tb, procs })
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
        let srv = vec!["sh".to_string(), "-c".into(), servers(me)];
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

    /// The namespace of the servers (pod b on node 2).
    fn server_namespace(&self) -> Result<u64> {
        let v = self.d[1].client.get("/containers/b/json")?;
        let key = v["NetworkSettings"]["SandboxKey"]
            .as_str()
            .context("no SandboxKey")?
            .to_string();
        netns_inode(Path::new(&key))
    }

    /// Runs `load` in pod a (node 1, on CPU `cpu`) against pod b (node 2).
    fn measure(&self, load: Load, secs: f64, cpu: Option<usize>) -> Result<BTreeMap<String, f64>> {
        let mut full = taskset(cpu);
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
    /// As `Floor`'s.
    procs: FloorProcs,
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
        let node1 = cluster.node_testbed(1);
        let procs = FloorProcs::new(&node1.stem)?;
        let mut f = RoutedFloor {
            node1,
            _node2: cluster.node_testbed(2),
            _cluster: cluster,
            pods: Pods(Vec::new()),
            procs,
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
        let cmd = ["sh".to_string(), "-c".into(), servers(me)];
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let server = f.pods.0[1].clone();
        f.procs.spawn(&mut f.node1, &server, &args)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(f)
    }

    /// The namespace of the servers (pod b).
    fn server_namespace(&self) -> Result<u64> {
        self.pods.0[1].inode()
    }

    fn measure(
        &self,
        me: &str,
        load: Load,
        secs: f64,
        cpu: Option<usize>,
    ) -> Result<BTreeMap<String, f64>> {
        let mut full = taskset(cpu);
        full.extend(load.args(me, &Self::SERVER.to_string(), port_of(load), secs));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        load.parse(&self.procs.run(&self.pods.0[0], &refs)?)
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
        let to = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let s = format!("{secs}");
        let tool = |t: &str| {
            vec![
                me.to_string(),
                "tool".into(),
                t.into(),
                to.clone(),
                "--secs".into(),
                s.clone(),
            ]
        };
        match self {
            Load::Rr => tool("rr-client"),
            Load::Crr => tool("crr-client"),
            Load::UdpRr => tool("udp-rr-client"),
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

/// One measurement: (placement, scenario, load, datapath, round) -> figures.
#[derive(serde::Serialize, Clone)]
struct Sample {
    /// `same`, `cross`, `free`; `-` for what no placement applies to
    /// (control plane).
    placement: String,
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
        let filled = width * self.done.min(self.total) / self.total.max(1);
        eprint!(
            "\r[{}{}] {}/{} {:>5.0}s  {what:<56}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
}

/// Traffic scenarios: (scenario, load).
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
    // IPv6: the same paths (c2c over the bridge, a published port from
    // outside), request/response only; netd's datapaths only.
    if has("c2c6") {
        plan.extend([("c2c6", Load::Rr), ("c2c6", Load::Crr)]);
    }
    if has("dnat6") {
        plan.extend([("dnat6", Load::Crr), ("dnat6", Load::Rr)]);
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

/// Whether a scenario runs over IPv6 (netd's datapaths only: the peers
/// run IPv4-only topologies).
pub(crate) fn is_ipv6(scenario: &str) -> bool {
    scenario.ends_with('6')
}

/// The server port a load talks to in a scenario.
fn port_for(scenario: &str, load: Load) -> u16 {
    match load {
        Load::Rr | Load::Crr if is_ipv6(scenario) => RR6_PORT,
        _ => port_of(load),
    }
}

/// The server port a load talks to.
fn port_of(load: Load) -> u16 {
    match load {
        Load::Stream => STREAM_PORT,
        Load::UdpRr => UDP_PORT,
        _ => RR_PORT,
    }
}

/// What the traffic rounds visit in turn: netd's datapaths and the peers.
enum Target<'a> {
    Netd(&'a Instance),
    Peer(&'a peer::Peer),
}

impl Target<'_> {
    fn name(&self) -> &str {
        match self {
            Target::Netd(i) => &i.dp,
            Target::Peer(p) => &p.name,
        }
    }

    /// Whether the target runs a scenario (the peers: IPv4 only).
    fn runs(&self, scenario: &str) -> bool {
        matches!(self, Target::Netd(_)) || !is_ipv6(scenario)
    }

    fn measure(
        &self,
        scenario: &str,
        load: Load,
        secs: f64,
        cpu: Option<usize>,
    ) -> Result<BTreeMap<String, f64>> {
        match self {
            Target::Netd(i) => measure(i, scenario, load, secs, cpu),
            Target::Peer(p) => p.measure(scenario, load, secs, cpu),
        }
    }

    fn server_namespaces(&self) -> Result<Vec<u64>> {
        match self {
            Target::Netd(i) => i.server_namespaces(),
            Target::Peer(p) => p.server_namespaces(),
        }
    }
}

fn measure(
    i: &Instance,
    scenario: &str,
    load: Load,
    secs: f64,
    cpu: Option<usize>,
) -> Result<BTreeMap<String, f64>> {
    let port = port_for(scenario, load);
    let out = match scenario {
        "c2c" => i.in_container("a", cpu, &load.args(&i.me, &i.b_ip, port, secs))?,
        "c2c6" => i.in_container("a", cpu, &load.args(&i.me, &i.b_ip6, port, secs))?,
        "dnat6" => i.in_ns(
            &i.tb.outside,
            cpu,
            &load.args(&i.me, &crate::testbed::HOST_IP6.to_string(), port, secs),
        )?,
        "dnat" => i.in_ns(
            &i.tb.outside,
            cpu,
            &load.args(&i.me, &HOST_IP.to_string(), port, secs),
        )?,
        "egress" => i.in_container(
            "a",
            cpu,
            &load.args(&i.me, &OUTSIDE_IP.to_string(), port, secs),
        )?,
        other => bail!("unknown traffic scenario {other}"),
    };
    load.parse(&out)
}

fn measure_floor(
    f: &Floor,
    me: &str,
    load: Load,
    secs: f64,
    cpu: Option<usize>,
) -> Result<BTreeMap<String, f64>> {
    let mut full = taskset(cpu);
    full.extend(load.args(me, &OUTSIDE_IP.to_string(), port_of(load), secs));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    load.parse(&f.procs.run(&f.tb.host, &refs)?)
}

/// The eBPF programs' run time per packet during `f` (kernel.bpf_stats,
/// read from the daemon's `/stats`).
fn bpf_ns_per_packet(
    i: &Instance,
    f: impl FnOnce() -> Result<()>,
) -> Result<BTreeMap<String, f64>> {
    bpf_ns_per_packet_of(&[("", &i.d)], f)
}

/// The eBPF programs' run time per packet of each daemon during `f`
/// (kernel.bpf_stats, read from each daemon's `/stats`), figures named
/// `PREFIX<program>_ns_per_packet` and `PREFIX<program>_packets`.
fn bpf_ns_per_packet_of(
    daemons: &[(&str, &Daemon)],
    f: impl FnOnce() -> Result<()>,
) -> Result<BTreeMap<String, f64>> {
    let progs = |daemons: &[(&str, &Daemon)]| -> Result<BTreeMap<String, (f64, f64)>> {
        let mut out = BTreeMap::new();
        for (prefix, d) in daemons {
            let v = d.client.get("/stats")?;
            for p in v["Programs"].as_array().into_iter().flatten() {
                if let (Some(n), Some(t), Some(c)) = (
                    p["Name"].as_str(),
                    p["RunTimeNs"].as_f64(),
                    p["RunCount"].as_f64(),
                ) && !n.starts_with("netd_")
                {
                    out.insert(format!("{prefix}{n}"), (t, c));
                }
            }
        }
        Ok(out)
    };
    let before = progs(daemons)?;
    f()?;
    let after = progs(daemons)?;
    let mut out = BTreeMap::new();
    for (n, (t1, c1)) in &after {
        let Some((t0, c0)) = before.get(n) else {
            continue;
        };
        if c1 > c0 {
            out.insert(format!("{n}_ns_per_packet"), (t1 - t0) / (c1 - c0));
            out.insert(format!("{n}_packets"), c1 - c0);
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

/// How many times `control` publishes one port with 10,000 present.
const ONE_PORT_CYCLES: usize = 5;

/// Control-plane timings (milliseconds) on one instance: every figure in
/// the first map, the further add/remove cycles of one port after it.
fn control(i: &Instance, quick: bool) -> Result<Vec<BTreeMap<String, f64>>> {
    let (containers, ports) = if quick {
        (10u32, 1000u32)
    } else {
        (100, 10_000)
    };
    // From what any instance has: the scaling scenario's containers (and
    // their 10,000 published ports) go first.
    let _ = i.d.client.delete("/containers/filler?force=1");
    let _ = i.d.client.delete("/containers/t?force=1");
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
    // One port added and removed again, several times: each a round of
    // its own in the report (median, min-max), a single one is at the
    // mercy of whatever else the two CPUs did in that millisecond.
    let mut cycles = Vec::new();
    for cycle in 0..if quick { 1 } else { ONE_PORT_CYCLES } {
        let mut c = BTreeMap::new();
        let t = Instant::now();
        i.create("one", &["45000:80"])?;
        c.insert("add_one_port_ms".into(), t.elapsed().as_secs_f64() * 1e3);
        c.insert("add_one_port_datapath_ms".into(), last_sync_ms(i)?);
        let t = Instant::now();
        i.d.client.delete("/containers/one?force=1")?;
        c.insert("remove_one_port_ms".into(), t.elapsed().as_secs_f64() * 1e3);
        c.insert("remove_one_port_datapath_ms".into(), last_sync_ms(i)?);
        if cycle == 0 {
            m.append(&mut c);
        } else {
            cycles.push(c);
        }
    }
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
    if i.dp == "ebpf" {
        gc_pass(i, &mut m)?;
    }
    cycles.insert(0, m);
    Ok(cycles)
}

/// The conntrack GC with a full table: 262,144 entries (the default
/// size) written into the daemon's pinned table, live (a pass walks them
/// all and removes none), then made idle (a pass removes them all); each
/// pass's wall and CPU time as the daemon's GC reports it in `/stats`.
fn gc_pass(i: &Instance, m: &mut BTreeMap<String, f64>) -> Result<()> {
    use netd_common::{CtEntry, CtKey, MAP_VERSION, ct_kind, ct_state, maps};

    use crate::datapath::ebpf::ct;
    let pin =
        i.d.dir
            .join(format!("bpffs/maps/{}_{MAP_VERSION}", maps::CT));
    let data =
        aya::maps::MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let size = data.info()?.max_entries();
    // Counted on the container b's address: a sync's sweep of removed
    // containers' flows keeps them.
    let owner = u32::from(i.b_ip.parse::<Ipv4Addr>()?).to_be();
    let entries = |n: u32, last_seen: u64, state: u8| -> Vec<(CtKey, CtEntry)> {
        (0..n / 2)
            .flat_map(|f| {
                // Flows from 100.64.0.0/10 (nothing of the bench's) to
                // 198.51.100.0/24 port 80, masqueraded (a server address
                // per 60,000 flows: every reply tuple differs).
                let k = CtKey {
                    saddr: (0x6440_0000u32 + f).to_be(),
                    daddr: (0xc633_6400u32 + f / 60000).to_be(),
                    sport: 1024 + (f % 60000) as u16,
                    dport: 80,
                    proto: 6,
                    _pad: [0; 3],
                };
                let e = CtEntry {
                    last_seen,
                    addr: HOST_IP.to_bits().to_be(),
                    port: k.sport,
                    kind: ct_kind::SNAT,
                    state,
                    container_ip: owner,
                    ..CtEntry::default()
                };
                let rk = k.reverse(&e);
                let r = CtEntry {
                    kind: ct_kind::REV_SNAT,
                    addr: k.saddr,
                    ..e
                };
                [(k, e), (rk, r)]
            })
            .collect()
    };
    // The forward entry's source, the reverse entry's rewrite.
    let ours = |k: &CtKey, e: &CtEntry| {
        let a = |x: u32| u32::from_be(x) & 0xffc0_0000 == 0x6440_0000;
        a(k.saddr) || a(e.addr)
    };
    let gc = || i.stats().unwrap_or_default()["ConntrackGC"].clone();
    let runs = |v: &Value| v["Runs"].as_u64().unwrap_or(0);
    // A full table of the bench's entries, and a pass that started after
    // they were written: the second one to end from then. The bench's
    // own flows go first (their traffic has ended): left in, they would
    // expire under the measurement and leave the pass short of a full
    // table. Again if anything still did.
    let n = size & !1;
    let mut live = Value::Null;
    let mut walked = 0;
    for _ in 0..5 {
        let mut table: aya::maps::HashMap<_, CtKey, CtEntry> = aya::maps::HashMap::try_from(
            aya::maps::Map::HashMap(aya::maps::MapData::from_pin(&pin)?),
        )?;
        for (k, e) in ct::dump::<CtKey, CtEntry>(&data)? {
            if !ours(&k, &e) {
                let _ = table.remove(&k);
            }
        }
        ct::update_batch(
            &data,
            &entries(n, ct::monotonic_ns(), ct_state::ESTABLISHED),
        )?;
        let r0 = runs(&gc());
        testbed::wait_until(Duration::from_secs(20), || {
            let v = gc();
            live = v["Last"].clone();
            runs(&v) >= r0 + 2
        });
        walked = live["Entries"].as_u64().unwrap_or(0);
        if walked + 1 >= u64::from(size) {
            break;
        }
    }
    if walked + 1 < u64::from(size) {
        // The bench's own flows kept expiring under every try: the
        // figures are those of the fullest pass seen, and gc_entries says
        // how full the table was (a measurement, not a failure).
        tracing::warn!("no conntrack GC pass over all {size} entries; the last one: {live}");
    }
    m.insert("gc_entries".into(), walked as f64);
    m.insert(
        "gc_pass_ms".into(),
        live["WallMicros"].as_f64().unwrap_or(0.0) / 1e3,
    );
    m.insert(
        "gc_pass_cpu_ms".into(),
        live["CpuMicros"].as_f64().unwrap_or(0.0) / 1e3,
    );
    // The same flows idle (closing, last seen at boot): the next pass
    // removes them all.
    ct::update_batch(&data, &entries(n, 0, ct_state::CLOSING))?;
    let mut idle = Value::Null;
    testbed::wait_until(Duration::from_secs(20), || {
        idle = gc()["Last"].clone();
        idle["Expired"].as_u64().unwrap_or(0) >= u64::from(n)
    });
    if idle["Expired"].as_u64().unwrap_or(0) < u64::from(n) {
        tracing::warn!("the conntrack GC removed fewer than the {n} idle entries: {idle}");
    }
    m.insert(
        "gc_expire_pass_ms".into(),
        idle["WallMicros"].as_f64().unwrap_or(0.0) / 1e3,
    );
    m.insert(
        "gc_expire_pass_cpu_ms".into(),
        idle["CpuMicros"].as_f64().unwrap_or(0.0) / 1e3,
    );
    m.insert("gc_expired".into(), idle["Expired"].as_f64().unwrap_or(0.0));
    Ok(())
}

fn last_sync_ms(i: &Instance) -> Result<f64> {
    let v = i.d.client.get("/info")?;
    Ok(v["LastSyncMicros"].as_f64().unwrap_or(0.0) / 1000.0)
}

/// Publishes `n` other ports (one range), then the target after them;
/// returns the target container's namespace (its server's).
fn scaling_setup(i: &Instance, n: u32) -> Result<u64> {
    let _ = i.d.client.delete("/containers/filler?force=1");
    let _ = i.d.client.delete("/containers/t?force=1");
    if n > 0 {
        let range = format!("20000-{}:20000-{}", 20000 + n - 1, 20000 + n - 1);
        i.create("filler", &[&range])?;
    }
    let srv = vec![
        i.me.clone(),
        "tool".into(),
        "rr-server".into(),
        format!("0.0.0.0:{RR_PORT}"),
    ];
    i.run_detached("t", &[&format!("{SCALE_PORT}:{RR_PORT}")], &srv)?;
    std::thread::sleep(Duration::from_millis(300));
    i.container_netns("t")
}

/// /proc/loadavg's first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
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
    if o.cpus.is_empty() {
        bail!("--cpus: at least one of same, cross, free");
    }
    let mut notes = Vec::new();
    if num_cpus() < 2 && o.cpus.contains(&Placement::Cross) {
        o.cpus.retain(|p| *p != Placement::Cross);
        notes.push("one CPU: no `cross` placement".to_string());
    }
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    std::fs::create_dir_all(&o.out)?;
    for dp in &o.datapaths {
        dp.parse::<crate::datapath::Kind>()?;
    }
    // The peers: missing tools are reported (and, for a peer named
    // explicitly, an error), never replaced.
    let mut peer_kinds = Vec::new();
    for p in &o.peers {
        let missing = peer::missing(p);
        if missing.is_empty() {
            peer_kinds.push(p.clone());
        } else if o.optional_peers.contains(p) {
            let n = format!(
                "peer {p} not measured: {} not installed",
                missing.join(", ")
            );
            eprintln!("netd bench: {n}");
            notes.push(n);
        } else {
            bail!(
                "peer {p} needs {} (cargo xtask setup installs them)",
                missing.join(", ")
            );
        }
    }
    let load_start = loadavg();
    eprintln!(
        "netd bench: datapaths {}, peers {}, CPU placements {}, {} rounds of {} s, scenarios {}; load average {load_start}",
        o.datapaths.join(","),
        if peer_kinds.is_empty() {
            "none".to_string()
        } else {
            peer_kinds.join(",")
        },
        o.cpus
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(","),
        o.rounds,
        o.duration,
        o.scenarios.join(",")
    );
    let mut instances = Vec::new();
    for dp in &o.datapaths {
        let ipv6 = o.scenarios.iter().any(|s| is_ipv6(s));
        instances.push(Instance::start(dp, &o.out, &me, ipv6)?);
    }
    let mut peers = Vec::new();
    for k in &peer_kinds {
        match k.as_str() {
            "docker" => peers.push(peer::Peer::docker(None, &o.out, &me)?),
            "podman" => peers.push(peer::Peer::podman(&me)?),
            "docker+netd" => {
                for dp in &o.datapaths {
                    peers.push(peer::Peer::docker(Some(dp), &o.out, &me)?);
                }
            }
            other => bail!("unknown peer {other:?}"),
        }
    }
    let targets: Vec<Target> = instances
        .iter()
        .map(Target::Netd)
        .chain(peers.iter().map(Target::Peer))
        .collect();
    let peer_names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
    let floor = Floor::start(&me)?;
    let mut servers_ns = vec![floor.tb.outside.inode()?];
    for t in &targets {
        servers_ns.extend(t.server_namespaces()?);
    }
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
    let floor_loads = plan.iter().filter(|(s, _)| *s == "c2c").count();
    let ebpf_instances = instances.iter().filter(|i| i.dp == "ebpf").count();
    let total = o.rounds as usize
        * (o.cpus.len()
            * (plan
                .iter()
                .map(|(s, _)| targets.iter().filter(|t| t.runs(s)).count())
                .sum::<usize>()
                + floor_loads)
            + scaling.len() * instances.len()
            + usize::from(has("bpf")) * (6 * ebpf_instances + usize::from(n2n_bpf))
            + usize::from(has("xdp")) * 2 * XDP_LOADS.len() * ebpf_instances
            + if n2n.is_empty() {
                0
            } else {
                n2n_loads.len() * (n2n.len() + 1)
            })
        + usize::from(has("control")) * instances.len();
    let mut pr = Progress {
        done: 0,
        total,
        start: Instant::now(),
    };
    let mut samples = Vec::new();
    let lead = o.cpus[0];

    for (pi, placement) in o.cpus.iter().enumerate() {
        place(&servers_ns, placement.servers());
        let cpu = placement.client();
        // Warm-up: every path once, briefly.
        if !o.quick && pi == 0 {
            for t in &targets {
                for (s, l) in plan.iter().filter(|(s, _)| t.runs(s)) {
                    // A failure shows in the measured rounds.
                    if let Err(e) = t.measure(s, *l, 0.3, cpu) {
                        tracing::debug!("warm-up {s} on {}: {e:#}", t.name());
                    }
                }
            }
        }
        for (scenario, load) in &plan {
            for round in 1..=o.rounds {
                for t in targets.iter().filter(|t| t.runs(scenario)) {
                    pr.step(&format!(
                        "{} {scenario} {} {} round {round}",
                        placement.name(),
                        load.name(),
                        t.name()
                    ));
                    let figures =
                        t.measure(scenario, *load, o.duration, cpu)
                            .with_context(|| {
                                format!(
                                    "{scenario} {} on {} ({})",
                                    load.name(),
                                    t.name(),
                                    placement.name()
                                )
                            })?;
                    if let Target::Netd(i) = t
                        && i.dp == "ebpf"
                        && std::env::var_os("NETD_BENCH_DEBUG").is_some()
                    {
                        let st = i.stats()?;
                        eprintln!(
                            "\nDEBUG {scenario} {}: drops {} counters {} gc {}",
                            load.name(),
                            st["Drops"],
                            st["Counters"],
                            st["ConntrackGC"]
                        );
                    }
                    samples.push(Sample {
                        placement: placement.name().into(),
                        scenario: scenario.to_string(),
                        load: load.name().into(),
                        datapath: t.name().to_string(),
                        round,
                        figures,
                    });
                }
                if *scenario == "c2c" {
                    pr.step(&format!(
                        "{} c2c {} floor round {round}",
                        placement.name(),
                        load.name()
                    ));
                    let figures = measure_floor(&floor, &me, *load, o.duration, cpu)?;
                    samples.push(Sample {
                        placement: placement.name().into(),
                        scenario: "c2c".into(),
                        load: load.name().into(),
                        datapath: "floor".into(),
                        round,
                        figures,
                    });
                }
            }
        }
    }
    // Scaling and program cost: in the lead placement.
    place(&servers_ns, lead.servers());
    let cpu = lead.client();
    // node2node: in the lead placement too.
    if let Some(rf) = &routed_floor {
        let mut ns = vec![rf.server_namespace()?];
        for n in &n2n {
            ns.push(n.server_namespace()?);
        }
        place(&ns, lead.servers());
        if !o.quick {
            for n in &n2n {
                for l in n2n_loads {
                    if let Err(e) = n.measure(l, 0.3, cpu) {
                        tracing::debug!("warm-up node2node on {}: {e:#}", n.dp);
                    }
                }
            }
        }
        for load in n2n_loads {
            for round in 1..=o.rounds {
                for n in &n2n {
                    pr.step(&format!(
                        "{} node2node {} {} round {round}",
                        lead.name(),
                        load.name(),
                        n.dp
                    ));
                    let figures = n
                        .measure(load, o.duration, cpu)
                        .with_context(|| format!("node2node {} on {}", load.name(), n.dp))?;
                    samples.push(Sample {
                        placement: lead.name().into(),
                        scenario: "node2node".into(),
                        load: load.name().into(),
                        datapath: n.dp.clone(),
                        round,
                        figures,
                    });
                }
                pr.step(&format!(
                    "{} node2node {} floor round {round}",
                    lead.name(),
                    load.name()
                ));
                let figures = rf.measure(&me, load, o.duration, cpu)?;
                samples.push(Sample {
                    placement: lead.name().into(),
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
            let ns = scaling_setup(i, *n)?;
            place(&[ns], lead.servers());
        }
        for round in 1..=o.rounds {
            for i in &instances {
                pr.step(&format!(
                    "{} scaling {n} ports {} round {round}",
                    lead.name(),
                    i.dp
                ));
                let args = Load::Crr.args(&me, &HOST_IP.to_string(), SCALE_PORT, o.duration);
                let figures = Load::Crr.parse(&i.in_ns(&i.tb.outside, cpu, &args)?)?;
                samples.push(Sample {
                    placement: lead.name().into(),
                    scenario: format!("scaling_{n}"),
                    load: "TCP_CRR".into(),
                    datapath: i.dp.clone(),
                    round,
                    figures,
                });
            }
        }
    }
    if has("xdp") {
        for i in instances.iter().filter(|i| i.dp == "ebpf") {
            for load in XDP_LOADS {
                for round in 1..=o.rounds {
                    for xdp in [false, true] {
                        let scenario = if xdp { "uplink_xdp" } else { "uplink_tc" };
                        pr.step(&format!(
                            "{} {scenario} {} round {round}",
                            lead.name(),
                            load.name()
                        ));
                        let probe = if xdp {
                            Some(i.tb.host.run(|| bpf::attach_xdp_pass(testbed::UPLINK))?)
                        } else {
                            None
                        };
                        let figures = measure(i, "dnat", load, o.duration, cpu)
                            .with_context(|| format!("{scenario} {}", load.name()))?;
                        drop(probe);
                        samples.push(Sample {
                            placement: lead.name().into(),
                            scenario: scenario.into(),
                            load: load.name().into(),
                            datapath: i.dp.clone(),
                            round,
                            figures,
                        });
                    }
                }
            }
        }
    }
    let mut programs = Value::Null;
    if has("bpf") {
        for i in instances.iter().filter(|i| i.dp == "ebpf") {
            programs = i.stats()?["Programs"].clone();
            let old =
                std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
            std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
                .context("enabling kernel.bpf_stats_enabled")?;
            let result = (|| -> Result<()> {
                for round in 1..=o.rounds {
                    // Per packet: under TCP_RR every packet is one small
                    // packet on the wire (the targets' figure); under
                    // TCP_STREAM one GSO packet of up to 64 KiB, its
                    // copies evicting the maps from the caches.
                    for s in ["c2c", "dnat", "egress"] {
                        for load in [Load::Rr, Load::Stream] {
                            pr.step(&format!(
                                "{} bpf stats {s} {} round {round}",
                                lead.name(),
                                load.name()
                            ));
                            let figures = bpf_ns_per_packet(i, || {
                                measure(i, s, load, o.duration, cpu).map(|_| ())
                            })?;
                            samples.push(Sample {
                                placement: lead.name().into(),
                                scenario: format!("bpf_{s}"),
                                load: load.name().into(),
                                datapath: i.dp.clone(),
                                round,
                                figures,
                            });
                        }
                    }
                    // Pod -> remote pod: node 1's from_container sends
                    // the data out (cluster out), node 2's from_world
                    // delivers it (cluster in); the ACKs go the other way.
                    if let Some(n) = n2n.iter().find(|n| n.dp == "ebpf") {
                        pr.step(&format!(
                            "{} bpf stats node2node round {round}",
                            lead.name()
                        ));
                        let figures = bpf_ns_per_packet_of(
                            &[("node1_", &n.d[0]), ("node2_", &n.d[1])],
                            || n.measure(Load::Stream, o.duration, cpu).map(|_| ()),
                        )?;
                        samples.push(Sample {
                            placement: lead.name().into(),
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
            for (n, figures) in control(i, o.quick)?.into_iter().enumerate() {
                samples.push(Sample {
                    placement: "-".into(),
                    scenario: "control".into(),
                    load: "control".into(),
                    datapath: i.dp.clone(),
                    round: n as u32 + 1,
                    figures,
                });
            }
        }
    }
    eprintln!();
    let load_end = loadavg();
    drop(targets);
    drop(peers);
    drop(instances);
    drop(floor);
    drop(n2n);
    drop(routed_floor);
    let md = report::write(
        &o,
        &report::Run {
            peers: peer_names,
            notes,
            programs,
            loadavg: (load_start, load_end),
        },
        &samples,
    )?;
    println!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn placements_parse_and_pin() {
        assert_eq!("same".parse::<Placement>().unwrap(), Placement::Same);
        assert!("both".parse::<Placement>().is_err());
        assert_eq!(Placement::Same.client(), Placement::Same.servers());
        assert_ne!(Placement::Cross.client(), Placement::Cross.servers());
        assert_eq!(Placement::Free.client(), None);
    }
}
