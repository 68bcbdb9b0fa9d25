//! The daemon: owns the state, the namespaces, links and cgroups it made,
//! the container processes it started, and one datapath.
//!
//! - [`lock`]: one daemon per state directory and exec root;
//! - [`txn`]: how every state-changing operation applies and undoes;
//! - [`networks`], [`containers`]: the operations;
//! - [`reconcile`]: making the kernel match the state at start;
//! - [`views`]: the JSON the API answers with.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Weak},
};

use anyhow::{Context, Result};
use tokio::sync::{Mutex, watch};

use crate::{
    api::{self, server},
    cgroup,
    config::Config,
    datapath::{self, Datapath},
    dns::{self, files::ResolvConf, records::Snapshot},
    ipam::{Allocator, Cidr},
    link::Netlink,
    model::*,
    process::Cgroups,
    sandbox::Sandboxes,
    state::{State, Store},
};

pub mod cni;
pub mod containers;
pub mod docker;
pub mod lock;
pub mod networks;
pub mod nodes;
pub mod reconcile;
pub mod txn;
pub mod views;

/// The daemon behind its lock, as API handlers and watchers share it.
pub type Shared = Arc<Mutex<Daemon>>;

pub struct Daemon {
    pub(crate) cfg: Config,
    store: Store,
    pub(crate) state: State,
    pub(crate) dp: datapath::Timed,
    pub(crate) nl: Netlink,
    pub(crate) sandboxes: Sandboxes,
    pub(crate) cgroups: Cgroups,
    /// The embedded DNS server of the user-defined networks.
    pub(crate) dns: dns::server::Server,
    /// Exit codes of main processes, for `wait`, by container id.
    pub(crate) exits: BTreeMap<String, watch::Sender<Option<i32>>>,
    /// Itself, for the tasks that watch main processes.
    pub(crate) me: Weak<Mutex<Daemon>>,
}

