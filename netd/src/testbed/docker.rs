//! A real Docker Engine (Debian's docker.io, dockerd 20.10) inside a
//! testbed's host namespace, for tests and benchmarks that drive Docker
//! itself: as a peer to measure netd against, or as the runtime that calls
//! netd as a network plugin.
//!
//! How it is started (see README "Real engines in tests"):
//!
//! - `nsenter --net=<host netns> containerd --config <dir>/containerd.toml`:
//!   a containerd of its own (socket `<dir>/exec/containerd/containerd.sock`,
//!   root under the data root, state under the exec root, CRI disabled).
//!   dockerd 20.10 would start a managed one itself, but only when
//!   `/run/containerd/containerd.sock` does not exist: if any containerd
//!   runs at the default address, dockerd silently uses that one instead.
//! - `nsenter --net=<host netns> dockerd --config-file <dir>/daemon.json
//!   --data-root D --exec-root E --pidfile P -H unix://S --containerd C`
//!   with `--bridge`, `--bip`, `--iptables`, `--ip-masq`, `--userland-proxy`
//!   from [`DockerdOptions`]. Not `ip netns exec`: it remounts /sys, and
//!   dockerd then finds no cgroups. Our own `daemon.json` keeps a machine
//!   `/etc/docker/daemon.json` out and moves the trust key
//!   (`deprecated-key-path`) out of `/etc/docker`.
//!
//! What stays global whatever the flags (dockerd 20.10): network plugins
//! are discovered in `/run/docker/plugins` (NAME.sock or NAME/NAME.sock)
//! and `/etc/docker/plugins`, `/usr/lib/docker/plugins` (NAME.spec holding
//! an address such as `unix:///any/path.sock`, or NAME.json): hard-coded,
//! not configurable, shared by every dockerd on the machine, so a test's
//! plugin name must be unique. containerd 1.6 puts shim sockets in
//! `/run/containerd/s/` (named by a hash that includes our containerd's
//! address, so they do not collide).
//!
//! Dropping a [`Dockerd`] (also while a test panics) removes every
//! container, stops dockerd and containerd, kills any shim and container
//! process still naming its directory, unmounts everything below its
//! directory (overlays, container netns files, the data root's own bind
//! mount) and deletes it.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{cleanup, image, unique_stem, wait_until};
use crate::netns::NetNs;

/// The docker.io client. Not `docker` from PATH: this machine kind also
/// has a Docker 28 CLI in /usr/local/bin, ahead of /usr/bin in PATH.
pub const DOCKER_CLI: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const CONTAINERD: &str = "/usr/bin/containerd";

/// dockerd's networking flags.
#[derive(Clone, Debug)]
pub struct DockerdOptions {
    /// `--bridge`: the default bridge's device (`docker0` when None;
    /// `"none"` disables the default bridge network).
    pub bridge: Option<String>,
    /// `--bip`: the default bridge's address and prefix, e.g.
    /// `172.17.0.1/16` (Docker's default when None).
    pub bip: Option<String>,
    /// `--iptables`.
    pub iptables: bool,
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// `--userland-proxy`.
    pub userland_proxy: bool,
    /// Any other dockerd flags.
    pub extra_args: Vec<String>,
}

impl Default for DockerdOptions {
    fn default() -> Self {
        DockerdOptions {
            bridge: None,
            bip: None,
            iptables: true,
            ip_masq: true,
            userland_proxy: true,
            extra_args: vec![],
        }
    }
}

/// A dockerd (and its containerd) running in a network namespace.
pub struct Dockerd {
    /// Everything of this instance lives below this directory.
    pub dir: PathBuf,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    /// The API socket (`-H unix://...`).
    pub socket: PathBuf,
    pub containerd_socket: PathBuf,
    /// The namespace dockerd runs in (its "host").
    pub netns: NetNs,
    dockerd: Option<Child>,
    containerd: Option<Child>,
}

