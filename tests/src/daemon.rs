//! A real netd daemon inside a testbed's host namespace, driven through
//! the real CLI. Dropping it kills the daemon and removes everything its
//! containers left (namespace files under its exec root), then the
//! testbed removes the host and outside namespaces.
use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use ::netd::{netns::NetNs, testbed::Testbed};
use anyhow::{Context, Result, bail};

/// The netd binary built next to the test executables (NETD_BIN overrides).
pub fn netd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETD_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("netd")
}

pub struct Netd {
    pub tb: Testbed,
    pub datapath: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The test's own cgroup (v2): the ebpf datapath's host-socket
    /// programs attach here, so nothing else on the machine is affected.
    pub cgroup: PathBuf,
    daemon: Option<Child>,
    /// Daemon flags of this test, on every start (`--cluster-cidr ...`).
    pub flags: Vec<(String, String)>,
}

impl Netd {
    pub fn start(datapath: &str) -> Result<Netd> {
        Netd::start_on(Testbed::new("e")?, datapath, &[])
    }

    /// A daemon in `tb`'s host namespace, with extra daemon flags.
    pub fn start_on(tb: Testbed, datapath: &str, flags: &[(&str, &str)]) -> Result<Netd> {
        let dir = std::env::temp_dir().join(format!("{}-d", tb.stem));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("netd.sock");
        let cgroup = ::netd::cgroup::cgroup2_root()?.join(&tb.stem);
        std::fs::create_dir_all(&cgroup)?;
        let mut n = Netd {
            tb,
            datapath: datapath.into(),
            dir,
            socket,
            cgroup,
            daemon: None,
            flags: flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        n.start_daemon()?;
        Ok(n)
    }

    /// Starts (or restarts) the daemon and waits until it answers.
    pub fn start_daemon(&mut self) -> Result<()> {
        self.start_daemon_with(&[])
    }

    /// The daemon's command line (this test's paths and datapath).
    pub fn daemon_command(&self) -> Command {
        self.daemon_command_with(&[])
    }

    /// The daemon's command line with some flags' values replaced (or
    /// added): `("--state-dir", "/elsewhere")`.
    pub fn daemon_command_with(&self, overrides: &[(&str, &str)]) -> Command {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let mut flags: Vec<(&str, String)> = vec![
            ("--netns", path(self.tb.host.path())),
            ("--datapath", self.datapath.clone()),
            ("--state-dir", path(&self.dir.join("state"))),
            ("--exec-root", path(&self.dir.join("run"))),
            ("--socket", path(&self.socket)),
            ("--bpffs", path(&self.dir.join("bpffs"))),
            ("--cgroup", path(&self.cgroup)),
            // Containers' upstream resolver is the outside namespace,
            // never the machine's own.
            ("--dns", ::netd::testbed::OUTSIDE_IP.to_string()),
        ];
        let own: Vec<(&str, &str)> = self
            .flags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in own.iter().chain(overrides) {
            match flags.iter_mut().find(|(f, _)| f == k) {
                Some(f) => f.1 = v.to_string(),
                None => flags.push((k, v.to_string())),
            }
        }
        let mut cmd = Command::new(netd_bin());
        cmd.arg("daemon").stdin(Stdio::null());
        for (k, v) in flags {
            cmd.arg(k).arg(v);
        }
        cmd
    }

    /// Starts the daemon with extra environment variables (e.g. the
    /// fault-injection ones) and waits until it answers.
    pub fn start_daemon_with(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let child = self
            .daemon_command()
            .envs(env.iter().copied())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting netd daemon")?;
        self.daemon = Some(child);
        let ok = ::netd::testbed::wait_until(Duration::from_secs(30), || {
            self.netd(&["network", "ls"])
                .is_ok_and(|o| o.status.success())
        });
        if !ok {
            bail!("netd daemon did not come up; log:\n{}", self.log());
        }
        Ok(())
    }

    /// The running daemon's pid.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|c| c.id() as i32)
    }

