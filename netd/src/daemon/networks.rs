//! Network operations: create and remove bridge networks.
use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Daemon, now, rand_id,
    txn::{Txn, Undo},
};
use crate::{
    api::{self, types::NetworkSpec},
    ipam::{self, Allocator, Cidr},
    ipam6::Allocator6,
    model::*,
    sandbox::BRIDGE_PREFIX,
    state::Intent,
};

impl Daemon {
    pub async fn network_create(&mut self, spec: NetworkSpec) -> Result<Value> {
        let net = self.plan_network(spec).await?;
        let mut txn = Txn::new("network-create");
        self.begin(Intent {
            op: txn.op.into(),
            links: vec![net.bridge.clone()],
            ..Intent::default()
        })?;
        let mut next = self.state.clone();
        next.networks.insert(net.id.clone(), net.clone());
        if let Err(e) = self.make_bridge(&net, &mut txn).await {
            return Err(self.abort(txn, e).await);
        }
        self.commit(next, txn).await?;
        Ok(json!({ "Id": net.id, "Warning": "" }))
    }

    /// Creates a new network's bridge (a step of `txn`).
    pub(crate) async fn make_bridge(&self, net: &Network, txn: &mut Txn) -> Result<()> {
        txn.step("bridge");
        if self.sandboxes.ensure_bridge(net).await? {
            txn.applied(Undo::Link(net.bridge.clone()));
        }
        Ok(())
    }

    /// A new network from a checked spec: its name, bridge and subnet
    /// checked against the state and the host's routes, its addresses
    /// picked. Touches nothing.
    pub(crate) async fn plan_network(&self, spec: NetworkSpec) -> Result<Network> {
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
        let ipam = if spec.ipv4 {
            Some(self.plan_ipv4(&spec).await?)
        } else {
            None
        };
        let id = spec.id.clone().unwrap_or_else(rand_id);
        if self.state.networks.contains_key(&id) {
            return api::conflict(format!("network {id} already exists"));
        }
        let ipam6 = match &spec.ipv6 {
            None => None,
            Some(v6) => Some(self.plan_ipv6(v6)?),
        };
        Ok(Network {
            id,
            name,
            created: now(),
            bridge,
            ipam,
            options: spec.options,
            raw_options: spec.raw_options,
            default: false,
            owner: spec.owner.clone(),
            ipam6,
        })
    }

    /// A network's IPv4: its subnet (given, or one of the pools) overlapping
    /// no other network's nor a route of the host, its gateway and range.
    async fn plan_ipv4(&self, spec: &NetworkSpec) -> Result<Allocator> {
        let subnets: Vec<Cidr> = self
            .state
            .networks
            .values()
            .filter_map(|n| n.subnet())
            .collect();
        let routes: Vec<Cidr> = self
            .nl
            .route_prefixes()
            .await?
            .into_iter()
            .map(|(a, p)| Cidr::containing(a, p))
            .filter(|r| !subnets.contains(r))
            .collect();
        let subnet = match spec.subnet {
            Some(s) => {
                if let Some((o, os)) = self
                    .state
                    .networks
                    .values()
                    .find_map(|n| n.subnet().filter(|o| o.overlaps(&s)).map(|o| (n, o)))
                {
                    return api::conflict(format!(
                        "subnet {s} overlaps with network {} ({os})",
                        o.name
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
                let mut taken = subnets;
                taken.extend(routes);
                ipam::pick_subnet(&self.cfg.pools, &taken)
                    .map_err(|e| api::ApiError::bad(format!("{e:#}")))?
            }
        };
        let gateway = spec.gateway.unwrap_or_else(|| subnet.first_host());
        Allocator::new(subnet, gateway, spec.ip_range)
            .map_err(|e| api::ApiError::bad(format!("{e:#}")).into())
    }

    /// A network's IPv6: its subnet (given, or a /64 of the IPv6 pools)
    /// overlapping no other network's.
    fn plan_ipv6(&self, v6: &crate::api::types::Ipv6Spec) -> Result<Allocator6> {
        let taken: Vec<ipnet::Ipv6Net> = self
            .state
            .networks
            .values()
            .filter_map(|n| n.subnet6())
            .collect();
        let subnet = match v6.subnet {
            Some(s) => {
                if let Some(o) = self.state.networks.values().find(|n| {
                    n.subnet6()
                        .is_some_and(|t| t.contains(&s) || s.contains(&t))
                }) {
                    return api::conflict(format!(
                        "IPv6 subnet {s} overlaps with network {} ({})",
                        o.name,
                        o.subnet6().expect("has one")
                    ));
                }
                s
            }
            None => {
                let pools = if self.cfg.pools6.is_empty() {
                    vec![crate::ipam6::default_pool(&self.state.instance)]
                } else {
                    self.cfg.pools6.clone()
                };
                crate::ipam6::pick_subnet(&pools, &taken)
                    .map_err(|e| api::ApiError::bad(format!("{e:#}")))?
            }
        };
        Allocator6::new(subnet, v6.gateway).map_err(|e| api::ApiError::bad(format!("{e:#}")).into())
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
        if let NetworkOwner::Docker { plugin, .. } = &net.owner {
            return api::conflict(format!(
                "network {} belongs to Docker (driver {plugin}): remove it with `docker network rm`",
                net.name
            ));
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
        self.remove_network(&id, "network-rm").await?;
        Ok(json!(net.name))
    }

    /// Removes network `id` (no container is attached to it): from the
    /// state first, then its bridge.
    pub(crate) async fn remove_network(&mut self, id: &str, op: &'static str) -> Result<()> {
        let net = self.state.networks[id].clone();
        let txn = Txn::new(op);
        let mut next = self.state.clone();
        next.networks.remove(id);
        let mut errors = self.commit_removal(next, &txn).await?;
        txn.step("bridge");
        if let Err(e) = self.nl.delete_by_name(&net.bridge).await {
            errors.push(e);
        }
        self.report(&txn, errors);
        Ok(())
    }
}
