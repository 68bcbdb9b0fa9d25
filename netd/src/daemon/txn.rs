//! The one way a state-changing operation touches the kernel.
//!
//! Creating (network create, container create/start, connect, publish):
//! validate, allocate in a copy of the state, apply the kernel steps while
//! recording how to undo each, sync the datapath, save, swap the state in.
//! On an error every step is undone in reverse and every error returned.
//! A crash (kill -9) in between leaves objects the saved state does not
//! name, all marked as this instance's: reconcile removes them.
//!
//! Removing (network rm, stop, rm, disconnect): save the new state first
//! (the intent), then sync the datapath and remove kernel objects,
//! collecting errors and going on. A crash in between leaves objects the
//! saved state no longer names: reconcile finishes the removal, so nothing
//! comes back.
use std::path::PathBuf;

use anyhow::Result;

use super::{Daemon, blocking};
use crate::{
    datapath::Datapath,
    fault,
    netns::NetNs,
    process::Cgroups,
    sandbox::Sandboxes,
    state::{Intent, State},
};

/// How to undo one applied step.
pub enum Undo {
    /// A link (veth pair or bridge) by name.
    Link(String),
    /// A namespace file.
    Netns(PathBuf),
    /// A container's cgroup (and whatever runs in it).
    Cgroup(String),
}

/// An operation in progress.
pub struct Txn {
    pub op: &'static str,
    undo: Vec<Undo>,
}

impl Txn {
    pub fn new(op: &'static str) -> Txn {
        Txn {
            op,
            undo: Vec::new(),
        }
    }

    /// Marks a step (a fault-injection point in test builds).
    pub fn step(&self, name: &str) {
        fault::point(self.op, name);
    }

    /// Records that a step was applied.
    pub fn applied(&mut self, u: Undo) {
        self.undo.push(u);
    }

    /// Undoes every applied step, last first; returns the errors.
    pub async fn rollback(self, sb: &Sandboxes, cgroups: &Cgroups) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        for u in self.undo.into_iter().rev() {
            let r = match &u {
                Undo::Link(name) => sb.nl.delete_by_name(name).await,
                Undo::Netns(p) => NetNs::at(p).remove(),
                Undo::Cgroup(id) => cgroups.remove(id),
            };
            if let Err(e) = r {
                errors.push(e.context("rolling back"));
            }
        }
        errors
    }
}

/// Errors collected from several steps, shown together.
#[derive(Debug)]
pub struct ErrorList(pub Vec<anyhow::Error>);

impl std::fmt::Display for ErrorList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| format!("{e:#}")).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ErrorList {}

/// The first error with the others appended (an operation's error first,
/// then what undoing it cost).
pub fn combine(first: anyhow::Error, more: Vec<anyhow::Error>) -> anyhow::Error {
    if more.is_empty() {
        return first;
    }
    // Keep an ApiError's status: it is the operation's answer.
    let msg = format!("{}; and while undoing: {}", first, ErrorList(more));
    match first.downcast::<crate::api::ApiError>() {
        Ok(api) => crate::api::ApiError::new(api.status, msg).into(),
        Err(_) => anyhow::anyhow!(msg),
    }
}

impl Daemon {
    /// Records what a creating operation is about to make (saved before
    /// it makes anything).
    pub(crate) fn begin(&mut self, intent: Intent) -> Result<()> {
        let mut next = self.state.clone();
        next.intent = Some(intent);
        self.save(&next)?;
        self.state = next;
        Ok(())
    }

    /// Undoes a failed creating operation: its steps, the datapath, the
    /// recorded intent. Returns the operation's error with whatever
    /// undoing it cost.
    pub(crate) async fn abort(&mut self, txn: Txn, e: anyhow::Error) -> anyhow::Error {
        let mut undo = txn.rollback(&self.sandboxes, &self.cgroups).await;
        self.state.intent = None;
        let state = self.state.clone();
        if let Err(e2) = blocking(|| self.dp.sync(&state)) {
            undo.push(e2);
        }
        if let Err(e2) = self.save(&state) {
            undo.push(e2);
        }
        combine(e, undo)
    }

    /// Applies a creating operation: syncs the datapath with `next`, saves
    /// it and swaps it in; on failure undoes `txn` and restores the
    /// datapath to the current state.
    pub(crate) async fn commit(&mut self, mut next: State, txn: Txn) -> Result<()> {
        next.intent = None;
        txn.step("datapath");
        let mut r = blocking(|| self.dp.sync(&next));
        if r.is_ok() {
            txn.step("save");
            r = self.save(&next);
        }
        if let Err(e) = r {
            return Err(self.abort(txn, e).await);
        }
        txn.step("done");
        self.state = next;
        Ok(())
    }

    /// Applies a removing operation's state: saves `next` first (the
    /// intent: reconcile finishes it after a crash), swaps it in and syncs
    /// the datapath. Returns the errors of the steps after the save; the
    /// caller removes kernel objects next and reports them all.
    pub(crate) async fn commit_removal(
        &mut self,
        next: State,
        txn: &Txn,
    ) -> Result<Vec<anyhow::Error>> {
        txn.step("save");
        self.save(&next)?;
        self.state = next;
        txn.step("datapath");
        let state = self.state.clone();
        Ok(blocking(|| self.dp.sync(&state))
            .err()
            .into_iter()
            .collect())
    }

    /// Logs what went wrong after a removal was committed (reconcile
    /// removes the leftovers at the next start).
    pub(crate) fn report(&self, txn: &Txn, errors: Vec<anyhow::Error>) {
        txn.step("done");
        for e in errors {
            tracing::warn!("{}: {e:#} (left for reconcile)", txn.op);
        }
    }
}
