//! Container processes. The daemon starts every process of a container
//! itself (`run`, `start`, `exec`), inside the container's namespaces and
//! inside a cgroup v2 of the container's own, and knows a container's
//! processes only by that cgroup (and, for bridge and none containers, by
//! the container's network namespace). It never takes a pid number from a
//! client, never signals pid 1 or itself, and signals only through
//! pidfds it checked after opening, so a recycled pid is never hit.
use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A process as the kernel can tell it apart from any later one with the
/// same pid: the pid and its start time (clock ticks after boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcId {
    pub fn of(pid: i32) -> Result<ProcId> {
        Ok(ProcId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// A pidfd of this very process, if it is still alive.
    pub fn open(&self) -> Option<OwnedFd> {
        let fd = pidfd_open(self.pid).ok()?;
        // The pidfd pins whatever process has the pid now: it is ours
        // only if that process started when ours did.
        (start_time(self.pid).ok() == Some(self.start_time) && !exited(&fd)).then_some(fd)
    }
}

/// Field 22 of /proc/PID/stat.
fn start_time(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // The command name (field 2) may contain spaces and parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("malformed /proc/{pid}/stat"))
}

pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A duplicate of descriptor `fd` of the process behind `pidfd`
/// (pidfd_getfd(2)).
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(2) returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn pidfd_signal(pidfd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal(2) with no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process behind a pidfd has exited (a pidfd polls readable
/// then).
pub fn exited(pidfd: &OwnedFd) -> bool {
    wait_exit(std::slice::from_ref(pidfd), Duration::ZERO)
}

/// Waits up to `timeout` for every process behind `pidfds` to exit;
/// returns whether they all did.
fn wait_exit(pidfds: &[OwnedFd], timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let mut fds: Vec<libc::pollfd> = pidfds
            .iter()
            .map(|f| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let left = end.saturating_duration_since(Instant::now());
        // SAFETY: poll(2) over our own descriptors.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, left.as_millis() as i32) };
        let done = fds.iter().filter(|p| p.revents != 0).count();
        if done == fds.len() {
            return true;
        }
        if n <= 0 && Instant::now() >= end {
            return false;
        }
        if n > 0 {
            // Some exited: wait for the rest.
            let rest: Vec<OwnedFd> = pidfds
                .iter()
                .zip(&fds)
                .filter(|(_, p)| p.revents == 0)
                .filter_map(|(f, _)| f.try_clone().ok())
                .collect();
            return wait_exit(&rest, end.saturating_duration_since(Instant::now()));
        }
    }
}

/// The cgroups of one daemon instance: `<base>/netd-<instance>/<container id>`.
#[derive(Clone, Debug)]
pub struct Cgroups {
    parent: PathBuf,
}

impl Cgroups {
    /// `base` is a directory of the cgroup v2 hierarchy (the daemon's
    /// `--cgroup`, default its root).
    pub fn new(base: &Path, instance: &str) -> Result<Cgroups> {
        let parent = base.join(format!("netd-{instance}"));
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating the cgroup {}", parent.display()))?;
        Ok(Cgroups { parent })
    }

    pub fn parent(&self) -> &Path {
        &self.parent
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.parent.join(id)
    }

    pub fn create(&self, id: &str) -> Result<PathBuf> {
        let p = self.path(id);
        match std::fs::create_dir(&p) {
            Ok(()) => Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(p),
            Err(e) => Err(e).with_context(|| format!("creating the cgroup {}", p.display())),
        }
    }

    /// Container ids that have a cgroup here.
    pub fn list(&self) -> Vec<String> {
        std::fs::read_dir(&self.parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Pids in a container's cgroup (none when it has no cgroup).
    pub fn procs(&self, id: &str) -> Vec<i32> {
        std::fs::read_to_string(self.path(id).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether any process is in the container's cgroup.
    pub fn populated(&self, id: &str) -> bool {
        !self.procs(id).is_empty()
    }

    /// Removes this instance's (empty) parent cgroup.
    pub fn remove_parent(&self) -> Result<()> {
        for id in self.list() {
            self.remove(&id)?;
        }
        match std::fs::remove_dir(&self.parent) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.parent.display())),
        }
    }

    /// Kills what is left in a container's cgroup and removes it.
    pub fn remove(&self, id: &str) -> Result<()> {
        let p = self.path(id);
        if !p.exists() {
            return Ok(());
        }
        terminate(self, id, None, Duration::ZERO);
        let mut last = None;
        for _ in 0..100 {
            match std::fs::remove_dir(&p) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                // EBUSY while the last processes are being reaped.
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last.expect("tried")).with_context(|| format!("removing the cgroup {}", p.display()))
    }
}

/// Stops a container's processes: SIGTERM, up to `grace` to exit, then
/// SIGKILL. The processes are those in its cgroup, plus (with
/// `netns_inode`, for bridge and none containers) those in its network
/// namespace, never pid 1 and never the daemon. Returns how many got a
/// signal.
pub fn terminate(cgroups: &Cgroups, id: &str, netns_inode: Option<u64>, grace: Duration) -> usize {
    let me = std::process::id() as i32;
    let mut targets: Vec<OwnedFd> = Vec::new();
    let candidates: Vec<i32> = cgroups.procs(id);
    let opened: Vec<(i32, OwnedFd)> = candidates
        .iter()
        .filter(|p| **p > 1 && **p != me)
        .filter_map(|p| Some((*p, pidfd_open(*p).ok()?)))
        .collect();
    // Still in the cgroup after we pinned them: ours (a pid recycled in
    // between belongs to a process that is not listed).
    let now_in = cgroups.procs(id);
    targets.extend(
        opened
            .into_iter()
            .filter(|(p, _)| now_in.contains(p))
            .map(|(_, f)| f),
    );
    if let Some(ino) = netns_inode {
        for p in crate::netns::pids_in(ino) {
            if p <= 1 || p == me || candidates.contains(&p) {
                continue;
            }
            let Ok(fd) = pidfd_open(p) else { continue };
            // The namespace of the process the pidfd pins (it is alive,
            // so the pid is still its own).
            let same = std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino() == ino
            });
            if same && !exited(&fd) {
                targets.push(fd);
            }
        }
    }
    if targets.is_empty() {
        return 0;
    }
    let n = targets.len();
    if !grace.is_zero() {
        for t in &targets {
            if let Err(e) = pidfd_signal(t, libc::SIGTERM)
                && e.raw_os_error() != Some(libc::ESRCH)
            {
                tracing::warn!("SIGTERM to a process of container {id}: {e}");
            }
        }
        if wait_exit(&targets, grace) {
            return n;
        }
    }
    // cgroup.kill (5.14+) also takes processes forked meanwhile.
    let kill = cgroups.path(id).join("cgroup.kill");
    if kill.exists()
        && let Err(e) = std::fs::write(&kill, "1")
    {
        tracing::warn!("{}: {e}", kill.display());
    }
    for t in &targets {
        if let Err(e) = pidfd_signal(t, libc::SIGKILL)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            tracing::warn!("SIGKILL to a process of container {id}: {e}");
        }
    }
    if !wait_exit(&targets, Duration::from_secs(5)) {
        tracing::warn!("processes of container {id} did not die after SIGKILL");
    }
    n
}

/// Where a process starts: the container's namespaces and files.
pub struct Sandbox {
    /// The container's network namespace file.
    pub netns: PathBuf,
    /// Host mode: the host's namespaces and files as they are.
    pub host_mode: bool,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    /// The file bind-mounted on /etc/hostname.
    pub hostname_file: PathBuf,
    pub hostname: String,
    /// The container's cgroup directory.
    pub cgroup: PathBuf,
}

/// What to run.
pub struct Launch {
    pub cmd: Vec<String>,
    /// `KEY=VALUE` (the caller's environment, as `ip netns exec` keeps it).
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// stdin, stdout, stderr.
    pub stdio: [OwnedFd; 3],
    /// A session of its own (detached processes).
    pub new_session: bool,
}

/// The caller's stdin, stdout and stderr, taken through its pidfd.
pub fn caller_stdio(peer: &crate::api::server::Peer) -> Result<[OwnedFd; 3]> {
    let pidfd = peer.pidfd.as_ref().context(
        "cannot attach to the caller's standard streams: the kernel gave no pidfd for the connection (SO_PEERPIDFD needs Linux 6.5)",
    )?;
    let get = |fd: i32| {
        pidfd_getfd(pidfd, fd).with_context(|| {
            format!("cannot take the caller's descriptor {fd} (pidfd_getfd; is the daemon root?)")
        })
    };
    Ok([get(0)?, get(1)?, get(2)?])
}

/// Standard streams for a detached process: /dev/null in, `log` out.
pub fn detached_stdio(log: &Path) -> Result<[OwnedFd; 3]> {
    let null = File::open("/dev/null")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    Ok([null.into(), out.into(), err.into()])
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).context("NUL in a path")
}

