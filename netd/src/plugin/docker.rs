//! Docker's network driver plugin protocol: libnetwork's "remote" driver
//! (moby `libnetwork/docs/remote.md`, `libnetwork/drivers/remote/api`).
//!
//! dockerd finds a plugin named NAME by its socket,
//! `/run/docker/plugins/NAME.sock`, and POSTs JSON to `/Plugin.Activate`
//! and `/NetworkDriver.<Call>`; answers are JSON, errors `{"Err": ...}`.
//! This module holds the calls' bodies, their validation into netd's own
//! specs (a Docker network is a netd network, a Docker endpoint a
//! container with one endpoint and its published ports), and the
//! dispatch; what each call does is in `daemon::docker`.
//!
//! What Docker sends, observed with dockerd 20.10 (see
//! ENGINES-NOTES/README): `CreateNetwork` carries the pool and gateway
//! Docker's IPAM chose and the `-o` options under
//! `com.docker.network.generic`; `CreateEndpoint` the address Docker
//! chose and, with `--mac-address`, the MAC; `Join` the sandbox's
//! namespace path; `ProgramExternalConnectivity` (and `Join`, and
//! `CreateEndpoint`) the `-p`/`-P` bindings, which Docker does not
//! publish itself for a remote driver.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::{
    api::{
        ApiError, Request, Response, bad,
        server::Dialect,
        types::{NetworkCreate, NetworkSpec, parse_body, valid_name},
    },
    daemon::Shared,
    link,
    model::NetworkOwner,
    ports,
    portspec::{self, PortBinding, PortSpec, Proto},
    validate,
};

/// The plugin protocol's content type.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
/// Where dockerd looks for plugin sockets (hard-coded in dockerd).
pub const SOCKET_DIR: &str = "/run/docker/plugins";

/// The interface name prefix inside the container: Docker appends an
/// index (eth0, eth1, ...).
pub const DST_PREFIX: &str = "eth";

// Option keys libnetwork sends.
pub const OPT_GENERIC: &str = "com.docker.network.generic";
pub const OPT_INTERNAL: &str = "com.docker.network.internal";
pub const OPT_IPV6: &str = "com.docker.network.enable_ipv6";
pub const OPT_PORTMAP: &str = "com.docker.network.portmap";
pub const OPT_EXPOSED: &str = "com.docker.network.endpoint.exposedports";

/// A validation failure is a 400 (an ApiError keeps its status).
fn invalid(e: anyhow::Error) -> anyhow::Error {
    if e.is::<ApiError>() {
        e
    } else {
        ApiError::bad(format!("{e:#}")).into()
    }
}

fn plugin_error(e: &ApiError) -> Value {
    json!({ "Err": e.message })
}

/// How the plugin socket answers: Docker's content type and error shape.
pub const DIALECT: Dialect = Dialect {
    content_type: CONTENT_TYPE,
    error_body: plugin_error,
};

/// `/run/docker/plugins/NAME.sock`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

/// A plugin name: what `docker network create -d NAME` says, and a file
/// name under /run/docker/plugins.
pub fn check_name(name: &str) -> Result<()> {
    if !valid_name(name) {
        anyhow::bail!(
            "invalid Docker plugin name {name:?}: use letters, digits, '_', '.', '-' (at most 64), starting with a letter or digit"
        );
    }
    Ok(())
}

/// Go encodes a nil map or slice as `null`: read it as empty.
fn nullable<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A Docker object id (network, endpoint): 64 hex digits from Docker;
/// anything alphanumeric up to 64 characters is taken.
fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return bad(format!(
            "invalid {what} id {id:?}: expected Docker's hex id (at most 64 letters and digits)"
        ));
    }
    Ok(())
}

/// The short form of a Docker id (`docker network ls` shows 12 digits).
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A boolean option (Docker sends JSON booleans; strings are accepted).
fn flag(opts: &Map<String, Value>, key: &str) -> Result<bool> {
    match opts.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "1" => Ok(true),
        Some(Value::String(s)) if s == "false" || s == "0" || s.is_empty() => Ok(false),
        Some(v) => bad(format!(
            "invalid value {v} for {key}: expected true or false"
        )),
    }
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct IpamData {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `/NetworkDriver.CreateNetwork`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", deserialize_with = "nullable")]
    pub options: Map<String, Value>,
    #[serde(rename = "IPv4Data", deserialize_with = "nullable")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", deserialize_with = "nullable")]
    pub ipv6_data: Vec<IpamData>,
}

