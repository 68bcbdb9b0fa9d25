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

use crate::{fault, netns::NetNs, process::Cgroups, sandbox::Sandboxes};

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