/// Starts `launch` in `sandbox`. The child joins the cgroup first (before
/// it can fork), then enters the network namespace and, unless in host
/// mode, private mount and UTS namespaces where the container's
/// /etc/hosts and /etc/resolv.conf are bind-mounted and its hostname set.
pub fn spawn(sandbox: &Sandbox, launch: Launch) -> Result<tokio::process::Child> {
    crate::validate::command(&launch.cmd)?;
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(sandbox.cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", sandbox.cgroup.display()))?;
    let ns = File::open(&sandbox.netns)
        .with_context(|| format!("opening the network namespace {}", sandbox.netns.display()))?;
    let host_mode = sandbox.host_mode;
    // The container's files over the host's (prepared before the fork:
    // the child may not allocate).
    let mut binds = Vec::new();
    for (src, dst) in [
        (&sandbox.hosts, "/etc/hosts"),
        (&sandbox.resolv_conf, "/etc/resolv.conf"),
        (&sandbox.hostname_file, "/etc/hostname"),
    ] {
        // Not every host has all three to mount over.
        if Path::new(dst).exists() {
            binds.push((cstr(src)?, cstr(Path::new(dst))?));
        }
    }
    let hostname = sandbox.hostname.as_bytes().to_vec();
    let root = cstr(Path::new("/"))?;
    let new_session = launch.new_session;
    let [stdin, stdout, stderr] = launch.stdio;
    let mut cmd = std::process::Command::new(&launch.cmd[0]);
    cmd.args(&launch.cmd[1..])
        .env_clear()
        .envs(launch.env.iter().filter_map(|kv| kv.split_once('=')))
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    if let Some(d) = &launch.cwd {
        cmd.current_dir(d);
    }
    // SAFETY: runs in the forked child before exec and makes only
    // async-signal-safe system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if new_session {
                libc::setsid();
            }
            check(libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET))?;
            if host_mode {
                return Ok(());
            }
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            for (src, dst) in &binds {
                check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("{:?}: executable file not found", launch.cmd[0])
            } else {
                anyhow::anyhow!("starting {:?}: {e}", launch.cmd[0])
            }
        })?;
    Ok(child)
}

/// Waits (asynchronously) until the process behind `pidfd` exits.
pub async fn wait_pidfd(pidfd: OwnedFd) -> Result<()> {
    // SAFETY: the AsyncFd owns the pidfd and deregisters it before it
    // closes it.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .context("watching a pidfd")?;
    let _ready = fd.readable().await.context("waiting on a pidfd")?;
    Ok(())
}

/// The exit code the shell would report: the code, or 128 + the signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// A signal by name or number (`TERM`, `SIGKILL`, `9`).
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>()
        && (1..=64).contains(&n)
    {
        return Ok(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        _ => bail!("invalid signal {s:?}"),
    };
    Ok(sig)
}

/// Sends `sig` to a process we identified (no-op when it is gone).
pub fn signal(p: &ProcId, sig: i32) -> Result<()> {
    if let Some(fd) = p.open() {
        pidfd_signal(&fd, sig).with_context(|| format!("signalling process {}", p.pid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_codes() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("nope").is_err());
    }

    #[test]
    fn own_identity() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.open().is_some());
        let wrong = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            wrong.open().is_none(),
            "another start time is another process"
        );
    }
}
