//! The datapath contract. The control plane owns the desired state; a
//! datapath makes the kernel match it. The contract is declarative: after
//! any change the daemon calls [`Datapath::sync`] with the whole state, and
//! an implementation applies the difference from what it applied last (the
//! eBPF datapath updates map entries) or re-renders (the iptables datapath
//! writes its NETD-* chains in one iptables-restore batch, the nftables
//! datapath replaces its table in one `nft -f` transaction).
use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::state::State;

pub mod ebpf;
pub mod iptables;
pub mod loopback_proxy;
pub mod nftables;

pub trait Datapath: Send + Sync {
    fn name(&self) -> &'static str;
    /// Host-level setup at daemon start (hooks, sysctls).
    fn init(&mut self) -> Result<()>;
    /// Makes the kernel match `state`.
    fn sync(&mut self, state: &State) -> Result<()>;
    /// Removes everything this datapath installed. Works on an instance
    /// that was never initialised too: the daemon calls it on a fresh
    /// instance of the datapath that programmed the host before, when it
    /// starts with another `--datapath`.
    fn cleanup(&mut self) -> Result<()>;
    /// Whether bridge ports need hairpin mode (a container reaching its
    /// own published port through the host goes back out of its port).
    /// The eBPF datapath translates hairpin traffic in TC and does not:
    /// hairpin mode also reflects a port's broadcasts back to it.
    fn wants_hairpin_mode(&self) -> bool {
        true
    }
    /// The ephemeral port range netd's own containers get in their
    /// namespace (`net.ipv4.ip_local_port_range`), if the datapath wants
    /// one (the eBPF datapath: its NAT range, see `Ebpf`).
    fn container_port_range(&self) -> Option<(u16, u16)> {
        None
    }
    /// A collector of idle connection-tracking entries that runs on its
    /// own, without the daemon's lock (`None`: the kernel's conntrack
    /// expires entries itself).
    fn conntrack_gc(&mut self) -> Result<Option<Box<dyn ConntrackGc>>> {
        Ok(None)
    }
    /// Counters for `netd stats`.
    fn stats(&mut self) -> Result<Stats> {
        Ok(Stats::new(self.name()))
    }
    /// Follows what changes under the datapath without a state change
    /// (the eBPF datapath: the uplink's address, the host's addresses).
    /// Called every few seconds by the daemon.
    fn refresh(&mut self, _state: &State) -> Result<()> {
        Ok(())
    }
}

/// Expires idle conntrack entries; called every few seconds by the daemon
/// outside its lock.
pub trait ConntrackGc: Send {
    fn run(&mut self) -> Result<GcRun>;
}

/// What one garbage-collection pass did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GcRun {
    /// Entries walked.
    pub entries: u64,
    /// Entries removed.
    pub expired: u64,
    /// CPU time the pass took (this thread's), microseconds.
    pub cpu_micros: u64,
    /// Wall-clock time of the pass, microseconds.
    pub wall_micros: u64,
}

/// The conntrack GC's record for `netd stats`: its last pass, the
/// costliest one, and totals.
#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GcStats {
    pub runs: u64,
    pub expired_total: u64,
    pub last: GcRun,
    /// The pass that took the most CPU time.
    pub max: GcRun,
}

impl GcStats {
    pub fn record(&mut self, r: GcRun) {
        self.runs += 1;
        self.expired_total += r.expired;
        self.last = r;
        if r.cpu_micros >= self.max.cpu_micros {
            self.max = r;
        }
    }
}

/// One endpoint's traffic as the datapath counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Datapath counters (`GET /stats`; the daemon names the endpoints).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stats {
    pub datapath: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<String, u64>,
    /// By host-side interface index.
    #[serde(skip)]
    pub endpoints: BTreeMap<u32, EndpointCounters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_entries: Option<u64>,
    /// The conntrack GC's passes (datapaths with a GC of netd's own).
    #[serde(rename = "ConntrackGC", skip_serializing_if = "Option::is_none")]
    pub conntrack_gc: Option<GcStats>,
    /// The eBPF programs as the kernel has them (sizes, and run time when
    /// kernel.bpf_stats_enabled is on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<crate::bpf::ProgramSize>,
}

