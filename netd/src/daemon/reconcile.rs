//! Making the kernel match the state when the daemon starts, after a
//! clean stop, a kill -9 at any step, or a reboot.
//!
//! 0. CNI attachments whose namespace (the runtime's) is gone, or all of
//!    them after a reboot, are released: removed from the state, their
//!    addresses and ports free (see daemon::cni).
//! 1. Containers that cannot be running any more become `exited`, their
//!    ports and addresses free: all of them after a reboot (the boot id
//!    changed), else those whose namespace is gone, whose main process
//!    ended while the daemon was down, or whose shared namespace's owner
//!    is no longer running. Nothing of theirs is rebuilt; `start` does
//!    that, as in Docker.
//! 2. Bridges, and the endpoints and files of running containers, are
//!    verified or made again.
//! 3. What the state does not name is removed: links that carry this
//!    instance's marker, namespace files under the exec root, cgroups
//!    under this instance's cgroup, container directories. (A crash in
//!    the middle of an operation leaves exactly such objects: see txn.)
//!    Another instance's links are never touched.
use std::collections::BTreeSet;

use anyhow::Result;

use super::{Daemon, blocking, containers::EXIT_UNKNOWN};
use crate::{model::*, netns::NetNs};

impl Daemon {
    pub(crate) async fn reconcile(&mut self) -> Result<()> {
        let rebooted = !self.state.boot_id.is_empty() && self.state.boot_id != super::boot_id();
        // CNI attachments whose runtime namespace is gone are released
        // (the runtime owns the namespace; netd never deletes it).
        self.release_gone_attachments(rebooted);
        // Containers sharing another's namespace last: their target's fate
        // decides theirs.
        let mut ids: Vec<String> = self
            .state
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
            .map(|c| c.id.clone())
            .collect();
        ids.sort_by_key(|id| matches!(self.state.containers[id].mode, Mode::Container(_)));
        for id in &ids {
            let c = &self.state.containers[id];
            let why = if rebooted {
                Some("the host rebooted")
            } else {
                self.why_not_running(c)
            };
            if let Some(why) = why {
                tracing::info!(
                    "reconcile: container {} is no longer running: {why}",
                    c.name
                );
                let code = c.main.map(|_| EXIT_UNKNOWN);
                let docker = matches!(c.owner, Owner::Docker { .. });
                self.state = super::containers::exited(&self.state, id, code);
                if docker {
                    // A Docker endpoint that is gone is forgotten: Docker
                    // makes a new one.
                    self.state.containers.remove(id);
                }
            }
        }
        for n in self.state.networks.values() {
            self.sandboxes.ensure_bridge(n).await?;
        }
        for id in &ids {
            let Some(c) = self.state.containers.get(id).cloned() else {
                continue;
            };
            if c.status != Status::Running {
                continue;
            }
            let r = match &c.owner {
                Owner::Docker { .. } => self.restore_docker_endpoint(&c).await,
                _ => self.restore_container(&c).await,
            };
            if let Err(e) = r {
                tracing::warn!(
                    "container {}: could not restore its networking: {e:#}",
                    c.name
                );
            }
        }
        self.remove_unknown().await?;
        self.finish_intent().await?;
        self.reconcile_routes().await
    }

    /// Removes what an operation interrupted by a crash made and the state
    /// does not name (its links may not carry the marker yet).
    async fn finish_intent(&mut self) -> Result<()> {
        let Some(intent) = self.state.intent.take() else {
            return Ok(());
        };
        tracing::info!("reconcile: undoing the interrupted {} operation", intent.op);
        let running: Vec<&Container> = self
            .state
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
            .collect();
        for name in &intent.links {
            let known = self.state.networks.values().any(|n| &n.bridge == name)
                || running
                    .iter()
                    .any(|c| c.endpoints.values().any(|e| &e.veth == name));
            if !known {
                self.nl.delete_by_name(name).await?;
            }
        }
        for p in &intent.netns {
            let known = running
                .iter()
                .any(|c| self.sandboxes.netns_path(&c.id) == *p);
            if !known {
                NetNs::at(p).remove()?;
            }
        }
        for id in &intent.cgroups {
            if !running.iter().any(|c| &c.id == id) {
                let cgroups = self.cgroups.clone();
                blocking(|| cgroups.remove(id))?;
            }
        }
        Ok(())
    }

    /// Why a container the state calls running cannot be.
    fn why_not_running(&self, c: &Container) -> Option<&'static str> {
        if let Owner::Docker { .. } = &c.owner {
            // Docker's sandbox held the other end: gone with it.
            return c
                .endpoints
                .values()
                .any(|e| crate::link::ifindex(&e.veth) == 0)
                .then_some("its veth is gone with Docker's sandbox");
        }
        match &c.mode {
            Mode::Container(t) => {
                if self.state.containers.get(t).map(|t| t.status) != Some(Status::Running) {
                    return Some("the container whose namespace it shares is not running");
                }
            }
            _ => {
                if !NetNs::at(self.sandboxes.sandbox_key(c)).exists() {
                    return Some("its network namespace is gone");
                }
            }
        }
        if let Some(m) = c.main
            && m.open().is_none()
        {
            return Some("its main process ended while the daemon was down");
        }
        None
    }

    /// Removes this instance's objects that the state does not name.
    async fn remove_unknown(&mut self) -> Result<()> {
        let running: Vec<&Container> = self
            .state
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
            .collect();
        let veths: BTreeSet<&str> = running
            .iter()
            .flat_map(|c| c.endpoints.values().map(|e| e.veth.as_str()))
            .collect();
        let bridges: BTreeSet<&str> = self
            .state
            .networks
            .values()
            .map(|n| n.bridge.as_str())
            .collect();
        for l in self.nl.links().await? {
            if self.sandboxes.is_ours(&l)
                && !veths.contains(l.name.as_str())
                && !bridges.contains(l.name.as_str())
            {
                tracing::info!("reconcile: removing stale link {}", l.name);
                self.nl.delete(l.index).await?;
            }
        }
        let namespaces: BTreeSet<&str> = running
            .iter()
            .filter(|c| c.is_netd() && !matches!(c.mode, Mode::Container(_)))
            .map(|c| c.id.as_str())
            .collect();
        for e in std::fs::read_dir(self.sandboxes.netns_dir())?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !namespaces.contains(name.as_str()) {
                tracing::info!("reconcile: removing stale namespace {name}");
                NetNs::at(e.path()).remove()?;
            }
        }
        let ids: BTreeSet<&str> = running.iter().map(|c| c.id.as_str()).collect();
        for id in self.cgroups.list() {
            if !ids.contains(id.as_str()) {
                tracing::info!("reconcile: stopping and removing the stale cgroup of {id}");
                let cgroups = self.cgroups.clone();
                blocking(|| cgroups.remove(&id))?;
            }
        }
        let known: BTreeSet<&String> = self.state.containers.keys().collect();
        let dir = self.sandboxes.files_dir("");
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                std::fs::remove_dir_all(e.path())?;
            }
        }
        Ok(())
    }
}
