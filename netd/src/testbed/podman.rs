//! Podman 4.3 (Debian's podman) as a real runtime inside a testbed's host
//! namespace, with the recipe verified on this machine kind
//! (DESIGN.md section 9):
//!
//! - a `containers.conf` of its own (`CONTAINERS_CONF`): `[containers]
//!   default_ulimits = []` (the default rlimits are refused here);
//!   `[network] cni_plugin_dirs`, `network_config_dir`; `[engine]
//!   cgroup_manager = "cgroupfs"` (no systemd), `events_logger = "file"`,
//!   `lock_type = "file"` (not the machine-wide `/libpod_lock` shared
//!   memory segment), `tmp_dir` of its own;
//! - `nsenter --net=<host netns> podman --root R --runroot RR --runtime
//!   runc` (crun refuses this host's hybrid cgroups) `--network-backend
//!   cni|netavark --network-config-dir D ...`.
//!
//! With the CNI backend, networks are conflists written into the network
//! config dir ([`Podman::write_conflist`]); `podman run` calls ADD and
//! `podman rm` calls DEL, in the host namespace, with podman's
//! environment. What stays global whatever the flags: the netns files of
//! containers (`/run/netns/cni-<uuid>` or `netns-<uuid>`), libcni's cache
//! (`/var/lib/cni`), and for netavark `/run/containers/networks` (its IPAM
//! database and aardvark-dns config: podman hard-codes that directory for
//! root, so every rootful podman on the machine shares one aardvark-dns
//! process; create netavark networks with `--disable-dns` and unique
//! names).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{cleanup, image, unique_stem};
use crate::netns::NetNs;

pub const PODMAN: &str = "/usr/bin/podman";
/// Debian's reference CNI plugins (containernetworking-plugins).
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkBackend {
    Cni,
    Netavark,
}

impl NetworkBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkBackend::Cni => "cni",
            NetworkBackend::Netavark => "netavark",
        }
    }
}

/// One podman "installation": its own storage, run root, tmp dir, network
/// configs and containers.conf, used in one network namespace.
pub struct Podman {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub runroot: PathBuf,
    pub tmpdir: PathBuf,
    pub network_config_dir: PathBuf,
    pub containers_conf: PathBuf,
    pub backend: NetworkBackend,
    pub netns: NetNs,
}

impl Podman {
    /// Prepares a podman instance for `netns`; `cni_plugin_dirs` are the
    /// directories searched for CNI plugins (CNI backend).
    pub fn new(
        netns: &NetNs,
        backend: NetworkBackend,
        cni_plugin_dirs: &[&Path],
    ) -> Result<Podman> {
        let dir = std::env::temp_dir().join(unique_stem("pm"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let p = Podman {
            root: dir.join("root"),
            runroot: dir.join("runroot"),
            tmpdir: dir.join("tmp"),
            network_config_dir: dir.join("net.d"),
            containers_conf: dir.join("containers.conf"),
            backend,
            netns: netns.clone(),
            dir,
        };
        std::fs::create_dir_all(&p.network_config_dir)?;
        let dirs: Vec<String> = cni_plugin_dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        // An empty list is refused ("invalid cni_plugin_dirs"): leave the
        // key out instead.
        let dirs = if dirs.is_empty() {
            String::new()
        } else {
            format!("cni_plugin_dirs = [{}]\n", dirs.join(", "))
        };
        std::fs::write(
            &p.containers_conf,
            format!(
                "[containers]\n\
                 default_ulimits = []\n\
                 [network]\n\
                 network_backend = {backend:?}\n\
                 {dirs}\
                 network_config_dir = {netconf:?}\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 lock_type = \"file\"\n\
                 runtime = \"runc\"\n\
                 tmp_dir = {tmp:?}\n",
                backend = backend.as_str(),
                netconf = p.network_config_dir.display().to_string(),
                tmp = p.tmpdir.display().to_string(),
            ),
        )?;
        Ok(p)
    }

    /// A `podman` command for this instance, in its namespace.
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(PODMAN)
            .env("CONTAINERS_CONF", &self.containers_conf)
            // Not the machine's storage.conf / registries.
            .env_remove("CONTAINERS_STORAGE_CONF")
            .env_remove("CONTAINER_HOST")
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .arg("--tmpdir")
            .arg(&self.tmpdir)
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(["--network-backend", self.backend.as_str()])
            .arg("--network-config-dir")
            .arg(&self.network_config_dir)
            .args(args)
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs `podman ARGS` to completion.
    pub fn podman(&self, args: &[&str]) -> Result<Output> {
        self.command(args)?
            .output()
            .with_context(|| format!("running podman {args:?}"))
    }

    /// Runs `podman ARGS`; fails unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.podman(args)?;
        if !out.status.success() {
            bail!(
                "podman {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a CNI network (a conflist, whose `name` podman uses as the
    /// network's name) into the network config dir.
    pub fn write_conflist(&self, conflist: &serde_json::Value) -> Result<PathBuf> {
        let name = conflist["name"]
            .as_str()
            .context("a conflist needs a name")?;
        let path = self.network_config_dir.join(format!("{name}.conflist"));
        std::fs::write(&path, serde_json::to_string_pretty(conflist)?)?;
        Ok(path)
    }

    /// Removes every container at once (`rm -a -f -t 0`: a busybox httpd
    /// as PID 1 ignores SIGTERM, and the default stop waits 10 s).
    pub fn remove_all_containers(&self) -> Result<()> {
        self.ok(&["rm", "-a", "-f", "-t", "0"]).map(|_| ())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all_containers() {
            eprintln!("podman cleanup: {e:#}");
        }
        // conmon and its container outlive a failed podman; they name our
        // directory (--exit-dir, --persist-dir).
        cleanup::kill_trees_with_arg(&self.dir.to_string_lossy());
        cleanup::remove_dir_tree(&self.dir, "podman");
    }
}

/// Builds a busybox image (see [`image::busybox_rootfs`]) with
/// `extra_binaries` in `/bin` and imports it as `name` (podman names it
/// `localhost/NAME`).
pub fn busybox_image(podman: &Podman, name: &str, extra_binaries: &[&Path]) -> Result<String> {
    let root = podman
        .dir
        .join(format!("rootfs-{}", name.replace(['/', ':'], "_")));
    let _ = std::fs::remove_dir_all(&root);
    image::busybox_rootfs(&root, extra_binaries)?;
    let id = image::import_dir(&root, podman.command(&["import", "-", name])?);
    let _ = std::fs::remove_dir_all(&root);
    id
}