impl Stats {
    pub fn new(datapath: &str) -> Stats {
        Stats {
            datapath: datapath.to_string(),
            ..Stats::default()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ebpf,
    Iptables,
    Nftables,
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Kind> {
        match s {
            "ebpf" => Ok(Kind::Ebpf),
            "iptables" => Ok(Kind::Iptables),
            "nftables" => Ok(Kind::Nftables),
            other => bail!("unknown datapath {other:?}: expected ebpf, iptables or nftables"),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Ebpf => "ebpf",
            Kind::Iptables => "iptables",
            Kind::Nftables => "nftables",
        })
    }
}

/// A datapath of `kind`; `userland_proxy`: the netfilter datapaths serve
/// `[::1]` published ports with [`loopback_proxy`].
pub fn new(kind: Kind, ebpf: ebpf::EbpfConfig, userland_proxy: bool) -> Box<dyn Datapath> {
    match kind {
        Kind::Iptables => Box::new(iptables::Iptables::new(userland_proxy)),
        Kind::Nftables => Box::new(nftables::Nftables::new(userland_proxy)),
        Kind::Ebpf => Box::new(ebpf::Ebpf::new(ebpf)),
    }
}

/// The kernel's conntrack entries of container addresses that went away
/// (the netfilter datapaths track flows in the kernel): a later container
/// with the address, or a port published again, must not inherit a stale
/// translation (Docker flushes them too). Flushed with `conntrack -D`.
#[derive(Default)]
pub struct KernelConntrack {
    last: std::collections::BTreeSet<std::net::IpAddr>,
}

impl KernelConntrack {
    pub fn sync(&mut self, state: &State) -> Result<()> {
        let now: std::collections::BTreeSet<std::net::IpAddr> = state
            .containers
            .values()
            .filter(|c| c.status == crate::model::Status::Running)
            .flat_map(|c| c.endpoints.values().flat_map(|e| e.addrs()))
            .collect();
        let mut errors = Vec::new();
        for ip in self.last.difference(&now) {
            let family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
            let ip = ip.to_string();
            for dir in ["-s", "-d", "--reply-src", "--reply-dst"] {
                // Exit 1: nothing matched.
                match iptables::run_tool("conntrack", &["-D", "-f", family, dir, &ip], "") {
                    Ok(o) if o.status.success() || o.status.code() == Some(1) => {}
                    Ok(o) => errors.push(format!(
                        "conntrack -D -f {family} {dir} {ip}: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        self.last = now;
        if !errors.is_empty() {
            bail!("flushing kernel conntrack entries: {}", errors.join("; "));
        }
        Ok(())
    }
}

/// 127.0.0.1 -> published port with the netfilter datapaths: loopback-
/// sourced packets may be routed out of the bridges (then masqueraded),
/// as Docker sets it without the userland proxy.
pub fn route_localnet(state: &State) -> Result<()> {
    for n in state.networks.values() {
        let key = format!("net/ipv4/conf/{}/route_localnet", n.bridge);
        if crate::netns::sysctl_read(&key).is_ok_and(|v| v != "1") {
            crate::netns::sysctl_write(&key, "1")?;
        }
    }
    Ok(())
}

/// A datapath that remembers how long its last sync took (reported by
/// `GET /info`, so benchmarks can tell the datapath's share of an
/// operation from the rest: namespaces, links, state on disk).
pub struct Timed {
    inner: Box<dyn Datapath>,
    pub last_sync: std::time::Duration,
    /// Filled by the conntrack GC's thread (see [`Timed::gc_stats`]).
    gc: Option<std::sync::Arc<std::sync::Mutex<GcStats>>>,
}

impl Timed {
    pub fn new(inner: Box<dyn Datapath>) -> Timed {
        Timed {
            inner,
            last_sync: std::time::Duration::ZERO,
            gc: None,
        }
    }

    /// Where the conntrack GC records its passes (shown by `stats`).
    pub fn gc_stats(&mut self) -> std::sync::Arc<std::sync::Mutex<GcStats>> {
        self.gc.get_or_insert_with(Default::default).clone()
    }
}

impl Datapath for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn init(&mut self) -> Result<()> {
        self.inner.init()
    }
    fn sync(&mut self, state: &State) -> Result<()> {
        let t = std::time::Instant::now();
        let r = self.inner.sync(state);
        self.last_sync = t.elapsed();
        r
    }
    fn cleanup(&mut self) -> Result<()> {
        self.inner.cleanup()
    }
    fn wants_hairpin_mode(&self) -> bool {
        self.inner.wants_hairpin_mode()
    }
    fn container_port_range(&self) -> Option<(u16, u16)> {
        self.inner.container_port_range()
    }
    fn conntrack_gc(&mut self) -> Result<Option<Box<dyn ConntrackGc>>> {
        self.inner.conntrack_gc()
    }
    fn stats(&mut self) -> Result<Stats> {
        let mut s = self.inner.stats()?;
        if let Some(gc) = &self.gc {
            s.conntrack_gc = Some(*gc.lock().unwrap_or_else(|e| e.into_inner()));
        }
        Ok(s)
    }
    fn refresh(&mut self, state: &State) -> Result<()> {
        self.inner.refresh(state)
    }
}
