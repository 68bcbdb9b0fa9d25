//! The datapath contract. The control plane owns the desired state; a
//! datapath makes the kernel match it. The contract is declarative: after
//! any change the daemon calls [`Datapath::sync`] with the whole state and
//! a [`Change`] hint naming what changed, so an implementation may apply
//! incrementally (the eBPF datapath updates map entries) or re-render
//! (the iptables datapath writes its NETD-* chains in one
//! iptables-restore batch).
use anyhow::{Result, bail};

use crate::state::State;

pub mod iptables;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ebpf,
    Iptables,
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Kind> {
        match s {
            "ebpf" => Ok(Kind::Ebpf),
            "iptables" => Ok(Kind::Iptables),
            other => bail!("unknown datapath {other:?}: expected ebpf or iptables"),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Ebpf => "ebpf",
            Kind::Iptables => "iptables",
        })
    }
}

pub fn new(kind: Kind) -> Result<Box<dyn Datapath>> {
    match kind {
        Kind::Iptables => Ok(Box::new(iptables::Iptables::default())),
        Kind::Ebpf => bail!(
            "the ebpf datapath is not implemented yet (see the eBPF datapath issue); \
             run `netd daemon --datapath iptables`"
        ),
    }
}