pub fn rand_id() -> String {
    let mut b = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RFC 3339, UTC.
pub fn now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let dd = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// This boot's id (changes with every boot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Blocking work (fsync, iptables-restore, nft, waiting for processes)
/// off the async workers: the runtime moves its other tasks elsewhere.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Daemon {
    pub async fn start(cfg: Config) -> Result<Daemon> {
        let (store, mut state) = Store::open(&cfg.state_dir)?;
        if state.instance.is_empty() {
            state.instance = rand_id()[..8].to_string();
        }
        let base = match &cfg.cgroup {
            Some(c) => c.clone(),
            None => cgroup::ensure_cgroup2(&cfg.exec_root.join("cgroup2"))?,
        };
        let cgroups = Cgroups::new(&base, &state.instance)?;
        // The datapath that programmed the host before, if another one:
        // its rules, tables and pins go first.
        if let Some(prev) = state.datapath
            && prev != cfg.datapath
        {
            tracing::info!(
                "this host was programmed by the {prev} datapath: removing its rules and pins"
            );
            datapath::new(prev, ebpf_config(&cfg, &base), false)
                .cleanup()
                .with_context(|| format!("removing what the {prev} datapath installed"))?;
        }
        let mut dp = datapath::Timed::new(datapath::new(
            cfg.datapath,
            ebpf_config(&cfg, &base),
            cfg.userland_proxy,
        ));
        blocking(|| dp.init())
            .with_context(|| format!("initialising the {} datapath", dp.name()))?;
        let nl = Netlink::current()?;
        let sandboxes = Sandboxes::new(
            &cfg.exec_root,
            &state.instance,
            dp.wants_hairpin_mode(),
            dp.container_port_range(),
            nl.clone(),
        )?;
        let mut d = Daemon {
            cfg,
            store,
            state,
            dp,
            nl,
            sandboxes,
            cgroups,
            dns: dns::server::Server::new(),
            exits: BTreeMap::new(),
            me: Weak::new(),
        };
        d.ensure_default_network().await?;
        d.reconcile().await?;
        d.state.datapath = Some(d.cfg.datapath);
        d.state.cluster_cidr = d.cfg.cluster_cidr;
        d.state.boot_id = boot_id();
        let state = d.state.clone();
        blocking(|| d.dp.sync(&state))?;
        d.save(&state)?;
        d.sync_dns().await;
        Ok(d)
    }

    /// Saves `state` (atomically, fsynced) off the async workers.
    pub(crate) fn save(&self, state: &State) -> Result<()> {
        blocking(|| self.store.save(state))
    }

    /// The forwarders of the embedded DNS server: `--dns` / config, else
    /// the host's resolv.conf (read again each time: it may change).
    fn upstreams(&self) -> Vec<SocketAddr> {
        let ips = if self.cfg.dns.is_empty() {
            ResolvConf::host().nameservers
        } else {
            self.cfg.dns.clone()
        };
        ips.into_iter().map(|ip| SocketAddr::new(ip, 53)).collect()
    }

    /// Publishes the names of the current state to the DNS server (and
    /// binds or unbinds its listeners), and brings `--link` entries in
    /// /etc/hosts up to date with their targets. Called after every
    /// change, so records follow containers at once, and periodically
    /// (retrying listeners that could not bind).
    pub async fn sync_dns(&mut self) {
        self.dns
            .update(Snapshot::build(&self.state, self.upstreams()))
            .await;
        for c in self.state.containers.values() {
            if c.status == Status::Running
                && !c.dns.links.is_empty()
                && let Err(e) = self.sandboxes.write_files(c, &self.state, &self.cfg.dns)
            {
                tracing::warn!("container {}: updating /etc/hosts: {e:#}", c.name);
            }
        }
    }

    async fn ensure_default_network(&mut self) -> Result<()> {
        if self.state.networks.values().any(|n| n.default) {
            return Ok(());
        }
        let (mut gw, prefix) = self.cfg.bip;
        let mut subnet = Cidr::containing(gw, prefix);
        // As dockerd does without --bip: when the default subnet is in
        // use on this host (docker0 has the same default), take the first
        // free one of the address pools instead.
        if !self.cfg.bip_explicit
            && self
                .nl
                .link_by_name(&self.cfg.default_bridge)
                .await?
                .is_none()
        {
            let routes: Vec<Cidr> = self
                .nl
                .route_prefixes()
                .await?
                .into_iter()
                .map(|(a, p)| Cidr::containing(a, p))
                .collect();
            if let Some(r) = routes.iter().find(|r| r.overlaps(&subnet)) {
                let free = crate::ipam::pick_subnet(&self.cfg.pools, &routes)?;
                tracing::info!(
                    "the default network's subnet {subnet} overlaps the host's route {r} (docker0?): it takes {free} instead (--bip chooses)"
                );
                (subnet, gw) = (free, free.first_host());
            }
        }
        let net = Network {
            id: rand_id(),
            name: DEFAULT_NETWORK.into(),
            created: now(),
            bridge: self.cfg.default_bridge.clone(),
            ipam: Some(Allocator::new(subnet, gw, None)?),
            options: NetworkOptions {
                mtu: self.cfg.mtu,
                ..NetworkOptions::default()
            },
            raw_options: BTreeMap::new(),
            default: true,
            owner: NetworkOwner::Netd,
            ipam6: match self.cfg.default_ipv6 {
                Some(s) => Some(crate::ipam6::Allocator6::new(s, None)?),
                None => None,
            },
        };
        self.state.networks.insert(net.id.clone(), net);
        Ok(())
    }

    /// The host's own addresses (for `-p HOSTIP:...`).
    pub(crate) fn local_addrs(&self) -> Vec<IpAddr> {
        nix::ifaddrs::getifaddrs()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let a = a.address?;
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            .collect()
    }

    // ---- lookups -------------------------------------------------------

    pub(crate) fn network_id(&self, name: &str) -> Result<String> {
        resolve(self.state.networks.values().map(|n| (&n.id, &n.name)), name)
            .map_or_else(|| api::not_found(format!("network {name} not found")), Ok)
    }

    pub(crate) fn container_id(&self, name: &str) -> Result<String> {
        resolve(
            self.state.containers.values().map(|c| (&c.id, &c.name)),
            name,
        )
        .map_or_else(|| api::not_found(format!("no such container: {name}")), Ok)
    }

    /// Stops everything (`--cleanup-on-exit`) or nothing (live restore).
    pub async fn shutdown(&mut self) {
        if !self.cfg.cleanup_on_exit {
            tracing::info!("shutting down; containers keep their networking (live restore)");
            return;
        }
        tracing::info!("shutting down and removing everything (--cleanup-on-exit)");
        let ids: Vec<String> = self.state.containers.keys().cloned().collect();
        for id in ids {
            let r = match &self.state.containers[&id].owner {
                Owner::Cni { .. } => self.cni_release(&id, "cni-shutdown").await,
                Owner::Docker { .. } => self.remove_container(&id, "rm").await,
                Owner::Netd => self.container_rm(&id, true).await.map(|_| ()),
            };
            if let Err(e) = r {
                tracing::warn!("removing container {id}: {e:#}");
            }
        }
        for n in self.state.networks.values() {
            if let Err(e) = self.nl.delete_by_name(&n.bridge).await {
                tracing::warn!("removing bridge {}: {e:#}", n.bridge);
            }
        }
        if let Err(e) = blocking(|| self.dp.cleanup()) {
            tracing::warn!("datapath cleanup: {e:#}");
        }
        if let Err(e) = self.cgroups.remove_parent() {
            tracing::warn!("{e:#}");
        }
        if let Err(e) = self.sandboxes.unmount() {
            tracing::warn!("{e:#}");
        }
        self.state = State {
            instance: self.state.instance.clone(),
            ..State::default()
        };
        if let Err(e) = self.save(&self.state) {
            tracing::warn!("saving the state: {e:#}");
        }
    }
}

fn ebpf_config(cfg: &Config, cgroup: &std::path::Path) -> datapath::ebpf::EbpfConfig {
    datapath::ebpf::EbpfConfig {
        bpffs: cfg.bpffs.clone(),
        uplink: cfg.uplink.clone(),
        nat_ports: cfg.nat_ports,
        ct_entries: cfg.ct_entries,
        cgroup: Some(cgroup.to_path_buf()),
    }
}

