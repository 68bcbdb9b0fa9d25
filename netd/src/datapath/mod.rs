//! The datapath contract. The control plane owns the desired state; a
//! datapath makes the kernel match it. The contract is declarative: after
//! any change the daemon calls [`Datapath::sync`] with the whole state and
//! a [`Change`] hint naming what changed, so an implementation may apply
//! incrementally (the eBPF datapath updates map entries) or re-render
//! (the iptables datapath writes its NETD-* chains in one
//! iptables-restore batch, the nftables datapath replaces its table in one
//! `nft -f` transaction).
use anyhow::{Result, bail};

use crate::state::State;

pub mod ebpf;
pub mod iptables;
pub mod nftables;

/// What changed since the last sync (a hint; `All` means re-check
/// everything, as at startup).
#[derive(Clone, Debug)]
pub enum Change {
    All,
    Network(String),
    Endpoint { container: String, network: String },
    Ports { container: String },
}

pub trait Datapath: Send + Sync {
    fn name(&self) -> &'static str;
    /// Host-level setup at daemon start (hooks, sysctls).
    fn init(&mut self) -> Result<()>;
    /// Makes the kernel match `state`.
    fn sync(&mut self, state: &State, change: &Change) -> Result<()>;
    /// Removes everything this datapath installed (`--cleanup-on-exit`).
    fn cleanup(&mut self) -> Result<()>;
    /// Whether bridge ports need hairpin mode (a container reaching its
    /// own published port through the host goes back out of its port).
    /// The eBPF datapath translates hairpin traffic in TC and does not:
    /// hairpin mode also reflects a port's broadcasts back to it.
    fn wants_hairpin_mode(&self) -> bool {
        true
    }
    /// Expires idle connection-tracking entries; returns how many went.
    fn gc(&mut self) -> Result<usize> {
        Ok(0)
    }
    /// Counters for `netd stats` (JSON).
    fn stats(&mut self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "Datapath": self.name() }))
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

pub fn new(kind: Kind, ebpf: ebpf::EbpfConfig) -> Box<dyn Datapath> {
    match kind {
        Kind::Iptables => Box::new(iptables::Iptables::default()),
        Kind::Nftables => Box::new(nftables::Nftables::default()),
        Kind::Ebpf => Box::new(ebpf::Ebpf::new(ebpf)),
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
}

impl Timed {
    pub fn new(inner: Box<dyn Datapath>) -> Timed {
        Timed {
            inner,
            last_sync: std::time::Duration::ZERO,
        }
    }
}

impl Datapath for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn init(&mut self) -> Result<()> {
        self.inner.init()
    }
    fn sync(&mut self, state: &State, change: &Change) -> Result<()> {
        let t = std::time::Instant::now();
        let r = self.inner.sync(state, change);
        self.last_sync = t.elapsed();
        r
    }
    fn cleanup(&mut self) -> Result<()> {
        self.inner.cleanup()
    }
    fn wants_hairpin_mode(&self) -> bool {
        self.inner.wants_hairpin_mode()
    }
    fn gc(&mut self) -> Result<usize> {
        self.inner.gc()
    }
    fn stats(&mut self) -> Result<serde_json::Value> {
        self.inner.stats()
    }
}
