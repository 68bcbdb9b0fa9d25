//! One daemon per state directory and per exec root: an exclusive flock
//! on `netd.lock` in each, held for the daemon's life. A second daemon
//! exits before it touches anything, naming the one that runs.
use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{Context, Result, bail};

/// Held for the daemon's life; the kernel drops the locks when the
/// process ends, however it ends.
pub struct InstanceLock {
    _files: Vec<File>,
}

/// Locks `dirs` (creating them), recording `who` (pid, socket) in the
/// lock files for the message a second daemon prints.
pub fn acquire(dirs: &[&Path], who: &str) -> Result<InstanceLock> {
    let mut files = Vec::new();
    for dir in dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("netd.lock");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                f.read_to_string(&mut holder).ok();
                let holder = holder.trim();
                bail!(
                    "another netd daemon is running on {} ({}): stop it first, or give this one its own --state-dir, --exec-root, --socket and --bpffs",
                    dir.display(),
                    if holder.is_empty() {
                        "holder unknown"
                    } else {
                        holder
                    }
                );
            }
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{who}")?;
        files.push(f);
    }
    Ok(InstanceLock { _files: files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_names_the_first() {
        let dir = std::env::temp_dir().join(format!("netd-lock-test-{}", std::process::id()));
        let first = acquire(&[&dir], "pid 1, socket /x.sock").unwrap();
        // flock locks belong to open file descriptions: a second open in
        // the same process conflicts like another process would.
        let e = acquire(&[&dir], "pid 2").err().unwrap().to_string();
        assert!(
            e.contains("another netd daemon") && e.contains("/x.sock"),
            "{e}"
        );
        drop(first);
        acquire(&[&dir], "pid 2").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