/// Docker's lookup: an exact name, else a unique id prefix.
fn resolve<'a>(
    objs: impl Iterator<Item = (&'a String, &'a String)> + Clone,
    name: &str,
) -> Option<String> {
    if let Some((id, _)) = objs.clone().find(|(_, n)| *n == name) {
        return Some(id.clone());
    }
    let mut m = objs.filter(|(id, _)| !name.is_empty() && id.starts_with(name));
    match (m.next(), m.next()) {
        (Some((id, _)), None) => Some(id.clone()),
        _ => None,
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    let socket = cfg.socket.clone();
    // Before anything is touched: a second daemon stops here.
    let who = format!("pid {}, socket {}", std::process::id(), socket.display());
    let _lock = lock::acquire(&[&cfg.state_dir, &cfg.exec_root], &who)?;
    let listener = server::bind(&socket, Some("netd"))?;
    // The Docker plugin's socket: refused before anything is touched when
    // another live process serves it.
    let plugin = cfg.docker_plugin.clone();
    let plugin_socket = plugin.as_deref().map(crate::plugin::docker::socket_path);
    let plugin_listener = match &plugin_socket {
        Some(p) => match server::bind(p, None) {
            Ok(l) => Some(l),
            Err(e) => {
                remove_socket(&socket);
                return Err(e.context("serving the Docker plugin"));
            }
        },
        None => None,
    };
    let remove_sockets = || {
        remove_socket(&socket);
        if let Some(p) = &plugin_socket {
            remove_socket(p);
        }
    };
    let daemon = match Daemon::start(cfg).await {
        Ok(d) => d,
        Err(e) => {
            remove_sockets();
            return Err(e);
        }
    };
    tracing::info!(
        "netd daemon ready: datapath {}, socket {}",
        daemon.dp.name(),
        socket.display()
    );
    let shared: Shared = Arc::new(Mutex::new(daemon));
    {
        let mut d = shared.lock().await;
        d.me = Arc::downgrade(&shared);
        d.watch_main_processes();
    }
    // Conntrack GC: on a thread of its own, never under the daemon's lock.
    let gc = {
        let mut d = shared.lock().await;
        d.dp.conntrack_gc()?.map(|gc| (gc, d.dp.gc_stats()))
    };
    if let Some((mut gc, record)) = gc {
        std::thread::Builder::new()
            .name("netd-ct-gc".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    match gc.run() {
                        Ok(r) => {
                            if r.expired > 0 {
                                tracing::debug!(
                                    "conntrack gc: {} of {} entries expired ({} us CPU)",
                                    r.expired,
                                    r.entries,
                                    r.cpu_micros
                                );
                            }
                            record.lock().unwrap_or_else(|e| e.into_inner()).record(r);
                        }
                        Err(e) => tracing::warn!("conntrack gc: {e:#}"),
                    }
                }
            })?;
    }
    let ticker = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            let mut d = ticker.lock().await;
            // DNS listeners that could not bind are tried again, and a
            // changed host resolv.conf reaches the forwarders.
            d.sync_dns().await;
            // Docker endpoints whose sandbox went away unannounced.
            d.docker_gc().await;
            // The other nodes' routes follow the pod networks (their
            // source address) and come back when something deleted them.
            if !d.state.nodes.is_empty()
                && let Err(e) = d.reconcile_routes().await
            {
                tracing::warn!("node routes: {e:#}");
            }
            // The datapath follows the host (the eBPF one: uplink address).
            let d = &mut *d;
            if let Err(e) = blocking(|| d.dp.refresh(&d.state)) {
                tracing::warn!("datapath refresh: {e:#}");
            }
        }
    });
    let router = shared.clone();
    let handler = Arc::new(move |req: api::Request| {
        let d = router.clone();
        async move { api::router::route(&d, req).await }
    });
    let server = tokio::spawn(server::serve(
        listener,
        server::Limits::default(),
        server::ENGINE_API,
        handler,
    ));
    let plugin_server = match (plugin_listener, plugin) {
        (Some(l), Some(name)) => {
            tracing::info!(
                "serving the Docker network plugin {name} at {} (docker network create -d {name})",
                crate::plugin::docker::socket_path(&name).display()
            );
            let d = shared.clone();
            let handler = Arc::new(move |req: api::Request| {
                let (d, name) = (d.clone(), name.clone());
                async move { crate::plugin::docker::route(&d, &name, req).await }
            });
            // Docker sends a range as one binding per port, three times
            // per container (CreateEndpoint, Join, Program): room for
            // every port.
            let limits = server::Limits {
                max_body_bytes: 32 << 20,
                ..server::Limits::default()
            };
            Some(tokio::spawn(server::serve(
                l,
                limits,
                crate::plugin::docker::DIALECT,
                handler,
            )))
        }
        _ => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
        r = server => { r?; }
    }
    if let Some(p) = plugin_server {
        p.abort();
    }
    shared.lock().await.shutdown().await;
    remove_sockets();
    Ok(())
}

fn remove_socket(socket: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(socket)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", socket.display());
    }
}
