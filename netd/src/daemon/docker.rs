//! The Docker network driver plugin's operations (the protocol is in
//! `plugin::docker`).
//!
//! A Docker network is a netd network owned by Docker, with Docker's id,
//! subnet and gateway. A Docker endpoint is a container owned by Docker
//! (with the endpoint's id) holding one endpoint, a veth pair whose host
//! end is on the network's bridge, and the ports Docker asked to publish:
//! every datapath programs it from the state like any container. The
//! calls map onto it as Docker's own bridge driver works:
//!
//! - `CreateEndpoint`: the veth pair, both ends in the host namespace,
//!   with Docker's address and MAC (or netd's choice, returned);
//! - `Join`: records the sandbox; answers the container end's name, the
//!   gateway (none on an internal network: no default route, as for
//!   netd's own containers); Docker moves the end into the sandbox and
//!   configures it;
//! - `ProgramExternalConnectivity` / `RevokeExternalConnectivity`:
//!   publish / unpublish the `-p` bindings through the datapath;
//! - `Leave`: forgets the sandbox (and any published port);
//! - `DeleteEndpoint`: removes the veth pair and the endpoint.
//!
//! Docker forgets endpoints without a call when dockerd is killed: their
//! veths die with the sandboxes, and [`Daemon::docker_gc`] removes such
//! endpoints (on a timer and before a new endpoint or binding), so their
//! addresses and ports are free again. Docker's IPAM is authoritative: a
//! new endpoint given an address that another endpoint here still holds
//! means that one is stale, and it goes. Calls about an unknown endpoint
//! that only remove (`Leave`, `Revoke`, `DeleteEndpoint`,
//! `DeleteNetwork`) succeed: there is nothing left to remove.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use anyhow::Result;
use serde_json::{Map, Value, json};

use super::{Daemon, now, rand_id, txn::Txn};
use crate::{
    api::{self, ApiError, types::NetworkSpec},
    link,
    model::*,
    plugin::docker::{self as proto, EndpointSpec, Ids, Publish},
    sandbox::{PEER_PREFIX, VETH_PREFIX},
    validate,
};

impl Daemon {
    /// The Docker endpoint `ids` names, on its network.
    fn docker_endpoint(&self, ids: &Ids) -> Option<&Container> {
        self.state
            .containers
            .get(&ids.endpoint)
            .filter(
                |c| matches!(&c.owner, Owner::Docker { endpoint, .. } if *endpoint == ids.endpoint),
            )
            .filter(|c| c.endpoints.contains_key(&ids.network))
    }

    fn docker_endpoint_or_err(&self, ids: &Ids) -> Result<&Container> {
        self.docker_endpoint(ids).ok_or_else(|| {
            ApiError::not_found(format!(
                "endpoint {} of network {} not found (netd has no such Docker endpoint)",
                proto::short(&ids.endpoint),
                proto::short(&ids.network)
            ))
            .into()
        })
    }

    pub async fn docker_create_network(&mut self, spec: NetworkSpec) -> Result<Value> {
        let id = spec.id.clone().unwrap_or_default();
        if let Some(n) = self.state.networks.get(&id) {
            // Docker asking again for the network it has (a replay after
            // a restart): nothing to do. Anything else is a conflict.
            let same = n.owner == spec.owner
                && n.subnet() == spec.subnet
                && spec.gateway.is_none_or(|g| Some(g) == n.gateway())
                && n.options == spec.options;
            if same {
                return Ok(json!({}));
            }
            return api::conflict(format!(
                "network {} exists already with another subnet, gateway or options",
                proto::short(&id)
            ));
        }
        self.network_create(spec).await?;
        Ok(json!({}))
    }

    pub async fn docker_delete_network(&mut self, docker_id: &str) -> Result<Value> {
        if !self
            .state
            .networks
            .get(docker_id)
            .is_some_and(|n| n.is_docker(docker_id))
        {
            return Ok(json!({}));
        }
        // Docker removes a network once it has no endpoints: any left
        // here are stale (their DeleteEndpoint never came).
        let stale: Vec<String> = self
            .state
            .containers
            .values()
            .filter(|c| c.endpoints.contains_key(docker_id))
            .map(|c| c.id.clone())
            .collect();
        for id in stale {
            tracing::info!(
                "Docker network {}: removing stale endpoint {}",
                proto::short(docker_id),
                proto::short(&id)
            );
            self.remove_container(&id, "docker-gc").await?;
        }
        self.remove_network(docker_id, "docker-network-rm").await?;
        Ok(json!({}))
    }