    /// Waits for a daemon that was made to die (fault injection) and
    /// forgets it.
    pub fn reap_daemon(&mut self) -> Option<std::process::ExitStatus> {
        self.daemon.take().and_then(|mut c| c.wait().ok())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// SIGTERM (graceful) or SIGKILL, and wait.
    pub fn stop_daemon(&mut self, kill9: bool) {
        if let Some(mut c) = self.daemon.take() {
            let sig = if kill9 { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    /// Runs the netd CLI (against this daemon's socket).
    pub fn netd(&self, args: &[&str]) -> Result<Output> {
        Command::new(netd_bin())
            .arg("-H")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running netd {args:?}"))
    }

    /// The CLI must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.netd(args).unwrap();
        assert!(
            o.status.success(),
            "netd {args:?} failed: {}{}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The CLI must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.netd(args).unwrap();
        assert!(
            !o.status.success(),
            "netd {args:?} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0].clone()
    }

    pub fn ip_of(&self, name: &str) -> String {
        self.inspect(name)["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Snapshot of the host namespace's links, for "nothing changed" checks.
    pub fn host_links(&self) -> Vec<String> {
        let out = self
            .tb
            .ok(&self.tb.host, &["ip", "-o", "link", "show"])
            .unwrap();
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| {
                l.split(':')
                    .nth(1)
                    .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
            })
            .collect();
        v.sort();
        v
    }

    /// Runs a command as a host process: in the host namespace and, with
    /// `in_cgroup`, in the test's cgroup (where the ebpf datapath's socket
    /// programs apply).
    pub fn host(&self, in_cgroup: bool, args: &[&str]) -> Output {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.tb.host.command(args[0]).unwrap();
        cmd.args(&args[1..]).stdin(Stdio::null());
        if in_cgroup {
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(self.cgroup.join("cgroup.procs"))
                .unwrap();
            // SAFETY: write(2) of a constant buffer in the forked child.
            unsafe {
                cmd.pre_exec(move || {
                    use std::os::fd::AsRawFd;
                    // "0": the writing process itself.
                    if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.output().unwrap()
    }

    pub fn netns_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("run/netns"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `iptables-save` then `ip6tables-save` in the host namespace.
    pub fn iptables_save(&self) -> String {
        let mut out = self
            .tb
            .ok(&self.tb.host, &["iptables-save"])
            .unwrap_or_default();
        out.push_str(
            &self
                .tb
                .ok(&self.tb.host, &["ip6tables-save"])
                .unwrap_or_default(),
        );
        out
    }

    /// `nft list ruleset` in the host namespace.
    pub fn nft_ruleset(&self) -> String {
        self.tb
            .ok(&self.tb.host, &["nft", "list", "ruleset"])
            .unwrap_or_default()
    }

    /// [`ruleset`](Self::ruleset) without comments and chain counters
    /// (which carry timestamps and packet counts), for comparisons.
    pub fn rules(&self) -> String {
        self.ruleset()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The packet-filter rules this daemon's datapath is judged by, for
    /// "nothing changed" checks: `nft list ruleset` for the nftables
    /// datapath, `iptables-save` for the others.
    pub fn ruleset(&self) -> String {
        if self.datapath == "nftables" {
            self.nft_ruleset()
        } else {
            self.iptables_save()
        }
    }
}

impl Drop for Netd {
    fn drop(&mut self) {
        self.stop_daemon(true);
        // Processes started in containers (netd run -d) die with their
        // namespaces' users: kill anything still inside them.
        for f in self.netns_files() {
            let ns = NetNs::at(self.dir.join("run/netns").join(&f));
            if let Ok(ino) = ns.inode() {
                for p in ::netd::netns::pids_in(ino) {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            let _ = ns.remove();
        }
        // The namespace directory is a (shared) mount of its own.
        let _ = nix::mount::umount2(
            &self.dir.join("run/netns"),
            nix::mount::MntFlags::MNT_DETACH,
        );
        // The test's cgroup and the container cgroups the daemon made
        // inside it: processes first, then the directories, deepest first.
        remove_cgroup_tree(&self.cgroup);
        // The daemon's bpffs (pinned maps and links) goes with its mount.
        let _ = nix::mount::umount2(&self.dir.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills every process in a cgroup subtree and removes its directories.
pub fn remove_cgroup_tree(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for p in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let _ = ::netd::testbed::wait_until(Duration::from_secs(5), || {
        std::fs::remove_dir(dir).is_ok() || !dir.exists()
    });
}
