//! The other nodes of a cluster: a route to each node's pod range via its
//! address, so that pods talk to pods by address, without NAT.
//!
//! A node is saved before its route is added (reconcile adds the routes
//! of every saved node) and removed from the state before its route is
//! deleted (reconcile deletes netd's routes, marked with their protocol,
//! that no node names), so a crash at any point converges.
use std::net::Ipv4Addr;

use anyhow::Result;
use serde_json::{Value, json};

use super::Daemon;
use crate::{
    api::{self, types::NodeSpec},
    link::OwnRoute,
    model::{GatewayMode, Node},
};

impl Daemon {
    pub async fn node_add(&mut self, spec: NodeSpec) -> Result<Value> {
        if self.state.nodes.contains_key(&spec.name) {
            return api::conflict(format!("node {} exists already", spec.name));
        }
        if let Some(o) = self
            .state
            .nodes
            .values()
            .find(|o| o.pod_cidr.overlaps(&spec.pod_cidr))
        {
            return api::conflict(format!(
                "pod CIDR {} overlaps node {}'s ({})",
                spec.pod_cidr, o.name, o.pod_cidr
            ));
        }
        if let Some((n, subnet)) = self.state.networks.values().find_map(|n| {
            n.subnet()
                .filter(|s| s.overlaps(&spec.pod_cidr))
                .map(|s| (n, s))
        }) {
            return api::conflict(format!(
                "pod CIDR {} overlaps the local network {} ({subnet})",
                spec.pod_cidr, n.name,
            ));
        }
        if let Some(n) = self
            .state
            .networks
            .values()
            .find(|n| n.subnet().is_some_and(|s| s.contains(spec.address)))
        {
            return api::bad(format!(
                "node address {} is inside the local network {}",
                spec.address, n.name
            ));
        }
        let node = Node {
            name: spec.name,
            pod_cidr: spec.pod_cidr,
            address: spec.address,
        };
        let mut next = self.state.clone();
        next.nodes.insert(node.name.clone(), node.clone());
        let txn = super::txn::Txn::new("node-add");
        txn.step("save");
        self.save(&next)?;
        txn.step("route");
        if let Err(e) = self.route_to(&node).await {
            // Not reachable that way: the node goes again.
            self.save(&self.state)?;
            return Err(api::ApiError::bad(format!("{e:#}")).into());
        }
        self.state = next;
        let state = self.state.clone();
        super::blocking(|| crate::datapath::Datapath::sync(&mut self.dp, &state))?;
        Ok(json!({ "Name": node.name }))
    }

    pub async fn node_rm(&mut self, name: &str) -> Result<Value> {
        let Some(node) = self.state.nodes.get(name).cloned() else {
            return api::not_found(format!("no such node: {name}"));
        };
        let txn = super::txn::Txn::new("node-rm");
        let mut next = self.state.clone();
        next.nodes.remove(name);
        let mut errors = self.commit_removal(next, &txn).await?;
        txn.step("route");
        if let Err(e) = self
            .nl
            .delete_route(node.pod_cidr.addr, node.pod_cidr.prefix, node.address)
            .await
        {
            errors.push(e);
        }
        self.report(&txn, errors);
        Ok(json!(name))
    }

    pub fn node_list(&self) -> Value {
        Value::Array(
            self.state
                .nodes
                .values()
                .map(|n| {
                    json!({
                        "Name": n.name,
                        "PodCidr": n.pod_cidr.to_string(),
                        "Address": n.address.to_string(),
                    })
                })
                .collect(),
        )
    }

    async fn route_to(&self, n: &Node) -> Result<()> {
        self.nl
            .replace_route(
                n.pod_cidr.addr,
                n.pod_cidr.prefix,
                n.address,
                self.node_route_source(),
            )
            .await
    }

    /// The source address this host gives its own traffic to other
    /// nodes' pods: the gateway of its (first) pod network, an address
    /// inside the cluster CIDR, as flannel gives its own. The other nodes
    /// take it as the cluster's (no masquerade, past their protection) and
    /// their pods' replies come back here: host-network processes (an API
    /// server calling a webhook, a NodePort forwarded by kube-proxy) reach
    /// pods on every node. None without a pod network with a host address.
    fn node_route_source(&self) -> Option<Ipv4Addr> {
        let cluster = self.cfg.cluster_cidr;
        self.state
            .networks
            .values()
            .filter(|n| n.wire(cluster).cluster && n.options.gateway_mode != GatewayMode::Isolated)
            .filter_map(|n| n.subnet().zip(n.gateway()))
            .min()
            .map(|(_, gw)| gw)
    }

    /// Routes for every node (with the source address of the moment: a
    /// pod network created or removed since changes it); netd's routes
    /// that no node names go. Called at start and every few seconds.
    pub(crate) async fn reconcile_routes(&self) -> Result<()> {
        let have = self.nl.own_routes().await?;
        let src = self.node_route_source();
        for n in self.state.nodes.values() {
            let want = OwnRoute {
                dst: n.pod_cidr.addr,
                prefix: n.pod_cidr.prefix,
                gateway: n.address,
                src,
            };
            if have.contains(&want) {
                continue;
            }
            if let Err(e) = self.route_to(n).await {
                tracing::warn!("node {}: {e:#}", n.name);
            }
        }
        let want: Vec<(Ipv4Addr, u8, Ipv4Addr)> = self
            .state
            .nodes
            .values()
            .map(|n| (n.pod_cidr.addr, n.pod_cidr.prefix, n.address))
            .collect();
        for r in have {
            if !want.contains(&(r.dst, r.prefix, r.gateway)) {
                tracing::info!(
                    "reconcile: removing the stale route {}/{} via {}",
                    r.dst,
                    r.prefix,
                    r.gateway
                );
                self.nl.delete_route(r.dst, r.prefix, r.gateway).await?;
            }
        }
        Ok(())
    }
}