    pub async fn docker_create_endpoint(&mut self, spec: EndpointSpec) -> Result<Value> {
        self.docker_gc().await;
        let (nid, eid) = (&spec.ids.network, &spec.ids.endpoint);
        let Some(net) = self
            .state
            .networks
            .get(nid)
            .filter(|n| n.is_docker(nid))
            .cloned()
        else {
            return api::not_found(format!(
                "network {} not found: netd has no such Docker network",
                proto::short(nid)
            ));
        };
        if let Some(c) = self.docker_endpoint(&spec.ids) {
            // Docker asking again: the same answer.
            return Ok(create_answer(c, &net, &spec));
        }
        if self.state.containers.contains_key(eid) {
            return api::conflict(format!("endpoint id {} is in use", proto::short(eid)));
        }
        if let Some((ip, prefix)) = spec.address {
            let Some(subnet) = net.subnet() else {
                return api::bad(format!(
                    "endpoint address {ip}/{prefix}: network {} has no IPv4",
                    proto::short(nid)
                ));
            };
            if prefix != subnet.prefix {
                return api::bad(format!(
                    "endpoint address {ip}/{prefix} does not match the network's subnet {subnet}"
                ));
            }
            validate::host_in("endpoint address", ip, &subnet)
                .map_err(|e| ApiError::bad(format!("{e:#}")))?;
            if Some(ip) == net.gateway() {
                return api::bad(format!("endpoint address {ip} is the network's gateway"));
            }
            // Docker's IPAM gave the address: an endpoint still holding
            // it here (an address Docker gave it too) was forgotten by
            // Docker.
            let stale: Vec<String> = self
                .state
                .containers
                .values()
                .filter(|c| matches!(c.owner, Owner::Docker { .. }))
                .filter(|c| {
                    c.endpoints
                        .get(nid)
                        .is_some_and(|e| e.ip == Some(ip) && e.static_ip)
                })
                .map(|c| c.id.clone())
                .collect();
            for id in stale {
                tracing::warn!(
                    "Docker gave {ip} to endpoint {}: removing stale endpoint {} that held it",
                    proto::short(eid),
                    proto::short(&id)
                );
                self.remove_container(&id, "docker-gc").await?;
            }
        }
        if let Some((ip6, prefix)) = spec.address6 {
            let Some(subnet6) = net.subnet6() else {
                return api::bad(format!(
                    "endpoint IPv6 address {ip6}/{prefix}: network {} has no IPv6 (create it with --ipv6)",
                    proto::short(nid)
                ));
            };
            if prefix != subnet6.prefix_len() || !subnet6.contains(&ip6) {
                return api::bad(format!(
                    "endpoint IPv6 address {ip6}/{prefix} does not match the network's IPv6 subnet {subnet6}"
                ));
            }
            if Some(ip6) == net.gateway6() || ip6 == subnet6.network() {
                return api::bad(format!(
                    "endpoint IPv6 address {ip6} is the network's gateway or anycast address"
                ));
            }
            // As for IPv4: Docker's IPAM gave it, so an endpoint holding
            // it here was forgotten by Docker.
            let stale: Vec<String> = self
                .state
                .containers
                .values()
                .filter(|c| matches!(c.owner, Owner::Docker { .. }))
                .filter(|c| {
                    c.endpoints
                        .get(nid)
                        .is_some_and(|e| e.ip6 == Some(ip6) && e.static_ip6)
                })
                .map(|c| c.id.clone())
                .collect();
            for id in stale {
                tracing::warn!(
                    "Docker gave {ip6} to endpoint {}: removing stale endpoint {} that held it",
                    proto::short(eid),
                    proto::short(&id)
                );
                self.remove_container(&id, "docker-gc").await?;
            }
        }
        let hex = &rand_id()[..9];
        let ep = Endpoint {
            id: eid.clone(),
            network: nid.clone(),
            ip: spec.address.map(|a| a.0),
            mac: [0; 6],
            veth: format!("{VETH_PREFIX}{hex}"),
            ifname: format!("{PEER_PREFIX}{hex}"),
            aliases: vec![],
            static_ip: spec.address.is_some(),
            ip6: spec.address6.map(|a| a.0),
            static_ip6: spec.address6.is_some(),
        };
        let mut name = format!("docker-{}", proto::short(eid));
        if self.state.containers.values().any(|c| c.name == name) {
            name = format!("docker-{eid}");
        }
        let c = Container {
            id: eid.clone(),
            name,
            created: now(),
            hostname: proto::short(eid).to_string(),
            mode: Mode::Bridge,
            status: Status::Exited,
            endpoints: BTreeMap::from([(nid.clone(), ep)]),
            requested_network: Some(nid.clone()),
            requested_ip: spec.address.map(|a| a.0),
            requested_mac: spec.mac,
            exposed: spec.exposed.clone(),
            owner: Owner::Docker {
                endpoint: eid.clone(),
                sandbox: None,
            },
            ..Container::default()
        };
        self.bring_up(c).await?;
        let c = &self.state.containers[eid];
        Ok(create_answer(c, &net, &spec))
    }

