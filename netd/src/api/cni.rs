//! The bodies of the CNI plugin's requests (`/cni/*`), as the plugin
//! sends them and the daemon checks them. The plugin (`netd` run by a
//! container runtime with `CNI_COMMAND` set, see crate::cni) is a thin
//! client: it passes the runtime's parameters on, and everything that can
//! be checked without the daemon's state is checked here, at the API
//! boundary, with errors that name the offending value.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{ApiError, bad};
use crate::{
    ipam::Cidr,
    link,
    portspec::{PortSpec, Proto},
    validate::{self, MAX_LIST, bounded},
};
use ipnet::Ipv6Net;

/// Turns a validation failure into a 400.
fn invalid(e: anyhow::Error) -> anyhow::Error {
    if e.is::<ApiError>() {
        e
    } else {
        ApiError::bad(format!("{e:#}")).into()
    }
}

/// A container id as the CNI specification allows it (`CNI_CONTAINERID`):
/// an alphanumeric first character, then alphanumerics, `_`, `.` or `-`.
pub fn container_id(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bad(format!(
            "invalid CNI_CONTAINERID {s:?}: a letter or digit, then letters, digits, '_', '.' or '-' (at most 256)"
        ))
    } else {
        Ok(())
    }
}

/// `CNI_NETNS`: an absolute path.
pub fn netns_path(s: &str) -> Result<PathBuf> {
    if !s.starts_with('/') || s.contains('\0') || s.len() > 4096 {
        return bad(format!(
            "invalid CNI_NETNS {s:?}: the absolute path of a network namespace file"
        ));
    }
    Ok(PathBuf::from(s))
}

/// An attachment's name in netd (`netd ps`, `netd inspect`): the
/// runtime's container id and the interface. The `:` keeps it apart from
/// every name netd's own containers may have.
pub fn attachment_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

/// One `runtimeConfig.portMappings` entry (the `portMappings` capability,
/// CNI CONVENTIONS.md), as the runtime gives it.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i64,
    pub container_port: i64,
    pub protocol: String,
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

impl PortMapping {
    /// The binding this mapping asks for; `None` for an IPv6 host address
    /// (netd's networks are IPv4-only: such mappings are skipped, as the
    /// reference portmap plugin skips mappings of a family the container
    /// has no address in).
    pub fn spec(&self) -> Result<Option<PortSpec>> {
        let port = |what: &str, p: i64| -> Result<u16> {
            u16::try_from(p).ok().filter(|p| *p != 0).with_context(|| {
                format!("invalid portMappings entry: {what} {p} (expected 1-65535)")
            })
        };
        let host = port("hostPort", self.host_port)?;
        let container = port("containerPort", self.container_port)?;
        let proto = match self.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                return bad(format!(
                    "unsupported portMappings protocol {other:?} (hostPort {host}): netd publishes tcp and udp"
                ));
            }
        };
        let host_ip = match self.host_ip.as_str() {
            "" => None,
            s => match s.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(_)) => return Ok(None),
                Ok(ip) => Some(ip),
                Err(_) => {
                    return bad(format!(
                        "invalid portMappings hostIP {s:?}: not an IP address"
                    ));
                }
            },
        };
        Ok(Some(PortSpec {
            host_ip,
            host_ports: Some((host, host)),
            container_ports: (container, container),
            proto,
        }))
    }
}

/// `POST /cni/add`: CNI ADD.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
#[serde(default, rename_all = "PascalCase")]
pub struct CniAdd {
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub netns: String,
    pub if_name: String,
    /// The netd network: the config's `network`, else its `name`.
    pub network: String,
    /// The network config's `name` (the owner of a network it creates).
    pub config: String,
    /// `subnet` and `gateway` of the config: the network is created with
    /// them when it does not exist, and must have them when it does.
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    /// The config's `ipv6` / `subnet6` / `gateway6`: the network is
    /// dual stack (created so, or must be so).
    #[serde(rename = "IPv6")]
    pub ipv6: bool,
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    /// The config's `ipv4` (false: an IPv6-only network, as
    /// `--ipv4=false`); absent means true.
    #[serde(rename = "IPv4")]
    pub ipv4: Option<bool>,
    /// `runtimeConfig.ips` (capability `ips`): `A.B.C.D/PREFIX` or
    /// `A.B.C.D`, and at most one IPv6 address (`ADDR6/PREFIX` or
    /// `ADDR6`).
    pub ips: Vec<String>,
    /// `runtimeConfig.mac` (capability `mac`).
    pub mac: Option<String>,
    /// `runtimeConfig.portMappings` (capability `portMappings`).
    pub port_mappings: Vec<PortMapping>,
    /// `K8S_POD_NAME` of `CNI_ARGS`: the attachment's name in the
    /// network's DNS.
    pub hostname: Option<String>,
}

