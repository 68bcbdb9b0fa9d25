//! Network operations: create and remove bridge networks.
use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Daemon, blocking, now, rand_id,
    txn::{Txn, Undo, combine},
};
use crate::{
    api::{self, types::NetworkSpec},
    datapath::Datapath,
    ipam::{self, Allocator, Cidr},
    model::*,
    sandbox::BRIDGE_PREFIX,
};

impl Daemon {
    pub async fn network_create(&mut self, spec: NetworkSpec) -> Result<Value> {
        let name = spec.name.clone();
        if [HOST_NETWORK, NONE_NETWORK].contains(&name.as_str())
            || self.state.networks.values().any(|n| n.name == name)
        {
            return api::conflict(format!("network with name {name} already exists"));
        }
        let bridge = spec
            .bridge
            .clone()
            .unwrap_or_else(|| format!("{BRIDGE_PREFIX}{}", &rand_id()[..10]));
        if self.state.networks.values().any(|n| n.bridge == bridge)
            || self.nl.link_by_name(&bridge).await?.is_some()
        {
            return api::conflict(format!("bridge {bridge} already exists"));
        }
        let routes: Vec<Cidr> = self
            .nl
            .route_prefixes()
            .await?
            .into_iter()
            .map(|(a, p)| Cidr::containing(a, p))
            .filter(|r| !self.state.networks.values().any(|n| n.subnet() == *r))
            .collect();
        let subnet = match spec.subnet {
            Some(s) => {
                if let Some(o) = self
                    .state
                    .networks
                    .values()
                    .find(|n| n.subnet().overlaps(&s))
                {
                    return api::conflict(format!(
                        "subnet {s} overlaps with network {} ({})",
                        o.name,
                        o.subnet()
                    ));
                }
                if let Some(r) = routes.iter().find(|r| r.overlaps(&s)) {
                    return api::conflict(format!(
                        "subnet {s} overlaps with a route of the host ({r})"
                    ));
                }
                s
            }
            None => {
                let mut taken: Vec<Cidr> =
                    self.state.networks.values().map(|n| n.subnet()).collect();
                taken.extend(routes);
                ipam::pick_subnet(&self.cfg.pools, &taken)
                    .map_err(|e| api::ApiError::bad(format!("{e:#}")))?
            }
        };
        let gateway = spec.gateway.unwrap_or_else(|| subnet.first_host());
        let ipam = Allocator::new(subnet, gateway, spec.ip_range)
            .map_err(|e| api::ApiError::bad(format!("{e:#}")))?;
        let net = Network {
            id: rand_id(),
            name,
            created: now(),
            bridge,
            ipam,
            options: spec.options,
            raw_options: spec.raw_options,
            default: false,
        };
        let mut txn = Txn::new("network-create");
        let mut next = self.state.clone();
        next.networks.insert(net.id.clone(), net.clone());
        txn.step("bridge");
        let made = self.sandboxes.ensure_bridge(&net).await;
        match made {
            Ok(true) => txn.applied(Undo::Link(net.bridge.clone())),
            Ok(false) => {}
            Err(e) => {
                let undo = txn.rollback(&self.sandboxes, &self.cgroups).await;
                return Err(combine(e, undo));
            }
        }
        self.commit(next, txn).await?;
        Ok(json!({ "Id": net.id, "Warning": "" }))
    }

    pub async fn network_rm(&mut self, name: &str) -> Result<Value> {
        if [HOST_NETWORK, NONE_NETWORK].contains(&name) {
            return api::bad(format!(
                "{name} is a pre-defined network and cannot be removed"
            ));
        }
        let id = self.network_id(name)?;
        let net = self.state.networks[&id].clone();
        if net.default {
            return api::bad("bridge is a pre-defined network and cannot be removed");
        }
        let users: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.endpoints.contains_key(&id))
            .map(|c| c.name.as_str())
            .collect();
        if !users.is_empty() {
            return api::conflict(format!(
                "error while removing network: network {} has active endpoints ({})",
                net.name,
                users.join(", ")
            ));
        }
        let txn = Txn::new("network-rm");
        let mut next = self.state.clone();
        next.networks.remove(&id);
        let mut errors = self.commit_removal(next, &txn).await?;
        txn.step("bridge");
        if let Err(e) = self.nl.delete_by_name(&net.bridge).await {
            errors.push(e);
        }
        self.report(&txn, errors);
        Ok(json!(net.name))
    }

    /// Applies a creating operation: syncs the datapath with `next`, saves
    /// it and swaps it in; on failure undoes `txn` and restores the
    /// datapath to the current state.
    pub(crate) async fn commit(&mut self, next: crate::state::State, txn: Txn) -> Result<()> {
        txn.step("datapath");
        let mut r = blocking(|| self.dp.sync(&next));
        if r.is_ok() {
            txn.step("save");
            r = self.save(&next);
        }
        if let Err(e) = r {
            let mut undo = txn.rollback(&self.sandboxes, &self.cgroups).await;
            let state = self.state.clone();
            if let Err(e2) = blocking(|| self.dp.sync(&state)) {
                undo.push(e2);
            }
            return Err(combine(e, undo));
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
        next: crate::state::State,
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
