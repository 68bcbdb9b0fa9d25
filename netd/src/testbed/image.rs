//! Container images without a registry: nothing can be pulled here, so an
//! image is a root filesystem built from the host's `/bin/busybox`
//! (busybox-static) plus binaries of our own, streamed as a tar into
//! `docker import -` or `podman import -`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The busybox the images are built from (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Writes a minimal root filesystem into `dir` (which must not exist):
/// `bin/busybox` and a symlink per applet (`busybox --list`), `tmp/`
/// (mode 1777), `root/`, `etc/passwd` and `etc/group` (root and nobody, so
/// `httpd` and `id` work), and each of `extra_binaries` as
/// `bin/<file name>` (debug info stripped when `strip` can) together with
/// every shared library `ldd` lists for it, at the same absolute path, so
/// a dynamically linked binary (our `netd`) runs inside.
pub fn busybox_rootfs(dir: &Path, extra_binaries: &[&Path]) -> Result<()> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    for d in ["bin", "tmp", "etc", "root", "proc", "sys", "dev"] {
        std::fs::create_dir(dir.join(d))?;
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;

    copy_binary(Path::new(BUSYBOX), &dir.join("bin/busybox"), false)?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list"))?;
    if !list.status.success() {
        bail!("{BUSYBOX} --list failed: {}", list.status);
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", dir.join("bin").join(applet))?;
    }
    let mut libs = shared_libraries(Path::new(BUSYBOX))?;
    for bin in extra_binaries {
        let name = bin
            .file_name()
            .with_context(|| format!("{} has no file name", bin.display()))?;
        let dst = dir.join("bin").join(name);
        // An extra binary replaces an applet of the same name.
        let _ = std::fs::remove_file(&dst);
        copy_binary(bin, &dst, true)?;
        libs.extend(shared_libraries(bin)?);
    }
    libs.sort();
    libs.dedup();
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let dst = dir.join(rel);
        std::fs::create_dir_all(dst.parent().expect("a library path has a parent"))?;
        // fs::copy follows symlinks: the image gets the library's content
        // under the name the loader asks for.
        std::fs::copy(&lib, &dst)
            .with_context(|| format!("copying {} into the image", lib.display()))?;
    }
    Ok(())
}

/// Copies an executable, stripping debug info on the way if asked (our
/// debug netd is ~150 MB, ~15 MB stripped) and `strip` works.
fn copy_binary(src: &Path, dst: &Path, strip: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let stripped = strip
        && Command::new("strip")
            .args(["--strip-debug", "-o"])
            .arg(dst)
            .arg(src)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `bin`;
/// empty for a static binary.
pub fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("running ldd {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to copy.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(vec![]);
        }
        bail!("ldd {} failed: {}{err}", bin.display(), out.status);
    }
    Ok(parse_ldd(&text))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` give paths; the vDSO has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Streams `dir` as a tar (`tar -C dir -c .`) into `importer`'s stdin
/// (`docker import - NAME`, `podman import - NAME`) and returns what the
/// importer printed (the image id).
pub fn import_dir(dir: &Path, mut importer: Command) -> Result<String> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting tar")?;
    let stream = tar.stdout.take().expect("piped");
    let out = importer
        .stdin(Stdio::from(stream))
        .output()
        .with_context(|| format!("running {:?}", importer.get_program()))?;
    let tar_status = tar.wait()?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            importer.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !tar_status.success() {
        bail!("tar -C {} failed: {tar_status}", dir.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f5f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f5f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
