//! CNI attachments: what the `netd` CNI plugin asks of the daemon.
//!
//! An attachment (CNI ADD of `CNI_CONTAINERID` + `CNI_IFNAME`) is a
//! [`Container`] owned by [`Owner::Cni`], in bridge mode with one
//! endpoint whose container end is `CNI_IFNAME` inside the runtime's
//! namespace `CNI_NETNS`, and the `portMappings` as its published ports:
//! every datapath programs it from the state like any other container.
//! Unlike netd's own containers it has no namespace of netd's (the runtime
//! owns `CNI_NETNS`: netd never creates or deletes it), no files, no
//! cgroup, no processes, and no "exited" state: DEL (or GC, or reconcile
//! once its namespace is gone) removes it from the state.
//!
//! Operations go through [`txn`](super::txn) like every other: ADD records
//! its intent (the veth, and the bridge of a network it creates), applies
//! the steps with their undo, commits; DEL commits the removal first and
//! then deletes the veth.
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{
    Daemon, now, rand_id,
    txn::{Txn, Undo},
};
use crate::{
    api::{
        self, ApiError,
        cni::{CniAddSpec, CniCheck, CniGc, attachment_name},
        types::NetworkCreate,
    },
    datapath::Datapath,
    link::{self, Netlink},
    model::*,
    netns::NetNs,
    state::Intent,
};

/// Refuses netd's container operations on a CNI attachment: its runtime
/// owns it (CNI DEL removes it).
pub(crate) fn refuse(c: &Container, what: &str) -> Result<()> {
    match c.cni() {
        Some((container_id, _, ifname)) => api::conflict(format!(
            "{} is a CNI attachment (container {container_id}, interface {ifname}) that its \
             container runtime manages: {what} is not possible with netd (the runtime's CNI DEL removes it)",
            c.name
        )),
        None => Ok(()),
    }
}

impl Daemon {
    /// The attachment of `container_id`'s interface `ifname`, by netd id.
    fn attachment(&self, container_id: &str, ifname: &str) -> Option<String> {
        self.state
            .containers
            .values()
            .find(|c| {
                c.cni()
                    .is_some_and(|(id, _, i)| id == container_id && i == ifname)
            })
            .map(|c| c.id.clone())
    }