impl CreateNetwork {
    /// The netd network Docker asks for: Docker's pool and gateway, its
    /// `-o` options and `--internal` checked as `netd network create`
    /// checks them, named by the short id (Docker does not say the name).
    pub fn validate(self, plugin: &str, default_mtu: u32) -> Result<NetworkSpec> {
        check_id("network", &self.network_id)?;
        // `--ipv6`: Docker's IPAM gives the IPv6 pool (and gateway) as it
        // gives the IPv4 one; the network is dual-stack.
        let ipv6 = flag(&self.options, OPT_IPV6)? || !self.ipv6_data.is_empty();
        let (subnet6, gateway6) = match self.ipv6_data.as_slice() {
            [] if ipv6 => return bad("Docker gave no IPv6 pool for the --ipv6 network"),
            [] => (None, None),
            [d] => (Some(d.pool.clone()), strip_prefix_len(&d.gateway)),
            more => {
                return bad(format!(
                    "netd networks have one IPv6 subnet, Docker gave {} (use one IPv6 --subnet)",
                    more.len()
                ));
            }
        };
        let data = match self.ipv4_data.as_slice() {
            [d] => d,
            [] => return bad("Docker gave no IPv4 pool for the network"),
            more => {
                return bad(format!(
                    "netd networks have one IPv4 subnet, Docker gave {} (use one --subnet)",
                    more.len()
                ));
            }
        };
        let gateway = strip_prefix_len(&data.gateway);
        let mut options = BTreeMap::new();
        match self.options.get(OPT_GENERIC) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                validate::bounded("options", &m.keys().collect::<Vec<_>>(), 64)?;
                for (k, v) in m {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        other => {
                            return bad(format!(
                                "invalid value {other} for option {k}: expected a string"
                            ));
                        }
                    };
                    options.insert(k.clone(), v);
                }
            }
            Some(v) => return bad(format!("invalid {OPT_GENERIC} {v}: expected an object")),
        }
        let mut spec = NetworkCreate {
            name: short(&self.network_id).to_string(),
            driver: None,
            subnet: Some(data.pool.clone()),
            gateway,
            ip_range: None,
            internal: flag(&self.options, OPT_INTERNAL)?,
            options,
            enable_ipv6: ipv6,
            subnet6,
            gateway6,
            ..NetworkCreate::default()
        }
        .validate(default_mtu)?;
        spec.owner = NetworkOwner::Docker {
            plugin: plugin.to_string(),
            network: self.network_id.clone(),
        };
        spec.id = Some(self.network_id);
        Ok(spec)
    }
}

/// Docker's IPAM gives gateways as `ADDRESS/PREFIX`: the address.
fn strip_prefix_len(gateway: &str) -> Option<String> {
    match gateway.split_once('/') {
        _ if gateway.is_empty() => None,
        Some((ip, _)) => Some(ip.to_string()),
        None => Some(gateway.to_string()),
    }
}

/// Calls that name a network only.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct NetworkRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

impl NetworkRef {
    pub fn validate(self) -> Result<String> {
        check_id("network", &self.network_id)?;
        Ok(self.network_id)
    }
}

/// Calls that name an endpoint (`Leave`, `DeleteEndpoint`,
/// `EndpointOperInfo`, `RevokeExternalConnectivity`).
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// A checked endpoint reference: (Docker network id, endpoint id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub network: String,
    pub endpoint: String,
}

impl EndpointRef {
    pub fn validate(self) -> Result<Ids> {
        check_id("network", &self.network_id)?;
        check_id("endpoint", &self.endpoint_id)?;
        Ok(Ids {
            network: self.network_id,
            endpoint: self.endpoint_id,
        })
    }
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct EndpointInterface {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

/// `/NetworkDriver.CreateEndpoint`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface")]
    pub interface: Option<EndpointInterface>,
    #[serde(rename = "Options", deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

/// A checked `CreateEndpoint`: what Docker chose (the rest is netd's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub ids: Ids,
    /// Address and prefix length from Docker's IPAM.
    pub address: Option<(Ipv4Addr, u8)>,
    /// The IPv6 address and prefix length (`--ipv6` networks).
    pub address6: Option<(Ipv6Addr, u8)>,
    /// `--mac-address`.
    pub mac: Option<[u8; 6]>,
    /// `--expose` and the published ports' container side.
    pub exposed: Vec<((u16, u16), Proto)>,
}

impl CreateEndpoint {
    pub fn validate(self) -> Result<EndpointSpec> {
        let ids = EndpointRef {
            network_id: self.network_id,
            endpoint_id: self.endpoint_id,
        }
        .validate()?;
        let iface = self.interface.unwrap_or_default();
        let address6 = if iface.address_ipv6.is_empty() {
            None
        } else {
            let (ip, prefix) = iface.address_ipv6.split_once('/').with_context(|| {
                format!(
                    "invalid endpoint IPv6 address {:?}: expected ADDRESS/PREFIX",
                    iface.address_ipv6
                )
            })?;
            let ip: Ipv6Addr = ip.parse().with_context(|| {
                format!(
                    "invalid endpoint IPv6 address {:?}: not IPv6",
                    iface.address_ipv6
                )
            })?;
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 128).with_context(|| {
                format!("invalid endpoint IPv6 address {:?}", iface.address_ipv6)
            })?;
            Some((ip, prefix))
        };
        let address = if iface.address.is_empty() {
            None
        } else {
            let (ip, prefix) = iface.address.split_once('/').with_context(|| {
                format!(
                    "invalid endpoint address {:?}: expected ADDRESS/PREFIX",
                    iface.address
                )
            })?;
            let ip: Ipv4Addr = ip.parse().with_context(|| {
                format!("invalid endpoint address {:?}: not IPv4", iface.address)
            })?;
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .with_context(|| format!("invalid endpoint address {:?}", iface.address))?;
            Some((ip, prefix))
        };
        let mac = if iface.mac_address.is_empty() {
            None
        } else {
            let m = link::parse_mac(&iface.mac_address)?;
            validate::mac(&m)?;
            Some(m)
        };
        Ok(EndpointSpec {
            ids,
            address,
            address6,
            mac,
            exposed: exposed_ports(&self.options)?,
        })
    }
}

