//! Crash-safe persistent state: one JSON document, replaced atomically
//! (write to a temporary file, fsync it, rename over the old one, fsync the
//! directory). A kill -9 at any point leaves either the old or the new
//! state, never a torn one.
use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    model::{Container, Network},
    portspec::Proto,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// By id.
    pub networks: BTreeMap<String, Network>,
    /// By id.
    pub containers: BTreeMap<String, Container>,
    /// Host ports handed out by -P / missing host ports, so a restart does
    /// not hand them out twice.
    pub next_ephemeral: BTreeMap<Proto, u16>,
    /// This instance's marker: the alias of every link it creates, the
    /// name of its cgroup (`netd-<instance>`). Reconcile removes only
    /// links that carry it, never another instance's.
    #[serde(default)]
    pub instance: String,
    /// The boot the running containers belong to: after a reboot none of
    /// them is running any more.
    #[serde(default)]
    pub boot_id: String,
    /// The datapath that programmed the host last: a daemon started with
    /// another one removes its rules, tables and pins first.
    #[serde(default)]
    pub datapath: Option<crate::datapath::Kind>,
    /// The kernel objects a creating operation is about to make, saved
    /// before it makes them: after a crash, reconcile removes those the
    /// state does not name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// The cluster's pod address range (`--cluster-cidr`): traffic between
    /// containers and these addresses is never masqueraded.
    #[serde(default)]
    pub cluster_cidr: Option<crate::ipam::Cidr>,
    /// The other nodes, by name (`netd node add`).
    #[serde(default)]
    pub nodes: BTreeMap<String, crate::model::Node>,
}

/// What an operation in progress will create (see [`State::intent`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Intent {
    pub op: String,
    /// Link names (veths, bridges).
    pub links: Vec<String>,
    /// Namespace files.
    pub netns: Vec<PathBuf>,
    /// Container ids whose cgroup it creates.
    pub cgroups: Vec<String>,
}

pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, State)> {
        fs::create_dir_all(dir).with_context(|| format!("creating state dir {}", dir.display()))?;
        let path = dir.join("state.json");
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok((Store { path }, state))
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state)?;
        {
            let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
