//! Idempotent installation of everything netd's build, tests and demo need.
//! Each step checks first and does nothing when the thing is present; when
//! it cannot install (not root, no network) it says what is missing and the
//! command that gets it.
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub const NIGHTLY: &str = "nightly-2026-05-20";
pub const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages: (package, a binary it provides, used to check).
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
];

pub fn all() -> Result<()> {
    packages()?;
    ebpf_toolchain()
}

fn have(bin: &str) -> bool {
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
    let cmd = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "missing Debian packages: {}; install them as root: {cmd}",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    if !update.is_ok_and(|s| s.success()) {
        bail!("apt-get update failed; install by hand: apt-get update && {cmd}");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get failed; install by hand: {cmd}");
    }
    Ok(())
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
