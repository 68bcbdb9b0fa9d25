//! Idempotent installation of everything netd's build, tests and demo need.
//! Each step checks first and does nothing when the thing is present; when
//! it cannot install (not root, no network) it says what is missing and the
//! command that gets it.
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub const NIGHTLY: &str = "nightly-2026-05-20";
pub const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages: (package, a binary it provides, used to check). A
/// binary given as an absolute path is checked at that path (CNI plugins
/// and netavark live outside PATH).
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("iperf3", "iperf3"),
    ("sockperf", "sockperf"),
    ("bpftool", "bpftool"),
    ("conntrack", "conntrack"),
    ("curl", "curl"),
    ("iputils-ping", "ping"),
    // Real engines the tests and the benchmark drive beside netd (DESIGN.md
    // section 9). Installed with no service started (see `NoServices`).
    ("docker.io", "dockerd"),
    ("busybox-static", "busybox"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("ebtables", "ebtables"),
    ("podman", "podman"),
    ("netavark", "/usr/lib/podman/netavark"),
    ("aardvark-dns", "/usr/lib/podman/aardvark-dns"),
];

/// Debian's hook for "may this package start its service now?": exit
/// status 101 means no (invoke-rc.d asks it in every postinst).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn all() -> Result<()> {
    packages()?;
    ebpf_toolchain()
}

fn have(bin: &str) -> bool {
    if bin.starts_with('/') {
        return std::path::Path::new(bin).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        // Debian puts admin tools in sbin, which a non-login PATH may lack.
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(bin).exists())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !have(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = format!(
        "apt-get install -y --no-install-recommends {} (with a {POLICY_RC_D} that exits 101, so no service starts)",
        missing.join(" ")
    );
    if !is_root() {
        bail!(
            "missing Debian packages: {}; install them as root: {cmd}",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    // Another apt run (another worktree's setup) may hold the lock: wait.
    let lock = ["-o", "DPkg::Lock::Timeout=300"];
    let update = Command::new("apt-get")
        .args(lock)
        .args(["update", "-qq"])
        .status();
    if !update.is_ok_and(|s| s.success()) {
        bail!("apt-get update failed; install by hand: apt-get update && {cmd}");
    }
    // docker.io's (and containerd's) postinst would start their daemons in
    // the machine's own network namespace; nothing here may run there.
    let _no_services = NoServices::install()?;
    let status = Command::new("apt-get")
        .args(lock)
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get failed; install by hand: {cmd}");
    }
    let still: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !have(bin))
        .map(|(_, bin)| *bin)
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but these are still missing: {}",
            still.join(", ")
        );
    }
    Ok(())
}

/// A `/usr/sbin/policy-rc.d` that exits 101 (no service may start) for as
/// long as it lives; on drop the previous file comes back, or ours is
/// removed if there was none.
struct NoServices {
    previous: Option<(Vec<u8>, std::fs::Permissions)>,
}

impl NoServices {
    fn install() -> Result<NoServices> {
        let previous = match std::fs::read(POLICY_RC_D) {
            Ok(bytes) => Some((bytes, std::fs::metadata(POLICY_RC_D)?.permissions())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).context(POLICY_RC_D),
        };
        let guard = NoServices { previous };
        write_executable(
            POLICY_RC_D,
            b"#!/bin/sh\n# netd xtask setup: no service starts during the install\nexit 101\n",
        )?;
        Ok(guard)
    }
}

impl Drop for NoServices {
    fn drop(&mut self) {
        let restored = match self.previous.take() {
            Some((bytes, perms)) => std::fs::write(POLICY_RC_D, bytes)
                .and_then(|()| std::fs::set_permissions(POLICY_RC_D, perms)),
            None => std::fs::remove_file(POLICY_RC_D),
        };
        if let Err(e) = restored {
            eprintln!("xtask: could not restore {POLICY_RC_D}: {e}");
        }
    }
}

fn write_executable(path: &str, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).with_context(|| format!("writing {path}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {path}"))
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pinned nightly with rust-src, and bpf-linker at the pinned version.
pub fn ebpf_toolchain() -> Result<()> {
    if output(Command::new("rustup").arg("--version")).is_none() {
        bail!(
            "rustup is not installed: the eBPF build needs it to get {NIGHTLY} (https://rustup.rs)"
        );
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        eprintln!("xtask: installing toolchain {NIGHTLY} with rust-src");
        let ok = Command::new("rustup")
            .args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "-c",
                "rust-src",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "could not install {NIGHTLY}; run: rustup toolchain install {NIGHTLY} --profile minimal -c rust-src"
            );
        }
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to {NIGHTLY}");
        let ok = Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "could not add rust-src; run: rustup component add rust-src --toolchain {NIGHTLY}"
            );
        }
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} (found: {:?})",
            linker.trim()
        );
        let ok = Command::new("cargo")
            .env_remove("RUSTUP_TOOLCHAIN")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "could not install bpf-linker; run: cargo install bpf-linker@{BPF_LINKER_VERSION} --locked"
            );
        }
    }
    Ok(())
}
