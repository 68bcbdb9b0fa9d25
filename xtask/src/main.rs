//! `cargo xtask <command>`: orchestration only. Every command first makes
//! sure what it needs is installed (idempotently), then runs.
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netd developer workflows")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (Debian packages, pinned nightly, bpf-linker).
    Setup,
    /// Build the eBPF programs (pinned nightly, bpfel-unknown-none, with BTF).
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// Set everything up, build, and run the demo in throwaway namespaces.
    Demo {
        /// Extra arguments for `netd demo`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set everything up, build (release) and run `netd bench` with these arguments.
    Bench {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set everything up, build, check formatting and lints, run all tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::all(),
        Cmd::BuildEbpf { release } => build_ebpf(release),
        Cmd::Demo { args } => {
            setup::all()?;
            build_ebpf(true)?;
            cargo(&["build", "--release", "-p", "netd"])?;
            let netd = workspace_root().join("target/release/netd");
            run(Command::new(netd).arg("demo").args(args))
        }
        Cmd::Bench { args } => {
            setup::all()?;
            build_ebpf(true)?;
            cargo(&["build", "--release", "-p", "netd"])?;
            let netd = workspace_root().join("target/release/netd");
            run(Command::new(netd).arg("bench").args(args))
        }
        Cmd::Test { args } => {
            setup::all()?;
            build_ebpf(false)?;
            cargo(&["fmt", "--all", "--", "--check"])
                .context("cargo fmt found unformatted code: run `cargo fmt --all`")?;
            // netd-ebpf is its own workspace: check it with rustfmt directly.
            run(Command::new("rustfmt")
                .args(["--edition", "2024", "--check"])
                .arg(workspace_root().join("netd-ebpf/src/main.rs")))
            .context(
                "netd-ebpf is unformatted: run `rustfmt --edition 2024 netd-ebpf/src/main.rs`",
            )?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            // The end-to-end tests drive the real netd binary, which
            // `cargo test` does not build for another package's tests.
            cargo(&["build", "-p", "netd", "--bin", "netd"])?;
            let mut test = vec!["test", "--workspace", "--all-targets", "--"];
            test.extend(args.iter().map(String::as_str));
            cargo_test(&test)
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The target dir of the eBPF build; the same variable netd/build.rs reads
/// (set in .cargo/config.toml).
fn ebpf_target_dir() -> PathBuf {
    std::env::var_os("NETD_EBPF_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/ebpf"))
}

fn build_ebpf(release: bool) -> Result<()> {
    setup::ebpf_toolchain()?;
    let dir = workspace_root().join("netd-ebpf");
    let mut cmd = Command::new("cargo");
    // We run under `cargo run`, which sets variables for the *stable*
    // toolchain; the nested nightly build must not inherit them.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(&dir)
        .arg(format!("+{}", setup::NIGHTLY))
        .args([
            "build",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(ebpf_target_dir())
        // BTF so `bpftool map dump` shows typed keys and values.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        );
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd).context("building netd-ebpf")?;
    let obj = ebpf_target_dir()
        .join("bpfel-unknown-none")
        .join(if release { "release" } else { "debug" })
        .join("netd-ebpf");
    if !obj.exists() {
        bail!("the eBPF build succeeded but {} is missing", obj.display());
    }
    eprintln!("eBPF object: {}", obj.display());
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(workspace_root()))
}

/// Runs `cargo test`, passing its output through, and closes with one
/// summary line over all test binaries: `tests: N passed, N failed`.
fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += num("passed");
            failed += num("failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed: {status}", cmd);
    }
    Ok(())
}