/// `/NetworkDriver.Join`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Options", deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

impl Join {
    /// The endpoint and the sandbox's namespace path (recorded, never
    /// opened: Docker moves the interface into it).
    pub fn validate(self) -> Result<(Ids, PathBuf)> {
        let ids = EndpointRef {
            network_id: self.network_id,
            endpoint_id: self.endpoint_id,
        }
        .validate()?;
        let key = &self.sandbox_key;
        if !key.starts_with('/') || key.len() > 4096 || key.contains('\0') {
            return bad(format!(
                "invalid SandboxKey {key:?}: expected the absolute path of the sandbox's namespace"
            ));
        }
        Ok((ids, PathBuf::from(key)))
    }
}

/// `/NetworkDriver.ProgramExternalConnectivity`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct ProgramExternal {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

impl ProgramExternal {
    /// The endpoint and its bindings, each checked as `-p` is.
    pub fn validate(self) -> Result<(Ids, Vec<Publish>)> {
        let ids = EndpointRef {
            network_id: self.network_id,
            endpoint_id: self.endpoint_id,
        }
        .validate()?;
        let maps: Vec<PortMap> = match self.options.get(OPT_PORTMAP) {
            None | Some(Value::Null) => vec![],
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| ApiError::bad(format!("invalid {OPT_PORTMAP}: {e}")))?,
        };
        validate::bounded("port bindings", &maps, MAX_BINDINGS)?;
        let publish = maps
            .iter()
            .map(PortMap::to_publish)
            .collect::<Result<Vec<_>>>()?;
        Ok((ids, coalesce(publish)))
    }
}

/// Most bindings one call may carry: every port of a protocol (`-p
/// 1-65535:1-65535` arrives as one binding per port).
pub const MAX_BINDINGS: usize = 2 * 65536;

/// Docker sends a `-p` range as one binding per port: consecutive ones
/// (same protocol and host address, host and container ports both one
/// more) become one range again, as `-p` would have parsed them, so
/// publishing a range costs what netd's own `-p` costs.
pub fn coalesce(publish: Vec<Publish>) -> Vec<Publish> {
    let mut out: Vec<Publish> = Vec::new();
    for p in publish {
        if let Some(last) = out.last_mut()
            && last.pick.is_none()
            && p.pick.is_none()
            && last.spec.proto == p.spec.proto
            && last.spec.host_ip == p.spec.host_ip
            && let (Some(lh), Some(ph)) = (last.spec.host_ports, p.spec.host_ports)
            && ph.0 == ph.1
            && u32::from(lh.1) + 1 == u32::from(ph.0)
            && u32::from(last.spec.container_ports.1) + 1 == u32::from(p.spec.container_ports.0)
            && p.spec.container_ports.0 == p.spec.container_ports.1
        {
            last.spec.host_ports = Some((lh.0, ph.0));
            last.spec.container_ports.1 = p.spec.container_ports.0;
            continue;
        }
        out.push(p);
    }
    out
}

/// One of Docker's port bindings (`types.PortBinding`). Proto: 6 TCP, 17
/// UDP, 132 SCTP. A `-p` range arrives as one binding per port; a host
/// range for one container port (`-p 8000-8010:80`) as HostPort 8000,
/// HostPortEnd 8010; `-P` and `-p 80` as HostPort 0.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(default)]
pub struct PortMap {
    #[serde(rename = "Proto")]
    pub proto: u32,
    /// The container address (unused: it is the endpoint's).
    #[serde(rename = "IP")]
    pub ip: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    #[serde(rename = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "HostPortEnd")]
    pub host_port_end: u16,
}

