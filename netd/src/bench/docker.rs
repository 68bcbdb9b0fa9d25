//! `netd bench`'s Docker peers: a real dockerd (Debian's 20.10, in a
//! throwaway host namespace of its own, see `testbed::docker`) measured in
//! the same alternating rounds and topology as netd's datapaths:
//!
//! - `docker`: Docker's own default bridge (docker0, its iptables rules,
//!   docker-proxy);
//! - `docker+DATAPATH`: Docker with `-d` netd's plugin (`netd daemon
//!   --docker-plugin`) on that datapath, one per `--datapaths` entry.
//!
//! The servers run in container `bench-b` (CPU 0), publishing the RR, UDP
//! and iperf3 ports; the client in `bench-a` (CPU 1); both from a busybox
//! image carrying netd's load generators and iperf3. The outside
//! namespace runs the same servers as for netd's instances.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use super::{Daemon, Load, pin, port_of, servers};
use crate::testbed::{
    self, HOST_IP, OUTSIDE_IP, Testbed,
    docker::{CONTAINERD, DOCKER_CLI, DOCKERD, Dockerd, DockerdOptions, busybox_image},
    image::BUSYBOX,
};

const IMAGE: &str = "netd-bench";
const IPERF3: &str = "/usr/bin/iperf3";
/// The subnet of the peers' netd network.
const SUBNET: &str = "10.77.0.0/24";

/// Whether the Docker peers can run here (docker.io, containerd,
/// busybox-static and iperf3 installed).
pub(super) fn available() -> bool {
    [DOCKERD, DOCKER_CLI, CONTAINERD, BUSYBOX, IPERF3]
        .iter()
        .all(|p| Path::new(p).exists())
}

/// Removes a plugin socket on drop (a netd that died leaves it in the
/// global /run/docker/plugins).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One Docker peer. Drop order: dockerd (its container removals still
/// reach the plugin), then netd, the plugin socket, the namespaces.
pub(super) struct Peer {
    pub(super) name: String,
    dockerd: Dockerd,
    _netd: Option<Daemon>,
    _socket: Option<SocketFile>,
    tb: Testbed,
    me: String,
    b_ip: String,
}

impl Peer {
    /// Docker's bridge (`datapath` None), or Docker on netd's plugin with
    /// that datapath.
    pub(super) fn start(datapath: Option<&str>, out: &Path, me: &str) -> Result<Peer> {
        let name = match datapath {
            Some(dp) => format!("docker+{dp}"),
            None => "docker".to_string(),
        };
        let mut tb = Testbed::new("bdk")?;
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
        busybox_image(&dockerd, IMAGE, &[Path::new(me), Path::new(IPERF3)])?;
        let network = match &plugin {
            Some(p) => {
                dockerd.ok(&["network", "create", "-d", p, "--subnet", SUBNET, "benchnet"])?;
                "benchnet"
            }
            None => "bridge",
        };
        let mut srv: Vec<String> = pin(0);
        srv.extend(["sh".into(), "-c".into(), servers("netd")]);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            "bench-b",
            "--network",
            network,
            "-p",
            &format!("{p}:{p}", p = super::RR_PORT),
            "-p",
            &format!("{p}:{p}/udp", p = super::UDP_PORT),
            "-p",
            &format!("{p}:{p}", p = super::STREAM_PORT),
            IMAGE,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(srv);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        dockerd.ok(&refs)?;
        dockerd.ok(&[
            "run",
            "-d",
            "--name",
            "bench-a",
            "--network",
            network,
            IMAGE,
            "sleep",
            "1000000",
        ])?;
        let b_ip = dockerd
            .ok(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "bench-b",
            ])?
            .trim()
            .to_string();
        // The world runs the same servers.
        let outside = tb.outside.clone();
        let mut cmd = pin(0);
        cmd.extend(["sh".into(), "-c".into(), servers(me)]);
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        tb.spawn(&outside, &refs)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Peer {
            name,
            dockerd,
            _netd: netd,
            _socket: socket,
            tb,
            me: me.into(),
            b_ip,
        })
    }

    /// A client in container `bench-a`, pinned to CPU 1.
    fn in_client(&self, args: &[String]) -> Result<String> {
        let mut full = vec!["exec".to_string(), "bench-a".into()];
        full.extend(pin(1));
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.dockerd.ok(&refs)
    }

    /// One measurement of `load` in `scenario` (c2c, dnat, egress).
    pub(super) fn measure(
        &self,
        scenario: &str,
        load: Load,
        secs: f64,
    ) -> Result<BTreeMap<String, f64>> {
        let port = port_of(load);
        // Inside the image netd is /bin/netd.
        let out = match scenario {
            "c2c" => self.in_client(&load.args("netd", &self.b_ip, port, secs))?,
            "dnat" => {
                let mut full = pin(1);
                full.extend(load.args(&self.me, &HOST_IP.to_string(), port, secs));
                let refs: Vec<&str> = full.iter().map(String::as_str).collect();
                self.tb.ok(&self.tb.outside, &refs)?
            }
            "egress" => self.in_client(&load.args("netd", &OUTSIDE_IP.to_string(), port, secs))?,
            other => anyhow::bail!("unknown traffic scenario {other}"),
        };
        load.parse(&out)
    }
}
