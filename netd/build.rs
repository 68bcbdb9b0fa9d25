//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! Decision (see README "Building"): this script does not build the eBPF
//! crate itself (that needs the pinned nightly and bpf-linker, which
//! `cargo xtask build-ebpf` installs); it refuses to embed an object that is
//! missing or older than any eBPF/common source, and says which command
//! fixes it. Debug netd embeds the debug eBPF build, release the release one.
use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

fn newest(dir: &Path, acc: &mut (SystemTime, PathBuf)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            newest(&p, acc);
        } else if let Ok(m) = e.metadata().and_then(|m| m.modified())
            && m > acc.0
        {
            *acc = (m, p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let profile = std::env::var("PROFILE").unwrap();
    let (flag, sub) = if profile == "release" {
        (" --release", "release")
    } else {
        ("", "debug")
    };
    let target_dir = std::env::var_os("NETD_EBPF_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/ebpf"));
    let object = target_dir
        .join("bpfel-unknown-none")
        .join(sub)
        .join("netd-ebpf");

    let sources = [
        root.join("netd-ebpf/src"),
        root.join("netd-ebpf/Cargo.toml"),
        root.join("netd-common/src"),
        root.join("netd-common/Cargo.toml"),
    ];
    println!("cargo:rerun-if-env-changed=NETD_EBPF_TARGET_DIR");
    println!("cargo:rerun-if-changed={}", object.display());
    let mut acc = (SystemTime::UNIX_EPOCH, PathBuf::new());
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
        if s.is_dir() {
            newest(s, &mut acc);
        } else if let Ok(m) = std::fs::metadata(s).and_then(|m| m.modified())
            && m > acc.0
        {
            acc = (m, s.clone());
        }
    }
    let built = std::fs::metadata(&object).and_then(|m| m.modified());
    match built {
        Err(_) => panic!(
            "\n\nnetd embeds its eBPF programs, and {} does not exist.\n\
             Build them first:  cargo xtask build-ebpf{flag}\n\
             (it installs the pinned nightly and bpf-linker if needed)\n\n",
            object.display()
        ),
        Ok(t) if t < acc.0 => panic!(
            "\n\nthe eBPF object {} is older than {}: netd would embed stale programs.\n\
             Rebuild them:  cargo xtask build-ebpf{flag}\n\n",
            object.display(),
            acc.1.display()
        ),
        Ok(_) => {}
    }
    println!("cargo:rustc-env=NETD_EBPF_OBJECT={}", object.display());
}