    pub async fn docker_join(&mut self, ids: &Ids, sandbox: PathBuf) -> Result<Value> {
        let c = self.docker_endpoint_or_err(ids)?.clone();
        let ep = c
            .primary()
            .expect("a Docker endpoint has one endpoint")
            .clone();
        let net = &self.state.networks[&ids.network];
        let gateway = match net.gateway() {
            Some(g) if !net.options.internal => g.to_string(),
            _ => String::new(),
        };
        // Docker gives the sandbox an IPv6 default route via GatewayIPv6
        // when the endpoint has an IPv6 address.
        let gateway6 = match (net.gateway6(), ep.ip6) {
            (Some(g), Some(_)) if !net.options.internal => g.to_string(),
            _ => String::new(),
        };
        let answer = json!({
            "InterfaceName": { "SrcName": ep.ifname, "DstPrefix": proto::DST_PREFIX },
            "Gateway": gateway,
            "GatewayIPv6": gateway6,
            "StaticRoutes": [],
            "DisableGatewayService": false,
        });
        let known = matches!(&c.owner, Owner::Docker { sandbox: Some(s), .. } if *s == sandbox);
        if !known {
            let mut next = self.state.clone();
            next.containers.get_mut(&c.id).expect("exists").owner = Owner::Docker {
                endpoint: ids.endpoint.clone(),
                sandbox: Some(sandbox),
            };
            self.save(&next)?;
            self.state = next;
        }
        Ok(answer)
    }

    pub async fn docker_leave(&mut self, ids: &Ids) -> Result<Value> {
        let Some(c) = self.docker_endpoint(ids).cloned() else {
            return Ok(json!({}));
        };
        let mut next = self.state.clone();
        let nc = next.containers.get_mut(&c.id).expect("exists");
        nc.owner = Owner::Docker {
            endpoint: ids.endpoint.clone(),
            sandbox: None,
        };
        if c.ports.is_empty() {
            self.save(&next)?;
            self.state = next;
        } else {
            // Out of its sandbox, nothing of it is published.
            nc.ports.clear();
            nc.port_specs.clear();
            let txn = Txn::new("docker-leave");
            let errors = self.commit_removal(next, &txn).await?;
            self.report(&txn, errors);
        }
        Ok(json!({}))
    }

    pub async fn docker_program(&mut self, ids: &Ids, publish: Vec<Publish>) -> Result<Value> {
        self.docker_gc().await;
        let c = self.docker_endpoint_or_err(ids)?.clone();
        let specs: Vec<_> = publish.iter().map(|p| p.spec.clone()).collect();
        if !c.ports.is_empty() && c.port_specs == specs {
            // Docker asking again: published already.
            return Ok(json!({}));
        }
        let net = &self.state.networks[&ids.network];
        let used: Vec<_> = self
            .state
            .containers
            .values()
            .filter(|o| o.status == Status::Running && o.id != c.id)
            .flat_map(|o| o.ports.iter().copied())
            .collect();
        let mut next = self.state.clone();
        let ports = if net.options.gateway_mode == crate::model::GatewayMode::Routed {
            // Routed: the container ports on the container's address.
            crate::ports::routed(&specs, &[], false)?
        } else {
            proto::allocate(
                &publish,
                IpAddr::V4(net.options.host_binding_ipv4),
                &used,
                &mut next.next_ephemeral,
            )?
        };
        let local = self.local_addrs();
        for b in &ports {
            validate::host_binding(b.host_ip, &local)
                .map_err(|e| ApiError::bad(format!("{e:#}")))?;
        }
        if ports == c.ports {
            return Ok(json!({}));
        }
        let nc = next.containers.get_mut(&c.id).expect("exists");
        nc.port_specs = specs;
        nc.ports = ports;
        self.commit(next, Txn::new("docker-program")).await?;
        Ok(json!({}))
    }

