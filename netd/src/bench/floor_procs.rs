//! Where the floors' processes run: placed as a container's are, so that
//! a floor differs from the containers it is compared with in the
//! datapath only.
//!
//! netd starts a container's processes in a session of their own
//! (setsid) and in a cgroup v2 of their own, `<cgroup>/netd-<instance>/
//! <container id>`; Docker and Podman do the same with theirs. Both cost
//! the scheduler something on every wake-up and context switch, whatever
//! carries the packets: with sched_autogroup (on by default) a session is
//! a CFS task group of its own, and the cgroup hierarchy is walked for
//! its accounting. Measured here under same-CPU TCP_RR over one bare veth
//! pair: client and server in their own cgroups at a container's depth
//! ran ~3 % below the same pair in the root cgroup, and processes
//! started through `netd run`/`netd exec` ~7 % below ones entered with
//! nsenter from the bench's session. A floor whose processes shared the
//! bench's session and cgroup charged that to the datapath.
//!
//! So each floor process joins, before it execs, a cgroup of its role at
//! the depth of a bench container's (`<cgroup2>/<stem>/netd-floor/
//! <role>`, the bench's daemons having `--cgroup <cgroup2>/<stem>`), and
//! a session of its own.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::NetNs,
    testbed::{self, Testbed},
};

/// The roles a floor's processes have.
#[derive(Clone, Copy)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// A floor's cgroups (`<cgroup2>/<stem>/netd-floor/{server,client}`),
/// removed on drop: drop it after the processes in them are gone.
pub struct FloorProcs {
    /// `<cgroup2>/<stem>`.
    top: PathBuf,
}

impl FloorProcs {
    pub fn new(stem: &str) -> Result<FloorProcs> {
        let top = crate::cgroup::cgroup2_root()?.join(stem);
        let p = FloorProcs { top };
        for role in [Role::Server, Role::Client] {
            let dir = p.cgroup(role);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the cgroup {}", dir.display()))?;
        }
        Ok(p)
    }

    fn cgroup(&self, role: Role) -> PathBuf {
        self.top.join("netd-floor").join(role.name())
    }

    /// `args` in `ns`, in the cgroup of `role` and a session of its own.
    fn command(&self, ns: &NetNs, role: Role, args: &[&str]) -> Result<Command> {
        let procs_path = self.cgroup(role).join("cgroup.procs");
        let procs = File::options()
            .write(true)
            .open(&procs_path)
            .with_context(|| format!("opening {}", procs_path.display()))?;
        let mut cmd = ns.command(args[0])?;
        cmd.args(&args[1..]).stdin(Stdio::null());
        // SAFETY: runs in the forked child before exec and makes only
        // async-signal-safe system calls (write, setsid) on a descriptor
        // opened before the fork. The child is not a group leader (it has
        // the bench's group), so setsid succeeds; its session's group id
        // is its pid, which `testbed::Bg` kills on drop.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
                    || libc::setsid() < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Starts servers in `ns`, killed with `tb`.
    pub fn spawn(&self, tb: &mut Testbed, ns: &NetNs, args: &[&str]) -> Result<()> {
        let child = self
            .command(ns, Role::Server, args)?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {args:?}"))?;
        tb.adopt(child, &args.join(" "));
        Ok(())
    }

    /// Runs a client in `ns` to completion; its output, unless it fails.
    pub fn run(&self, ns: &NetNs, args: &[&str]) -> Result<String> {
        let out = self
            .command(ns, Role::Client, args)?
            .output()
            .with_context(|| format!("running {args:?}"))?;
        if !out.status.success() {
            bail!(
                "{args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for FloorProcs {
    /// Kills what is still in the cgroups (a server's children, which
    /// `testbed::Bg` signals without waiting for them), waits until they
    /// are empty and removes them.
    fn drop(&mut self) {
        let floor = self.top.join("netd-floor");
        for role in [Role::Server, Role::Client] {
            let dir = self.cgroup(role);
            if let Err(e) = std::fs::write(dir.join("cgroup.kill"), "1") {
                tracing::warn!("killing the processes of {}: {e}", dir.display());
            }
            let empty = || {
                std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
            };
            testbed::wait_until(Duration::from_secs(5), empty);
        }
        let dirs = [
            self.cgroup(Role::Server),
            self.cgroup(Role::Client),
            floor,
            self.top.clone(),
        ];
        for dir in dirs {
            if let Err(e) = std::fs::remove_dir(&dir) {
                tracing::warn!("removing the cgroup {}: {e}", dir.display());
            }
        }
    }
}