impl Dockerd {
    /// Starts containerd and dockerd in `netns` and waits until
    /// `docker version` answers.
    pub fn start(netns: &NetNs, opts: &DockerdOptions) -> Result<Dockerd> {
        // Short: unix socket paths are limited to 108 bytes.
        let dir = std::env::temp_dir().join(unique_stem("dk"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let exec_root = dir.join("exec");
        let mut d = Dockerd {
            data_root: dir.join("data"),
            socket: dir.join("docker.sock"),
            containerd_socket: exec_root.join("containerd/containerd.sock"),
            exec_root,
            netns: netns.clone(),
            dir,
            dockerd: None,
            containerd: None,
        };
        // From here on, Drop cleans up whatever part was started.
        d.start_containerd()?;
        d.start_dockerd(opts)?;
        Ok(d)
    }

    fn log(&self, name: &str) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .with_context(|| format!("opening {name}"))
    }

    /// The last lines of one of this instance's logs (for error messages).
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn start_containerd(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.containerd_socket.parent().expect("has a parent"))?;
        let config = self.dir.join("containerd.toml");
        // Modelled on the config dockerd 20.10 writes for the containerd it
        // manages, in config version 2; `opt` moved off /opt/containerd.
        std::fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = {root:?}\n\
                 state = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {sock:?}\n\
                 [debug]\n  level = \"warn\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
                root = self.data_root.join("containerd"),
                state = self.exec_root.join("containerd/state"),
                sock = self.containerd_socket,
                opt = self.data_root.join("containerd-opt"),
            ),
        )?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(CONTAINERD)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(self.log("containerd.log")?)
            .stderr(self.log("containerd.log")?)
            .spawn()
            .context("starting containerd")?;
        self.containerd = Some(child);
        let sock = self.containerd_socket.clone();
        let containerd = self.containerd.as_mut().expect("just started");
        wait_until(Duration::from_secs(60), || {
            sock.exists() || exited(containerd)
        });
        if !sock.exists() {
            bail!(
                "containerd did not come up (socket {}):\n{}",
                sock.display(),
                self.log_tail("containerd.log")
            );
        }
        Ok(())
    }

    fn start_dockerd(&mut self, opts: &DockerdOptions) -> Result<()> {
        let config = self.dir.join("daemon.json");
        std::fs::write(
            &config,
            serde_json::to_string_pretty(&serde_json::json!({
                // Not /etc/docker/key.json (shared by every dockerd).
                "deprecated-key-path": self.dir.join("key.json"),
            }))?,
        )?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(DOCKERD)
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--containerd")
            .arg(&self.containerd_socket)
            .arg(format!("--iptables={}", opts.iptables))
            .arg(format!("--ip-masq={}", opts.ip_masq))
            .arg(format!("--userland-proxy={}", opts.userland_proxy));
        if let Some(b) = &opts.bridge {
            cmd.arg("--bridge").arg(b);
        }
        if let Some(b) = &opts.bip {
            cmd.arg("--bip").arg(b);
        }
        cmd.args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(self.log("dockerd.log")?)
            .stderr(self.log("dockerd.log")?);
        let mut child = cmd.spawn().context("starting dockerd")?;
        let mut answered = false;
        wait_until(Duration::from_secs(90), || {
            answered = self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok_and(|o| o.status.success());
            answered || exited(&mut child)
        });
        self.dockerd = Some(child);
        if !answered {
            bail!(
                "dockerd did not answer `docker version`:\n{}",
                self.log_tail("dockerd.log")
            );
        }
        Ok(())
    }

    /// Stops dockerd (SIGTERM: it stops its containers; or SIGKILL: they
    /// are left to the next dockerd) and starts it again on the same
    /// directories and containerd.
    pub fn restart_dockerd(&mut self, opts: &DockerdOptions, kill9: bool) -> Result<()> {
        if let Some(mut c) = self.dockerd.take() {
            if kill9 {
                let _ = c.kill();
                let _ = c.wait();
            } else {
                cleanup::stop_child(&mut c, Duration::from_secs(30));
            }
        }
        self.start_dockerd(opts)
    }

    /// dockerd's pid.
    pub fn pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(Child::id)
    }

    /// A `docker` CLI command aimed at this daemon, run in its namespace
    /// (the CLI only talks to the socket, but nothing of ours runs in the
    /// machine's own namespace), with a config directory of its own.
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = self.netns.command(DOCKER_CLI)?;
        cmd.env("DOCKER_CONFIG", self.dir.join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs `docker ARGS` to completion.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        self.command(args)?
            .output()
            .with_context(|| format!("running docker {args:?}"))
    }

    /// Runs `docker ARGS`; fails unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args)?;
        if !out.status.success() {
            bail!(
                "docker {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes every container (`docker rm -f -v`).
    pub fn remove_all_containers(&self) -> Result<()> {
        let ids = self.ok(&["ps", "-aq"])?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            self.ok(&args)?;
        }
        Ok(())
    }

    /// The shim sockets of this instance's containers (containerd 1.6
    /// runtime v2: `<state>/io.containerd.runtime.v2.task/<ns>/<id>/address`
    /// holds `unix:///run/containerd/s/<hash>`).
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        let tasks = self
            .exec_root
            .join("containerd/state/io.containerd.runtime.v2.task");
        let mut out = vec![];
        for ns in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            for bundle in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(a) = std::fs::read_to_string(bundle.path().join("address")) {
                    let a = a.trim();
                    out.push(PathBuf::from(a.strip_prefix("unix://").unwrap_or(a)));
                }
            }
        }
        out
    }

    /// What this instance has left on the machine (for assertions after
    /// drop): see [`cleanup::Leftovers`].
    pub fn leftovers_of(dir: &Path) -> cleanup::Leftovers {
        cleanup::Leftovers::of(dir)
    }
}