    pub async fn docker_revoke(&mut self, ids: &Ids) -> Result<Value> {
        let Some(c) = self.docker_endpoint(ids).cloned() else {
            return Ok(json!({}));
        };
        if c.ports.is_empty() {
            return Ok(json!({}));
        }
        let mut next = self.state.clone();
        let nc = next.containers.get_mut(&c.id).expect("exists");
        nc.ports.clear();
        nc.port_specs.clear();
        let txn = Txn::new("docker-revoke");
        let errors = self.commit_removal(next, &txn).await?;
        self.report(&txn, errors);
        Ok(json!({}))
    }

    pub async fn docker_delete_endpoint(&mut self, ids: &Ids) -> Result<Value> {
        if self.docker_endpoint(ids).is_some() {
            self.remove_container(&ids.endpoint, "docker-endpoint-rm")
                .await?;
        }
        Ok(json!({}))
    }

    /// `EndpointOperInfo`: what netd made of the endpoint (Docker shows
    /// none of it today; empty for an endpoint netd does not know).
    pub fn docker_oper_info(&self, ids: &Ids) -> Value {
        let Some(c) = self.docker_endpoint(ids) else {
            return json!({ "Value": {} });
        };
        let ep = c.primary().expect("a Docker endpoint has one endpoint");
        json!({ "Value": {
            "HostInterface": ep.veth,
            "IPv4Address": ep.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            "MacAddress": link::fmt_mac(ep.mac),
            "PortBindings": c.ports.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        }})
    }

    /// Removes the Docker endpoints whose veth is gone: their sandbox
    /// went away without a `DeleteEndpoint` (dockerd was killed; Docker
    /// then forgets them without telling the plugin).
    pub(crate) async fn docker_gc(&mut self) {
        let gone: Vec<String> = self
            .state
            .containers
            .values()
            .filter(|c| matches!(c.owner, Owner::Docker { .. }))
            .filter(|c| c.endpoints.values().any(|e| link::ifindex(&e.veth) == 0))
            .map(|c| c.id.clone())
            .collect();
        for id in gone {
            tracing::info!(
                "Docker endpoint {} is gone with its sandbox (no DeleteEndpoint came): removing it",
                proto::short(&id)
            );
            if let Err(e) = self.remove_container(&id, "docker-gc").await {
                tracing::warn!(
                    "removing stale Docker endpoint {}: {e:#}",
                    proto::short(&id)
                );
            }
        }
    }

    /// Reconcile: a Docker endpoint whose veth exists keeps it (marked as
    /// this instance's).
    pub(crate) async fn restore_docker_endpoint(&self, c: &Container) -> Result<()> {
        for ep in c.endpoints.values() {
            if let Some(l) = self.nl.link_by_name(&ep.veth).await?
                && !self.sandboxes.is_ours(&l)
            {
                self.nl.set_alias(l.index, &self.sandboxes.marker).await?;
            }
        }
        Ok(())
    }
}

/// The `CreateEndpoint` answer: what netd chose where Docker gave
/// nothing (libnetwork refuses an answer that repeats what it gave).
fn create_answer(c: &Container, net: &Network, spec: &EndpointSpec) -> Value {
    let mut iface = Map::new();
    if let Some(ep) = c.primary() {
        if let (None, Some(ip), Some(subnet)) = (spec.address, ep.ip, net.subnet()) {
            iface.insert("Address".into(), json!(format!("{ip}/{}", subnet.prefix)));
        }
        if let (None, Some(ip6), Some(subnet6)) = (spec.address6, ep.ip6, net.subnet6()) {
            iface.insert(
                "AddressIPv6".into(),
                json!(format!("{ip6}/{}", subnet6.prefix_len())),
            );
        }
        if spec.mac.is_none() {
            iface.insert("MacAddress".into(), json!(link::fmt_mac(ep.mac)));
        }
    }
    json!({ "Interface": iface })
}
