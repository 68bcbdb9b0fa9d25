//! Network namespaces: creating named ones (a bind mount of the namespace
//! file, as `ip netns add` does), removing them, running code and commands
//! inside them.
//!
//! A thread's namespace is changed only on a dedicated, short-lived thread
//! (never on a tokio worker), and commands enter namespaces in `pre_exec`,
//! in the single-threaded child.
use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Directory `ip netns` uses for named namespaces.
pub const IP_NETNS_DIR: &str = "/run/netns";

/// Makes /run/netns a shared mount point of its own, as `ip netns add`
/// does before its first namespace. A namespace file bind-mounted on the
/// plain directory would be shadowed when another tool (`ip netns add`,
/// an engine) later turns the directory into a mount point over it: the
/// namespace could then be neither unmounted nor removed by its path.
fn netns_dir_mount() -> Result<()> {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        std::fs::create_dir_all(IP_NETNS_DIR)?;
        share_mount(Path::new(IP_NETNS_DIR))?;
        *done = true;
    }
    Ok(())
}

/// Makes `dir` a shared mount point (bind-mounting it on itself first
/// when it is not a mount point), as `ip netns add` does with /run/netns:
/// the namespace files mounted under it then show in every mount
/// namespace that shares it, not only the caller's.
pub fn share_mount(dir: &Path) -> Result<()> {
    if !is_mount_point(dir) {
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting {} on itself", dir.display()))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("making {} a shared mount", dir.display()))
}

/// Whether `dir` is a mount point of this mount namespace.
fn is_mount_point(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|m| Path::new(m) == dir)
}

/// A network namespace pinned by a bind-mounted file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Creates a new, empty network namespace pinned at `path` (whose
    /// parent directory must exist). Fails if `path` exists.
    pub fn create(path: impl Into<PathBuf>) -> Result<NetNs> {
        let path = path.into();
        // O_EXCL: never clobber somebody else's namespace file.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating netns file {}", path.display()))?;
        let target = path.clone();
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting the new netns on {}", target.display()))?;
            Ok(())
        })
        .join()
        .expect("netns thread panicked");
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let ns = NetNs { path };
        // Every namespace starts with lo down; bring it up like Docker does.
        ns.run(set_lo_up)?;
        Ok(ns)
    }

    /// Creates a named namespace under /run/netns (visible to `ip netns`).
    pub fn create_named(name: &str) -> Result<NetNs> {
        netns_dir_mount()?;
        Self::create(Path::new(IP_NETNS_DIR).join(name))
    }

    /// Pins an existing namespace (e.g. `/proc/<pid>/ns/net`) at `path`.
    pub fn pin(source: &Path, path: impl Into<PathBuf>) -> Result<NetNs> {
        let path = path.into();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating netns file {}", path.display()))?;
        if let Err(e) = mount(
            Some(source),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = std::fs::remove_file(&path);
            bail!(
                "bind-mounting {} on {}: {e}",
                source.display(),
                path.display()
            );
        }
        Ok(NetNs { path })
    }

    /// A handle on an existing namespace file (not checked until used).
    pub fn at(path: impl Into<PathBuf>) -> NetNs {
        NetNs { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if the file exists and is a namespace (a bind mount of nsfs).
    pub fn exists(&self) -> bool {
        self.open().is_ok_and(|f| is_netns_fd(&f))
    }

    pub fn open(&self) -> Result<File> {
        File::open(&self.path).with_context(|| format!("opening netns {}", self.path.display()))
    }

    /// Unmounts and removes the namespace file. The namespace itself goes
    /// away when the last process and link in it are gone. Removing a
    /// namespace that does not exist is not an error.
    pub fn remove(&self) -> Result<()> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => bail!("unmounting {}: {e}", self.path.display()),
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let file = self.open()?;
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering netns {}", self.path.display()))?;
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// A command that runs inside this namespace (like `ip netns exec`,
    /// without the mount namespace).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let file = self.open()?;
        let mut cmd = Command::new(program);
        // SAFETY: pre_exec runs in the forked child before exec; setns is
        // async-signal-safe and `file` is kept alive by the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// The namespace's inode: equal inodes mean the same namespace.
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.open()?.metadata()?.ino())
    }
}