fn exited(c: &mut Child) -> bool {
    c.try_wait().is_ok_and(|s| s.is_some())
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.dockerd.as_mut().is_some_and(|c| !exited(c))
            && let Err(e) = self.remove_all_containers()
        {
            eprintln!("dockerd cleanup: removing containers: {e:#}");
        }
        // dockerd stops what is left (and tears down docker0, its rules,
        // its mounts) on SIGTERM.
        if let Some(mut c) = self.dockerd.take() {
            // Its helpers (docker-proxy) do not name our directory: note
            // them now, kill any that outlive it.
            let helpers: Vec<(i32, String)> = cleanup::tree(c.id() as i32)
                .into_iter()
                .map(|p| (p, cleanup::cmdline(p)))
                .collect();
            cleanup::stop_child(&mut c, Duration::from_secs(30));
            for (pid, cmd) in helpers {
                if pid != c.id() as i32 && !cmd.is_empty() && cleanup::cmdline(pid) == cmd {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if let Some(mut c) = self.containerd.take() {
            cleanup::stop_child(&mut c, Duration::from_secs(10));
        }
        // Shims outlive containerd by design; after a crash they and their
        // containers are still there. They all name our directory.
        cleanup::kill_trees_with_arg(&self.dir.to_string_lossy());
        // A shim that did not exit cleanly leaves its socket in the global
        // /run/containerd/s; each bundle names it in its `address` file.
        for socket in self.shim_sockets() {
            let _ = std::fs::remove_file(socket);
        }
        cleanup::remove_dir_tree(&self.dir, "dockerd");
    }
}

/// Where dockerd 20.10 looks for plugin spec files (a file `NAME.spec`
/// holding the plugin's address, `unix:///path` or `tcp://host:port`).
/// Hard-coded in dockerd (pkg/plugins), shared by every dockerd here.
pub const PLUGIN_SPEC_DIR: &str = "/etc/docker/plugins";
/// Where dockerd 20.10 looks for plugin sockets (`NAME.sock` or
/// `NAME/NAME.sock`); hard-coded too.
pub const PLUGIN_SOCKET_DIR: &str = "/run/docker/plugins";

/// A legacy (v1) plugin registration: `/etc/docker/plugins/NAME.spec`
/// pointing at `address`, so a plugin's socket can live in the test's own
/// directory. The directory is global: `name` must be unique (use
/// [`unique_stem`]). Never overwrites an existing spec; removed on drop.
pub struct PluginSpec {
    pub name: String,
    pub path: PathBuf,
}

impl PluginSpec {
    pub fn install(name: &str, address: &str) -> Result<PluginSpec> {
        use std::io::Write;
        std::fs::create_dir_all(PLUGIN_SPEC_DIR)?;
        let path = Path::new(PLUGIN_SPEC_DIR).join(format!("{name}.spec"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let spec = PluginSpec {
            name: name.into(),
            path,
        };
        writeln!(f, "{address}")?;
        Ok(spec)
    }
}

impl Drop for PluginSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Builds a busybox image (see [`image::busybox_rootfs`]) with
/// `extra_binaries` in `/bin` and imports it into `dockerd` as `name`.
pub fn busybox_image(dockerd: &Dockerd, name: &str, extra_binaries: &[&Path]) -> Result<String> {
    let root = dockerd
        .dir
        .join(format!("rootfs-{}", name.replace(['/', ':'], "_")));
    let _ = std::fs::remove_dir_all(&root);
    image::busybox_rootfs(&root, extra_binaries)?;
    let id = image::import_dir(&root, dockerd.command(&["import", "-", name])?);
    let _ = std::fs::remove_dir_all(&root);
    id
}
