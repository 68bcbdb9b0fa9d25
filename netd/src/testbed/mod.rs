//! Throwaway topologies for tests, the demo and benchmarks: a "host"
//! namespace (where netd runs; its uplink is `eth0`) and an "outside"
//! namespace playing the rest of the world, joined by a veth. Nothing here
//! ever touches the namespace the process started in.
//!
//! Everything is deleted on drop, also while unwinding from a panic:
//! processes started through [`Testbed::spawn`] are killed, namespace files
//! unmounted, and the links inside die with their namespaces.
use std::{
    net::Ipv4Addr,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    link::{Netlink, mac_for_ip},
    netns::NetNs,
};

pub mod cleanup;
pub mod cluster;
pub mod cni;
pub mod docker;
pub mod image;
pub mod podman;

/// The outside namespace's address on the uplink; the host's default
/// gateway. From the RFC 2544 benchmarking range, never routed anywhere.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The host's uplink address.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const UPLINK_PREFIX: u8 = 24;
/// The outside's and the host's uplink IPv6 addresses when a test or the
/// bench asks for them ([`Testbed::uplink6`]; the documentation prefix).
pub const OUTSIDE_IP6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);
pub const HOST_IP6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
/// The host's uplink interface name (inside the host namespace).
pub const UPLINK: &str = "eth0";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name stem for this process: `netd-t<pid>-<n>`.
pub fn unique_stem(tag: &str) -> String {
    format!(
        "netd-{tag}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs an async block on a private single-threaded runtime (the testbed
/// API is synchronous; netlink needs a reactor).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A process in a namespace, killed (and reaped) on drop, with its
/// process group: a `sh -c "a & b & wait"` takes its children along
/// (killing the shell alone would leave them running, reparented to init).
pub struct Bg {
    pub child: Child,
    pub what: String,
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) of the process group this child leads
            // (spawn_in made it; the child is not reaped yet, so its pid,
            // the group's id, is not reused).
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway host + outside topology.
pub struct Testbed {
    pub stem: String,
    pub host: NetNs,
    pub outside: NetNs,
    extra: Vec<NetNs>,
    procs: Vec<Bg>,
}

impl Testbed {
    /// Creates the host and outside namespaces, joined by a veth:
    /// host `eth0` 198.18.0.2/24 (default route via 198.18.0.1), outside
    /// `eth0` 198.18.0.1/24. IPv4 forwarding is on in the host, as a
    /// container host has it.
    pub fn new(tag: &str) -> Result<Testbed> {
        let stem = unique_stem(tag);
        let host = NetNs::create_named(&format!("{stem}-host"))?;
        let mut tb = Testbed {
            stem,
            host,
            outside: NetNs::at("/nonexistent"),
            extra: vec![],
            procs: vec![],
        };
        tb.outside = NetNs::create_named(&format!("{}-out", tb.stem))?;
        let (host, outside) = (tb.host.clone(), tb.outside.clone());
        block_on(async move {
            let hn = Netlink::in_ns(&host)?;
            // The peer is created directly inside the outside namespace,
            // so both ends can be called eth0.
            hn.create_veth(UPLINK, UPLINK, &outside, mac_for_ip(OUTSIDE_IP), 1500)
                .await?;
            let hi = hn.index_of(UPLINK).await?;
            hn.add_addr(hi, HOST_IP, UPLINK_PREFIX).await?;
            hn.set_up(hi).await?;
            let on = Netlink::in_ns(&outside)?;
            let oi = on.index_of(UPLINK).await?;
            on.add_addr(oi, OUTSIDE_IP, UPLINK_PREFIX).await?;
            on.set_up(oi).await?;
            hn.add_default_route(OUTSIDE_IP).await?;
            anyhow::Ok(())
        })
        .context("wiring host <-> outside")?;
        tb.host
            .run(|| crate::netns::sysctl_write("net/ipv4/ip_forward", "1"))?;
        Ok(tb)
    }

    /// A testbed over namespaces made elsewhere (a cluster's node):
    /// dropping it removes `host` and `outside` like its own.
    pub fn on(stem: String, host: NetNs, outside: NetNs) -> Testbed {
        Testbed {
            stem,
            host,
            outside,
            extra: vec![],
            procs: vec![],
        }
    }

    /// A Linux bridge in the host namespace with `gw/prefix` on it.
    pub fn bridge(&self, name: &str, gw: Ipv4Addr, prefix: u8) -> Result<u32> {
        let host = self.host.clone();
        block_on(async move {
            let n = Netlink::in_ns(&host)?;
            let i = n.ensure_bridge(name, 1500, None).await?;
            n.add_addr(i, gw, prefix).await?;
            Ok(i)
        })
    }

    /// A "container": a namespace with `eth0` (ip/prefix, default route via
    /// `gw`) whose peer `host_veth` is enslaved to `bridge` in the host.
    pub fn container(
        &mut self,
        name: &str,
        bridge: &str,
        host_veth: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gw: Ipv4Addr,
    ) -> Result<NetNs> {
        let ns = NetNs::create_named(&format!("{}-{name}", self.stem))?;
        self.extra.push(ns.clone());
        let (host, cns) = (self.host.clone(), ns.clone());
        let host_veth = host_veth.to_string();
        let bridge = bridge.to_string();
        block_on(async move {
            let hn = Netlink::in_ns(&host)?;
            let vi = hn
                .create_veth(&host_veth, "eth0", &cns, mac_for_ip(ip), 1500)
                .await?;
            let bi = hn.index_of(&bridge).await?;
            hn.set_master_up(vi, bi).await?;
            let cn = Netlink::in_ns(&cns)?;
            let ci = cn.index_of("eth0").await?;
            cn.add_addr(ci, ip, prefix).await?;
            cn.set_up(ci).await?;
            cn.add_default_route(gw).await?;
            anyhow::Ok(())
        })
        .with_context(|| format!("wiring container {name}"))?;
        Ok(ns)
    }

    /// An empty namespace (only `lo`, up) named after the testbed, removed
    /// with it: a sandbox for a CNI plugin or an engine to wire.
    pub fn netns(&mut self, name: &str) -> Result<NetNs> {
        let ns = NetNs::create_named(&format!("{}-{name}", self.stem))?;
        self.extra.push(ns.clone());
        Ok(ns)
    }

    /// Runs a command in `ns` to completion and returns its output.
    pub fn exec(&self, ns: &NetNs, args: &[&str]) -> Result<Output> {
        let mut cmd = ns.command(args[0])?;
        cmd.args(&args[1..]).stdin(Stdio::null());
        cmd.output().with_context(|| format!("running {args:?}"))
    }

    /// Like [`exec`](Self::exec) but fails unless the command succeeds;
    /// returns stdout.
    pub fn ok(&self, ns: &NetNs, args: &[&str]) -> Result<String> {
        let out = self.exec(ns, args)?;
        if !out.status.success() {
            bail!(
                "{args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Gives the uplink IPv6 (off by default): `OUTSIDE_IP6/64` outside,
    /// `HOST_IP6/64` on the host's eth0 with its default IPv6 route via
    /// the outside; no DAD.
    pub fn uplink6(&self) -> Result<()> {
        for (ns, addr) in [(&self.outside, OUTSIDE_IP6), (&self.host, HOST_IP6)] {
            let sysctl = format!("net.ipv6.conf.{UPLINK}.disable_ipv6=0");
            self.ok(ns, &["sysctl", "-qw", &sysctl])?;
            let a = format!("{addr}/64");
            self.ok(ns, &["ip", "-6", "addr", "add", &a, "dev", UPLINK, "nodad"])?;
        }
        let via = OUTSIDE_IP6.to_string();
        self.ok(
            &self.host,
            &["ip", "-6", "route", "add", "default", "via", &via],
        )?;
        Ok(())
    }

    /// Starts a long-running command in `ns`; it is killed when the testbed
    /// is dropped.
    pub fn spawn(&mut self, ns: &NetNs, args: &[&str]) -> Result<()> {
        let bg = spawn_in(ns, args)?;
        self.procs.push(bg);
        Ok(())
    }

    /// Adds a command to the processes killed on drop.
    pub fn adopt(&mut self, child: Child, what: &str) {
        self.procs.push(Bg {
            child,
            what: what.into(),
        });
    }

    /// Every namespace this testbed made.
    pub fn namespaces(&self) -> Vec<NetNs> {
        let mut v = vec![self.host.clone(), self.outside.clone()];
        v.extend(self.extra.iter().cloned());
        v
    }
}

/// Starts `args` in `ns` with output discarded, as the leader of a process
/// group of its own (killed whole on drop).
pub fn spawn_in(ns: &NetNs, args: &[&str]) -> Result<Bg> {
    use std::os::unix::process::CommandExt;
    let mut cmd: Command = ns.command(args[0])?;
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let child = cmd.spawn().with_context(|| format!("starting {args:?}"))?;
    Ok(Bg {
        child,
        what: args.join(" "),
    })
}

/// Polls `f` until it returns true or `timeout` passes. For waiting on
/// readiness (a server listening), never as an assertion about speed.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.procs.clear();
        for ns in self.extra.iter().chain([&self.outside, &self.host]) {
            if let Err(e) = ns.remove() {
                eprintln!("testbed cleanup: {e:#}");
            }
        }
    }
}

/// True when running as root. Tests that need root call
/// [`require_root`] instead.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For tests that need root: returns false (skip, with a note) when not
/// root, except under CI=true, where a missing privilege is a failure.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test} needs root (CI=true: not skipping)");
    }
    eprintln!("skipping {test}: needs root");
    false
}

/// For tests that need programs the project's setup installs (real
/// engines, CNI plugins): `tools` are absolute paths. Returns false (skip,
/// with a note) when one is missing, except under CI=true, where it is a
/// failure.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::path::Path::new(t).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "{test} needs {missing:?} (CI=true: not skipping; `cargo xtask setup` installs them)"
        );
    }
    eprintln!("skipping {test}: missing {missing:?} (`cargo xtask setup` installs them)");
    false
}