fn is_netns_fd(f: &File) -> bool {
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

fn set_lo_up() -> Result<()> {
    // SIOCSIFFLAGS on lo: one ioctl, no netlink connection needed.
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; the ioctls read/write only it.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            bail!("SIOCGIFFLAGS lo: {}", io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            bail!("SIOCSIFFLAGS lo: {}", io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes a sysctl of the *current thread's* network namespace (call it
/// inside [`NetNs::run`]), e.g. `net/ipv4/ip_forward`.
pub fn sysctl_write(key: &str, value: &str) -> Result<()> {
    SysctlFile::open(key)?.write(value)
}

/// Reads a sysctl of the current thread's network namespace (see
/// [`SysctlFile::read`]), trimmed.
pub fn sysctl_read(key: &str) -> Result<String> {
    SysctlFile::open(key)?.read()
}

/// The most a sysctl's value is read as: ip_local_reserved_ports with
/// every other port reserved is ~190 KB.
const SYSCTL_MAX: usize = 256 << 10;

/// A sysctl file, opened in the network namespace of the thread that
/// opens it and bound to that namespace for as long as it is open.
/// Keeping one open saves a lookup under /proc/sys per access, most of
/// what an access costs.
pub struct SysctlFile {
    file: File,
    path: PathBuf,
}

impl SysctlFile {
    pub fn open(key: &str) -> Result<SysctlFile> {
        let path = Path::new("/proc/sys").join(key);
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path))
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(SysctlFile { file, path })
    }

    /// The value, trimmed, from one read at offset 0. Some handlers
    /// (proc_do_large_bitmap: ip_local_reserved_ports) answer a read at
    /// any other offset with end of file, so a value read in pieces (as
    /// `read_to_string` does, starting with a 32-byte probe) stops after
    /// the first one.
    ///
    /// A read at offset 0 can be made again: 4 KiB first (the kernel
    /// allocates and zeroes what a read asks for), and, while a read fills
    /// the buffer, again with a larger one.
    pub fn read(&self) -> Result<String> {
        use std::os::unix::fs::FileExt;
        let mut size = 4 << 10;
        let buf = loop {
            let mut buf = vec![0u8; size];
            let n = self
                .file
                .read_at(&mut buf, 0)
                .with_context(|| format!("reading {}", self.path.display()))?;
            if n < size || size >= SYSCTL_MAX {
                buf.truncate(n);
                break buf;
            }
            size *= 4;
        };
        let v = String::from_utf8(buf)
            .with_context(|| format!("{} is not UTF-8", self.path.display()))?;
        Ok(v.trim().to_string())
    }

    /// Sets the value in one write at offset 0, newline-terminated: a
    /// handler parses what one write gives it, and an empty write is no
    /// write at all (an empty value is "\n", as `echo > file` writes it).
    pub fn write(&self, value: &str) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let line = format!("{value}\n");
        let n = self
            .file
            .write_at(line.as_bytes(), 0)
            .with_context(|| format!("writing {} = {value}", self.path.display()))?;
        if n != line.len() {
            bail!(
                "writing {} = {value}: {n} of {} bytes taken",
                self.path.display(),
                line.len()
            );
        }
        Ok(())
    }
}

/// Pids of the processes (other than this one) whose network namespace has
/// inode `ino` (see [`NetNs::inode`]).
pub fn pids_in(ino: u64) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != me)
        .filter(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| m.ino() == ino))
        .collect()
}

/// The calling thread's network namespace cookie (SO_NETNS_COOKIE), what
/// bpf_get_netns_cookie() returns for its sockets.
pub fn netns_cookie() -> Result<u64> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("SO_NETNS_COOKIE: {}", std::io::Error::last_os_error());
    }
    Ok(cookie)
}