/// A checked ADD.
#[derive(Debug, Clone)]
pub struct CniAddSpec {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub network: String,
    pub config: String,
    pub subnet: Option<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 wanted; the subnet (None: a /64 of the pool) and gateway.
    pub ipv6: bool,
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    /// IPv4 on the network (false: IPv6-only).
    pub ipv4: bool,
    /// The requested address, and its prefix when one was given.
    pub ip: Option<(Ipv4Addr, Option<u8>)>,
    pub ip6: Option<(Ipv6Addr, Option<u8>)>,
    pub mac: Option<[u8; 6]>,
    pub ports: Vec<PortSpec>,
    pub hostname: String,
}

/// A network name as `network create` takes it.
fn network_name(what: &str, s: &str) -> Result<()> {
    if !super::types::valid_name(s) {
        return bad(format!(
            "invalid {what} {s:?}: a netd network name has letters, digits, '_', '.', '-' (at most 64)"
        ));
    }
    Ok(())
}

impl CniAdd {
    pub fn validate(self) -> Result<CniAddSpec> {
        self.check().map_err(invalid)
    }

    fn check(self) -> Result<CniAddSpec> {
        container_id(&self.container_id)?;
        let netns = netns_path(&self.netns)?;
        validate::ifname("CNI_IFNAME", &self.if_name)?;
        network_name("network", &self.network)?;
        bounded("runtimeConfig.ips", &self.ips, 16)?;
        bounded("runtimeConfig.portMappings", &self.port_mappings, MAX_LIST)?;
        let subnet = match &self.subnet {
            Some(s) => {
                let s: Cidr = s.parse()?;
                validate::subnet(&s)?;
                Some(s)
            }
            None => None,
        };
        let gateway = match &self.gateway {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .with_context(|| format!("invalid gateway {g:?}: not an IPv4 address"))?;
                if let Some(s) = &subnet {
                    validate::host_in("gateway", g, s)?;
                }
                Some(g)
            }
            None => None,
        };
        let subnet6 = match &self.subnet6 {
            Some(s) => {
                let s: Ipv6Net = s
                    .parse()
                    .with_context(|| format!("invalid subnet6 {s:?}: not an IPv6 CIDR"))?;
                crate::ipam6::check_subnet(&s)?;
                Some(s)
            }
            None => None,
        };
        let gateway6 = match &self.gateway6 {
            Some(g) => {
                let g: Ipv6Addr = g
                    .parse()
                    .with_context(|| format!("invalid gateway6 {g:?}: not an IPv6 address"))?;
                let Some(s) = subnet6 else {
                    return bad("gateway6 needs subnet6");
                };
                if !s.contains(&g) || g == s.network() {
                    return bad(format!(
                        "gateway6 {g} is outside subnet6 {s} or its anycast address"
                    ));
                }
                Some(g)
            }
            None => None,
        };
        let ipv6 = self.ipv6 || subnet6.is_some();
        let ipv4 = self.ipv4 != Some(false);
        if !ipv4 && !ipv6 {
            return bad(
                "\"ipv4\": false needs IPv6 (\"ipv6\": true or \"subnet6\"): IPv4 or IPv6 must be enabled",
            );
        }
        if !ipv4 && (subnet.is_some() || gateway.is_some()) {
            return bad(
                "\"subnet\" or \"gateway\" (IPv4) in a network config with \"ipv4\": false",
            );
        }
        let (mut ip, mut ip6) = (None, None);
        for s in &self.ips {
            let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
            let addr = addr
                .parse::<std::net::IpAddr>()
                .map_err(|_| ApiError::bad(format!("invalid runtimeConfig.ips entry {s:?}")))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                "" => None,
                p => Some(
                    p.parse::<u8>()
                        .ok()
                        .filter(|p| *p <= max)
                        .with_context(|| format!("invalid runtimeConfig.ips entry {s:?}"))?,
                ),
            };
            match addr {
                std::net::IpAddr::V4(a) if !ipv4 => {
                    return bad(format!(
                        "runtimeConfig.ips entry {s:?} is IPv4 ({a}): the network config has \"ipv4\": false"
                    ));
                }
                std::net::IpAddr::V4(a) if ip.is_none() => ip = Some((a, prefix)),
                std::net::IpAddr::V6(a) if !ipv6 => {
                    return bad(format!(
                        "runtimeConfig.ips entry {s:?} is IPv6 ({a}): the network config has no IPv6 (set \"ipv6\": true or \"subnet6\")"
                    ));
                }
                std::net::IpAddr::V6(a) if ip6.is_none() => ip6 = Some((a, prefix)),
                _ => {
                    return bad(format!(
                        "runtimeConfig.ips has more than one address of a family ({:?}): an attachment has one of each",
                        self.ips
                    ));
                }
            }
        }
        let mac = match &self.mac {
            Some(s) => {
                let m = link::parse_mac(s)
                    .with_context(|| format!("invalid runtimeConfig.mac {s:?}"))?;
                validate::mac(&m)?;
                Some(m)
            }
            None => None,
        };
        let mut ports = Vec::new();
        for m in &self.port_mappings {
            if let Some(p) = m.spec()? {
                ports.push(p);
            }
        }
        // The attachment's DNS name: the pod's name when it is a valid
        // host name, else the container id's first 12 characters.
        let hostname = self
            .hostname
            .filter(|h| validate::hostname("hostname", h).is_ok() && h.len() <= 63)
            .unwrap_or_else(|| {
                let short: String = self.container_id.chars().take(12).collect();
                if validate::hostname("hostname", &short).is_ok() {
                    short
                } else {
                    "cni".into()
                }
            });
        if !self.config.is_empty() {
            network_name("network config name", &self.config)?;
        }
        Ok(CniAddSpec {
            container_id: self.container_id,
            netns,
            ifname: self.if_name,
            network: self.network,
            config: self.config,
            subnet,
            gateway,
            ipv6,
            subnet6,
            gateway6,
            ipv4,
            ip,
            ip6,
            mac,
            ports,
            hostname,
        })
    }
}

