//! Request bodies, as the API receives them, and their validation: each
//! request's `validate()` checks everything that can be checked without
//! the daemon's state and yields a spec of parsed, checked values. What
//! needs the state (name taken, subnet overlaps, address in use) is
//! checked by the daemon before it touches anything.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{ApiError, bad};
use crate::{
    ipam::Cidr,
    link,
    model::{GatewayMode, NetworkOptions},
    portspec::{self, PortSpec, Proto},
    validate::{self, MAX_LIST, bounded},
};

/// Turns a validation failure into a 400.
fn invalid(e: anyhow::Error) -> anyhow::Error {
    if e.is::<ApiError>() {
        e
    } else {
        ApiError::bad(format!("{e:#}")).into()
    }
}

/// Container and network names: Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
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

#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "PascalCase")]
pub struct NetworkCreate {
    pub name: String,
    pub driver: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    pub internal: bool,
    pub options: BTreeMap<String, String>,
    /// `--ipv6` (Docker's API spelling).
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    /// `--ipv4=false` makes an IPv6-only network.
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: Option<bool>,
    /// The IPv6 subnet and gateway (`--subnet`/`--gateway` with IPv6
    /// values).
    #[serde(rename = "Subnet6")]
    pub subnet6: Option<String>,
    #[serde(rename = "Gateway6")]
    pub gateway6: Option<String>,
}

/// A checked network's IPv6 (`--ipv6`).
#[derive(Debug, Clone, Default)]
pub struct Ipv6Spec {
    /// None: a /64 from the IPv6 pools.
    pub subnet: Option<ipnet::Ipv6Net>,
    pub gateway: Option<std::net::Ipv6Addr>,
}

/// A checked `network create`.
#[derive(Debug)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Option<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Cidr>,
    pub options: NetworkOptions,
    pub bridge: Option<String>,
    pub raw_options: BTreeMap<String, String>,
    /// Netd for the API; the plugins set their own.
    pub owner: crate::model::NetworkOwner,
    /// The network's id: a fresh one for the API, the engine's own for a
    /// plugin (Docker's network id).
    pub id: Option<String>,
    /// IPv6 on the network, if asked for.
    pub ipv6: Option<Ipv6Spec>,
    /// IPv4 on the network (false: IPv6-only, `--ipv4=false`).
    pub ipv4: bool,
}

impl NetworkCreate {
    pub fn validate(self, default_mtu: u32) -> Result<NetworkSpec> {
        self.check(default_mtu).map_err(invalid)
    }