/// A binding to publish: a `-p` spec, or (`pick`) any one free host port
/// of a range for one container port, Docker's meaning of
/// `-p 8000-8010:80`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub spec: PortSpec,
    pub pick: Option<(u16, u16)>,
}

fn proto(n: u32) -> Result<Proto> {
    match n {
        6 => Ok(Proto::Tcp),
        17 => Ok(Proto::Udp),
        132 => bad("cannot publish an SCTP port: netd publishes tcp and udp ports"),
        n => bad(format!(
            "unknown protocol number {n} in a port binding (expected 6 for tcp or 17 for udp)"
        )),
    }
}

impl PortMap {
    pub fn to_publish(&self) -> Result<Publish> {
        let proto = proto(self.proto)?;
        let host_ip = if self.host_ip.is_empty() {
            None
        } else {
            Some(self.host_ip.parse::<IpAddr>().map_err(|_| {
                ApiError::bad(format!(
                    "invalid host IP {:?} in a port binding",
                    self.host_ip
                ))
            })?)
        };
        let (host, pick) = match (self.host_port, self.host_port_end) {
            (0, 0) => (None, None),
            (0, end) => {
                return bad(format!(
                    "invalid port binding: host port range 0-{end} (a range needs its first port)"
                ));
            }
            (h, e) if e == 0 || e == h => (Some((h, h)), None),
            (h, e) if e < h => {
                return bad(format!(
                    "invalid port binding: host port range {h}-{e} ends before it starts"
                ));
            }
            (h, e) => (Some((h, h)), Some((h, e))),
        };
        let spec = PortSpec {
            host_ip,
            host_ports: host,
            container_ports: (self.port, self.port),
            proto,
        };
        // The same checks as `-p` (port 0, ranges): its canonical form
        // parses back to the same spec.
        let spec =
            portspec::parse(&spec.to_string()).map_err(|e| ApiError::bad(format!("{e:#}")))?;
        Ok(Publish { spec, pick })
    }
}

/// `com.docker.network.endpoint.exposedports`: `[{"Proto": 6, "Port": 80}]`.
fn exposed_ports(opts: &Map<String, Value>) -> Result<Vec<((u16, u16), Proto)>> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Exposed {
        #[serde(rename = "Proto")]
        proto: u32,
        #[serde(rename = "Port")]
        port: u16,
    }
    let list: Vec<Exposed> = match opts.get(OPT_EXPOSED) {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| ApiError::bad(format!("invalid {OPT_EXPOSED}: {e}")))?,
    };
    validate::bounded("exposed ports", &list, MAX_BINDINGS)?;
    let mut out = Vec::new();
    for e in list {
        // SCTP and others are Docker's business: nothing to publish here.
        if let Ok(p) = proto(e.proto)
            && e.port != 0
        {
            out.push(((e.port, e.port), p));
        }
    }
    Ok(out)
}

/// Concrete host bindings for Docker's bindings, as `-p` allocates them
/// (`default_ip` for bindings without a host address, ephemeral ports
/// from `next` for HostPort 0), conflicting with nothing in `used`.
pub fn allocate(
    publish: &[Publish],
    default_ip: IpAddr,
    used: &[PortBinding],
    next: &mut BTreeMap<Proto, u16>,
) -> Result<Vec<PortBinding>> {
    let mut cursor = next.clone();
    let mut out: Vec<PortBinding> = Vec::new();
    for p in publish {
        let taken: Vec<PortBinding> = used.iter().chain(&out).copied().collect();
        let got = match p.pick {
            None => ports::allocate(
                std::slice::from_ref(&p.spec),
                &[],
                false,
                default_ip,
                &taken,
                &mut cursor,
            )?,
            Some((lo, hi)) => (lo..=hi)
                .find_map(|h| {
                    let mut s = p.spec.clone();
                    s.host_ports = Some((h, h));
                    ports::allocate(&[s], &[], false, default_ip, &taken, &mut cursor).ok()
                })
                .ok_or_else(|| {
                    ApiError::conflict(format!(
                        "port is already allocated: no free host port in {lo}-{hi} for {}/{}",
                        p.spec.container_ports.0, p.spec.proto
                    ))
                })?,
        };
        out.extend(got);
    }
    *next = cursor;
    Ok(out)
}

