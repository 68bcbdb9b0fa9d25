//! `netd bench`'s real peers: container engines measured in the same
//! alternating rounds, placements and topology as netd's datapaths, each
//! in a throwaway host/outside topology of its own (their daemons in the
//! host namespace through `nsenter --net`, see `testbed::docker` and
//! `testbed::podman`):
//!
//! - `docker`: Debian's Docker 20.10 on its own default bridge (docker0,
//!   its iptables rules, docker-proxy);
//! - `podman`: Debian's Podman 4.3 with netavark 1.4 (its bridge and
//!   iptables rules; no proxy, `--disable-dns`);
//! - `docker+DATAPATH` (`--peers docker+netd`): Docker with a network of
//!   netd's plugin (`netd daemon --docker-plugin`) on that datapath, one
//!   per `--datapaths` entry.
//!
//! The servers run in container `bench-b`, publishing the RR, UDP and
//! iperf3 ports; the client in `bench-a` (`docker exec` / `podman exec`,
//! pinned as the placement says); both from a busybox image carrying
//! netd's load generators (netd, with the libraries `ldd` lists) and
//! iperf3. The outside namespace runs the same servers as for netd's
//! instances. A peer whose tools are missing is reported and left out,
//! never replaced by something else.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{Daemon, Load, netns_inode, port_of, servers, taskset};
use crate::testbed::{
    self, HOST_IP, OUTSIDE_IP, Testbed,
    docker::{CONTAINERD, DOCKER_CLI, DOCKERD, Dockerd, DockerdOptions},
    image::BUSYBOX,
    podman::{NetworkBackend, PODMAN, Podman},
};

const IMAGE: &str = "netd-bench";
const IPERF3: &str = "/usr/bin/iperf3";
const NETAVARK: &str = "/usr/lib/podman/netavark";
const RUNC: &str = "/usr/sbin/runc";
const CONMON: &str = "/usr/bin/conmon";
/// The subnet of the peers' own networks (netd's plugin, netavark).
const SUBNET: &str = "10.77.0.0/24";

/// The peers `--peers` knows.
pub const KINDS: [&str; 3] = ["docker", "podman", "docker+netd"];

/// What peer `kind` needs that is not installed (empty: it can run).
pub fn missing(kind: &str) -> Vec<&'static str> {
    let need: &[&'static str] = match kind {
        "docker" | "docker+netd" => &[DOCKERD, DOCKER_CLI, CONTAINERD, BUSYBOX, IPERF3],
        "podman" => &[PODMAN, NETAVARK, RUNC, CONMON, BUSYBOX, IPERF3],
        _ => &[],
    };
    need.iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect()
}

/// Removes a plugin socket on drop (a netd that died leaves it in the
/// global /run/docker/plugins).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Engine {
    Docker(Dockerd),
    Podman(Podman),
}

impl Engine {
    fn ok(&self, args: &[&str]) -> Result<String> {
        match self {
            Engine::Docker(d) => d.ok(args),
            Engine::Podman(p) => p.ok(args),
        }
    }
}

/// One peer. Drop order: the engine (its container removals still reach
/// netd's plugin), then netd, the plugin socket, the namespaces.
pub(super) struct Peer {
    pub(super) name: String,
    engine: Engine,
    _netd: Option<Daemon>,
    _socket: Option<SocketFile>,
    tb: Testbed,
    me: String,
    b_ip: String,
}

impl Peer {
    /// Docker's bridge (`datapath` None), or Docker on netd's plugin with
    /// that datapath.
    pub(super) fn docker(datapath: Option<&str>, out: &Path, me: &str) -> Result<Peer> {
        let name = match datapath {
            Some(dp) => format!("docker+{dp}"),
            None => "docker".to_string(),
        };
        let tb = Testbed::new("bdk")?;
        let (netd, socket, plugin) = match datapath {
            Some(dp) => {
                let plugin = testbed::unique_stem("bench");
                let socket = SocketFile(crate::plugin::docker::socket_path(&plugin));
                let d = Daemon::start(&tb, dp, out, me, &["--docker-plugin", &plugin])?;
                (Some(d), Some(socket), Some(plugin))
            }
            None => (None, None, None),
        };
        let dockerd = Dockerd::start(&tb.host, &DockerdOptions::default())
            .with_context(|| format!("starting dockerd for the {name} peer"))?;
        crate::testbed::docker::busybox_image(
            &dockerd,
            IMAGE,
            &[Path::new(me), Path::new(IPERF3)],
        )?;
        let engine = Engine::Docker(dockerd);
        let network = match &plugin {
            Some(p) => {
                engine.ok(&["network", "create", "-d", p, "--subnet", SUBNET, "benchnet"])?;
                "benchnet".to_string()
            }
            None => "bridge".to_string(),
        };
        Peer::containers(name, engine, netd, socket, tb, me, &network)
    }