    fn check(self, default_mtu: u32) -> Result<NetworkSpec> {
        let name = self.name.trim().to_string();
        if !valid_name(&name) {
            return bad(format!(
                "invalid network name {name:?}: use letters, digits, '_', '.', '-'"
            ));
        }
        if let Some(d) = &self.driver
            && d != "bridge"
        {
            return bad(format!(
                "unsupported driver {d:?}: netd supports the bridge driver"
            ));
        }
        bounded("options", &self.options.keys().collect::<Vec<_>>(), 64)?;
        let mut opts = NetworkOptions {
            internal: self.internal,
            mtu: default_mtu,
            ..NetworkOptions::default()
        };
        let mut bridge = None;
        for (k, v) in &self.options {
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
                        .with_context(|| format!("invalid mtu {v:?}: expected 68-65535"))?
                }
                "bridge-name" | "name" => {
                    validate::ifname("bridge name", v)?;
                    bridge = Some(v.clone())
                }
                "host-binding-ipv4" | "host_binding_ipv4" => {
                    opts.host_binding_ipv4 = v
                        .parse()
                        .with_context(|| format!("invalid host-binding-ipv4 {v:?}"))?
                }
                "gateway_mode_ipv4" | "gateway-mode-ipv4" => opts.gateway_mode = v.parse()?,
                "gateway_mode_ipv6" | "gateway-mode-ipv6" => opts.gateway_mode_ipv6 = v.parse()?,
                _ => {
                    return bad(format!(
                        "unknown network option {k:?} (known: icc, masquerade, mtu, bridge-name, host-binding-ipv4, gateway_mode_ipv4, gateway_mode_ipv6)"
                    ));
                }
            }
        }
        if (opts.gateway_mode == GatewayMode::Isolated
            || opts.gateway_mode_ipv6 == GatewayMode::Isolated)
            && !opts.internal
        {
            return bad("gateway mode isolated needs an internal network (--internal)");
        }
        let subnet = match &self.subnet {
            Some(s) => {
                let s: Cidr = s.parse()?;
                validate::subnet(&s)?;
                Some(s)
            }
            None => {
                if self.gateway.is_some() || self.ip_range.is_some() {
                    return bad("--gateway and --ip-range need --subnet");
                }
                None
            }
        };
        let gateway = match &self.gateway {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .with_context(|| format!("invalid gateway {g:?}: not an IPv4 address"))?;
                validate::host_in("gateway", g, subnet.as_ref().expect("checked above"))?;
                Some(g)
            }
            None => None,
        };
        let ip_range = match &self.ip_range {
            Some(r) => Some(r.parse::<Cidr>()?),
            None => None,
        };
        let ipv4 = self.enable_ipv4 != Some(false);
        if !ipv4 {
            // Docker 28's rules for an IPv6-only network.
            if !self.enable_ipv6 {
                return bad("IPv4 or IPv6 must be enabled: --ipv4=false needs --ipv6");
            }
            if self.subnet.is_some() || self.gateway.is_some() || self.ip_range.is_some() {
                return bad(
                    "an IPv4 --subnet, --gateway or --ip-range was given for a network with --ipv4=false",
                );
            }
            if opts.gateway_mode != GatewayMode::default() {
                return bad("gateway_mode_ipv4 was given for a network with --ipv4=false");
            }
        }
        let ipv6 = if self.enable_ipv6 {
            let subnet = match &self.subnet6 {
                Some(s) => {
                    let s: ipnet::Ipv6Net = s
                        .parse()
                        .with_context(|| format!("invalid IPv6 subnet {s:?}"))?;
                    crate::ipam6::check_subnet(&s)?;
                    Some(s)
                }
                None => None,
            };
            let gateway = match &self.gateway6 {
                Some(g) => {
                    let g: std::net::Ipv6Addr = g
                        .parse()
                        .with_context(|| format!("invalid IPv6 gateway {g:?}"))?;
                    let Some(s) = subnet else {
                        return bad("an IPv6 --gateway needs an IPv6 --subnet");
                    };
                    if !s.contains(&g) || g == s.network() {
                        return bad(format!(
                            "IPv6 gateway {g} is outside subnet {s} or its anycast address"
                        ));
                    }
                    Some(g)
                }
                None => None,
            };
            Some(Ipv6Spec { subnet, gateway })
        } else {
            if self.subnet6.is_some() || self.gateway6.is_some() {
                return bad("an IPv6 --subnet or --gateway needs --ipv6");
            }
            None
        };
        Ok(NetworkSpec {
            name,
            subnet,
            gateway,
            ip_range,
            options: opts,
            bridge,
            raw_options: self.options,
            owner: crate::model::NetworkOwner::Netd,
            ipv6,
            ipv4,
            id: None,
        })
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "PascalCase")]
pub struct ContainerCreate {
    pub name: Option<String>,
    pub network: Option<String>,
    pub publish: Vec<String>,
    pub publish_all: bool,
    pub expose: Vec<String>,
    pub ip: Option<String>,
    /// `--ip6`.
    pub ip6: Option<String>,
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
    /// The main process (`run`); none for a bare sandbox (`create`).
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `--rm`.
    pub auto_remove: bool,
}

