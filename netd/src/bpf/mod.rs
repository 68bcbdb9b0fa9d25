//! Loading, attaching and reading netd's eBPF programs.
//!
//! The object is embedded in the netd binary (see build.rs): `netd` is
//! self-contained.
use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        tc::{SchedClassifierLinkId, TcAttachOptions},
    },
};
use netd_common::{Counter, Counters, DropReason, maps};

use crate::netns::NetNs;

/// The eBPF object built by `cargo xtask build-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETD_EBPF_OBJECT"));

/// Program names (the functions in netd-ebpf).
pub const FROM_CONTAINER: &str = "from_container";
pub const FROM_WORLD: &str = "from_world";
/// The IPv6 programs, tail-called by the two above through `NETD_JMP6`
/// (slots 0..10, in this order), never attached themselves.
pub const IPV6_PROGRAMS: [&str; 10] = [
    "from_container6",
    "from_world6",
    "egress6",
    "container_icmp6",
    "container_flow6",
    "world_icmp6",
    "world_dnat6",
    "world_address6",
    "new_flow6",
    "evict6",
];
/// The cgroup socket programs (host processes -> published ports).
pub const SOCK_PROGRAMS: [&str; 8] = [
    "netd_connect4",
    "netd_sendmsg4",
    "netd_recvmsg4",
    "netd_getpeername4",
    "netd_connect6",
    "netd_sendmsg6",
    "netd_recvmsg6",
    "netd_getpeername6",
];

/// The no-op XDP program (see [`attach_xdp_pass`]).
pub const XDP_PASS: &str = "xdp_pass";
/// A TC program that does nothing: the floor of BPF_PROG_TEST_RUN
/// measurements (loaded on demand by [`Programs::program_fd`]).
pub const TC_PASS: &str = "tc_pass";

/// The no-op XDP program attached to an interface, until dropped.
pub struct XdpPass {
    _ebpf: Ebpf,
}

