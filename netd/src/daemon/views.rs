//! The JSON the API answers with, in Docker's shapes (`docker inspect`,
//! `docker network inspect`).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use serde_json::{Value, json};

use super::Daemon;
use crate::{datapath::Datapath, link, model::*, state::State};

impl Daemon {
    pub fn network_json(&self, n: &Network) -> Value {
        let containers: serde_json::Map<String, Value> = self
            .state
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
            .filter_map(|c| {
                let ep = c.endpoints.get(&n.id)?;
                Some((
                    c.id.clone(),
                    json!({
                        "Name": c.name,
                        "EndpointID": ep.id,
                        "MacAddress": link::fmt_mac(ep.mac),
                        "IPv4Address": match (ep.ip, n.subnet()) {
                            (Some(ip), Some(s)) => format!("{ip}/{}", s.prefix),
                            _ => String::new(),
                        },
                        "IPv6Address": match (ep.ip6, n.subnet6()) {
                            (Some(ip), Some(s)) => format!("{ip}/{}", s.prefix_len()),
                            _ => String::new(),
                        },
                    }),
                ))
            })
            .collect();
        let mut ipam_config = vec![];
        if let Some(a) = &n.ipam {
            let mut cfg =
                json!({ "Subnet": a.subnet().to_string(), "Gateway": a.gateway().to_string() });
            if let Some(r) = a.ip_range() {
                cfg["IPRange"] = json!(r.to_string());
            }
            ipam_config.push(cfg);
        }
        if let (Some(s), Some(g)) = (n.subnet6(), n.gateway6()) {
            ipam_config.push(json!({ "Subnet": s.to_string(), "Gateway": g.to_string() }));
        }
        let driver = match &n.owner {
            NetworkOwner::Netd => "bridge".to_string(),
            NetworkOwner::Docker { plugin, .. } => format!("docker:{plugin}"),
            NetworkOwner::Cni { .. } => "cni".to_string(),
        };
        json!({
            "Name": n.name,
            "Id": n.id,
            "Created": n.created,
            "Scope": "local",
            "Driver": driver,
            "Owner": n.owner,
            "EnableIPv6": n.enable_ipv6(),
            "EnableIPv4": n.enable_ipv4(),
            "IPAM": { "Driver": "default", "Options": {}, "Config": ipam_config },
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
                "com.docker.network.bridge.gateway_mode_ipv4": n.options.gateway_mode.as_str(),
                "com.docker.network.bridge.gateway_mode_ipv6": n.options.gateway_mode_ipv6.as_str(),
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

    pub fn network_inspect(&self, name: &str) -> Result<Value> {
        if [HOST_NETWORK, NONE_NETWORK].contains(&name) {
            return Ok(Self::builtin_json(name));
        }
        let id = self.network_id(name)?;
        Ok(self.network_json(&self.state.networks[&id]))
    }

    pub fn network_list(&self) -> Value {
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

    pub fn container_list(&self, all: bool) -> Value {
        Value::Array(
            self.state
                .containers
                .values()
                .filter(|c| all || c.status == Status::Running)
                .map(|c| self.container_json(c))
                .collect(),
        )
    }

    pub fn container_inspect(&self, name: &str) -> Result<Value> {
        let id = self.container_id(name)?;
        Ok(self.container_json(&self.state.containers[&id]))
    }

    pub fn container_json(&self, c: &Container) -> Value {
        let running = c.status == Status::Running;
        let mut networks = serde_json::Map::new();
        for ep in c.endpoints.values() {
            if let Some(n) = self.state.networks.get(&ep.network) {
                let addr = |s: String| if running { s } else { String::new() };
                networks.insert(
                    n.name.clone(),
                    json!({
                        "NetworkID": n.id,
                        "EndpointID": if running { ep.id.clone() } else { String::new() },
                        "Gateway": addr(opt(n.gateway())),
                        "IPAddress": addr(opt(ep.ip)),
                        "IPPrefixLen": match (running, ep.ip, n.subnet()) {
                            (true, Some(_), Some(s)) => s.prefix,
                            _ => 0,
                        },
                        "IPv6Gateway": n.gateway6().filter(|_| running && ep.ip6.is_some()).map(|g| g.to_string()).unwrap_or_default(),
                        "GlobalIPv6Address": ep.ip6.filter(|_| running).map(|a| a.to_string()).unwrap_or_default(),
                        "GlobalIPv6PrefixLen": match (running, ep.ip6, n.subnet6()) {
                            (true, Some(_), Some(s)) => s.prefix_len(),
                            _ => 0,
                        },
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
        let first = c.primary().filter(|_| running);
        let first_net = first.and_then(|e| self.state.networks.get(&e.network));
        let mut ports = serde_json::Map::new();
        for ((a, b), proto) in &c.exposed {
            for p in *a..=*b {
                ports.entry(format!("{p}/{proto}")).or_insert(Value::Null);
            }
        }
        for b in &shown_bindings(c, &self.state) {
            let e = ports
                .entry(format!("{}/{}", b.container_port, b.proto))
                .or_insert(json!([]));
            if e.is_null() {
                *e = json!([]);
            }
            // A routed network's binding has no host port (Docker shows
            // an empty HostPort).
            let host_port = if b.host_port == 0 {
                String::new()
            } else {
                b.host_port.to_string()
            };
            e.as_array_mut().expect("array").push(json!({
                "HostIp": b.host_ip.to_string(),
                "HostPort": host_port,
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
        let files = self.sandboxes.files_of(c);
        // An engine's endpoint has no files of netd's; its sandbox is the
        // engine's.
        let file = |name: &str| {
            if c.is_netd() {
                json!(files.join(name))
            } else {
                json!("")
            }
        };
        let sandbox_key = match &c.owner {
            Owner::Docker { sandbox, .. } => json!(sandbox.clone().unwrap_or_default()),
            Owner::Cni { netns, .. } => json!(netns),
            Owner::Netd => json!(self.sandboxes.sandbox_key(c)),
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
        let status = match c.status {
            Status::Running => "running",
            Status::Exited => "exited",
        };
        let mut v = json!({
            "Id": c.id,
            "Name": format!("/{}", c.name),
            "Created": c.created,
            "State": {
                "Status": status,
                "Running": running,
                "Pid": c.main.map(|p| p.pid).unwrap_or(0),
                "ExitCode": c.exit_code.unwrap_or(0),
                "FinishedAt": c.finished_at.clone().unwrap_or_default(),
            },
            "Config": { "Hostname": c.hostname, "Cmd": c.cmd },
            "HostConfig": {
                "NetworkMode": mode,
                "AutoRemove": c.auto_remove,
                "Dns": c.dns.servers.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "DnsSearch": c.dns.search,
                "DnsOptions": c.dns.options,
                "ExtraHosts": c.dns.extra_hosts.iter().map(|(n, i)| format!("{n}:{i}")).collect::<Vec<_>>(),
                "Links": links,
            },
            "Owner": c.owner,
            "HostsPath": file("hosts"),
            "ResolvConfPath": file("resolv.conf"),
            "HostnamePath": file("hostname"),
            "LogPath": if c.is_netd() { json!(self.sandboxes.log_path(&c.id)) } else { json!("") },
            "NetworkSettings": {
                "SandboxKey": sandbox_key,
                "Ports": ports,
                "IPAddress": opt(first.and_then(|e| e.ip)),
                "IPPrefixLen": first_net.and_then(|n| n.subnet()).filter(|_| first.is_some_and(|e| e.ip.is_some())).map_or(0, |s| s.prefix),
                "Gateway": opt(first_net.and_then(|n| n.gateway())),
                "GlobalIPv6Address": first.and_then(|e| e.ip6).map(|a| a.to_string()).unwrap_or_default(),
                "GlobalIPv6PrefixLen": first.and(first_net).and_then(|n| n.subnet6()).filter(|_| first.is_some_and(|e| e.ip6.is_some())).map(|s| s.prefix_len()).unwrap_or(0),
                "IPv6Gateway": first.filter(|e| e.ip6.is_some()).and(first_net).and_then(|n| n.gateway6()).map(|g| g.to_string()).unwrap_or_default(),
                "MacAddress": first.map(|e| link::fmt_mac(e.mac)).unwrap_or_default(),
                "Networks": networks,
            },
            "PortBindings": shown_bindings(c, &self.state).iter().map(|b| match first {
                // Routed: reached on the container's own address.
                Some(e) if b.host_port == 0 => {
                    let ip = match (e.ip, e.ip6) {
                        (Some(ip), _) => ip.to_string(),
                        (None, Some(ip6)) => format!("[{ip6}]"),
                        (None, None) => String::new(),
                    };
                    format!("{}/{} -> {ip}:{}", b.container_port, b.proto, b.container_port)
                }
                _ => b.to_string(),
            }).collect::<Vec<_>>(),
        });
        // A CNI attachment: the runtime's ids, no files or logs of netd's.
        if let Some((container_id, netns, ifname)) = c.cni() {
            v["Cni"] = json!({ "ContainerID": container_id, "Netns": netns, "IfName": ifname });
            for k in ["HostsPath", "ResolvConfPath", "HostnamePath", "LogPath"] {
                v[k] = json!("");
            }
        }
        v
    }

    /// Datapath counters, with per-endpoint figures keyed by container.
    pub fn stats(&mut self) -> Result<Value> {
        let st = super::blocking(|| self.dp.stats())?;
        let mut v = serde_json::to_value(&st)?;
        if st.datapath == "ebpf" {
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
            v["Endpoints"] = Value::Object(by_name);
        }
        // CNI attachments are containers like the others (their endpoints
        // are above); how many there are, for every datapath.
        let cni = self
            .state
            .containers
            .values()
            .filter(|c| c.cni().is_some())
            .count();
        v["CniAttachments"] = json!(cni);
        Ok(v)
    }
}

/// A container's bindings as Docker shows them: a binding on 0.0.0.0
/// serves both families, so a container with an IPv6 address shows it
/// twice, on `0.0.0.0` and on `::`, with the same host port (Docker's
/// shape for `-p 8080:80` and `-P` on a dual-stack network).
fn shown_bindings(c: &Container, state: &State) -> Vec<crate::portspec::PortBinding> {
    let has6 = c.endpoints.values().any(|e| e.ip6.is_some());
    // IPv6-only (the primary endpoint has no IPv4): 0.0.0.0 is only its
    // IPv6 side, shown as `::` alone (Docker 28's shape).
    let has4 = c.primary().is_none_or(|e| {
        state
            .networks
            .get(&e.network)
            .is_none_or(|n| n.enable_ipv4())
    });
    let mut out = Vec::new();
    for b in &c.ports {
        let any4 = b.host_port != 0 && b.host_ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        if has4 || !any4 {
            out.push(*b);
        }
        if has6 && any4 {
            out.push(crate::portspec::PortBinding {
                host_ip: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                ..*b
            });
        }
    }
    out
}

/// An optional address as inspect shows it: empty when there is none.
fn opt<T: ToString>(a: Option<T>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}