/// A checked `create`/`run`.
#[derive(Debug, Default)]
pub struct ContainerSpec {
    pub name: Option<String>,
    /// `bridge`, `host`, `none`, `container:NAME` or a network name.
    pub network: String,
    pub publish: Vec<PortSpec>,
    pub publish_all: bool,
    pub exposed: Vec<((u16, u16), Proto)>,
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<std::net::Ipv6Addr>,
    pub mac: Option<[u8; 6]>,
    pub hostname: Option<String>,
    pub aliases: Vec<String>,
    pub dns: Vec<IpAddr>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// Checked for shape; `host-gateway` is resolved by the daemon.
    pub extra_hosts: Vec<String>,
    /// (target name, alias).
    pub links: Vec<(String, String)>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub auto_remove: bool,
}

/// `--ip6`: an IPv6 address a container could have.
fn parse_ip6(s: &Option<String>) -> Result<Option<std::net::Ipv6Addr>> {
    let Some(s) = s else { return Ok(None) };
    let ip: std::net::Ipv6Addr = s
        .parse()
        .with_context(|| format!("invalid --ip6 {s:?}: not an IPv6 address"))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_unicast_link_local() {
        return bad(format!("invalid --ip6 {ip}: not a container's address"));
    }
    Ok(Some(ip))
}