/// `POST /cni/del`: CNI DEL (and the identity of one attachment).
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
#[serde(default, rename_all = "PascalCase")]
pub struct CniDel {
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub if_name: String,
}

impl CniDel {
    pub fn validate(&self) -> Result<()> {
        container_id(&self.container_id)
            .and_then(|_| validate::ifname("CNI_IFNAME", &self.if_name))
            .map_err(invalid)
    }
}

/// A route as a CNI result lists it.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(default, rename_all = "PascalCase")]
pub struct RouteSpec {
    pub dst: String,
    pub gw: Option<String>,
}

/// `POST /cni/check`: CNI CHECK, with what the previous result says.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
#[serde(default, rename_all = "PascalCase")]
pub struct CniCheck {
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub netns: String,
    pub if_name: String,
    /// The network the config names.
    pub network: String,
    /// From `prevResult`: the container interface's MAC, its IPv4
    /// addresses (CIDR), the IPv4 routes, and the host-side interfaces
    /// (those without a sandbox).
    pub mac: Option<String>,
    pub addresses: Vec<String>,
    pub routes: Vec<RouteSpec>,
    pub host_interfaces: Vec<String>,
}

impl CniCheck {
    pub fn validate(&self) -> Result<()> {
        (|| -> Result<()> {
            container_id(&self.container_id)?;
            netns_path(&self.netns)?;
            validate::ifname("CNI_IFNAME", &self.if_name)?;
            bounded("addresses", &self.addresses, MAX_LIST)?;
            bounded("routes", &self.routes, MAX_LIST)?;
            bounded("host interfaces", &self.host_interfaces, MAX_LIST)
        })()
        .map_err(invalid)
    }
}