    /// Podman with netavark, on a network of its own.
    pub(super) fn podman(me: &str) -> Result<Peer> {
        let tb = Testbed::new("bpm")?;
        let pm = Podman::new(&tb.host, NetworkBackend::Netavark, &[])?;
        // Unique name, no DNS: netavark's IPAM database and aardvark-dns
        // live in /run/containers/networks, shared by every rootful podman.
        let network = testbed::unique_stem("nvbench");
        pm.ok(&[
            "network",
            "create",
            "--disable-dns",
            "--subnet",
            SUBNET,
            &network,
        ])?;
        crate::testbed::podman::busybox_image(&pm, IMAGE, &[Path::new(me), Path::new(IPERF3)])?;
        Peer::containers(
            "podman".into(),
            Engine::Podman(pm),
            None,
            None,
            tb,
            me,
            &network,
        )
    }

    /// The servers' and the client's containers, and the world's servers.
    fn containers(
        name: String,
        engine: Engine,
        netd: Option<Daemon>,
        socket: Option<SocketFile>,
        mut tb: Testbed,
        me: &str,
        network: &str,
    ) -> Result<Peer> {
        let image = match engine {
            Engine::Docker(_) => IMAGE.to_string(),
            Engine::Podman(_) => format!("localhost/{IMAGE}"),
        };
        let publish = [
            format!("{p}:{p}", p = super::RR_PORT),
            format!("{p}:{p}/udp", p = super::UDP_PORT),
            format!("{p}:{p}", p = super::STREAM_PORT),
        ];
        // Inside the image netd is /bin/netd.
        let srv = servers("netd");
        let mut args = vec!["run", "-d", "--name", "bench-b", "--network", network];
        for p in &publish {
            args.extend(["-p", p]);
        }
        args.extend([image.as_str(), "sh", "-c", &srv]);
        engine.ok(&args)?;
        engine.ok(&[
            "run",
            "-d",
            "--name",
            "bench-a",
            "--network",
            network,
            &image,
            "sleep",
            "1000000",
        ])?;
        let b_ip = engine
            .ok(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "bench-b",
            ])?
            .trim()
            .to_string();
        if b_ip.is_empty() {
            bail!("{name}: bench-b has no address");
        }
        // The world runs the same servers.
        let outside = tb.outside.clone();
        let srv = servers(me);
        tb.spawn(&outside, &["sh", "-c", &srv])?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Peer {
            name,
            engine,
            _netd: netd,
            _socket: socket,
            tb,
            me: me.into(),
            b_ip,
        })
    }

    /// The network namespaces whose processes are servers: bench-b's and
    /// the outside's.
    pub(super) fn server_namespaces(&self) -> Result<Vec<u64>> {
        let pid = self
            .engine
            .ok(&["inspect", "-f", "{{.State.Pid}}", "bench-b"])?
            .trim()
            .to_string();
        Ok(vec![
            netns_inode(Path::new(&format!("/proc/{pid}/ns/net")))?,
            self.tb.outside.inode()?,
        ])
    }

    /// A client in container `bench-a`, on CPU `cpu` when given.
    fn in_client(&self, cpu: Option<usize>, args: &[String]) -> Result<String> {
        let mut full = vec!["exec".to_string(), "bench-a".into()];
        full.extend(taskset(cpu));
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.engine.ok(&refs)
    }

    /// One measurement of `load` in `scenario` (c2c, dnat, egress).
    pub(super) fn measure(
        &self,
        scenario: &str,
        load: Load,
        secs: f64,
        cpu: Option<usize>,
    ) -> Result<BTreeMap<String, f64>> {
        let port = port_of(load);
        let out = match scenario {
            "c2c" => self.in_client(cpu, &load.args("netd", &self.b_ip, port, secs))?,
            "dnat" => {
                let mut full = taskset(cpu);
                full.extend(load.args(&self.me, &HOST_IP.to_string(), port, secs));
                let refs: Vec<&str> = full.iter().map(String::as_str).collect();
                self.tb.ok(&self.tb.outside, &refs)?
            }
            "egress" => {
                self.in_client(cpu, &load.args("netd", &OUTSIDE_IP.to_string(), port, secs))?
            }
            other => bail!("unknown traffic scenario {other}"),
        };
        load.parse(&out)
    }
}