/// Loads the object's no-op XDP program (with maps of its own, never
/// pinned) and attaches it, in driver (native) mode, to `iface` of the
/// calling thread's namespace; dropping the result detaches it. What XDP
/// on that interface costs by itself: `netd bench` measures the
/// published-port loads with and without it.
pub fn attach_xdp_pass(iface: &str) -> Result<XdpPass> {
    raise_memlock();
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .context("loading netd's eBPF object")?;
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut(XDP_PASS)
        .with_context(|| format!("program {XDP_PASS} missing from the object"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("loading (verifying) {XDP_PASS}"))?;
    prog.attach(iface, aya::programs::XdpMode::Driver)
        .with_context(|| format!("attaching {XDP_PASS} to {iface} (native XDP)"))?;
    Ok(XdpPass { _ebpf: ebpf })
}

/// netd's TC filters (see [`Programs::attach_tc`]): first in the ingress
/// chain, under a handle of netd's own.
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: u32 = 0x6e64;

/// Removes netd's `program` filter from the ingress of `iface`, if it has
/// one (an error only when the filters could not be listed or removed).
pub fn detach_tc(program: &str, iface: &str) -> Result<()> {
    match aya::programs::tc::qdisc_detach_program(iface, TcAttachType::Ingress, program) {
        Ok(()) => Ok(()),
        Err(aya::programs::tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(anyhow!("detaching {program} from {iface}: {e}")),
    }
}

/// aya-log levels as the eBPF side numbers them.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum BpfLogLevel {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// Loaded programs and maps.
pub struct Programs {
    ebpf: Ebpf,
    loaded: bool,
}

impl Programs {
    /// Loads the embedded object: creates its maps and loads (verifies)
    /// every program. `log_level` filters aya-log output in the kernel, so
    /// disabled levels cost one load and compare.
    pub fn load(log_level: BpfLogLevel) -> Result<Programs> {
        Self::load_with(log_level, None, netd_common::DEFAULT_CT_ENTRIES)
    }

    /// Like [`load`](Self::load), with every map pinned under
    /// `pin_dir` as `<NAME>_<MAP_VERSION>`: maps already pinned there are
    /// reused (a restarted daemon adopts the running datapath's state).
    pub fn load_with(
        log_level: BpfLogLevel,
        pin_dir: Option<&Path>,
        ct_entries: u32,
    ) -> Result<Programs> {
        Self::load_object(OBJECT, log_level, pin_dir, ct_entries)
    }

    /// Like [`load_with`](Self::load_with), for another build of the
    /// object (`netd tool prog-sizes --object`: an older netd's, to
    /// compare).
    pub fn load_object(
        object: &[u8],
        log_level: BpfLogLevel,
        pin_dir: Option<&Path>,
        ct_entries: u32,
    ) -> Result<Programs> {
        raise_memlock();
        let level = log_level as u8;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("AYA_LOG_LEVEL", &level, false)
            .map_max_entries(maps::CT, ct_entries)
            .map_max_entries(netd_common::v6::maps::CT6, ct_entries);
        let paths: Vec<(&str, std::path::PathBuf)> = match pin_dir {
            Some(dir) => maps::ALL
                .iter()
                .chain(netd_common::v6::maps::ALL.iter())
                .map(|m| (*m, dir.join(format!("{m}_{}", netd_common::MAP_VERSION))))
                .collect(),
            None => vec![],
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading netd's eBPF object")?;
        for name in [FROM_CONTAINER, FROM_WORLD] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading (verifying) {name}"))?;
        }
        // The IPv6 programs, into the jump table the IPv4 ones tail-call.
        let mut fds = Vec::new();
        for name in IPV6_PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading (verifying) {name}"))?;
            fds.push(prog.fd()?.try_clone()?);
        }
        {
            let mut jump: aya::maps::ProgramArray<&mut MapData> =
                aya::maps::ProgramArray::try_from(
                    ebpf.map_mut(netd_common::v6::maps::JUMP6)
                        .context("the IPv6 jump table is missing from the object")?,
                )?;
            for (slot, fd) in fds.iter().enumerate() {
                jump.set(slot as u32, fd, 0)?;
            }
        }
        for name in SOCK_PROGRAMS {
            let prog: &mut aya::programs::CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading (verifying) {name}"))?;
        }
        Ok(Programs { ebpf, loaded: true })
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// A map by name, for typed access (`HashMap::try_from(..)`).
    pub fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing"))
    }

    /// Attaches `program` to the ingress of `iface` in the calling thread's
    /// namespace, adopting the TCX link pinned at `pin` if there is one
    /// (atomically replacing its program: no packet sees no program), else
    /// attaching anew and pinning the link there.
    pub fn attach_pinned(&mut self, program: &str, iface: &str, pin: &Path) -> Result<()> {
        use aya::programs::{
            links::{FdLink, PinnedLink},
            tc::SchedClassifierLink,
        };
        let prog = self.classifier(program)?;
        if let Ok(old) = PinnedLink::from_pin(pin) {
            let link = SchedClassifierLink::try_from(FdLink::from(old))
                .map_err(|e| anyhow!("pinned link {} is not a TCX link: {e}", pin.display()))?;
            match prog.attach_to_link(link) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!("could not adopt {}: {e}; attaching anew", pin.display());
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let id = prog
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .with_context(|| format!("attaching {program} to {iface} (tcx ingress)"))?;
        let link = prog.take_link(id)?;
        let fd: FdLink = link.try_into().map_err(|e| anyhow!("tcx link: {e}"))?;
        fd.pin(pin)
            .with_context(|| format!("pinning the link at {}", pin.display()))?;
        Ok(())
    }

    /// Attaches `program` to the ingress of `iface` as a TC filter
    /// (cls_bpf, direct action, on a clsact qdisc) at netd's priority and
    /// handle, or swaps it into netd's filter there (cls_bpf replaces the
    /// program atomically: no packet sees none). The filter outlives this
    /// process, as a pinned link does, and goes with the interface.
    ///
    /// Decision: container veths get TC filters, not TCX links. A TCX
    /// attach waits for an RCU grace period (tcx_entry_sync, ~14 ms here
    /// per veth, under the RTNL lock, so attaches cannot overlap), a TC
    /// filter costs ~0.15 ms (the clsact qdisc included); the uplink's
    /// single program keeps its TCX link.
    pub fn attach_tc(&mut self, program: &str, iface: &str) -> Result<()> {
        use aya::programs::tc::{NlOptions, SchedClassifierLink, TcHandle, qdisc_add_clsact};
        // Already there (an earlier daemon's, or anyone's): fine.
        let _ = qdisc_add_clsact(iface);
        let prog = self.classifier(program)?;
        let opts = || NlOptions {
            priority: TC_PRIORITY,
            handle: TcHandle::from(TC_HANDLE),
            ..NlOptions::default()
        };
        let id = match prog.attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(opts()),
        ) {
            Ok(id) => id,
            Err(create) => {
                // netd's filter is there already: replace its program.
                let link = SchedClassifierLink::attached(
                    iface,
                    TcAttachType::Ingress,
                    TC_PRIORITY,
                    TcHandle::from(TC_HANDLE),
                    None,
                )
                .with_context(|| format!("interface {iface}"))?;
                prog.attach_to_link(link).map_err(|replace| {
                    anyhow!(
                        "attaching {program} to {iface} (tc ingress): {create}; replacing: {replace}"
                    )
                })?
            }
        };
        // The filter stays when this process lets go of it (a dropped
        // link would detach it).
        std::mem::forget(prog.take_link(id)?);
        Ok(())
    }

    /// Forwards the programs' aya-log records to the `log`/`tracing`
    /// facade, from a task on the current tokio runtime.
    pub fn spawn_logger(&mut self) -> Result<()> {
        let logger = aya_log::EbpfLogger::init(&mut self.ebpf).context("initialising aya-log")?;
        // SAFETY: the logger owns the ring buffer fd and outlives the
        // registration (both live in the AsyncFd, dropped together).
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }
        .map_err(|e| anyhow!("registering the aya-log ring buffer: {e}"))?;
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    break;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }

    fn classifier(&mut self, program: &str) -> Result<&mut SchedClassifier> {
        debug_assert!(self.loaded);
        Ok(self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("no program {program}"))?
            .try_into()?)
    }

    /// Attaches `program` with TCX to the ingress of `iface` inside `ns`
    /// (first in the TCX chain).
    pub fn attach_ingress(
        &mut self,
        program: &str,
        ns: &NetNs,
        iface: &str,
    ) -> Result<SchedClassifierLinkId> {
        let prog = self.classifier(program)?;
        // The interface name resolves in the calling thread's namespace.
        ns.run(|| {
            prog.attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .with_context(|| format!("attaching {program} to {iface} (tcx ingress)"))
        })
    }

    pub fn detach(&mut self, program: &str, link: SchedClassifierLinkId) -> Result<()> {
        self.classifier(program)?
            .detach(link)
            .with_context(|| format!("detaching {program}"))
    }

    /// Attaches every cgroup socket program to the cgroup (v2 directory)
    /// `cgroup`, pinning the links under `pin_dir` (a link pinned by an
    /// earlier daemon is replaced).
    pub fn attach_sock_programs(&mut self, cgroup: &Path, pin_dir: &Path) -> Result<()> {
        use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink};
        let cg = std::fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in SOCK_PROGRAMS {
            let pin = pin_dir.join(format!("cgroup-{name}"));
            let _ = std::fs::remove_file(&pin);
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            let id = prog
                // A link (kernel >= 5.7) coexists with other programs; the mode
                // flags are for the legacy attach and must be 0 here.
                .attach(&cg, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
            let link: FdLink = prog
                .take_link(id)?
                .try_into()
                .map_err(|e| anyhow!("{name} link: {e}"))?;
            link.pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        Ok(())
    }

    fn per_cpu_sums(&self, name: &str, n: u32) -> Result<Vec<u64>> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(name)
                .with_context(|| format!("map {name} missing"))?,
        )?;
        (0..n)
            .map(|i| Ok(map.get(&i, 0)?.iter().sum()))
            .collect::<Result<Vec<u64>>>()
    }

    /// Global counters, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        let map: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(
            self.ebpf
                .map(maps::COUNTERS)
                .with_context(|| format!("map {} missing", maps::COUNTERS))?,
        )?;
        let mut sums = [0u64; Counter::COUNT as usize];
        for c in map.get(&0, 0)?.iter() {
            for (s, v) in sums.iter_mut().zip(c.v.iter()) {
                *s += v;
            }
        }
        Ok(Counter::ALL
            .iter()
            .map(|c| (c.name(), sums[*c as usize]))
            .collect())
    }

    /// Drops by reason, summed over CPUs.
    pub fn drops(&self) -> Result<BTreeMap<&'static str, u64>> {
        let sums = self.per_cpu_sums(maps::DROPS, DropReason::COUNT)?;
        Ok(DropReason::ALL
            .iter()
            .map(|r| (r.name(), sums[*r as usize]))
            .collect())
    }

    /// What the kernel made of each loaded program: instructions after
    /// verification (xlated), instructions the verifier processed, and the
    /// JITed machine code's size.
    pub fn sizes(&self) -> Result<Vec<ProgramSize>> {
        let mut out = Vec::new();
        for (name, prog) in self.ebpf.programs() {
            let info = match prog {
                aya::programs::Program::SchedClassifier(p) => p.info(),
                aya::programs::Program::CgroupSockAddr(p) => p.info(),
                aya::programs::Program::Xdp(p) => p.info(),
                _ => continue,
            };
            let Ok(info) = info else { continue };
            out.push(ProgramSize::from_info(name, &info));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The file descriptor of a loaded classifier (tests drive it with
    /// BPF_PROG_TEST_RUN from several threads); [`TC_PASS`], which
    /// [`load`](Self::load) leaves out, is loaded on first use.
    pub fn program_fd(&mut self, program: &str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog = self.classifier(program)?;
        if program == TC_PASS && prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading (verifying) {program}"))?;
        }
        Ok(prog.fd()?.as_fd().as_raw_fd())
    }

    /// Runs `program` once on `frame` with BPF_PROG_TEST_RUN; returns the
    /// verdict and the frame as the program left it.
    pub fn test_run(&mut self, program: &str, frame: &[u8]) -> Result<(i32, Vec<u8>)> {
        let prog = self.classifier(program)?;
        // Room for programs that grow the packet; TC programs here never do.
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN on {program}: {e:?}"))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value as i32, out))
    }
}

/// A loaded program's size as the kernel reports it (`bpftool prog show`:
/// `xlated`, `jited`, `verified_insns`).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProgramSize {
    pub name: String,
    pub id: u32,
    /// Instructions after verification and rewriting (xlated bytes / 8).
    pub insns: u32,
    /// Instructions the verifier processed (every path it explored).
    pub verified_insns: u32,
    /// Bytes of JITed machine code.
    pub jited_bytes: u32,
    /// Time spent in the program and runs (kernel.bpf_stats_enabled).
    pub run_time_ns: u64,
    pub run_count: u64,
}