/// One attachment a runtime still uses (`cni.dev/valid-attachments`).
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(default)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// `POST /cni/gc`: CNI GC of one network.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
#[serde(default, rename_all = "PascalCase")]
pub struct CniGc {
    pub network: String,
    pub valid_attachments: Vec<ValidAttachment>,
}

impl CniGc {
    pub fn validate(&self) -> Result<()> {
        network_name("network", &self.network)
            .and_then(|_| bounded("valid attachments", &self.valid_attachments, 1 << 20))
            .map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<impl std::fmt::Debug>) -> u16 {
        r.unwrap_err().downcast::<ApiError>().unwrap().status
    }

    fn add() -> CniAdd {
        CniAdd {
            container_id: "0123456789abcdef".into(),
            netns: "/run/netns/c1".into(),
            if_name: "eth0".into(),
            network: "n1".into(),
            config: "n1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn add_checks() {
        let ok = CniAdd {
            subnet: Some("10.88.0.0/24".into()),
            gateway: Some("10.88.0.1".into()),
            ips: vec!["10.88.0.9/24".into()],
            mac: Some("c2:11:22:33:44:55".into()),
            port_mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "TCP".into(),
                    host_ip: "".into(),
                },
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: "::".into(),
                },
            ],
            hostname: Some("web-0".into()),
            ..add()
        }
        .validate()
        .unwrap();
        assert_eq!(ok.ip, Some(("10.88.0.9".parse().unwrap(), Some(24))));
        assert_eq!(ok.ports.len(), 1, "the IPv6 mapping is skipped");
        assert_eq!(ok.hostname, "web-0");
        assert_eq!(add().validate().unwrap().hostname, "0123456789ab");
        let bad_inputs = [
            CniAdd {
                container_id: "-x".into(),
                ..add()
            },
            CniAdd {
                netns: "relative".into(),
                ..add()
            },
            CniAdd {
                if_name: "a/b".into(),
                ..add()
            },
            CniAdd {
                if_name: "sixteen-chars-xx".into(),
                ..add()
            },
            CniAdd {
                network: "bad name".into(),
                ..add()
            },
            CniAdd {
                subnet: Some("10.0.0.0/33".into()),
                ..add()
            },
            CniAdd {
                subnet: Some("10.88.0.0/24".into()),
                gateway: Some("10.89.0.1".into()),
                ..add()
            },
            CniAdd {
                ips: vec!["fd00::2/64".into()],
                ..add()
            },
            CniAdd {
                ips: vec!["10.88.0.2".into(), "10.88.0.3".into()],
                ..add()
            },
            CniAdd {
                mac: Some("01:00:00:00:00:01".into()),
                ..add()
            },
            CniAdd {
                port_mappings: vec![PortMapping {
                    host_port: 70000,
                    container_port: 80,
                    ..Default::default()
                }],
                ..add()
            },
            CniAdd {
                port_mappings: vec![PortMapping {
                    host_port: 80,
                    container_port: 80,
                    protocol: "sctp".into(),
                    ..Default::default()
                }],
                ..add()
            },
        ];
        for a in bad_inputs {
            let d = format!("{a:?}");
            assert_eq!(status(a.validate()), 400, "{d}");
        }
    }

    #[test]
    fn wire_names() {
        let v = serde_json::to_value(CniDel {
            container_id: "c".into(),
            if_name: "eth0".into(),
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"ContainerID": "c", "IfName": "eth0"}));
        let a: ValidAttachment =
            serde_json::from_value(serde_json::json!({"containerID": "c", "ifname": "eth0"}))
                .unwrap();
        assert_eq!(a.container_id, "c");
        let m: PortMapping = serde_json::from_value(
            serde_json::json!({"hostPort": 1, "containerPort": 2, "protocol": "udp", "hostIP": "127.0.0.1"}),
        )
        .unwrap();
        assert_eq!(m.host_ip, "127.0.0.1");
    }
}
