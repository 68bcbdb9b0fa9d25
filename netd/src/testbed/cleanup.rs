//! Cleanup helpers for the real engines the testbed starts (dockerd,
//! containerd, podman): stopping processes, finding the ones an engine
//! left behind (shims, conmon, container processes), unmounting what it
//! mounted under its own directories. Everything here is scoped by a
//! directory the harness made, never by a process name.
use std::{
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use nix::{
    mount::{MntFlags, umount2},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Sends SIGTERM to `child`, waits up to `grace` for it to exit, then
/// SIGKILLs it; always reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if child.try_wait().is_ok_and(|s| s.is_some()) {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if child.try_wait().is_ok_and(|s| s.is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The command line of `pid`, arguments joined by spaces ("" if gone).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
                .trim_end()
                .to_string()
        })
        .unwrap_or_default()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Parent pid and state of `pid` from /proc/PID/stat.
fn stat(pid: i32) -> Option<(i32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command is in parentheses and may contain anything; the fields
    // after the last ')' are "state ppid ...".
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Live processes (zombies excluded: they hold nothing and only their
/// parent can reap them) whose command line contains `needle`, other than
/// this process.
pub fn pids_with_arg(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter(|p| stat(*p).is_some_and(|(_, st)| st != 'Z'))
        .filter(|p| cmdline(*p).contains(needle))
        .collect()
}

/// `pid` and all its descendants, children first.
pub fn tree(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?.0)))
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.reverse();
    out
}

/// SIGKILLs every live process whose command line contains `needle`, and
/// their descendants (a shim's or conmon's container processes). Returns
/// how many were signalled.
pub fn kill_trees_with_arg(needle: &str) -> usize {
    let mut n = 0;
    for p in pids_with_arg(needle) {
        for q in tree(p) {
            if kill(Pid::from_raw(q), Signal::SIGKILL).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` is a space).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` in this process's mount namespace, in
/// mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Unmounts (lazily, deepest and newest first) everything mounted at or
/// below `dir`, until nothing is left (mounts can be stacked). Returns the
/// mount points that would not go.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    for _ in 0..16 {
        let mut m = mounts_under(dir);
        if m.is_empty() {
            return m;
        }
        m.reverse();
        m.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &m {
            let _ = umount2(p, MntFlags::MNT_DETACH);
        }
    }
    mounts_under(dir)
}

/// What an engine left behind under its directory: live processes whose
/// command line names the directory, mounts below it, and whether it still
/// exists. Tests assert this is empty after the engine is dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub processes: Vec<(i32, String)>,
    pub mounts: Vec<PathBuf>,
    pub dir_exists: bool,
}

impl Leftovers {
    pub fn of(dir: &Path) -> Leftovers {
        let needle = dir.to_string_lossy();
        Leftovers {
            processes: pids_with_arg(&needle)
                .into_iter()
                .map(|p| (p, cmdline(p)))
                .collect(),
            mounts: mounts_under(dir),
            dir_exists: dir.exists(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.mounts.is_empty() && !self.dir_exists
    }
}

/// Removes `dir` after unmounting everything below it; reports (to
/// stderr) what could not be removed. For Drop impls.
pub fn remove_dir_tree(dir: &Path, who: &str) {
    let stuck = unmount_all_under(dir);
    if !stuck.is_empty() {
        eprintln!("{who} cleanup: still mounted: {stuck:?}");
    }
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("{who} cleanup: removing {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path(r"/tmp/x\134y"), r"/tmp/x\y");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\04"), r"/end\04");
    }

    #[test]
    fn tree_of_self_starts_with_children() {
        let me = std::process::id() as i32;
        assert_eq!(*tree(me).last().unwrap(), me);
    }
}
