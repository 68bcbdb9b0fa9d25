//! The daemon: owns the state, the namespaces and links it made, and one
//! datapath. Every operation validates first, then applies, rolls back
//! what it applied if a later step fails, and persists the new state last;
//! startup reconciles the kernel with the persisted state.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, anyhow};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{
    api::{self, ApiError, Request, Response},
    config::Config,
    datapath::{self, Datapath},
    dns::{
        self,
        files::{ResolvConf, valid_hostname},
        records::Snapshot,
    },
    ipam::{self, Allocator, Cidr},
    link::{self, Netlink},
    model::*,
    netns::NetNs,
    portspec::{self, PortBinding, PortSpec, Proto},
    state::{State, Store},
};

/// Prefix of every host-side veth netd creates (`vnd` + 9 hex digits).
pub const VETH_PREFIX: &str = "vnd";
/// Prefix of user networks' bridges (`netd-` + 10 hex digits).
pub const BRIDGE_PREFIX: &str = "netd-";
const EPHEMERAL: (u16, u16) = (32768, 60999);

pub struct Daemon {
    cfg: Config,
    store: Store,
    state: State,
    dp: datapath::Timed,
    nl: Netlink,
    /// The embedded DNS server of the user-defined networks.
    dns: dns::server::Server,
}

fn rand_id() -> String {
    let mut b = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now() -> String {
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

fn bad<T>(m: impl std::fmt::Display) -> Result<T> {
    Err(ApiError::bad(m).into())
}
fn not_found<T>(m: impl std::fmt::Display) -> Result<T> {
    Err(ApiError::not_found(m).into())
}
fn conflict<T>(m: impl std::fmt::Display) -> Result<T> {
    Err(ApiError::conflict(m).into())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub struct NetworkCreate {
    pub name: String,
    pub driver: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    pub internal: bool,
    pub options: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub struct ContainerCreate {
    pub name: Option<String>,
    pub network: Option<String>,
    pub publish: Vec<String>,
    pub publish_all: bool,
    pub expose: Vec<String>,
    pub ip: Option<String>,
    pub mac_address: Option<String>,
    pub hostname: Option<String>,
    pub network_aliases: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// `--add-host NAME:IP`.
    pub extra_hosts: Vec<String>,
    /// `--link NAME[:ALIAS]`.
    pub links: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub struct Connect {
    pub container: String,
    pub ip: Option<String>,
    pub aliases: Vec<String>,
}

/// Checks network aliases (DNS names).
fn check_aliases(aliases: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for a in aliases {
        if !valid_hostname(a) {
            return bad(format!(
                "invalid network alias {a:?}: use DNS names (letters, digits, '-', '_', dots between labels)"
            ));
        }
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

impl Daemon {
    pub async fn start(cfg: Config) -> Result<Daemon> {
        let (store, state) = Store::open(&cfg.state_dir)?;
        std::fs::create_dir_all(cfg.exec_root.join("netns"))?;
        std::fs::create_dir_all(cfg.exec_root.join("containers"))?;
        let mut dp = datapath::Timed::new(datapath::new(
            cfg.datapath,
            datapath::ebpf::EbpfConfig {
                bpffs: cfg.bpffs.clone(),
                uplink: cfg.uplink.clone(),
                nat_ports: cfg.nat_ports,
                ct_entries: cfg.ct_entries,
                cgroup: cfg.cgroup.clone(),
            },
        ));
        dp.init()
            .with_context(|| format!("initialising the {} datapath", dp.name()))?;
        let nl = Netlink::current()?;
        let mut d = Daemon {
            cfg,
            store,
            state,
            dp,
            nl,
            dns: dns::server::Server::new(),
        };
        d.ensure_default_network()?;
        d.reconcile().await?;
        d.dp.sync(&d.state)?;
        d.store.save(&d.state)?;
        d.sync_dns().await;
        Ok(d)
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
                && let Err(e) = self.write_files(c)
            {
                tracing::warn!("container {}: updating /etc/hosts: {e:#}", c.name);
            }
        }
    }

    fn ensure_default_network(&mut self) -> Result<()> {
        if self.state.networks.values().any(|n| n.default) {
            return Ok(());
        }
        let (gw, prefix) = self.cfg.bip;
        let subnet = Cidr::containing(gw, prefix);
        let net = Network {
            id: rand_id(),
            name: DEFAULT_NETWORK.into(),
            created: now(),
            bridge: self.cfg.default_bridge.clone(),
            ipam: Allocator::new(subnet, gw, None)?,
            options: NetworkOptions {
                icc: true,
                masquerade: true,
                internal: false,
                mtu: self.cfg.mtu,
                host_binding_ipv4: Ipv4Addr::UNSPECIFIED,
            },
            raw_options: BTreeMap::new(),
            default: true,
        };
        self.state.networks.insert(net.id.clone(), net);
        Ok(())
    }

    fn netns_path(&self, id: &str) -> PathBuf {
        self.cfg.exec_root.join("netns").join(id)
    }

    fn files_dir(&self, id: &str) -> PathBuf {
        self.cfg.exec_root.join("containers").join(id)
    }

    /// Makes the kernel match the state after a restart or a crash:
    /// bridges and sandboxes that state says exist are verified or made
    /// again; bridges, veths and namespaces netd made that state does not
    /// know are removed.
    async fn reconcile(&mut self) -> Result<()> {
        let nets: Vec<Network> = self.state.networks.values().cloned().collect();
        for n in &nets {
            self.ensure_bridge(n).await?;
        }
        let ids: Vec<String> = self.state.containers.keys().cloned().collect();
        for id in &ids {
            let c = self.state.containers[id].clone();
            if c.status != Status::Running {
                continue;
            }
            if let Err(e) = self.reconcile_container(&c).await {
                tracing::warn!(
                    "container {}: could not restore its networking: {e:#}",
                    c.name
                );
            }
        }
        // Unknown objects.
        let known_veths: Vec<String> = self
            .state
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
            .flat_map(|c| c.endpoints.values().map(|e| e.veth.clone()))
            .collect();
        let known_bridges: Vec<String> = self
            .state
            .networks
            .values()
            .map(|n| n.bridge.clone())
            .collect();
        for l in self.nl.links().await? {
            let ours_veth = l.name.starts_with(VETH_PREFIX) && l.kind.as_deref() == Some("veth");
            let ours_bridge =
                l.name.starts_with(BRIDGE_PREFIX) && l.kind.as_deref() == Some("bridge");
            if (ours_veth && !known_veths.contains(&l.name))
                || (ours_bridge && !known_bridges.contains(&l.name))
            {
                tracing::info!("reconcile: removing stale link {}", l.name);
                self.nl.delete(l.index).await?;
            }
        }
        let known_ns: Vec<String> = self.state.containers.keys().cloned().collect();
        for e in std::fs::read_dir(self.cfg.exec_root.join("netns"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let running = self
                .state
                .containers
                .get(&name)
                .is_some_and(|c| c.status == Status::Running);
            if !known_ns.contains(&name) || !running {
                tracing::info!("reconcile: removing stale namespace {name}");
                NetNs::at(e.path()).remove()?;
            }
        }
        Ok(())
    }

    async fn reconcile_container(&mut self, c: &Container) -> Result<()> {
        let ns = NetNs::at(self.netns_path(&c.id));
        match &c.mode {
            Mode::Host => {
                if !ns.exists() {
                    let _ = ns.remove();
                    NetNs::pin(Path::new("/proc/self/ns/net"), ns.path())?;
                }
            }
            Mode::Container(_) => {}
            Mode::None | Mode::Bridge => {
                if !ns.exists() {
                    let _ = ns.remove();
                    NetNs::create(ns.path())?;
                }
                let eps: Vec<Endpoint> = c.endpoints_in_order().into_iter().cloned().collect();
                for (i, ep) in eps.iter().enumerate() {
                    if self.nl.link_by_name(&ep.veth).await?.is_none() {
                        tracing::info!(
                            "reconcile: re-creating endpoint {} of {}",
                            ep.ifname,
                            c.name
                        );
                        let cn = Netlink::in_ns(&ns)?;
                        cn.delete_by_name(&ep.ifname).await?;
                        self.wire_endpoint(&ns, ep, i == 0).await?;
                    }
                }
                self.write_files(c)?;
            }
        }
        Ok(())
    }

    async fn ensure_bridge(&self, n: &Network) -> Result<()> {
        // A fixed address (02:42 + the gateway's, as containers' MACs
        // are made): the gateway's MAC never changes under the
        // containers' ARP caches.
        let i = self
            .nl
            .ensure_bridge(
                &n.bridge,
                n.options.mtu,
                Some(link::mac_for_ip(n.gateway())),
            )
            .await?;
        self.nl.add_addr(i, n.gateway(), n.subnet().prefix).await?;
        self.nl.set_up(i).await
    }

    // ---- lookups -------------------------------------------------------

    fn network_id(&self, name: &str) -> Result<String> {
        resolve(self.state.networks.values().map(|n| (&n.id, &n.name)), name)
            .map_or_else(|| not_found(format!("network {name} not found")), Ok)
    }

    fn container_id(&self, name: &str) -> Result<String> {
        resolve(
            self.state.containers.values().map(|c| (&c.id, &c.name)),
            name,
        )
        .map_or_else(|| not_found(format!("no such container: {name}")), Ok)
    }

    // ---- networks ------------------------------------------------------

    async fn network_create(&mut self, req: NetworkCreate) -> Result<Value> {
        let name = req.name.trim().to_string();
        if !valid_name(&name) {
            return bad(format!(
                "invalid network name {name:?}: use letters, digits, '_', '.', '-'"
            ));
        }
        if [HOST_NETWORK, NONE_NETWORK].contains(&name.as_str())
            || self.state.networks.values().any(|n| n.name == name)
        {
            return conflict(format!("network with name {name} already exists"));
        }
        if let Some(d) = &req.driver
            && d != "bridge"
        {
            return bad(format!(
                "unsupported driver {d:?}: netd supports the bridge driver"
            ));
        }
        let mut opts = NetworkOptions {
            icc: true,
            masquerade: true,
            internal: req.internal,
            mtu: self.cfg.mtu,
            host_binding_ipv4: Ipv4Addr::UNSPECIFIED,
        };
        let mut bridge = None;
        for (k, v) in &req.options {
            let key = k.strip_prefix("com.docker.network.bridge.").unwrap_or(k);
            let key = key
                .strip_prefix("com.docker.network.driver.")
                .unwrap_or(key);
            let boolean = || -> Result<bool> {
                match v.as_str() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => bad(format!(
                        "invalid value {v:?} for option {k}: expected true or false"
                    )),
                }
            };
            match key {
                "icc" | "enable_icc" => opts.icc = boolean()?,
                "masquerade" | "enable_ip_masquerade" => opts.masquerade = boolean()?,
                "mtu" => {
                    opts.mtu = v
                        .parse()
                        .ok()
                        .filter(|m| (68..=65535).contains(m))
                        .ok_or_else(|| {
                            ApiError::bad(format!("invalid mtu {v:?}: expected 68-65535"))
                        })?
                }
                "bridge-name" | "name" => {
                    if v.is_empty() || v.len() > 15 || v.contains(['/', ' ', ':']) {
                        return bad(format!(
                            "invalid bridge name {v:?}: at most 15 characters, no '/', ':' or spaces"
                        ));
                    }
                    bridge = Some(v.clone())
                }
                "host-binding-ipv4" | "host_binding_ipv4" => {
                    opts.host_binding_ipv4 = v
                        .parse()
                        .map_err(|_| ApiError::bad(format!("invalid host-binding-ipv4 {v:?}")))?
                }
                _ => {
                    return bad(format!(
                        "unknown network option {k:?} (known: icc, masquerade, mtu, bridge-name, host-binding-ipv4)"
                    ));
                }
            }
        }
        let bridge = bridge.unwrap_or_else(|| format!("{BRIDGE_PREFIX}{}", &rand_id()[..10]));
        if self.state.networks.values().any(|n| n.bridge == bridge)
            || self.nl.link_by_name(&bridge).await?.is_some()
        {
            return conflict(format!("bridge {bridge} already exists"));
        }
        let taken: Vec<Cidr> = self.state.networks.values().map(|n| n.subnet()).collect();
        let subnet = match &req.subnet {
            Some(s) => {
                let s: Cidr = s
                    .parse()
                    .map_err(|e: anyhow::Error| ApiError::bad(format!("{e:#}")))?;
                if let Some(o) = self
                    .state
                    .networks
                    .values()
                    .find(|n| n.subnet().overlaps(&s))
                {
                    return conflict(format!(
                        "subnet {s} overlaps with network {} ({})",
                        o.name,
                        o.subnet()
                    ));
                }
                for (addr, prefix) in self.nl.route_prefixes().await? {
                    let r = Cidr::containing(addr, prefix);
                    if r.overlaps(&s) && !self.state.networks.values().any(|n| n.subnet() == r) {
                        return conflict(format!(
                            "subnet {s} overlaps with a route of the host ({r})"
                        ));
                    }
                }
                s
            }
            None => {
                if req.gateway.is_some() || req.ip_range.is_some() {
                    return bad("--gateway and --ip-range need --subnet");
                }
                let mut all = taken.clone();
                for (addr, prefix) in self.nl.route_prefixes().await? {
                    all.push(Cidr::containing(addr, prefix));
                }
                ipam::pick_subnet(&self.cfg.pools, &all)
                    .map_err(|e| ApiError::bad(format!("{e:#}")))?
            }
        };
        let gateway = match &req.gateway {
            Some(g) => g.parse().map_err(|_| {
                ApiError::bad(format!("invalid gateway {g:?}: not an IPv4 address"))
            })?,
            None => subnet.first_host(),
        };
        let ip_range = match &req.ip_range {
            Some(r) => Some(
                r.parse::<Cidr>()
                    .map_err(|e| ApiError::bad(format!("{e:#}")))?,
            ),
            None => None,
        };
        let ipam = Allocator::new(subnet, gateway, ip_range)
            .map_err(|e| ApiError::bad(format!("{e:#}")))?;
        let net = Network {
            id: rand_id(),
            name,
            created: now(),
            bridge,
            ipam,
            options: opts,
            raw_options: req.options.clone(),
            default: false,
        };
        // Apply, rolling back the bridge if anything later fails.
        let applied = async {
            self.ensure_bridge(&net).await?;
            let mut next = self.state.clone();
            next.networks.insert(net.id.clone(), net.clone());
            self.dp.sync(&next)?;
            self.store.save(&next)?;
            self.state = next;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = applied {
            let _ = self.nl.delete_by_name(&net.bridge).await;
            let _ = self.dp.sync(&self.state);
            return Err(e);
        }
        Ok(json!({ "Id": net.id, "Warning": "" }))
    }

    async fn network_rm(&mut self, name: &str) -> Result<Value> {
        if [HOST_NETWORK, NONE_NETWORK].contains(&name) {
            return bad(format!(
                "{name} is a pre-defined network and cannot be removed"
            ));
        }
        let id = self.network_id(name)?;
        let net = self.state.networks[&id].clone();
        if net.default {
            return bad("bridge is a pre-defined network and cannot be removed");
        }
        let users: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.endpoints.contains_key(&id))
            .map(|c| c.name.as_str())
            .collect();
        if !users.is_empty() {
            return conflict(format!(
                "error while removing network: network {} has active endpoints ({})",
                net.name,
                users.join(", ")
            ));
        }
        let mut next = self.state.clone();
        next.networks.remove(&id);
        self.dp.sync(&next)?;
        self.nl.delete_by_name(&net.bridge).await?;
        self.store.save(&next)?;
        self.state = next;
        Ok(json!(net.name))
    }

    fn network_json(&self, n: &Network) -> Value {
        let containers: serde_json::Map<String, Value> = self
            .state
            .containers
            .values()
            .filter_map(|c| {
                let ep = c.endpoints.get(&n.id)?;
                Some((
                    c.id.clone(),
                    json!({
                        "Name": c.name,
                        "EndpointID": ep.id,
                        "MacAddress": link::fmt_mac(ep.mac),
                        "IPv4Address": format!("{}/{}", ep.ip, n.subnet().prefix),
                        "IPv6Address": "",
                    }),
                ))
            })
            .collect();
        let mut cfg =
            json!({ "Subnet": n.subnet().to_string(), "Gateway": n.gateway().to_string() });
        if let Some(r) = n.ipam.ip_range() {
            cfg["IPRange"] = json!(r.to_string());
        }
        json!({
            "Name": n.name,
            "Id": n.id,
            "Created": n.created,
            "Scope": "local",
            "Driver": "bridge",
            "EnableIPv6": false,
            "IPAM": { "Driver": "default", "Options": {}, "Config": [cfg] },
            "Internal": n.options.internal,
            "Attachable": false,
            "Ingress": false,
            "ConfigOnly": false,
            "Containers": containers,
            "DNS": self.dns.status(&n.id),
            "Options": {
                "com.docker.network.bridge.name": n.bridge,
                "com.docker.network.bridge.enable_icc": n.options.icc.to_string(),
                "com.docker.network.bridge.enable_ip_masquerade": n.options.masquerade.to_string(),
                "com.docker.network.bridge.host_binding_ipv4": n.options.host_binding_ipv4.to_string(),
                "com.docker.network.driver.mtu": n.options.mtu.to_string(),
                "com.docker.network.bridge.default_bridge": n.default.to_string(),
            },
            "Labels": {},
        })
    }

    fn builtin_json(name: &str) -> Value {
        json!({
            "Name": name, "Id": name, "Created": "", "Scope": "local", "Driver": name,
            "EnableIPv6": false, "IPAM": { "Driver": "default", "Options": {}, "Config": [] },
            "Internal": false, "Attachable": false, "Ingress": false, "ConfigOnly": false,
            "Containers": {}, "Options": {}, "Labels": {},
        })
    }

    fn network_inspect(&self, name: &str) -> Result<Value> {
        if [HOST_NETWORK, NONE_NETWORK].contains(&name) {
            return Ok(Self::builtin_json(name));
        }
        let id = self.network_id(name)?;
        Ok(self.network_json(&self.state.networks[&id]))
    }

    fn network_list(&self) -> Value {
        let mut v: Vec<Value> = self
            .state
            .networks
            .values()
            .map(|n| self.network_json(n))
            .collect();
        v.push(Self::builtin_json(HOST_NETWORK));
        v.push(Self::builtin_json(NONE_NETWORK));
        Value::Array(v)
    }

    // ---- containers ----------------------------------------------------

    fn used_bindings(&self, except: Option<&str>) -> Vec<PortBinding> {
        self.state
            .containers
            .values()
            .filter(|c| c.status == Status::Running && Some(c.id.as_str()) != except)
            .flat_map(|c| c.ports.iter().copied())
            .collect()
    }

    fn conflicts(a: &PortBinding, b: &PortBinding) -> bool {
        a.proto == b.proto
            && a.host_port == b.host_port
            && (a.host_ip == b.host_ip || a.host_ip.is_unspecified() || b.host_ip.is_unspecified())
    }

    /// Concrete bindings for a container's specs, checked against every
    /// other running container's.
    fn allocate_ports(&mut self, c: &Container, net: &Network) -> Result<Vec<PortBinding>> {
        let mut used = self.used_bindings(Some(&c.id));
        let default_ip = IpAddr::V4(net.options.host_binding_ipv4);
        let mut specs = c.port_specs.clone();
        if c.publish_all {
            for ((a, b), proto) in &c.exposed {
                specs.push(PortSpec {
                    host_ip: None,
                    host_ports: None,
                    container_ports: (*a, *b),
                    proto: *proto,
                });
            }
        }
        let mut next = self.state.next_ephemeral.clone();
        let mut out: Vec<PortBinding> = Vec::new();
        for spec in &specs {
            let mut spec = spec.clone();
            if spec.host_ip.is_none() {
                spec.host_ip = Some(default_ip);
            }
            let taken = used.clone();
            let mut alloc = |proto: Proto, ip: IpAddr| -> Result<u16> {
                let start = *next.get(&proto).unwrap_or(&EPHEMERAL.0);
                let span = u32::from(EPHEMERAL.1 - EPHEMERAL.0) + 1;
                for i in 0..span {
                    let p = EPHEMERAL.0 + ((u32::from(start - EPHEMERAL.0) + i) % span) as u16;
                    let cand = PortBinding {
                        host_ip: ip,
                        host_port: p,
                        container_port: 0,
                        proto,
                    };
                    if !taken
                        .iter()
                        .chain(out.iter())
                        .any(|b| Self::conflicts(b, &cand))
                    {
                        next.insert(proto, if p == EPHEMERAL.1 { EPHEMERAL.0 } else { p + 1 });
                        return Ok(p);
                    }
                }
                Err(anyhow!(
                    "no free host port left in {}-{}",
                    EPHEMERAL.0,
                    EPHEMERAL.1
                ))
            };
            let bs =
                portspec::expand(&spec, &mut alloc).map_err(|e| ApiError::bad(format!("{e:#}")))?;
            for b in bs {
                if let Some(o) = used
                    .iter()
                    .chain(out.iter())
                    .find(|o| Self::conflicts(o, &b))
                {
                    return conflict(format!(
                        "port is already allocated: {}:{}/{} is published already ({}:{})",
                        b.host_ip, b.host_port, b.proto, o.host_ip, o.host_port
                    ));
                }
                out.push(b);
            }
        }
        used.extend(out.iter().copied());
        self.state.next_ephemeral = next;
        Ok(out)
    }

    async fn container_create(&mut self, req: ContainerCreate) -> Result<Value> {
        let id = rand_id();
        let name = match req.name.clone() {
            Some(n) if !valid_name(&n) => {
                return bad(format!(
                    "invalid container name {n:?}: use letters, digits, '_', '.', '-'"
                ));
            }
            Some(n) => n,
            None => format!("netd_{}", &id[..8]),
        };
        if self.state.containers.values().any(|c| c.name == name) {
            return conflict(format!("the container name {name:?} is already in use"));
        }
        let mode_s = req
            .network
            .clone()
            .unwrap_or_else(|| DEFAULT_NETWORK.into());
        let mut specs = Vec::new();
        for p in &req.publish {
            specs.push(portspec::parse(p).map_err(|e| ApiError::bad(format!("{e:#}")))?);
        }
        let mut exposed = Vec::new();
        for e in &req.expose {
            exposed.push(portspec::parse_expose(e).map_err(|e| ApiError::bad(format!("{e:#}")))?);
        }
        for s in &specs {
            exposed.push((s.container_ports, s.proto));
        }
        let mut warnings = Vec::new();
        let mode = if mode_s == HOST_NETWORK {
            if !specs.is_empty() || req.publish_all {
                warnings
                    .push("Published ports are discarded when using host network mode".to_string());
                specs.clear();
            }
            Mode::Host
        } else if mode_s == NONE_NETWORK {
            if !specs.is_empty() || req.publish_all {
                return bad("Conflicting options: port publishing and the none network mode");
            }
            Mode::None
        } else if let Some(target) = mode_s.strip_prefix("container:") {
            if !specs.is_empty() || req.publish_all {
                return bad(
                    "Conflicting options: port publishing and the container type network mode",
                );
            }
            let tid = self.container_id(target)?;
            if self.state.containers[&tid].status != Status::Running {
                return conflict(format!(
                    "cannot join the network of container {target}: it is not running"
                ));
            }
            Mode::Container(tid)
        } else {
            Mode::Bridge
        };
        if (req.ip.is_some() || req.mac_address.is_some()) && mode != Mode::Bridge {
            return bad("--ip and --mac-address need a bridge network");
        }
        let network = match mode {
            Mode::Bridge => Some(self.network_id(&mode_s)?),
            _ => None,
        };
        let requested_ip = match &req.ip {
            Some(s) => Some(
                s.parse::<Ipv4Addr>()
                    .map_err(|_| ApiError::bad(format!("invalid --ip {s:?}")))?,
            ),
            None => None,
        };
        let requested_mac = match &req.mac_address {
            Some(s) => Some(link::parse_mac(s).map_err(|e| ApiError::bad(format!("{e:#}")))?),
            None => None,
        };
        if let (Some(ip), Some(net)) = (requested_ip, &network) {
            let n = &self.state.networks[net];
            if !n.subnet().contains(ip) {
                return bad(format!(
                    "--ip {ip} is outside the subnet {} of network {}",
                    n.subnet(),
                    n.name
                ));
            }
        }
        let requested_aliases = check_aliases(&req.network_aliases)?;
        if !requested_aliases.is_empty()
            && network
                .as_ref()
                .is_none_or(|n| self.state.networks[n].default)
        {
            return bad(
                "network-scoped aliases are supported only for containers on user-defined networks",
            );
        }
        let dns = self.dns_settings(&req, &mode, network.as_deref())?;
        let c = Container {
            id: id.clone(),
            name: name.clone(),
            created: now(),
            hostname: req.hostname.clone().unwrap_or_else(|| id[..12].to_string()),
            mode,
            status: Status::Exited,
            endpoints: BTreeMap::new(),
            requested_network: network,
            requested_ip,
            requested_mac,
            port_specs: specs,
            publish_all: req.publish_all,
            exposed,
            ports: vec![],
            pids: vec![],
            requested_aliases,
            dns,
        };
        self.start_container(c).await?;
        Ok(json!({ "Id": id, "Warnings": warnings }))
    }

    /// Validates a container's name resolution settings.
    fn dns_settings(
        &self,
        req: &ContainerCreate,
        mode: &Mode,
        network: Option<&str>,
    ) -> Result<DnsSettings> {
        let mut d = DnsSettings::default();
        for s in &req.dns {
            d.servers.push(
                s.parse().map_err(|_| {
                    ApiError::bad(format!("invalid --dns {s:?}: not an IP address"))
                })?,
            );
        }
        for s in &req.dns_search {
            if s != "." && !valid_hostname(s.trim_end_matches('.')) {
                return bad(format!("invalid --dns-search {s:?}: not a domain name"));
            }
            d.search.push(s.clone());
        }
        for s in &req.dns_options {
            if s.is_empty() || s.contains(char::is_whitespace) {
                return bad(format!("invalid --dns-option {s:?}"));
            }
            d.options.push(s.clone());
        }
        let gateway = network.map(|n| self.state.networks[n].gateway());
        for s in &req.extra_hosts {
            d.extra_hosts
                .push(dns::files::parse_add_host(s, gateway).map_err(ApiError::bad)?);
        }
        if !req.links.is_empty() && *mode != Mode::Bridge {
            return bad("conflicting options: --link needs a bridge network");
        }
        for s in &req.links {
            let (name, alias) = s.split_once(':').unwrap_or((s, s));
            let target = self
                .container_id(name)
                .map_err(|_| ApiError::not_found(format!("could not get container for {name}")))?;
            let t = &self.state.containers[&target];
            if t.status != Status::Running {
                return conflict(format!("cannot link to a non running container: {name}"));
            }
            if !valid_hostname(alias) {
                return bad(format!("invalid --link {s:?}: bad alias {alias:?}"));
            }
            d.links.push(Link {
                target,
                alias: alias.to_string(),
            });
        }
        Ok(d)
    }

    /// Builds the container's networking (validating IPs and ports first)
    /// and persists it as running. On failure nothing is left behind.
    async fn start_container(&mut self, mut c: Container) -> Result<()> {
        let saved = self.state.clone();
        let result = self.start_inner(&mut c).await;
        match result {
            Ok(()) => {
                c.status = Status::Running;
                self.state.containers.insert(c.id.clone(), c.clone());
                let r = self
                    .dp
                    .sync(&self.state)
                    .and_then(|_| self.store.save(&self.state));
                if let Err(e) = r {
                    self.teardown_sandbox(&c).await;
                    self.state = saved;
                    let _ = self.dp.sync(&self.state);
                    return Err(e);
                }
                Ok(())
            }
            Err(e) => {
                self.teardown_sandbox(&c).await;
                self.state = saved;
                Err(e)
            }
        }
    }

    async fn start_inner(&mut self, c: &mut Container) -> Result<()> {
        let ns_path = self.netns_path(&c.id);
        match c.mode.clone() {
            Mode::Host => {
                NetNs::pin(Path::new("/proc/self/ns/net"), &ns_path)?;
            }
            Mode::Container(_) => {}
            Mode::None => {
                NetNs::create(&ns_path)?;
            }
            Mode::Bridge => {
                // Validate and allocate everything before touching the kernel.
                let nets: Vec<String> = if c.endpoints.is_empty() {
                    c.requested_network.iter().cloned().collect()
                } else {
                    c.endpoints_in_order()
                        .iter()
                        .map(|e| e.network.clone())
                        .collect()
                };
                let mut eps = BTreeMap::new();
                for (i, nid) in nets.iter().enumerate() {
                    let prev = c.endpoints.get(nid).cloned();
                    let want_ip =
                        prev.as_ref()
                            .map(|e| e.ip)
                            .or(if i == 0 { c.requested_ip } else { None });
                    let want_mac = prev.as_ref().map(|e| e.mac).or(if i == 0 {
                        c.requested_mac
                    } else {
                        None
                    });
                    let mut ep = self.new_endpoint(nid, want_ip, want_mac, i, prev.is_some())?;
                    ep.aliases = match &prev {
                        Some(p) => p.aliases.clone(),
                        None if i == 0 => c.requested_aliases.clone(),
                        None => vec![],
                    };
                    eps.insert(nid.clone(), ep);
                }
                c.endpoints = eps;
                let first = c.primary().map(|e| e.network.clone());
                if let Some(nid) = first {
                    let net = self.state.networks[&nid].clone();
                    c.ports = self.allocate_ports(c, &net)?;
                }
                let ns = NetNs::create(&ns_path)?;
                for (i, ep) in c.endpoints_in_order().into_iter().enumerate() {
                    self.wire_endpoint(&ns, ep, i == 0).await?;
                }
            }
        }
        self.write_files(c)?;
        Ok(())
    }

    /// Reserves an address (and names) for an endpoint on network `nid`.
    fn new_endpoint(
        &mut self,
        nid: &str,
        ip: Option<Ipv4Addr>,
        mac: Option<[u8; 6]>,
        index: usize,
        already_reserved: bool,
    ) -> Result<Endpoint> {
        let net = self
            .state
            .networks
            .get_mut(nid)
            .context("network vanished")?;
        let ip = match ip {
            Some(ip) if already_reserved && net.ipam.is_used(ip) => ip,
            Some(ip) => {
                net.ipam
                    .reserve(ip)
                    .map_err(|e| ApiError::conflict(format!("{e:#}")))?;
                ip
            }
            None => net
                .ipam
                .allocate()
                .map_err(|e| ApiError::conflict(format!("{e:#}")))?,
        };
        let id = rand_id();
        Ok(Endpoint {
            veth: format!("{VETH_PREFIX}{}", &id[..9]),
            id,
            network: nid.to_string(),
            ip,
            mac: mac.unwrap_or_else(|| link::mac_for_ip(ip)),
            ifname: format!("eth{index}"),
            aliases: vec![],
        })
    }

    async fn wire_endpoint(&self, ns: &NetNs, ep: &Endpoint, default_route: bool) -> Result<()> {
        let net = &self.state.networks[&ep.network];
        let br = self.nl.index_of(&net.bridge).await?;
        let vi = self
            .nl
            .create_veth(&ep.veth, &ep.ifname, ns, ep.mac, net.options.mtu)
            .await?;
        self.nl.set_master_up(vi, br).await?;
        if self.dp.wants_hairpin_mode() {
            self.nl.set_hairpin(vi).await?;
        }
        let cn = Netlink::in_ns(ns)?;
        let ci = cn.index_of(&ep.ifname).await?;
        cn.add_addr(ci, ep.ip, net.subnet().prefix).await?;
        cn.set_up(ci).await?;
        if default_route && !net.options.internal {
            cn.add_default_route(net.gateway()).await?;
        }
        Ok(())
    }

    /// Writes the container's /etc/hosts, /etc/resolv.conf and hostname
    /// files. They are bind-mounted into running processes, so they are
    /// rewritten in place (same inode), and only when they change.
    fn write_files(&self, c: &Container) -> Result<()> {
        let dir = self.files_dir(&c.id);
        std::fs::create_dir_all(&dir)?;
        let eps = c.endpoints_in_order();
        let nets: Vec<&Network> = eps
            .iter()
            .filter_map(|e| self.state.networks.get(&e.network))
            .collect();
        // The first user-defined network's embedded DNS server.
        let embedded = nets.iter().find(|n| !n.default).map(|n| n.gateway());
        let resolv = dns::files::container_resolv_conf(
            &ResolvConf::host(),
            embedded,
            &c.dns.servers,
            &self.cfg.dns,
            &c.dns.search,
            &c.dns.options,
        );
        let own: Vec<(IpAddr, Vec<String>)> = eps
            .iter()
            .map(|e| (IpAddr::V4(e.ip), vec![c.hostname.clone(), c.name.clone()]))
            .collect();
        // --link on the default bridge: the target's address there, one
        // way (only this container's file has it).
        let links: Vec<(IpAddr, Vec<String>)> = eps
            .iter()
            .zip(&nets)
            .filter(|(_, n)| n.default)
            .flat_map(|(e, _)| {
                c.dns.links.iter().filter_map(|l| {
                    let t = self.state.containers.get(&l.target)?;
                    let te = t.endpoints.get(&e.network)?;
                    (t.status == Status::Running)
                        .then(|| (IpAddr::V4(te.ip), vec![l.alias.clone(), t.name.clone()]))
                })
            })
            .collect();
        let hosts = dns::files::hosts(&own, &links, &c.dns.extra_hosts);
        write_if_changed(&dir.join("hosts"), &hosts)?;
        write_if_changed(&dir.join("resolv.conf"), &resolv.render())?;
        write_if_changed(&dir.join("hostname"), &format!("{}\n", c.hostname))?;
        Ok(())
    }

    /// Removes a container's links and namespace (not its state entry).
    async fn teardown_sandbox(&self, c: &Container) {
        for ep in c.endpoints.values() {
            if let Err(e) = self.nl.delete_by_name(&ep.veth).await {
                tracing::warn!("removing {}: {e:#}", ep.veth);
            }
        }
        if !matches!(c.mode, Mode::Container(_)) {
            let _ = NetNs::at(self.netns_path(&c.id)).remove();
        }
    }

    fn kill_processes(&self, c: &Container) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let mut pids: Vec<i32> = c.pids.clone();
        if matches!(c.mode, Mode::Bridge | Mode::None)
            && let Ok(ino) = NetNs::at(self.netns_path(&c.id)).inode()
        {
            pids.extend(crate::netns::pids_in(ino));
        }
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline
            && pids.iter().any(|p| kill(Pid::from_raw(*p), None).is_ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
    }

    async fn container_stop(&mut self, name: &str) -> Result<Value> {
        let id = self.container_id(name)?;
        let c = self.state.containers[&id].clone();
        if c.status != Status::Running {
            return Ok(json!(c.name));
        }
        self.kill_processes(&c);
        let mut next = self.state.clone();
        {
            let nc = next.containers.get_mut(&id).expect("exists");
            nc.status = Status::Exited;
            nc.ports.clear();
            nc.pids.clear();
        }
        self.dp.sync(&next)?;
        self.teardown_sandbox(&c).await;
        self.store.save(&next)?;
        self.state = next;
        Ok(json!(c.name))
    }

    async fn container_start(&mut self, name: &str) -> Result<Value> {
        let id = self.container_id(name)?;
        let c = self.state.containers[&id].clone();
        if c.status == Status::Running {
            return Ok(json!(c.name));
        }
        self.start_container(c.clone()).await?;
        Ok(json!(c.name))
    }

    async fn container_rm(&mut self, name: &str, force: bool) -> Result<Value> {
        let id = self.container_id(name)?;
        let c = self.state.containers[&id].clone();
        if c.status == Status::Running && !force {
            return conflict(format!(
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
            return conflict(format!(
                "cannot remove container {}: containers {} share its network namespace",
                c.name,
                dependents.join(", ")
            ));
        }
        if c.status == Status::Running {
            self.container_stop(&id).await?;
        }
        let mut next = self.state.clone();
        let c = next.containers.remove(&id).expect("exists");
        for ep in c.endpoints.values() {
            if let Some(n) = next.networks.get_mut(&ep.network) {
                n.ipam.release(ep.ip);
            }
        }
        self.store.save(&next)?;
        self.state = next;
        let _ = std::fs::remove_dir_all(self.files_dir(&id));
        Ok(json!(c.name))
    }

    async fn network_connect(&mut self, net: &str, req: Connect) -> Result<Value> {
        let nid = self.network_id(net)?;
        let cid = self.container_id(&req.container)?;
        let c = self.state.containers[&cid].clone();
        if c.mode != Mode::Bridge {
            return bad(format!(
                "container {} is not in bridge mode: cannot connect it to a network",
                c.name
            ));
        }
        if c.endpoints.contains_key(&nid) {
            return conflict(format!(
                "container {} is already connected to network {net}",
                c.name
            ));
        }
        let ip = match &req.ip {
            Some(s) => {
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| ApiError::bad(format!("invalid --ip {s:?}")))?;
                let n = &self.state.networks[&nid];
                if !n.subnet().contains(ip) {
                    return bad(format!(
                        "--ip {ip} is outside the subnet {} of network {}",
                        n.subnet(),
                        n.name
                    ));
                }
                Some(ip)
            }
            None => None,
        };
        let saved = self.state.clone();
        let index = (0..)
            .find(|i| !c.endpoints.values().any(|e| e.ifname == format!("eth{i}")))
            .unwrap_or(0);
        let aliases = check_aliases(&req.aliases)?;
        if !aliases.is_empty() && self.state.networks[&nid].default {
            return bad("network-scoped aliases are supported only for user-defined networks");
        }
        let mut ep = self.new_endpoint(&nid, ip, None, index, false)?;
        ep.aliases = aliases;
        let mut nc = c.clone();
        nc.endpoints.insert(nid.clone(), ep.clone());
        if c.status == Status::Running {
            let ns = NetNs::at(self.netns_path(&cid));
            let r = async {
                self.wire_endpoint(&ns, &ep, c.endpoints.is_empty()).await?;
                self.write_files(&nc)?;
                let mut next = self.state.clone();
                next.containers.insert(cid.clone(), nc.clone());
                self.dp.sync(&next)?;
                self.store.save(&next)?;
                self.state = next;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = r {
                let _ = self.nl.delete_by_name(&ep.veth).await;
                self.state = saved;
                let _ = self.dp.sync(&self.state);
                return Err(e);
            }
        } else {
            self.state.containers.insert(cid.clone(), nc);
            self.store.save(&self.state)?;
        }
        Ok(json!({}))
    }

    async fn network_disconnect(&mut self, net: &str, req: Connect) -> Result<Value> {
        let nid = self.network_id(net)?;
        let cid = self.container_id(&req.container)?;
        let c = self.state.containers[&cid].clone();
        let Some(ep) = c.endpoints.get(&nid).cloned() else {
            return bad(format!(
                "container {} is not connected to network {net}",
                c.name
            ));
        };
        let mut next = self.state.clone();
        {
            let nc = next.containers.get_mut(&cid).expect("exists");
            nc.endpoints.remove(&nid);
            if nc.endpoints.is_empty() {
                nc.ports.clear();
            }
            next.networks
                .get_mut(&nid)
                .expect("exists")
                .ipam
                .release(ep.ip);
        }
        self.dp.sync(&next)?;
        self.nl.delete_by_name(&ep.veth).await?;
        self.write_files(&next.containers[&cid])?;
        self.store.save(&next)?;
        self.state = next;
        Ok(json!({}))
    }

    fn container_json(&self, c: &Container) -> Value {
        let sandbox = match &c.mode {
            Mode::Container(t) => self.netns_path(t),
            _ => self.netns_path(&c.id),
        };
        let mut networks = serde_json::Map::new();
        for ep in c.endpoints.values() {
            if let Some(n) = self.state.networks.get(&ep.network) {
                networks.insert(
                    n.name.clone(),
                    json!({
                        "NetworkID": n.id,
                        "EndpointID": ep.id,
                        "Gateway": n.gateway().to_string(),
                        "IPAddress": ep.ip.to_string(),
                        "IPPrefixLen": n.subnet().prefix,
                        "MacAddress": link::fmt_mac(ep.mac),
                        "InterfaceName": ep.ifname,
                        "HostInterfaceName": ep.veth,
                        "Aliases": ep.aliases,
                        // What the network's DNS server answers for this
                        // endpoint (none on the default bridge).
                        "DNSNames": if n.default { vec![] } else {
                            let mut v = vec![c.name.clone(), c.hostname.clone(), c.id[..12].to_string()];
                            v.extend(ep.aliases.iter().cloned());
                            v.dedup();
                            v
                        },
                    }),
                );
            }
        }
        let first = c.primary();
        let first_net = first.and_then(|e| self.state.networks.get(&e.network));
        let mut ports = serde_json::Map::new();
        for ((a, b), proto) in &c.exposed {
            for p in *a..=*b {
                ports.entry(format!("{p}/{proto}")).or_insert(Value::Null);
            }
        }
        for b in &c.ports {
            let e = ports
                .entry(format!("{}/{}", b.container_port, b.proto))
                .or_insert(json!([]));
            if e.is_null() {
                *e = json!([]);
            }
            e.as_array_mut().expect("array").push(json!({
                "HostIp": b.host_ip.to_string(),
                "HostPort": b.host_port.to_string(),
            }));
        }
        let mode = match &c.mode {
            Mode::Bridge => c
                .requested_network
                .as_ref()
                .and_then(|n| self.state.networks.get(n))
                .map(|n| {
                    if n.default {
                        "bridge".to_string()
                    } else {
                        n.name.clone()
                    }
                })
                .unwrap_or_else(|| "bridge".into()),
            Mode::Host => "host".into(),
            Mode::None => "none".into(),
            Mode::Container(t) => format!(
                "container:{}",
                self.state
                    .containers
                    .get(t)
                    .map(|c| c.name.as_str())
                    .unwrap_or(t)
            ),
        };
        // container:NAME shares the target's namespace and its files.
        let files = match &c.mode {
            Mode::Container(t) => self.files_dir(t),
            _ => self.files_dir(&c.id),
        };
        let links: Vec<String> = c
            .dns
            .links
            .iter()
            .map(|l| {
                let t = self.state.containers.get(&l.target);
                format!(
                    "{}:{}",
                    t.map(|t| t.name.as_str()).unwrap_or(&l.target),
                    l.alias
                )
            })
            .collect();
        json!({
            "Id": c.id,
            "Name": format!("/{}", c.name),
            "Created": c.created,
            "State": { "Status": match c.status { Status::Running => "running", Status::Exited => "exited" },
                       "Running": c.status == Status::Running, "Pids": c.pids },
            "Config": { "Hostname": c.hostname },
            "HostConfig": {
                "NetworkMode": mode,
                "Dns": c.dns.servers.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "DnsSearch": c.dns.search,
                "DnsOptions": c.dns.options,
                "ExtraHosts": c.dns.extra_hosts.iter().map(|(n, i)| format!("{n}:{i}")).collect::<Vec<_>>(),
                "Links": links,
            },
            "HostsPath": files.join("hosts"),
            "ResolvConfPath": files.join("resolv.conf"),
            "HostnamePath": files.join("hostname"),
            "NetworkSettings": {
                "SandboxKey": sandbox,
                "Ports": ports,
                "IPAddress": first.map(|e| e.ip.to_string()).unwrap_or_default(),
                "IPPrefixLen": first_net.map(|n| n.subnet().prefix).unwrap_or(0),
                "Gateway": first_net.map(|n| n.gateway().to_string()).unwrap_or_default(),
                "MacAddress": first.map(|e| link::fmt_mac(e.mac)).unwrap_or_default(),
                "Networks": networks,
            },
            "PortBindings": c.ports.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        })
    }

    /// Datapath counters, with per-endpoint figures keyed by container.
    fn stats(&mut self) -> Result<Value> {
        let st = self.dp.stats()?;
        let mut v = serde_json::to_value(&st)?;
        let mut by_name = serde_json::Map::new();
        for c in self.state.containers.values() {
            for ep in c.endpoints.values() {
                let idx = link::ifindex(&ep.veth);
                if let Some(s) = st.endpoints.get(&idx) {
                    let net = self.state.networks.get(&ep.network).map(|n| n.name.clone());
                    let mut s = serde_json::to_value(s)?;
                    s["Network"] = json!(net);
                    s["Interface"] = json!(ep.veth);
                    by_name.insert(format!("{}/{}", c.name, ep.ifname), s);
                }
            }
        }
        if st.datapath == "ebpf" {
            v["Endpoints"] = Value::Object(by_name);
        }
        Ok(v)
    }

    pub async fn shutdown(&mut self) {
        if !self.cfg.cleanup_on_exit {
            tracing::info!("shutting down; containers keep their networking (live restore)");
            return;
        }
        tracing::info!("shutting down and removing everything (--cleanup-on-exit)");
        let cs: Vec<Container> = self.state.containers.values().cloned().collect();
        for c in &cs {
            if c.status == Status::Running {
                self.kill_processes(c);
                self.teardown_sandbox(c).await;
            }
        }
        for n in self.state.networks.values() {
            let _ = self.nl.delete_by_name(&n.bridge).await;
        }
        if let Err(e) = self.dp.cleanup() {
            tracing::warn!("datapath cleanup: {e:#}");
        }
        self.state = State::default();
        let _ = self.store.save(&self.state);
    }

    // ---- API dispatch --------------------------------------------------

    pub async fn handle(&mut self, req: Request) -> Response {
        let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        let body = req.body.clone();
        let r = match (req.method.as_str(), parts.as_slice()) {
            ("GET", ["_ping"]) => Ok(json!("OK")),
            ("GET", ["info"]) => Ok(json!({
                "Datapath": self.dp.name(),
                "LastSyncMicros": self.dp.last_sync.as_micros() as u64,
            })),
            ("GET", ["stats"]) => self.stats(),
            ("GET", ["networks"]) => Ok(self.network_list()),
            ("POST", ["networks", "create"]) => self.network_create(parse_body(body)?).await,
            ("GET", ["networks", id]) => self.network_inspect(id),
            ("DELETE", ["networks", id]) => self.network_rm(id).await,
            ("POST", ["networks", id, "connect"]) => {
                self.network_connect(id, parse_body(body)?).await
            }
            ("POST", ["networks", id, "disconnect"]) => {
                self.network_disconnect(id, parse_body(body)?).await
            }
            ("GET", ["containers", "json"]) => {
                let all = req.query_flag("all");
                Ok(Value::Array(
                    self.state
                        .containers
                        .values()
                        .filter(|c| all || c.status == Status::Running)
                        .map(|c| self.container_json(c))
                        .collect(),
                ))
            }
            ("POST", ["containers", "create"]) => self.container_create(parse_body(body)?).await,
            ("GET", ["containers", id, "json"]) => self
                .container_id(id)
                .map(|i| self.container_json(&self.state.containers[&i])),
            ("POST", ["containers", id, "start"]) => self.container_start(id).await,
            ("POST", ["containers", id, "stop"]) => self.container_stop(id).await,
            ("POST", ["containers", id, "pids"]) => {
                let pid = body["Pid"]
                    .as_i64()
                    .ok_or_else(|| ApiError::bad("missing Pid"))? as i32;
                match self.container_id(id) {
                    Ok(i) => {
                        let c = self.state.containers.get_mut(&i).expect("exists");
                        c.pids.retain(|p| {
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), None).is_ok()
                        });
                        c.pids.push(pid);
                        self.store.save(&self.state).map(|_| json!({}))
                    }
                    Err(e) => Err(e),
                }
            }
            ("DELETE", ["containers", id]) => self.container_rm(id, req.query_flag("force")).await,
            _ => {
                return Err(ApiError::not_found(format!(
                    "no such endpoint: {} {}",
                    req.method, req.path
                )));
            }
        };
        if req.method != "GET" {
            // Names follow containers at once: start, stop, connect,
            // disconnect, create and rm all land here.
            self.sync_dns().await;
        }
        r.map_err(ApiError::from)
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

/// Replaces a file's contents in place (keeping its inode, which bind
/// mounts refer to), unless it already has them.
fn write_if_changed(path: &Path, contents: &str) -> Result<()> {
    if std::fs::read(path).is_ok_and(|b| b == contents.as_bytes()) {
        return Ok(());
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn parse_body<T: serde::de::DeserializeOwned>(v: Value) -> std::result::Result<T, ApiError> {
    serde_json::from_value(if v.is_null() { json!({}) } else { v })
        .map_err(|e| ApiError::bad(format!("malformed request body: {e}")))
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    let socket = cfg.socket.clone();
    let daemon = Daemon::start(cfg).await?;
    tracing::info!(
        "netd daemon ready: datapath {}, socket {}",
        daemon.dp.name(),
        socket.display()
    );
    let daemon = Arc::new(Mutex::new(daemon));
    let d2 = daemon.clone();
    let handler = Arc::new(move |req: Request| {
        let d = d2.clone();
        async move { d.lock().await.handle(req).await }
    });
    // Conntrack GC: on a thread of its own, never under the daemon's lock.
    if let Some(mut gc) = daemon.lock().await.dp.conntrack_gc()? {
        std::thread::Builder::new()
            .name("netd-ct-gc".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    match gc.run() {
                        Ok(r) if r.expired > 0 => tracing::debug!(
                            "conntrack gc: {} of {} entries expired ({} us CPU)",
                            r.expired,
                            r.entries,
                            r.cpu_micros
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("conntrack gc: {e:#}"),
                    }
                }
            })?;
    }
    let dns_retry = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            let mut d = dns_retry.lock().await;
            // DNS listeners that could not bind are tried again, and a
            // changed host resolv.conf reaches the forwarders.
            d.sync_dns().await;
        }
    });
    let server = tokio::spawn({
        let socket = socket.clone();
        async move { api::serve(&socket, handler).await }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
        r = server => { r??; }
    }
    daemon.lock().await.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
