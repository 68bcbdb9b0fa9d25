//! Container operations: create, start (the sandbox, then the main
//! process), stop, rm, connect, disconnect, exec, kill, wait, and what
//! happens when a main process exits.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Daemon, blocking, now, rand_id,
    txn::{Txn, Undo},
};
use crate::{
    api::{
        self, ApiError,
        types::{ConnectSpec, ContainerSpec, Exec},
    },
    dns,
    link::{self, Netlink},
    model::*,
    netns::NetNs,
    ports,
    process::{self, Launch, ProcId},
    sandbox::VETH_PREFIX,
    state::{Intent, State},
    validate,
};

/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// The exit code of a main process that ended while the daemon was down
/// (the daemon cannot know it).
pub const EXIT_UNKNOWN: i32 = 255;

pub(crate) fn new_endpoint(
    network: &str,
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
    index: usize,
) -> Endpoint {
    let id = rand_id();
    Endpoint {
        veth: format!("{VETH_PREFIX}{}", &id[..9]),
        id,
        network: network.to_string(),
        ip,
        mac: [0; 6],
        ifname: format!("eth{index}"),
        aliases: vec![],
        static_ip: ip.is_some(),
        ip6,
        static_ip6: ip6.is_some(),
    }
}

impl Daemon {
    pub async fn container_create(&mut self, spec: ContainerSpec) -> Result<Value> {
        let id = rand_id();
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("netd_{}", &id[..8]));
        if self.state.containers.values().any(|c| c.name == name) {
            return api::conflict(format!("the container name {name:?} is already in use"));
        }
        let publishing = !spec.publish.is_empty() || spec.publish_all;
        let mut warnings = Vec::new();
        let mut publish = spec.publish.clone();
        let mode = if spec.network == HOST_NETWORK {
            if publishing {
                warnings
                    .push("Published ports are discarded when using host network mode".to_string());
                publish.clear();
            }
            Mode::Host
        } else if spec.network == NONE_NETWORK {
            if publishing {
                return api::bad("Conflicting options: port publishing and the none network mode");
            }
            Mode::None
        } else if let Some(target) = spec.network.strip_prefix("container:") {
            if publishing {
                return api::bad(
                    "Conflicting options: port publishing and the container type network mode",
                );
            }
            let tid = self.netd_container_id(target)?;
            if self.state.containers[&tid].status != Status::Running {
                return api::conflict(format!(
                    "cannot join the network of container {target}: it is not running"
                ));
            }
            Mode::Container(tid)
        } else {
            Mode::Bridge
        };
        if (spec.ip.is_some() || spec.ip6.is_some() || spec.mac.is_some()) && mode != Mode::Bridge {
            return api::bad("--ip, --ip6 and --mac-address need a bridge network");
        }
        let network = match mode {
            Mode::Bridge => Some(self.network_id(&spec.network)?),
            _ => None,
        };
        if let Some(n) = &network {
            self.refuse_foreign_network(n)?;
        }
        if let (Some(ip6), Some(net)) = (spec.ip6, &network) {
            let n = &self.state.networks[net];
            match n.subnet6() {
                None => {
                    return api::bad(format!(
                        "--ip6 needs a network with IPv6: {} has none (create it with --ipv6)",
                        n.name
                    ));
                }
                Some(s) if !s.contains(&ip6) => {
                    return api::bad(format!(
                        "--ip6 {ip6} is outside the subnet {s} of network {}",
                        n.name
                    ));
                }
                Some(_) => {}
            }
        }
        if let (Some(ip), Some(net)) = (spec.ip, &network) {
            check_ip(ip, &self.state.networks[net])?;
        }
        if !spec.aliases.is_empty()
            && network
                .as_ref()
                .is_none_or(|n| self.state.networks[n].default)
        {
            return api::bad(
                "network-scoped aliases are supported only for containers on user-defined networks",
            );
        }
        let dns = self.dns_settings(&spec, &mode, network.as_deref())?;
        let mut endpoints = BTreeMap::new();
        if let Some(nid) = &network {
            let mut ep = new_endpoint(nid, spec.ip, spec.ip6, 0);
            ep.aliases = spec.aliases.clone();
            endpoints.insert(nid.clone(), ep);
        }
        let c = Container {
            id: id.clone(),
            name,
            created: now(),
            hostname: spec
                .hostname
                .clone()
                .unwrap_or_else(|| id[..12].to_string()),
            mode,
            status: Status::Exited,
            endpoints,
            requested_network: network,
            requested_ip: spec.ip,
            requested_mac: spec.mac,
            port_specs: publish,
            publish_all: spec.publish_all,
            exposed: spec.exposed.clone(),
            ports: vec![],
            requested_aliases: spec.aliases.clone(),
            dns,
            cmd: spec.cmd.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            auto_remove: spec.auto_remove,
            ..Container::default()
        };
        // Saved with its sandbox, or not at all.
        self.bring_up(c).await?;
        Ok(json!({ "Id": id, "Warnings": warnings }))
    }

    /// Validates a container's name resolution settings.
    fn dns_settings(
        &self,
        spec: &ContainerSpec,
        mode: &Mode,
        network: Option<&str>,
    ) -> Result<DnsSettings> {
        let mut d = DnsSettings {
            servers: spec.dns.clone(),
            search: spec.dns_search.clone(),
            options: spec.dns_options.clone(),
            ..DnsSettings::default()
        };
        // host-gateway: the bridge's IPv4 address, its IPv6 one on an
        // IPv6-only network.
        let gateway = network.and_then(|n| {
            let n = &self.state.networks[n];
            n.gateway()
                .map(IpAddr::V4)
                .or_else(|| n.gateway6().map(IpAddr::V6))
        });
        for s in &spec.extra_hosts {
            d.extra_hosts
                .push(dns::files::parse_add_host(s, gateway).map_err(ApiError::bad)?);
        }
        if !spec.links.is_empty() && *mode != Mode::Bridge {
            return api::bad("conflicting options: --link needs a bridge network");
        }
        for (name, alias) in &spec.links {
            let target = self
                .container_id(name)
                .map_err(|_| ApiError::not_found(format!("could not get container for {name}")))?;
            if self.state.containers[&target].status != Status::Running {
                return api::conflict(format!("cannot link to a non running container: {name}"));
            }
            d.links.push(Link {
                target,
                alias: alias.clone(),
            });
        }
        Ok(d)
    }

    /// Makes `c` (not running) running: addresses and host ports first,
    /// checked against everything else, then its cgroup, namespace,
    /// endpoints and files, then the datapath and the saved state. On
    /// failure nothing is left behind.
    pub(crate) async fn bring_up(&mut self, mut c: Container) -> Result<()> {
        let mut next = self.state.clone();
        self.assign_addresses(&mut c, &mut next)?;
        c.status = Status::Running;
        c.main = None;
        c.exit_code = None;
        c.finished_at = None;
        next.containers.insert(c.id.clone(), c.clone());
        let mut txn = Txn::new(match &c.owner {
            Owner::Docker { .. } => "docker-endpoint",
            _ if self.state.containers.contains_key(&c.id) => "start",
            _ => "create",
        });
        // An engine's endpoint: only its links are netd's.
        let own = c.is_netd();
        self.begin(Intent {
            op: txn.op.into(),
            links: c.endpoints.values().map(|e| e.veth.clone()).collect(),
            netns: match c.mode {
                Mode::Container(_) => vec![],
                _ if !own => vec![],
                _ => vec![self.sandboxes.netns_path(&c.id)],
            },
            cgroups: if own { vec![c.id.clone()] } else { vec![] },
        })?;
        if let Err(e) = self.build_sandbox(&c, &next, &mut txn).await {
            return Err(self.abort(txn, e).await);
        }
        self.commit(next, txn).await
    }

    /// Gives a bridge-mode container's endpoints their addresses and MACs
    /// and its port specs concrete host ports, in `next`, checked against
    /// every other container of `next` (nothing touches the kernel).
    pub(crate) fn assign_addresses(&self, c: &mut Container, next: &mut State) -> Result<()> {
        if c.mode != Mode::Bridge {
            return Ok(());
        }
        let order: Vec<String> = c
            .endpoints_in_order()
            .iter()
            .map(|e| e.network.clone())
            .collect();
        for (i, nid) in order.iter().enumerate() {
            let ep = c.endpoints.get_mut(nid).expect("listed");
            let net = next
                .networks
                .get_mut(nid)
                .context("the container's network is gone")?;
            assign_ip(ep, net)?;
            assign_ip6(ep, net)?;
            ep.mac = match c.requested_mac {
                Some(m) if i == 0 => m,
                _ => link::mac_for_endpoint(ep.ip, ep.ip6),
            };
        }
        if let Some(primary) = c.primary()
            && next.networks[&primary.network].options.gateway_mode == GatewayMode::Routed
        {
            // Routed: the container ports on the container's address.
            c.ports = ports::routed(&c.port_specs, &c.exposed, c.publish_all)?;
        } else if let Some(primary_net) = c.primary().map(|e| e.network.clone()) {
            let host_ip = next.networks[&primary_net].options.host_binding_ipv4;
            let used: Vec<_> = next
                .containers
                .values()
                .filter(|o| o.status == Status::Running && o.id != c.id)
                .flat_map(|o| o.ports.iter().copied())
                .collect();
            c.ports = ports::allocate(
                &c.port_specs,
                &c.exposed,
                c.publish_all,
                IpAddr::V4(host_ip),
                &used,
                &mut next.next_ephemeral,
            )?;
            let local = self.local_addrs();
            let net = &next.networks[&primary_net];
            for b in &c.ports {
                validate::host_binding(b.host_ip, &local)
                    .map_err(|e| ApiError::bad(format!("{e:#}")))?;
                // An IPv6-only network's containers are reached over IPv6
                // only: 0.0.0.0 means its IPv6 side (`::`), an IPv4
                // address would reach nothing.
                if let IpAddr::V4(a) = b.host_ip
                    && !a.is_unspecified()
                    && !net.enable_ipv4()
                {
                    return api::bad(format!(
                        "cannot publish {b} on the IPv4 address {a}: network {} is IPv6-only (--ipv4=false)",
                        net.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The kernel side of [`bring_up`](Self::bring_up), every step
    /// recorded in `txn`.
    async fn build_sandbox(&self, c: &Container, next: &State, txn: &mut Txn) -> Result<()> {
        if let Owner::Docker { .. } = &c.owner {
            // The veth pair only: Docker moves one end into its sandbox.
            let ep = c.primary().context("a Docker endpoint has one interface")?;
            txn.step("endpoint");
            txn.applied(Undo::Link(ep.veth.clone()));
            return self
                .sandboxes
                .wire_docker_endpoint(ep, &next.networks[&ep.network])
                .await;
        }
        txn.step("cgroup");
        self.cgroups.create(&c.id)?;
        txn.applied(Undo::Cgroup(c.id.clone()));
        let ns_path = self.sandboxes.netns_path(&c.id);
        match &c.mode {
            Mode::Container(_) => return Ok(()),
            Mode::Host => {
                txn.step("netns");
                NetNs::pin(Path::new("/proc/self/ns/net"), &ns_path)?;
                txn.applied(Undo::Netns(ns_path));
            }
            Mode::None | Mode::Bridge => {
                txn.step("netns");
                let ns = NetNs::create(&ns_path)?;
                txn.applied(Undo::Netns(ns_path));
                self.sandboxes.set_port_range(&ns)?;
                for (i, ep) in c.endpoints_in_order().into_iter().enumerate() {
                    txn.step(&format!("endpoint{i}"));
                    txn.applied(Undo::Link(ep.veth.clone()));
                    self.sandboxes
                        .wire_endpoint(&ns, ep, &next.networks[&ep.network], i == 0)
                        .await?;
                }
            }
        }
        txn.step("files");
        self.sandboxes.write_files(c, next, &self.cfg.dns)
    }

    /// `start`: the sandbox if it is down, then the main process if the
    /// container has a command and it is not running. With `stdio` the
    /// process gets those streams (an attached `run`), else its output
    /// goes to the container's log. Returns a receiver of the main
    /// process's exit code when one was started.
    pub async fn container_start(
        &mut self,
        name: &str,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<Option<watch::Receiver<Option<i32>>>> {
        let id = self.netd_container_id(name)?;
        let c = self.state.containers[&id].clone();
        super::cni::refuse(&c, "start")?;
        if let Mode::Container(t) = &c.mode
            && self.state.containers.get(t).map(|t| t.status) != Some(Status::Running)
        {
            return api::conflict(format!(
                "cannot start container {}: the container whose network it joins is not running",
                c.name
            ));
        }
        if c.status != Status::Running {
            self.bring_up(c.clone()).await?;
        }
        let c = &self.state.containers[&id];
        if c.cmd.is_empty() || c.main.is_some_and(|m| m.open().is_some()) {
            return Ok(None);
        }
        match self.spawn_main(&id, stdio).await {
            Ok(rx) => Ok(Some(rx)),
            Err(e) => {
                // A command that cannot start: the container does not run
                // (Docker's exit code for "command not found").
                if let Err(e2) = self.take_down(&id, Some(127), "exit").await {
                    tracing::warn!("container {id}: {e2:#}");
                }
                Err(e)
            }
        }
    }

    /// What a process of container `c` runs in.
    fn process_sandbox(&self, c: &Container) -> process::Sandbox {
        let files = self.sandboxes.files_of(c);
        process::Sandbox {
            netns: self.sandboxes.sandbox_key(c),
            host_mode: c.mode == Mode::Host,
            hosts: files.join("hosts"),
            resolv_conf: files.join("resolv.conf"),
            hostname_file: files.join("hostname"),
            hostname: c.hostname.clone(),
            cgroup: self.cgroups.path(&c.id),
        }
    }

    async fn spawn_main(
        &mut self,
        id: &str,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<watch::Receiver<Option<i32>>> {
        let c = self.state.containers[id].clone();
        let stdio = match stdio {
            Some(s) => s,
            None => process::detached_stdio(&self.sandboxes.log_path(id))?,
        };
        let mut child = process::spawn(
            &self.process_sandbox(&c),
            Launch {
                cmd: c.cmd.clone(),
                env: c.env.clone(),
                cwd: c.cwd.clone(),
                stdio,
                new_session: true,
            },
        )
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
        // Our child: not reaped until we wait, so /proc/PID is there.
        let pid = child.id().context("the main process vanished")? as i32;
        let main = ProcId::of(pid)?;
        let mut next = self.state.clone();
        next.containers.get_mut(id).expect("exists").main = Some(main);
        if let Err(e) = self.save(&next) {
            if let Err(k) = child.start_kill() {
                tracing::warn!("killing the main process of {}: {k}", c.name);
            }
            return Err(e);
        }
        self.state = next;
        let tx = self
            .exits
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0);
        tx.send_replace(None);
        let rx = tx.subscribe();
        let me = self.me.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(s) => process::exit_code(s),
                Err(e) => {
                    tracing::warn!("waiting for the main process of {id}: {e}");
                    EXIT_UNKNOWN
                }
            };
            if let Some(d) = me.upgrade() {
                d.lock().await.main_exited(&id, main, code).await;
            }
        });
        Ok(rx)
    }

    /// Watches the main processes a previous daemon started (live
    /// restore): when one exits, its container exits.
    pub(crate) fn watch_main_processes(&mut self) {
        for c in self.state.containers.values() {
            let (Some(main), Status::Running) = (c.main, c.status) else {
                continue;
            };
            let Some(fd) = main.open() else { continue };
            let me = self.me.clone();
            let id = c.id.clone();
            self.exits
                .entry(id.clone())
                .or_insert_with(|| watch::channel(None).0);
            tokio::spawn(async move {
                if let Err(e) = process::wait_pidfd(fd).await {
                    tracing::warn!("watching the main process of {id}: {e:#}");
                    return;
                }
                if let Some(d) = me.upgrade() {
                    d.lock().await.main_exited(&id, main, EXIT_UNKNOWN).await;
                }
            });
        }
    }

    /// A main process ended: its container exits (the rest of its
    /// processes are stopped, its networking released) and, with `--rm`,
    /// is removed.
    async fn main_exited(&mut self, id: &str, main: ProcId, code: i32) {
        let Some(c) = self.state.containers.get(id) else {
            return;
        };
        if c.main != Some(main) {
            return;
        }
        let auto_remove = c.auto_remove;
        tracing::info!("container {}: main process exited with {code}", c.name);
        if let Err(e) = self.take_down(id, Some(code), "exit").await {
            tracing::warn!("container {id}: {e:#}");
        }
        if let Some(tx) = self.exits.get(id) {
            tx.send_replace(Some(code));
        }
        if auto_remove && let Err(e) = self.container_rm(id, true).await {
            tracing::warn!("removing container {id} (--rm): {e:#}");
        }
        self.sync_dns().await;
    }

    /// Running -> exited: the state first (ports and addresses free), then
    /// the processes (SIGTERM, SIGKILL after a grace period), the
    /// interfaces, the namespace and the cgroup.
    pub(crate) async fn take_down(
        &mut self,
        id: &str,
        exit_code: Option<i32>,
        op: &'static str,
    ) -> Result<()> {
        if self.state.containers[id].status != Status::Running {
            return Ok(());
        }
        let txn = Txn::new(op);
        let next = exited(&self.state, id, exit_code);
        self.remove_sandbox(id, next, exit_code, &txn).await
    }

    /// Commits `next` (in which container `id` no longer runs, or no
    /// longer exists), then stops its processes and removes its sandbox.
    async fn remove_sandbox(
        &mut self,
        id: &str,
        next: State,
        exit_code: Option<i32>,
        txn: &Txn,
    ) -> Result<()> {
        let c = self.state.containers[id].clone();
        let netns_inode = match c.mode {
            _ if !c.is_netd() => None,
            Mode::Bridge | Mode::None => NetNs::at(self.sandboxes.netns_path(id)).inode().ok(),
            _ => None,
        };
        let mut errors = self.commit_removal(next, txn).await?;
        if c.status == Status::Running && !c.is_netd() {
            // An engine's endpoint: no processes, no cgroup, no files.
            txn.step("sandbox");
            errors.extend(self.sandboxes.teardown(&c).await);
            self.report(txn, errors);
            return Ok(());
        }
        if c.status == Status::Running {
            txn.step("processes");
            // `stop` asks first; an exited main process's leftovers and
            // `rm -f` get SIGKILL at once (as Docker does).
            let grace = if txn.op == "stop" {
                STOP_GRACE
            } else {
                Duration::ZERO
            };
            let cgroups = self.cgroups.clone();
            blocking(|| process::terminate(&cgroups, id, netns_inode, grace));
            if let Some(tx) = self.exits.get(id)
                && tx.borrow().is_none()
                && c.main.is_some()
            {
                // Its code, or (stopped) death by the signal.
                tx.send_replace(Some(exit_code.unwrap_or(128 + libc::SIGTERM)));
            }
            txn.step("sandbox");
            errors.extend(self.sandboxes.teardown(&c).await);
        }
        txn.step("cgroup");
        let cgroups = self.cgroups.clone();
        if let Err(e) = blocking(|| cgroups.remove(id)) {
            errors.push(e);
        }
        if !self.state.containers.contains_key(id) {
            txn.step("files");
            let dir = self.sandboxes.files_dir(id);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                errors.push(anyhow::Error::new(e).context(format!("removing {}", dir.display())));
            }
            self.exits.remove(id);
        }
        self.report(txn, errors);
        Ok(())
    }

    pub async fn container_stop(&mut self, name: &str) -> Result<Value> {
        let id = self.netd_container_id(name)?;
        let c = self.state.containers[&id].clone();
        super::cni::refuse(&c, "stop")?;
        self.take_down(&id, None, "stop").await?;
        Ok(json!(c.name))
    }

    pub async fn container_rm(&mut self, name: &str, force: bool) -> Result<Value> {
        let id = self.netd_container_id(name)?;
        let c = self.state.containers[&id].clone();
        super::cni::refuse(&c, "rm")?;
        if c.status == Status::Running && !force {
            return api::conflict(format!(
                "cannot remove container {}: it is running; stop it first or use rm -f",
                c.name
            ));
        }
        let dependents: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|o| o.mode == Mode::Container(id.clone()) && o.status == Status::Running)
            .map(|o| o.name.as_str())
            .collect();
        if !dependents.is_empty() {
            return api::conflict(format!(
                "cannot remove container {}: containers {} share its network namespace",
                c.name,
                dependents.join(", ")
            ));
        }
        self.remove_container(&id, "rm").await?;
        Ok(json!(c.name))
    }

    /// Removes container `id` in one commit: gone from the state first,
    /// then from the host.
    pub(crate) async fn remove_container(&mut self, id: &str, op: &'static str) -> Result<()> {
        let txn = Txn::new(op);
        let mut next = exited(&self.state, id, None);
        next.containers.remove(id);
        self.remove_sandbox(id, next, None, &txn).await
    }

    /// Resolves a container the API may operate on: netd's own, not an
    /// engine's endpoint (those follow their engine's commands).
    pub(crate) fn netd_container_id(&self, name: &str) -> Result<String> {
        let id = self.container_id(name)?;
        let c = &self.state.containers[&id];
        match &c.owner {
            Owner::Docker { .. } => api::conflict(format!(
                "{} is a Docker endpoint: manage it with docker (docker rm, docker network disconnect)",
                c.name
            )),
            // CNI attachments: each operation refuses them itself
            // (cni::refuse names the operation).
            Owner::Netd | Owner::Cni { .. } => Ok(id),
        }
    }

    /// Refuses netd's own containers on a network an engine owns (its
    /// addresses are the engine's to give).
    pub(crate) fn refuse_foreign_network(&self, nid: &str) -> Result<()> {
        let n = &self.state.networks[nid];
        match &n.owner {
            NetworkOwner::Docker { .. } => api::conflict(format!(
                "network {} belongs to Docker: attach Docker containers to it with docker run --network or docker network connect",
                n.name
            )),
            NetworkOwner::Netd | NetworkOwner::Cni { .. } => Ok(()),
        }
    }

    pub async fn network_connect(&mut self, net: &str, spec: ConnectSpec) -> Result<Value> {
        let nid = self.network_id(net)?;
        let cid = self.netd_container_id(&spec.container)?;
        self.refuse_foreign_network(&nid)?;
        let c = self.state.containers[&cid].clone();
        super::cni::refuse(&c, "network connect")?;
        if c.mode != Mode::Bridge {
            return api::bad(format!(
                "container {} is not in bridge mode: cannot connect it to a network",
                c.name
            ));
        }
        if c.endpoints.contains_key(&nid) {
            return api::conflict(format!(
                "container {} is already connected to network {net}",
                c.name
            ));
        }
        let n = &self.state.networks[&nid];
        if let Some(ip) = spec.ip {
            check_ip(ip, n)?;
        }
        if !spec.aliases.is_empty() && n.default {
            return api::bad("network-scoped aliases are supported only for user-defined networks");
        }
        let index = (0..)
            .find(|i| !c.endpoints.values().any(|e| e.ifname == format!("eth{i}")))
            .unwrap_or(0);
        let mut ep = new_endpoint(&nid, spec.ip, spec.ip6, index);
        ep.aliases = spec.aliases;
        let mut next = self.state.clone();
        if c.status != Status::Running {
            next.containers
                .get_mut(&cid)
                .expect("exists")
                .endpoints
                .insert(nid, ep);
            self.save(&next)?;
            self.state = next;
            return Ok(json!({}));
        }
        let net = next.networks.get_mut(&nid).expect("exists");
        assign_ip6(&mut ep, net)?;
        assign_ip(&mut ep, net)?;
        ep.mac = link::mac_for_endpoint(ep.ip, ep.ip6);
        let nc = next.containers.get_mut(&cid).expect("exists");
        nc.endpoints.insert(nid.clone(), ep.clone());
        let nc = nc.clone();
        let mut txn = Txn::new("connect");
        self.begin(Intent {
            op: txn.op.into(),
            links: vec![ep.veth.clone()],
            ..Intent::default()
        })?;
        let ns = NetNs::at(self.sandboxes.netns_path(&cid));
        let r = async {
            txn.step("endpoint");
            txn.applied(Undo::Link(ep.veth.clone()));
            self.sandboxes
                .wire_endpoint(&ns, &ep, &next.networks[&nid], c.endpoints.is_empty())
                .await?;
            txn.step("files");
            self.sandboxes.write_files(&nc, &next, &self.cfg.dns)
        }
        .await;
        if let Err(e) = r {
            return Err(self.abort(txn, e).await);
        }
        self.commit(next, txn).await?;
        Ok(json!({}))
    }

    pub async fn network_disconnect(&mut self, net: &str, container: &str) -> Result<Value> {
        let nid = self.network_id(net)?;
        let cid = self.netd_container_id(container)?;
        let c = self.state.containers[&cid].clone();
        super::cni::refuse(&c, "network disconnect")?;
        let Some(ep) = c.endpoints.get(&nid).cloned() else {
            return api::bad(format!(
                "container {} is not connected to network {net}",
                c.name
            ));
        };
        let running = c.status == Status::Running;
        let txn = Txn::new("disconnect");
        let mut next = self.state.clone();
        {
            let nc = next.containers.get_mut(&cid).expect("exists");
            nc.endpoints.remove(&nid);
            if nc.endpoints.is_empty() {
                nc.ports.clear();
            }
            if running {
                release(next.networks.get_mut(&nid).expect("exists"), &ep);
            }
        }
        let mut errors = self.commit_removal(next, &txn).await?;
        if running {
            txn.step("endpoint");
            if let Err(e) = self.nl.delete_by_name(&ep.veth).await {
                errors.push(e);
            }
            txn.step("files");
            if let Err(e) =
                self.sandboxes
                    .write_files(&self.state.containers[&cid], &self.state, &self.cfg.dns)
            {
                errors.push(e);
            }
        }
        self.report(&txn, errors);
        Ok(json!({}))
    }

    /// Starts an `exec` process in a running container (in its cgroup,
    /// with the caller's streams).
    pub fn exec_spawn(
        &self,
        name: &str,
        exec: Exec,
        stdio: [OwnedFd; 3],
    ) -> Result<tokio::process::Child> {
        let id = self.netd_container_id(name)?;
        let c = &self.state.containers[&id];
        super::cni::refuse(c, "exec")?;
        if c.status != Status::Running {
            return api::conflict(format!("container {name} is not running"));
        }
        process::spawn(
            &self.process_sandbox(c),
            Launch {
                cmd: exec.cmd,
                env: exec.env,
                cwd: exec.working_dir.map(Into::into),
                stdio,
                new_session: true,
            },
        )
        .map_err(|e| ApiError::bad(format!("{e:#}")).into())
    }

    /// `logs`: what the detached main process wrote (the last MiB).
    pub fn container_logs(&self, name: &str) -> Result<Value> {
        const TAIL: u64 = 1 << 20;
        let id = self.container_id(name)?;
        let path = self.sandboxes.log_path(&id);
        let mut text = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                use std::io::{Read, Seek, SeekFrom};
                let len = f.metadata()?.len();
                f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
                f.read_to_end(&mut text)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        Ok(json!(String::from_utf8_lossy(&text)))
    }

    /// `kill`: a signal to the container's main process.
    pub fn container_kill(&self, name: &str, signal: &str) -> Result<Value> {
        let id = self.netd_container_id(name)?;
        let c = &self.state.containers[&id];
        let sig = process::parse_signal(signal).map_err(|e| ApiError::bad(format!("{e:#}")))?;
        let Some(main) = c.main.filter(|_| c.status == Status::Running) else {
            return api::conflict(format!("container {} has no running main process", c.name));
        };
        process::signal(&main, sig)?;
        Ok(json!({}))
    }

    /// `wait`: a receiver of the main process's exit code; already
    /// holding it when the container is not running.
    pub fn container_wait(&mut self, name: &str) -> Result<watch::Receiver<Option<i32>>> {
        let id = self.container_id(name)?;
        let c = &self.state.containers[&id];
        let done =
            (c.status != Status::Running || c.main.is_none()).then(|| c.exit_code.unwrap_or(0));
        let tx = self
            .exits
            .entry(id)
            .or_insert_with(|| watch::channel(None).0);
        if let Some(code) = done {
            tx.send_replace(Some(code));
        }
        Ok(tx.subscribe())
    }

    /// Re-creates a running container's missing veths and rewrites its
    /// files (reconcile after a restart).
    pub(crate) async fn restore_container(&self, c: &Container) -> Result<()> {
        // A CNI attachment: the runtime's namespace, no cgroup, no files.
        let ns = NetNs::at(self.sandboxes.sandbox_key(c));
        if c.cni().is_none() {
            self.cgroups.create(&c.id)?;
        }
        if c.mode == Mode::Bridge {
            for (i, ep) in c.endpoints_in_order().into_iter().enumerate() {
                match self.nl.link_by_name(&ep.veth).await? {
                    Some(l) => {
                        if !self.sandboxes.is_ours(&l) {
                            self.nl.set_alias(l.index, &self.sandboxes.marker).await?;
                        }
                    }
                    None => {
                        tracing::info!(
                            "reconcile: re-creating endpoint {} of {}",
                            ep.ifname,
                            c.name
                        );
                        let cn = Netlink::in_ns(&ns)?;
                        cn.delete_by_name(&ep.ifname).await?;
                        self.sandboxes
                            .wire_endpoint(&ns, ep, &self.state.networks[&ep.network], i == 0)
                            .await?;
                    }
                }
            }
        }
        if !matches!(c.mode, Mode::Container(_)) && c.cni().is_none() {
            self.sandboxes.write_files(c, &self.state, &self.cfg.dns)?;
        }
        Ok(())
    }
}

/// `state` with container `id` exited: no ports, no addresses held, no
/// main process.
pub(crate) fn exited(state: &State, id: &str, exit_code: Option<i32>) -> State {
    let mut next = state.clone();
    let c = next.containers.get_mut(id).expect("exists");
    c.status = Status::Exited;
    c.ports.clear();
    if c.main.take().is_some() || exit_code.is_some() {
        c.exit_code = Some(exit_code.unwrap_or(128 + libc::SIGTERM));
    }
    c.finished_at = Some(now());
    let eps: Vec<Endpoint> = c.endpoints.values().cloned().collect();
    for ep in eps {
        if let Some(n) = next.networks.get_mut(&ep.network) {
            release(n, &ep);
        }
    }
    next
}

/// `--ip` (or a plugin's IPv4 address) for network `n`: a host address
/// of its IPv4 subnet.
fn check_ip(ip: Ipv4Addr, n: &Network) -> Result<()> {
    let Some(subnet) = n.subnet() else {
        return api::bad(format!(
            "--ip {ip}: network {} is IPv6-only (--ipv4=false)",
            n.name
        ));
    };
    validate::host_in("--ip", ip, &subnet)
        .map_err(|e| ApiError::bad(format!("{e:#} of network {}", n.name)))?;
    Ok(())
}

/// Frees an endpoint's addresses on its network.
pub(crate) fn release(n: &mut Network, ep: &Endpoint) {
    if let (Some(a), Some(ip)) = (n.ipam.as_mut(), ep.ip) {
        a.release(ip);
    }
    if let (Some(a), Some(ip6)) = (n.ipam6.as_mut(), ep.ip6) {
        a.release(ip6);
    }
}

/// Gives an endpoint its IPv4 address on a network with IPv4: the one
/// asked for (`--ip`), else the one it had if still free, else the lowest
/// free one. None on an IPv6-only network.
pub(crate) fn assign_ip(ep: &mut Endpoint, net: &mut Network) -> Result<()> {
    let Some(a) = net.ipam.as_mut() else {
        if ep.static_ip {
            return api::bad(format!(
                "--ip needs a network with IPv4: {} is IPv6-only (--ipv4=false)",
                net.name
            ));
        }
        ep.ip = None;
        return Ok(());
    };
    // 0.0.0.0 in older state files: never assigned.
    let had = ep.ip.filter(|ip| !ip.is_unspecified());
    ep.ip = Some(match had {
        Some(ip) if ep.static_ip => {
            a.reserve(ip)
                .map_err(|e| ApiError::conflict(format!("{e:#}")))?;
            ip
        }
        Some(ip) if a.reserve(ip).is_ok() => ip,
        _ => a
            .allocate()
            .map_err(|e| ApiError::conflict(format!("{e:#}")))?,
    });
    Ok(())
}

/// Gives an endpoint its IPv6 address on a network with IPv6: the one
/// asked for (`--ip6`), else the one it had if still free, else the
/// lowest free one.
pub(crate) fn assign_ip6(ep: &mut Endpoint, net: &mut Network) -> Result<()> {
    let Some(a) = net.ipam6.as_mut() else {
        if ep.static_ip6 {
            return api::bad(format!(
                "--ip6 needs a network with IPv6: {} has none (create it with --ipv6)",
                net.name
            ));
        }
        ep.ip6 = None;
        return Ok(());
    };
    ep.ip6 = Some(match ep.ip6 {
        Some(ip) if ep.static_ip6 => {
            a.reserve(ip)
                .map_err(|e| ApiError::conflict(format!("{e:#}")))?;
            ip
        }
        Some(ip) if a.reserve(ip).is_ok() => ip,
        _ => a
            .allocate()
            .map_err(|e| ApiError::conflict(format!("{e:#}")))?,
    });
    Ok(())
}