/// Answers one call of Docker's. Errors keep their status, except that a
/// known call never answers 404: Docker reads 404 as "not implemented"
/// and would silently skip `ProgramExternalConnectivity`.
pub async fn route(d: &Shared, plugin: &str, req: Request) -> Response {
    let call = req.path.trim_start_matches('/').to_string();
    let known = |r: Result<Value>| {
        r.map_err(|e| {
            let mut e = ApiError::from(e);
            if e.status == 404 {
                e.status = 500;
            }
            e
        })
    };
    if req.method != "POST" {
        return Err(ApiError::not_found(format!(
            "netd's Docker plugin answers POST requests, not {} {}",
            req.method, req.path
        )));
    }
    let body = req.body;
    match call.as_str() {
        "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver"] })),
        "NetworkDriver.GetCapabilities" => Ok(json!({
            "Scope": "local",
            "ConnectivityScope": "local",
        })),
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => Ok(json!({})),
        "NetworkDriver.CreateNetwork" => {
            let r = parse_body::<CreateNetwork>(body)?;
            let mut g = d.lock().await;
            let mtu = g.cfg.mtu;
            known(
                async {
                    g.docker_create_network(r.validate(plugin, mtu).map_err(invalid)?)
                        .await
                }
                .await,
            )
        }
        "NetworkDriver.DeleteNetwork" => {
            let id = parse_body::<NetworkRef>(body)?;
            known(
                async {
                    d.lock()
                        .await
                        .docker_delete_network(&id.validate().map_err(invalid)?)
                        .await
                }
                .await,
            )
        }
        "NetworkDriver.CreateEndpoint" => {
            let r = parse_body::<CreateEndpoint>(body)?;
            known(
                async {
                    d.lock()
                        .await
                        .docker_create_endpoint(r.validate().map_err(invalid)?)
                        .await
                }
                .await,
            )
        }
        "NetworkDriver.DeleteEndpoint" => {
            let r = parse_body::<EndpointRef>(body)?;
            known(
                async {
                    d.lock()
                        .await
                        .docker_delete_endpoint(&r.validate().map_err(invalid)?)
                        .await
                }
                .await,
            )
        }
        "NetworkDriver.EndpointOperInfo" => {
            let r = parse_body::<EndpointRef>(body)?;
            known(
                async {
                    Ok(d.lock()
                        .await
                        .docker_oper_info(&r.validate().map_err(invalid)?))
                }
                .await,
            )
        }
        "NetworkDriver.Join" => {
            let r = parse_body::<Join>(body)?;
            known(
                async {
                    let (ids, key) = r.validate().map_err(invalid)?;
                    d.lock().await.docker_join(&ids, key).await
                }
                .await,
            )
        }
        "NetworkDriver.Leave" => {
            let r = parse_body::<EndpointRef>(body)?;
            known(
                async {
                    d.lock()
                        .await
                        .docker_leave(&r.validate().map_err(invalid)?)
                        .await
                }
                .await,
            )
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            let r = parse_body::<ProgramExternal>(body)?;
            known(
                async {
                    let (ids, publish) = r.validate().map_err(invalid)?;
                    d.lock().await.docker_program(&ids, publish).await
                }
                .await,
            )
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            let r = parse_body::<EndpointRef>(body)?;
            known(
                async {
                    d.lock()
                        .await
                        .docker_revoke(&r.validate().map_err(invalid)?)
                        .await
                }
                .await,
            )
        }
        other => Err(ApiError::not_found(format!(
            "netd's Docker plugin does not implement {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "3d54aa0c5d2b4b1e9a7fd1e0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0";
    const EP: &str = "45f0bb4a072c4b1e9a7fd1e0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0";

    fn status(r: Result<impl std::fmt::Debug>) -> u16 {
        ApiError::from(invalid(r.unwrap_err())).status
    }

    /// What dockerd 20.10 sends for `docker network create -d netd
    /// --subnet 10.11.0.0/24 -o ... N` (observed).
    fn create(options: Value, v4: Value) -> CreateNetwork {
        serde_json::from_value(json!({
            "NetworkID": NET, "Options": options, "IPv4Data": v4, "IPv6Data": [],
        }))
        .unwrap()
    }

    fn pool() -> Value {
        json!([{"AddressSpace": "LocalDefault", "Gateway": "10.11.0.1/24", "Pool": "10.11.0.0/24"}])
    }

    #[test]
    fn network_maps_docker_options() {
        let spec = create(
            json!({
                "com.docker.network.enable_ipv6": false,
                "com.docker.network.internal": true,
                "com.docker.network.generic": {
                    "com.docker.network.bridge.enable_icc": "false",
                    "com.docker.network.bridge.enable_ip_masquerade": "false",
                    "com.docker.network.bridge.name": "br-docker1",
                    "com.docker.network.driver.mtu": "1400",
                },
            }),
            pool(),
        )
        .validate("netd", 1500)
        .unwrap();
        assert_eq!(spec.name, "3d54aa0c5d2b");
        assert_eq!(spec.id.as_deref(), Some(NET));
        assert_eq!(spec.subnet.unwrap().to_string(), "10.11.0.0/24");
        assert_eq!(spec.gateway, Some("10.11.0.1".parse().unwrap()));
        assert_eq!(spec.bridge.as_deref(), Some("br-docker1"));
        let o = &spec.options;
        assert!(!o.icc && !o.masquerade && o.internal);
        assert_eq!(o.mtu, 1400);
        assert_eq!(
            spec.owner,
            NetworkOwner::Docker {
                plugin: "netd".into(),
                network: NET.into()
            }
        );
        // Defaults; Go's nil maps and slices arrive as null.
        let spec: CreateNetwork = serde_json::from_value(json!({
            "NetworkID": NET, "Options": null, "IPv4Data": pool(), "IPv6Data": null,
        }))
        .unwrap();
        let spec = spec.validate("netd", 1500).unwrap();
        assert!(spec.options.icc && spec.options.masquerade && !spec.options.internal);
        assert_eq!(spec.options.mtu, 1500);
        assert_eq!(spec.bridge, None);
        // Docker's gateway modes arrive as generic options too.
        let spec = create(
            json!({"com.docker.network.generic": {
                "com.docker.network.bridge.gateway_mode_ipv4": "routed",
                "com.docker.network.bridge.gateway_mode_ipv6": "routed",
            }}),
            pool(),
        )
        .validate("netd", 1500)
        .unwrap();
        assert_eq!(spec.options.gateway_mode, crate::model::GatewayMode::Routed);
        assert_eq!(
            spec.options.gateway_mode_ipv6,
            crate::model::GatewayMode::Routed
        );
    }

    #[test]
    fn network_refuses_what_netd_cannot_be() {
        let two = json!([
            {"Pool": "10.11.0.0/24", "Gateway": "10.11.0.1/24"},
            {"Pool": "10.12.0.0/24", "Gateway": "10.12.0.1/24"},
        ]);
        for (c, why) in [
            (
                create(json!({"com.docker.network.enable_ipv6": true}), pool()),
                "ipv6 without a pool",
            ),
            (create(json!({}), two), "two pools"),
            (create(json!({}), json!([])), "no pool"),
            (
                create(
                    json!({"com.docker.network.generic": {"bogus": "1"}}),
                    pool(),
                ),
                "unknown option",
            ),
            (
                create(
                    json!({"com.docker.network.generic": {"com.docker.network.driver.mtu": "9"}}),
                    pool(),
                ),
                "mtu",
            ),
            (
                create(json!({"com.docker.network.generic": "x"}), pool()),
                "generic not an object",
            ),
            (
                create(json!({"com.docker.network.internal": "perhaps"}), pool()),
                "internal not a boolean",
            ),
            (
                create(
                    json!({}),
                    json!([{"Pool": "10.11.0.0/24", "Gateway": "10.99.0.1/24"}]),
                ),
                "gateway outside",
            ),
            (
                create(json!({}), json!([{"Pool": "10.11.0.7/24"}])),
                "host bits",
            ),
        ] {
            assert_eq!(status(c.validate("netd", 1500)), 400, "{why}");
        }
        let mut c = create(json!({}), pool());
        c.network_id = "a/b".into();
        assert_eq!(status(c.validate("netd", 1500)), 400);
        let mut c = create(json!({}), pool());
        c.ipv6_data = vec![IpamData::default()];
        assert_eq!(status(c.validate("netd", 1500)), 400, "empty IPv6 pool");
        let mut c = create(json!({}), pool());
        c.ipv6_data = serde_json::from_value(json!([
            {"Pool": "fd00:1::/64"}, {"Pool": "fd00:2::/64"},
        ]))
        .unwrap();
        assert_eq!(status(c.validate("netd", 1500)), 400, "two IPv6 pools");
        let mut c = create(json!({}), pool());
        c.ipv6_data =
            serde_json::from_value(json!([{"Pool": "fd00:1::/64", "Gateway": "fd00:2::1/64"}]))
                .unwrap();
        assert_eq!(
            status(c.validate("netd", 1500)),
            400,
            "IPv6 gateway outside"
        );
    }

    #[test]
    fn network_takes_dockers_ipv6_pool() {
        let mut c = create(json!({"com.docker.network.enable_ipv6": true}), pool());
        c.ipv6_data = serde_json::from_value(json!([
            {"AddressSpace": "LocalDefault", "Pool": "fd00:77::/64", "Gateway": "fd00:77::1/64"},
        ]))
        .unwrap();
        let spec = c.validate("netd", 1500).unwrap();
        let v6 = spec.ipv6.expect("dual stack");
        assert_eq!(v6.subnet, Some("fd00:77::/64".parse().unwrap()));
        assert_eq!(v6.gateway, Some("fd00:77::1".parse().unwrap()));
        // No gateway given: netd takes the subnet's first address.
        let mut c = create(json!({}), pool());
        c.ipv6_data = serde_json::from_value(json!([{"Pool": "fd00:78::/64"}])).unwrap();
        let v6 = c.validate("netd", 1500).unwrap().ipv6.expect("dual stack");
        assert_eq!(v6.gateway, None);
    }

    #[test]
    fn endpoint_takes_dockers_address_and_mac() {
        let e: CreateEndpoint = serde_json::from_value(json!({
            "NetworkID": NET, "EndpointID": EP,
            "Interface": {"Address": "10.11.0.2/24", "AddressIPv6": "", "MacAddress": ""},
            "Options": {
                "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 81}, {"Proto": 17, "Port": 53}, {"Proto": 132, "Port": 9}],
                "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}],
            },
        }))
        .unwrap();
        let s = e.validate().unwrap();
        assert_eq!(s.address, Some(("10.11.0.2".parse().unwrap(), 24)));
        assert_eq!(s.mac, None);
        assert_eq!(
            s.exposed,
            vec![((81, 81), Proto::Tcp), ((53, 53), Proto::Udp)]
        );
        let e: CreateEndpoint = serde_json::from_value(json!({
            "NetworkID": NET, "EndpointID": EP,
            "Interface": {"MacAddress": "02:42:0a:0b:00:99"}, "Options": null,
        }))
        .unwrap();
        let s = e.validate().unwrap();
        assert_eq!((s.address, s.mac), (None, Some([2, 0x42, 10, 11, 0, 0x99])));
        let e: CreateEndpoint = serde_json::from_value(json!({
            "NetworkID": NET, "EndpointID": EP,
            "Interface": {"Address": "10.11.0.2/24", "AddressIPv6": "fd00:77::2/64"},
        }))
        .unwrap();
        let s = e.validate().unwrap();
        assert_eq!(s.address6, Some(("fd00:77::2".parse().unwrap(), 64)));
        // No Interface at all is fine (netd chooses).
        let e: CreateEndpoint =
            serde_json::from_value(json!({"NetworkID": NET, "EndpointID": EP})).unwrap();
        assert_eq!(e.validate().unwrap().address, None);
        for iface in [
            json!({"Address": "10.11.0.2"}),
            json!({"Address": "10.11.0.2/33"}),
            json!({"Address": "fd00::2/64"}),
            json!({"AddressIPv6": "10.11.0.2/24"}),
            json!({"AddressIPv6": "fd00::2"}),
            json!({"AddressIPv6": "fd00::2/129"}),
            json!({"MacAddress": "01:00:5e:00:00:01"}),
            json!({"MacAddress": "00:00:00:00:00:00"}),
            json!({"MacAddress": "AkIKCwCZ"}),
        ] {
            let e: CreateEndpoint = serde_json::from_value(
                json!({"NetworkID": NET, "EndpointID": EP, "Interface": iface}),
            )
            .unwrap();
            assert_eq!(status(e.validate()), 400, "{iface}");
        }
        let e: CreateEndpoint =
            serde_json::from_value(json!({"NetworkID": NET, "EndpointID": ""})).unwrap();
        assert_eq!(status(e.validate()), 400);
    }

    #[test]
    fn join_needs_an_absolute_sandbox_key() {
        let j = |key: &str| Join {
            network_id: NET.into(),
            endpoint_id: EP.into(),
            sandbox_key: key.into(),
            options: Map::new(),
        };
        let (ids, key) = j("/var/run/docker/netns/45f0bb4a072c").validate().unwrap();
        assert_eq!(ids.endpoint, EP);
        assert_eq!(key, Path::new("/var/run/docker/netns/45f0bb4a072c"));
        assert_eq!(status(j("netns/x").validate()), 400);
        assert_eq!(status(j("").validate()), 400);
        assert_eq!(status(j("/a\0b").validate()), 400);
    }

    fn map(proto: u32, host_ip: &str, port: u16, host: u16, end: u16) -> PortMap {
        PortMap {
            proto,
            ip: String::new(),
            port,
            host_ip: host_ip.into(),
            host_port: host,
            host_port_end: end,
        }
    }

    #[test]
    fn bindings_are_checked_as_dash_p() {
        let p = map(6, "", 80, 18080, 18080).to_publish().unwrap();
        assert_eq!(p.spec.to_string(), "18080:80/tcp");
        assert_eq!(p.pick, None);
        let p = map(17, "127.0.0.1", 53, 5353, 0).to_publish().unwrap();
        assert_eq!(p.spec.to_string(), "127.0.0.1:5353:53/udp");
        let p = map(6, "", 80, 0, 0).to_publish().unwrap();
        assert_eq!(p.spec.host_ports, None);
        let p = map(6, "", 80, 8000, 8010).to_publish().unwrap();
        assert_eq!(p.pick, Some((8000, 8010)));
        for (m, why) in [
            (map(132, "", 80, 80, 80), "sctp"),
            (map(1, "", 80, 80, 80), "icmp"),
            (map(6, "", 0, 80, 80), "container port 0"),
            (map(6, "", 80, 0, 90), "range without start"),
            (map(6, "", 80, 90, 80), "backwards range"),
            (map(6, "x", 80, 80, 80), "bad host ip"),
        ] {
            assert_eq!(status(m.to_publish()), 400, "{why}");
        }
        let p = ProgramExternal {
            network_id: NET.into(),
            endpoint_id: EP.into(),
            options: serde_json::from_value(
                json!({OPT_PORTMAP: [{"Proto": 6, "Port": 80, "HostPort": 99999}]}),
            )
            .unwrap(),
        };
        assert_eq!(status(p.validate()), 400);
        let p = ProgramExternal {
            network_id: NET.into(),
            endpoint_id: EP.into(),
            options: serde_json::from_value(json!({OPT_PORTMAP: null})).unwrap(),
        };
        assert!(p.validate().unwrap().1.is_empty());
    }

    #[test]
    fn ranges_come_back_together() {
        let list: Vec<Publish> = (0..1000)
            .map(|i| map(6, "", 20000 + i, 30000 + i, 0).to_publish().unwrap())
            .chain([
                map(17, "", 20000, 30000, 0).to_publish().unwrap(),
                map(17, "", 20001, 30001, 0).to_publish().unwrap(),
                map(17, "", 20003, 30002, 0).to_publish().unwrap(),
                map(17, "127.0.0.1", 20004, 30003, 0).to_publish().unwrap(),
                map(17, "127.0.0.1", 20005, 0, 0).to_publish().unwrap(),
            ])
            .collect();
        let c: Vec<String> = coalesce(list).iter().map(|p| p.spec.to_string()).collect();
        assert_eq!(
            c,
            [
                "30000-30999:20000-20999/tcp",
                "30000-30001:20000-20001/udp",
                "30002:20003/udp",
                "127.0.0.1:30003:20004/udp",
                "127.0.0.1::20005/udp",
            ]
        );
    }

    #[test]
    fn allocation_picks_free_ports() {
        let all = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let publish: Vec<Publish> = [
            map(6, "", 80, 8000, 8000),
            map(6, "", 81, 8000, 8002),
            map(6, "", 82, 0, 0),
            map(17, "", 80, 8000, 8000),
        ]
        .iter()
        .map(|m| m.to_publish().unwrap())
        .collect();
        let mut next = BTreeMap::new();
        let b = allocate(&publish, all, &[], &mut next).unwrap();
        let s: Vec<String> = b.iter().map(|b| b.to_string()).collect();
        assert_eq!(
            s,
            [
                "80/tcp -> 0.0.0.0:8000",
                "81/tcp -> 0.0.0.0:8001",
                "82/tcp -> 0.0.0.0:32768",
                "80/udp -> 0.0.0.0:8000",
            ]
        );
        // Taken: a 409 naming the ports, and the cursor stays.
        let before = next.clone();
        let full = map(6, "", 83, 8000, 8001).to_publish().unwrap();
        let e = allocate(&[full], all, &b, &mut next).unwrap_err();
        let e = ApiError::from(e);
        assert_eq!(e.status, 409);
        assert!(e.message.contains("8000-8001"), "{}", e.message);
        assert_eq!(next, before);
        let e = allocate(&publish[..1], all, &b, &mut next).unwrap_err();
        assert_eq!(ApiError::from(e).status, 409);
    }

    #[test]
    fn errors_are_dockers_shape() {
        let e = ApiError::bad("no");
        assert_eq!((DIALECT.error_body)(&e), json!({"Err": "no"}));
        assert_eq!(DIALECT.content_type, CONTENT_TYPE);
        assert_eq!(
            socket_path("netd"),
            Path::new("/run/docker/plugins/netd.sock")
        );
        assert!(check_name("netd").is_ok());
        for bad in ["", "a/b", "../x", ".x", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