    /// CNI ADD: validates everything, then creates the network when the
    /// config asks for one that does not exist, and the endpoint in the
    /// runtime's namespace, in one transaction.
    pub async fn cni_add(&mut self, spec: CniAddSpec) -> Result<Value> {
        let ns = NetNs::at(&spec.netns);
        if !ns.exists() {
            return api::bad(format!(
                "CNI_NETNS {} is not a network namespace (or the daemon cannot see it)",
                spec.netns.display()
            ));
        }
        if [HOST_NETWORK, NONE_NETWORK].contains(&spec.network.as_str()) {
            return api::bad(format!(
                "network {:?} is not a bridge network: CNI attachments need a bridge network",
                spec.network
            ));
        }
        let existing = self.attachment(&spec.container_id, &spec.ifname);
        if let Some(old) = &existing {
            let (_, old_ns, _) = self.state.containers[old].cni().expect("attachment");
            if NetNs::at(old_ns).exists() {
                return api::conflict(format!(
                    "container {} already has interface {} (attachment {}): DEL it before adding it again",
                    spec.container_id,
                    spec.ifname,
                    attachment_name(&spec.container_id, &spec.ifname)
                ));
            }
        }
        let cn = Netlink::in_ns(&ns)?;
        if cn.link_by_name(&spec.ifname).await?.is_some() {
            return api::conflict(format!(
                "interface {} already exists in {}: CNI_IFNAME must be free",
                spec.ifname,
                spec.netns.display()
            ));
        }
        // The network: an existing one must match the config's subnet and
        // gateway; a missing one is created with them.
        let found = self
            .state
            .networks
            .values()
            .find(|n| n.name == spec.network)
            .cloned();
        let (net, new_net) = match found {
            Some(n) => {
                // IPv4 as the config has it: "ipv4": false for an
                // IPv6-only network, a subnet or gateway only for one with
                // IPv4 (a config that names neither takes either).
                let show = |c: Option<String>| c.unwrap_or_else(|| "none (IPv6-only)".into());
                if !spec.ipv4 && n.enable_ipv4() {
                    return api::bad(format!(
                        "network {} exists with IPv4 (subnet {}), but the config has \"ipv4\": false",
                        n.name,
                        show(n.subnet().map(|s| s.to_string()))
                    ));
                }
                if let Some(s) = spec.subnet
                    && Some(s) != n.subnet()
                {
                    return api::bad(format!(
                        "network {} exists with subnet {}, not the config's subnet {s}",
                        n.name,
                        show(n.subnet().map(|s| s.to_string()))
                    ));
                }
                if let Some(g) = spec.gateway
                    && Some(g) != n.gateway()
                {
                    return api::bad(format!(
                        "network {} exists with gateway {}, not the config's gateway {g}",
                        n.name,
                        show(n.gateway().map(|g| g.to_string()))
                    ));
                }
                match (n.subnet6(), spec.ipv6) {
                    (None, true) => {
                        return api::bad(format!(
                            "network {} exists without IPv6, but the config asks for IPv6",
                            n.name
                        ));
                    }
                    (Some(have), _) if spec.subnet6.is_some_and(|s| s != have) => {
                        return api::bad(format!(
                            "network {} exists with IPv6 subnet {have}, not the config's subnet6 {}",
                            n.name,
                            spec.subnet6.expect("checked")
                        ));
                    }
                    _ => {}
                }
                if let Some(g) = spec.gateway6
                    && Some(g) != n.gateway6()
                {
                    return api::bad(format!(
                        "network {} exists with IPv6 gateway {}, not the config's gateway6 {g}",
                        n.name,
                        n.gateway6().map(|g| g.to_string()).unwrap_or_default()
                    ));
                }
                (n, false)
            }
            None => {
                // IPv4 needs a subnet; an IPv6-only network takes its
                // IPv6 subnet from subnet6 or the pool.
                if spec.ipv4 && spec.subnet.is_none() {
                    return api::bad(format!(
                        "network {} does not exist: create it (netd network create {}) or give \
                         \"subnet\" in the CNI network config",
                        spec.network, spec.network
                    ));
                }
                let mut ns_spec = NetworkCreate {
                    name: spec.network.clone(),
                    subnet: spec.subnet.map(|s| s.to_string()),
                    gateway: spec.gateway.map(|g| g.to_string()),
                    enable_ipv4: Some(spec.ipv4),
                    enable_ipv6: spec.ipv6,
                    subnet6: spec.subnet6.map(|s| s.to_string()),
                    gateway6: spec.gateway6.map(|g| g.to_string()),
                    ..NetworkCreate::default()
                }
                .validate(self.cfg.mtu)?;
                ns_spec.owner = NetworkOwner::Cni {
                    config: spec.config.clone(),
                };
                let n = self.plan_network(ns_spec).await.map_err(|e| {
                    // The subnet overlaps: the config is wrong for this host.
                    match e.downcast::<ApiError>() {
                        Ok(a) => ApiError::bad(a.message).into(),
                        Err(e) => e,
                    }
                })?;
                (n, true)
            }
        };
        if let Some((ip, prefix)) = spec.ip {
            let Some(subnet) = net.subnet() else {
                return api::bad(format!(
                    "runtimeConfig.ips address {ip}: network {} is IPv6-only",
                    net.name
                ));
            };
            crate::validate::host_in("runtimeConfig.ips address", ip, &subnet)
                .map_err(|e| ApiError::bad(format!("{e:#} of network {}", net.name)))?;
            if let Some(p) = prefix
                && p != subnet.prefix
            {
                return api::bad(format!(
                    "runtimeConfig.ips address {ip}/{p}: network {} is a /{}",
                    net.name, subnet.prefix
                ));
            }
        }
        if let Some((ip6, prefix)) = spec.ip6 {
            // A dual-stack network here (the spec refuses an IPv6
            // address without "ipv6", and the network was checked).
            let subnet6 = net.subnet6().context("checked: the network has IPv6")?;
            if !subnet6.contains(&ip6)
                || ip6 == subnet6.network()
                || Some(ip6) == net.gateway6()
                || prefix.is_some_and(|p| p != subnet6.prefix_len())
            {
                return api::bad(format!(
                    "runtimeConfig.ips address {ip6}{}: not a host address of network {}'s IPv6 subnet {subnet6} (or its gateway)",
                    prefix.map(|p| format!("/{p}")).unwrap_or_default(),
                    net.name
                ));
            }
        }
        let id = rand_id();
        let mut ep = super::containers::new_endpoint(
            &net.id,
            spec.ip.map(|(ip, _)| ip),
            spec.ip6.map(|(ip, _)| ip),
            0,
        );
        ep.ifname = spec.ifname.clone();
        let mut c = Container {
            id: id.clone(),
            name: attachment_name(&spec.container_id, &spec.ifname),
            created: now(),
            hostname: spec.hostname.clone(),
            mode: Mode::Bridge,
            status: Status::Running,
            endpoints: [(net.id.clone(), ep)].into(),
            requested_network: Some(net.id.clone()),
            requested_ip: spec.ip.map(|(ip, _)| ip),
            requested_mac: spec.mac,
            exposed: spec
                .ports
                .iter()
                .map(|p| (p.container_ports, p.proto))
                .collect(),
            port_specs: spec.ports.clone(),
            owner: Owner::Cni {
                container_id: spec.container_id.clone(),
                netns: spec.netns.clone(),
                ifname: spec.ifname.clone(),
            },
            ..Container::default()
        };
        let mut next = self.state.clone();
        if let Some(old) = &existing {
            // Its namespace is gone (checked above): what it held is free.
            next = super::containers::exited(&next, old, None);
            next.containers.remove(old);
        }
        if new_net {
            next.networks.insert(net.id.clone(), net.clone());
        }
        // Addresses and host ports, checked against everything else.
        self.assign_addresses(&mut c, &mut next)?;
        next.containers.insert(id.clone(), c.clone());
        let ep = c.endpoints[&net.id].clone();
        let mut links = vec![ep.veth.clone()];
        if new_net {
            links.push(net.bridge.clone());
        }
        let mut txn = Txn::new("cni-add");
        self.begin(Intent {
            op: txn.op.into(),
            links,
            ..Intent::default()
        })?;
        let stale = existing.map(|old| self.state.containers[&old].clone());
        let r = async {
            if new_net {
                self.make_bridge(&net, &mut txn).await?;
            }
            // The first network in the namespace gets the default route;
            // a namespace that has one (another network's) keeps it.
            let default_route = !net.options.internal && !has_default_route(&cn).await?;
            txn.step("endpoint");
            txn.applied(Undo::Link(ep.veth.clone()));
            self.sandboxes
                .wire_endpoint(&ns, &ep, &net, default_route)
                .await?;
            Ok::<_, anyhow::Error>(default_route)
        }
        .await;
        let default_route = match r {
            Ok(d) => d,
            Err(e) => return Err(self.abort(txn, e).await),
        };
        self.commit(next, txn).await?;
        if let Some(old) = stale {
            // Its namespace is gone, and its veth with it; whatever is
            // left goes now (else at the next reconcile).
            for e in self.sandboxes.teardown(&old).await {
                tracing::warn!("cni: removing the stale attachment {}: {e:#}", old.name);
            }
        }
        tracing::info!(
            "cni: attached container {} interface {} to network {} ({})",
            spec.container_id,
            spec.ifname,
            net.name,
            ep.addrs()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let host_mac = link::link_mac(&ep.veth)
            .map(link::fmt_mac)
            .unwrap_or_default();
        let gw = net.gateway().map(|g| g.to_string());
        let gw6 = net.gateway6().map(|g| g.to_string());
        let mut routes = vec![];
        if default_route {
            if let (Some(_), Some(g)) = (ep.ip, &gw) {
                routes.push(json!({ "Dst": "0.0.0.0/0", "Gw": g }));
            }
            if let (Some(_), Some(g6)) = (ep.ip6, &gw6) {
                routes.push(json!({ "Dst": "::/0", "Gw": g6 }));
            }
        }
        // The network's embedded DNS server (user-defined networks).
        let dns = match net.dns_address() {
            Some(a) if !net.default => json!({ "Nameservers": [a.to_string()] }),
            _ => json!({}),
        };
        Ok(json!({
            "Id": id,
            "Name": c.name,
            "Network": net.name,
            "Bridge": { "Name": net.bridge, "Mac": link::fmt_mac(link::mac_for_endpoint(net.gateway(), net.gateway6())) },
            "HostInterface": { "Name": ep.veth, "Mac": host_mac, "Mtu": net.options.mtu },
            "Interface": {
                "Name": ep.ifname,
                "Mac": link::fmt_mac(ep.mac),
                "Mtu": net.options.mtu,
                "Sandbox": spec.netns,
            },
            "Address": match (ep.ip, net.subnet()) {
                (Some(ip), Some(s)) => json!(format!("{ip}/{}", s.prefix)),
                _ => Value::Null,
            },
            "Gateway": gw,
            "Address6": match (ep.ip6, net.subnet6()) {
                (Some(a), Some(s)) => json!(format!("{a}/{}", s.prefix_len())),
                _ => Value::Null,
            },
            "Gateway6": gw6,
            "Routes": routes,
            "Dns": dns,
            "Ports": c.ports.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        }))
    }

    /// CNI DEL: removes the attachment if there is one (DEL is
    /// idempotent: an unknown attachment, a gone namespace, an attachment
    /// already released are all fine).
    pub async fn cni_del(&mut self, container_id: &str, ifname: &str) -> Result<Value> {
        let Some(id) = self.attachment(container_id, ifname) else {
            return Ok(json!({ "Released": [] }));
        };
        let name = self.state.containers[&id].name.clone();
        self.cni_release(&id, "cni-del").await?;
        Ok(json!({ "Released": [name] }))
    }

    /// Removes an attachment: the state first (its address and ports
    /// free, the datapath synced), then its veth (the container end goes
    /// with it). The runtime's namespace stays.
    pub(crate) async fn cni_release(&mut self, id: &str, op: &'static str) -> Result<()> {
        let c = self.state.containers[id].clone();
        let txn = Txn::new(op);
        let mut next = super::containers::exited(&self.state, id, None);
        next.containers.remove(id);
        let mut errors = self.commit_removal(next, &txn).await?;
        txn.step("endpoint");
        errors.extend(self.sandboxes.teardown(&c).await);
        tracing::info!("cni: released {} ({op})", c.name);
        self.report(&txn, errors);
        Ok(())
    }

    /// CNI GC: releases every attachment of `network` that the runtime
    /// does not list as valid.
    pub async fn cni_gc(&mut self, gc: CniGc) -> Result<Value> {
        let Some(nid) = self
            .state
            .networks
            .values()
            .find(|n| n.name == gc.network)
            .map(|n| n.id.clone())
        else {
            return Ok(json!({ "Released": [] }));
        };
        let valid: std::collections::BTreeSet<(&str, &str)> = gc
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let stale: Vec<(String, String)> = self
            .state
            .containers
            .values()
            .filter(|c| c.endpoints.contains_key(&nid))
            .filter_map(|c| {
                let (cid, _, ifname) = c.cni()?;
                (!valid.contains(&(cid, ifname))).then(|| (c.id.clone(), c.name.clone()))
            })
            .collect();
        let mut released = Vec::new();
        for (id, name) in stale {
            self.cni_release(&id, "cni-gc").await?;
            released.push(name);
        }
        Ok(json!({ "Released": released }))
    }

    /// CNI STATUS: the daemon answers, its datapath is initialised (the
    /// daemon serves nothing before), and it can take attachments.
    pub fn cni_status(&self) -> Value {
        json!({ "Ready": true, "Datapath": self.dp.name() })
    }

    /// CNI CHECK: compares the attachment in the state, the kernel
    /// (inside the runtime's namespace and on the host) and what the
    /// previous result says. Answers with the problems found (none: the
    /// attachment is healthy); changes nothing.
    pub async fn cni_check(&self, chk: CniCheck) -> Result<Value> {
        let mut problems: Vec<String> = Vec::new();
        let Some(id) = self.attachment(&chk.container_id, &chk.if_name) else {
            problems.push(format!(
                "netd has no attachment of container {} interface {} (DEL released it, or ADD never succeeded)",
                chk.container_id, chk.if_name
            ));
            return Ok(json!({ "Problems": problems }));
        };
        let c = &self.state.containers[&id];
        let (_, netns, _) = c.cni().expect("attachment");
        if netns != Path::new(&chk.netns) {
            problems.push(format!(
                "the attachment is in namespace {}, not CNI_NETNS {}",
                netns.display(),
                chk.netns
            ));
        }
        let Some(ep) = c.endpoints.values().next() else {
            problems.push("the attachment has no endpoint".into());
            return Ok(json!({ "Problems": problems }));
        };
        let Some(net) = self.state.networks.get(&ep.network) else {
            problems.push("the attachment's network is gone".into());
            return Ok(json!({ "Problems": problems }));
        };
        if net.name != chk.network {
            problems.push(format!(
                "the attachment is on network {}, not {}",
                net.name, chk.network
            ));
        }
        // IPv4: the address the previous result must list (an IPv6-only
        // attachment's is its IPv6 one).
        let want_addr = match (ep.ip, net.subnet()) {
            (Some(ip), Some(s)) => Some(format!("{ip}/{}", s.prefix)),
            _ => None,
        };
        let want_addr6 = match (ep.ip6, net.subnet6()) {
            (Some(a), Some(s)) => Some(format!("{a}/{}", s.prefix_len())),
            _ => None,
        };
        if let Some(want) = want_addr.as_ref().or(want_addr6.as_ref())
            && !chk.addresses.contains(want)
        {
            problems.push(format!(
                "prevResult does not list the attachment's address {want} on {} (it lists {:?})",
                chk.if_name, chk.addresses
            ));
        }
        if !chk.host_interfaces.is_empty() && !chk.host_interfaces.contains(&ep.veth) {
            problems.push(format!(
                "prevResult does not list the host interface {}",
                ep.veth
            ));
        }
        // The host side: the veth on the network's bridge, up.
        let host = self.nl.link_by_name(&ep.veth).await?;
        let bridge = self.nl.link_by_name(&net.bridge).await?;
        match (&host, &bridge) {
            (None, _) => problems.push(format!("host interface {} is missing", ep.veth)),
            (Some(_), None) => problems.push(format!("bridge {} is missing", net.bridge)),
            (Some(h), Some(b)) => {
                if h.master != Some(b.index) {
                    problems.push(format!("{} is not a port of bridge {}", ep.veth, b.name));
                }
                if !h.up {
                    problems.push(format!("host interface {} is down", ep.veth));
                }
            }
        }
        // Inside the namespace: the interface, its address and routes.
        let ns = NetNs::at(netns);
        if !ns.exists() {
            problems.push(format!("namespace {} is gone", netns.display()));
            return Ok(json!({ "Problems": problems }));
        }
        let cn = Netlink::in_ns(&ns)?;
        let Some(l) = cn.link_by_name(&chk.if_name).await? else {
            problems.push(format!(
                "interface {} is missing in {}",
                chk.if_name,
                netns.display()
            ));
            return Ok(json!({ "Problems": problems }));
        };
        if !l.up {
            problems.push(format!("interface {} is down", chk.if_name));
        }
        if let Some(h) = &host
            && l.peer != Some(h.index)
        {
            problems.push(format!(
                "interface {} is not the peer of host interface {}",
                chk.if_name, ep.veth
            ));
        }
        let mac = l.mac.map(link::fmt_mac).unwrap_or_default();
        // prevResult's MAC wins (a tuning plugin after netd may change it).
        let want_mac = chk.mac.clone().unwrap_or_else(|| link::fmt_mac(ep.mac));
        if !mac.eq_ignore_ascii_case(&want_mac) {
            problems.push(format!(
                "interface {} has MAC {mac}, expected {want_mac}",
                chk.if_name
            ));
        }
        let addrs = cn.addrs(Some(l.index)).await?;
        let mut have: Vec<String> = addrs.iter().map(|(_, a, p)| format!("{a}/{p}")).collect();
        if want_addr6.is_some() {
            let addrs6 = cn.addrs6(Some(l.index)).await?;
            have.extend(addrs6.iter().map(|(_, a, p)| format!("{a}/{p}")));
        }
        for a in chk
            .addresses
            .iter()
            .chain(want_addr.iter())
            .chain(want_addr6.iter())
        {
            if !have.contains(a) {
                problems.push(format!(
                    "interface {} does not have address {a} (it has {have:?})",
                    chk.if_name
                ));
            }
        }
        let routes = cn.routes().await?;
        for r in &chk.routes {
            let Ok(dst) = r.dst.parse::<crate::ipam::Cidr>() else {
                problems.push(format!("prevResult route {:?} is not an IPv4 CIDR", r.dst));
                continue;
            };
            let gw = match r.gw.as_deref().map(str::parse::<std::net::Ipv4Addr>) {
                Some(Ok(g)) => Some(g),
                Some(Err(_)) => {
                    problems.push(format!("prevResult route gateway {:?} is invalid", r.gw));
                    continue;
                }
                None => None,
            };
            let found = routes.iter().any(|k| {
                k.dst == dst.network()
                    && k.prefix == dst.prefix
                    && (gw.is_none() || k.gateway == gw)
            });
            if !found {
                problems.push(format!(
                    "route {}{} is missing in {}",
                    r.dst,
                    gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                    netns.display()
                ));
            }
        }
        // The datapath programs what the state says: the attachment is
        // in it, running, with its endpoint on the network.
        if c.status != Status::Running {
            problems.push("the attachment is not running in the daemon's state".into());
        }
        if link::ifindex(&ep.veth) == 0 {
            problems.push(format!(
                "the datapath cannot find host interface {}",
                ep.veth
            ));
        }
        Ok(json!({ "Problems": problems, "Datapath": self.dp.name() }))
    }

    /// Reconcile: releases the CNI attachments whose namespace (the
    /// runtime's) is gone, or all of them after a reboot. Their veths
    /// died with the namespace; links left over are removed with the
    /// other unknown links.
    pub(crate) fn release_gone_attachments(&mut self, rebooted: bool) {
        let gone: Vec<(String, String)> = self
            .state
            .containers
            .values()
            .filter_map(|c| {
                let (_, netns, _) = c.cni()?;
                (rebooted || !NetNs::at(netns).exists()).then(|| (c.id.clone(), c.name.clone()))
            })
            .collect();
        for (id, name) in gone {
            tracing::info!(
                "reconcile: releasing CNI attachment {name}: {}",
                if rebooted {
                    "the host rebooted"
                } else {
                    "its network namespace is gone"
                }
            );
            self.state = super::containers::exited(&self.state, &id, None);
            self.state.containers.remove(&id);
        }
    }
}

/// Whether a namespace has an IPv4 default route.
async fn has_default_route(nl: &Netlink) -> Result<bool> {
    Ok(nl.routes().await?.iter().any(|r| r.prefix == 0))
}