impl ProgramSize {
    pub fn from_info(name: &str, info: &aya::programs::ProgramInfo) -> ProgramSize {
        ProgramSize {
            name: name.to_string(),
            id: info.id(),
            run_time_ns: info.run_time().as_nanos() as u64,
            run_count: info.run_count(),
            insns: info.size_translated().unwrap_or(0) / 8,
            verified_insns: info.verified_instruction_count().unwrap_or(0),
            jited_bytes: info.size_jitted(),
        }
    }
}

/// On this kernel BPF memory is charged to the memory cgroup; raising
/// RLIMIT_MEMLOCK only matters on old kernels and fails without
/// CAP_SYS_RESOURCE, so failure is a debug note, never an error.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on memcg-accounted kernels)");
    }
}

/// Makes `dir` a directory on a bpffs. Under `/sys/fs/bpf` (the
/// default), a `/sys/fs/bpf` that is not a bpffs yet gets one mounted
/// first, as Cilium does (hosts without systemd, `ip netns exec`, which
/// remounts /sys); anywhere else a bpffs is mounted at `dir` itself
/// unless it already is on one.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && !is_bpffs(sys) {
        mount_bpffs(sys)?;
        tracing::info!("mounted a bpffs at {}", sys.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !is_bpffs(dir) {
        mount_bpffs(dir)?;
    }
    Ok(())
}

fn is_bpffs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

fn mount_bpffs(dir: &Path) -> Result<()> {
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting a bpffs at {}", dir.display()))
}
