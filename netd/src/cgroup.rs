//! cgroup v2: where the hierarchy is, and (see `process`) one cgroup per
//! container so that the daemon knows exactly which processes are a
//! container's.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the cgroup v2 hierarchy is mounted in this mount namespace
/// (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid
/// ones), if anywhere.
pub fn find_cgroup2() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup2_root() -> Result<PathBuf> {
    find_cgroup2().context("no cgroup v2 hierarchy is mounted: pass --cgroup PATH")
}

/// The cgroup v2 hierarchy, mounted by netd when nothing in this mount
/// namespace has it (a host without systemd, or under `ip netns exec`,
/// which remounts /sys): at `/sys/fs/cgroup` when that is an empty
/// directory, else at `fallback`. Says where it found or mounted it.
pub fn ensure_cgroup2(fallback: &Path) -> Result<PathBuf> {
    if let Some(p) = find_cgroup2() {
        tracing::info!("cgroup v2 hierarchy found at {}", p.display());
        return Ok(p);
    }
    let sys = Path::new("/sys/fs/cgroup");
    let empty = std::fs::read_dir(sys).is_ok_and(|mut d| d.next().is_none());
    let at = if empty {
        sys.to_path_buf()
    } else {
        std::fs::create_dir_all(fallback)
            .with_context(|| format!("creating {}", fallback.display()))?;
        fallback.to_path_buf()
    };
    nix::mount::mount(
        Some("cgroup2"),
        &at,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| format!("mounting the cgroup v2 hierarchy at {}", at.display()))?;
    tracing::info!(
        "no cgroup v2 hierarchy was mounted here: mounted one at {}",
        at.display()
    );
    Ok(at)
}