/// Checks network aliases (RFC 1123 names), dropping repeats.
pub fn check_aliases(aliases: &[String]) -> Result<Vec<String>> {
    bounded("network aliases", aliases, 64)?;
    let mut out: Vec<String> = Vec::new();
    for a in aliases {
        validate::hostname("network alias", a)?;
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// Checks an environment: `KEY=VALUE` entries without NUL bytes.
pub fn check_env(env: &[String]) -> Result<()> {
    bounded("environment variables", env, 4096)?;
    for kv in env {
        if !kv.contains('=') || kv.starts_with('=') || kv.contains('\0') {
            return bad(format!(
                "invalid environment entry {kv:?}: expected KEY=VALUE"
            ));
        }
    }
    Ok(())
}

impl ContainerCreate {
    pub fn validate(self) -> Result<ContainerSpec> {
        self.check().map_err(invalid)
    }

    fn check(self) -> Result<ContainerSpec> {
        for (what, list) in [
            ("published ports", &self.publish),
            ("exposed ports", &self.expose),
            ("--add-host entries", &self.extra_hosts),
        ] {
            bounded(what, list, MAX_LIST)?;
        }
        for (what, list) in [
            ("--dns servers", &self.dns),
            ("--dns-search domains", &self.dns_search),
            ("--dns-option options", &self.dns_options),
            ("links", &self.links),
        ] {
            bounded(what, list, 64)?;
        }
        if let Some(n) = &self.name
            && !valid_name(n)
        {
            return bad(format!(
                "invalid container name {n:?}: use letters, digits, '_', '.', '-'"
            ));
        }
        let mut publish = Vec::new();
        for p in &self.publish {
            publish.push(portspec::parse(p)?);
        }
        let mut exposed = Vec::new();
        for e in &self.expose {
            exposed.push(portspec::parse_expose(e)?);
        }
        for s in &publish {
            exposed.push((s.container_ports, s.proto));
        }
        let ip = match &self.ip {
            Some(s) => Some(
                s.parse::<Ipv4Addr>()
                    .with_context(|| format!("invalid --ip {s:?}: not an IPv4 address"))?,
            ),
            None => None,
        };
        let ip6 = parse_ip6(&self.ip6)?;
        let mac = match &self.mac_address {
            Some(s) => {
                let m = link::parse_mac(s)?;
                validate::mac(&m)?;
                Some(m)
            }
            None => None,
        };
        if let Some(h) = &self.hostname {
            validate::hostname("hostname", h)?;
        }
        let aliases = check_aliases(&self.network_aliases)?;
        let mut dns = Vec::new();
        for s in &self.dns {
            dns.push(
                s.parse()
                    .with_context(|| format!("invalid --dns {s:?}: not an IP address"))?,
            );
        }
        for s in &self.dns_search {
            if s != "." {
                validate::hostname("--dns-search domain", s.trim_end_matches('.'))?;
            }
        }
        for s in &self.dns_options {
            if s.is_empty() || s.contains(char::is_whitespace) || s.contains('\0') {
                return bad(format!("invalid --dns-option {s:?}"));
            }
        }
        for s in &self.extra_hosts {
            // The shape now; host-gateway needs the network's gateway.
            crate::dns::files::parse_add_host(s, Some(Ipv4Addr::UNSPECIFIED.into()))
                .map_err(ApiError::bad)?;
        }
        let mut links = Vec::new();
        for s in &self.links {
            let (name, alias) = s.split_once(':').unwrap_or((s, s));
            validate::hostname("--link alias", alias)
                .with_context(|| format!("invalid --link {s:?}"))?;
            links.push((name.to_string(), alias.to_string()));
        }
        if !self.cmd.is_empty() {
            validate::command(&self.cmd)?;
        }
        check_env(&self.env)?;
        Ok(ContainerSpec {
            name: self.name,
            network: self
                .network
                .unwrap_or_else(|| crate::model::DEFAULT_NETWORK.into()),
            publish,
            publish_all: self.publish_all,
            exposed,
            ip,
            ip6,
            mac,
            hostname: self.hostname,
            aliases,
            dns,
            dns_search: self.dns_search,
            dns_options: self.dns_options,
            extra_hosts: self.extra_hosts,
            links,
            cmd: self.cmd,
            env: self.env,
            cwd: self.working_dir.map(PathBuf::from),
            auto_remove: self.auto_remove,
        })
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "PascalCase")]
pub struct Connect {
    pub container: String,
    pub ip: Option<String>,
    pub ip6: Option<String>,
    pub aliases: Vec<String>,
}

/// A checked `network connect`.
#[derive(Debug)]
pub struct ConnectSpec {
    pub container: String,
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<std::net::Ipv6Addr>,
    pub aliases: Vec<String>,
}

impl Connect {
    pub fn validate(self) -> Result<ConnectSpec> {
        let ip = match &self.ip {
            Some(s) => Some(
                s.parse::<Ipv4Addr>()
                    .map_err(|_| ApiError::bad(format!("invalid --ip {s:?}")))?,
            ),
            None => None,
        };
        Ok(ConnectSpec {
            ip6: parse_ip6(&self.ip6).map_err(invalid)?,
            container: self.container,
            ip,
            aliases: check_aliases(&self.aliases).map_err(invalid)?,
        })
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "PascalCase")]
pub struct Exec {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

impl Exec {
    pub fn validate(&self) -> Result<()> {
        validate::command(&self.cmd)
            .and_then(|_| check_env(&self.env))
            .map_err(invalid)
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "PascalCase")]
pub struct NodeAdd {
    pub name: String,
    pub pod_cidr: String,
    pub address: String,
}

/// A checked `node add`.
#[derive(Debug)]
pub struct NodeSpec {
    pub name: String,
    pub pod_cidr: Cidr,
    pub address: Ipv4Addr,
}

impl NodeAdd {
    pub fn validate(self) -> Result<NodeSpec> {
        let check = || -> Result<NodeSpec> {
            if !valid_name(&self.name) {
                return bad(format!(
                    "invalid node name {:?}: use letters, digits, '_', '.', '-'",
                    self.name
                ));
            }
            let pod_cidr: Cidr = self
                .pod_cidr
                .parse()
                .with_context(|| format!("invalid --pod-cidr {:?}", self.pod_cidr))?;
            validate::subnet(&pod_cidr)?;
            let address: Ipv4Addr = self.address.parse().with_context(|| {
                format!("invalid --address {:?}: not an IPv4 address", self.address)
            })?;
            if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
                return bad(format!("invalid --address {address}: not a node's address"));
            }
            Ok(NodeSpec {
                name: self.name.clone(),
                pod_cidr,
                address,
            })
        };
        check().map_err(invalid)
    }
}

/// `POST /containers/{id}/start`.
#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "PascalCase")]
pub struct Start {
    /// Give the main process the caller's standard streams and answer
    /// when it exits (`netd run` without `-d`).
    pub attach: bool,
}

/// Parses a request body (an absent body is an empty object).
pub fn parse_body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(if v.is_null() {
        serde_json::json!({})
    } else {
        v
    })
    .map_err(|e| ApiError::bad(format!("malformed request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<impl std::fmt::Debug>) -> u16 {
        r.unwrap_err().downcast::<ApiError>().unwrap().status
    }

    #[test]
    fn network_create_checks() {
        let ok = NetworkCreate {
            name: "n".into(),
            subnet: Some("10.9.0.0/24".into()),
            gateway: Some("10.9.0.1".into()),
            ..Default::default()
        }
        .validate(1500)
        .unwrap();
        assert_eq!(ok.gateway, Some("10.9.0.1".parse().unwrap()));
        for (subnet, gw) in [
            ("127.1.0.0/24", None),
            ("10.0.0.1/32", None),
            ("10.0.0.0/31", None),
            ("10.9.0.0/24", Some("10.9.0.0")),
            ("10.9.0.0/24", Some("10.8.0.1")),
        ] {
            let r = NetworkCreate {
                name: "n".into(),
                subnet: Some(subnet.into()),
                gateway: gw.map(Into::into),
                ..Default::default()
            }
            .validate(1500);
            assert_eq!(status(r), 400, "{subnet} {gw:?}");
        }
        let r = NetworkCreate {
            name: "n".into(),
            options: BTreeMap::from([("bridge-name".into(), "eth+".into())]),
            ..Default::default()
        }
        .validate(1500);
        assert_eq!(status(r), 400);
    }

    #[test]
    fn ipv6_only_network_checks() {
        let ok = NetworkCreate {
            name: "n".into(),
            enable_ipv6: true,
            enable_ipv4: Some(false),
            subnet6: Some("fd00:9::/64".into()),
            ..Default::default()
        }
        .validate(1500)
        .unwrap();
        assert!(!ok.ipv4);
        assert!(ok.ipv6.is_some());
        // IPv4 stays on unless turned off.
        let dual = NetworkCreate {
            name: "n".into(),
            enable_ipv6: true,
            ..Default::default()
        }
        .validate(1500)
        .unwrap();
        assert!(dual.ipv4);
        for bad in [
            // Neither family.
            NetworkCreate {
                enable_ipv4: Some(false),
                ..Default::default()
            },
            // IPv4 settings for a network without IPv4.
            NetworkCreate {
                enable_ipv6: true,
                enable_ipv4: Some(false),
                subnet: Some("10.9.0.0/24".into()),
                ..Default::default()
            },
            NetworkCreate {
                enable_ipv6: true,
                enable_ipv4: Some(false),
                options: BTreeMap::from([("gateway_mode_ipv4".into(), "routed".into())]),
                ..Default::default()
            },
        ] {
            let r = NetworkCreate {
                name: "n".into(),
                ..bad
            }
            .validate(1500);
            assert_eq!(status(r), 400);
        }
    }

    #[test]
    fn container_create_checks() {
        let bad_inputs = [
            ContainerCreate {
                hostname: Some("a\nb".into()),
                ..Default::default()
            },
            ContainerCreate {
                mac_address: Some("00:00:00:00:00:00".into()),
                ..Default::default()
            },
            ContainerCreate {
                network_aliases: vec!["x y".into()],
                ..Default::default()
            },
            ContainerCreate {
                publish: vec!["1".into(); MAX_LIST + 1],
                ..Default::default()
            },
            ContainerCreate {
                cmd: vec!["a\0".into()],
                ..Default::default()
            },
            ContainerCreate {
                env: vec!["NOEQUALS".into()],
                ..Default::default()
            },
        ];
        for c in bad_inputs {
            let d = format!("{c:?}");
            assert_eq!(status(c.validate()), 400, "{d}");
        }
        let ok = ContainerCreate {
            hostname: Some("web-1.example".into()),
            publish: vec!["8080:80".into()],
            cmd: vec!["sleep".into(), "1".into()],
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(ok.network, "bridge");
        assert_eq!(ok.exposed.len(), 1);
    }
}
