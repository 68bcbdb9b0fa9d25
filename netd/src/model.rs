//! netd's objects, Docker's vocabulary: networks, containers, endpoints,
//! port bindings. These are persisted (state.rs) and served by the API.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use serde::{Deserialize, Serialize};

use crate::{
    ipam::{Allocator, Cidr},
    portspec::{PortBinding, Proto},
};

pub const DEFAULT_NETWORK: &str = "bridge";
pub const HOST_NETWORK: &str = "host";
pub const NONE_NETWORK: &str = "none";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkOptions {
    pub icc: bool,
    pub masquerade: bool,
    pub internal: bool,
    pub mtu: u32,
    /// Default host address for published ports (`host-binding-ipv4`).
    pub host_binding_ipv4: Ipv4Addr,
    /// Docker's `com.docker.network.bridge.gateway_mode_ipv4`.
    #[serde(default)]
    pub gateway_mode: GatewayMode,
    /// Docker's `com.docker.network.bridge.gateway_mode_ipv6`: the same
    /// modes for the network's IPv6 side (NAT66 in `nat`).
    #[serde(default)]
    pub gateway_mode_ipv6: GatewayMode,
}

impl Default for NetworkOptions {
    fn default() -> NetworkOptions {
        NetworkOptions {
            icc: true,
            masquerade: true,
            internal: false,
            mtu: 1500,
            host_binding_ipv4: Ipv4Addr::UNSPECIFIED,
            gateway_mode: GatewayMode::Nat,
            gateway_mode_ipv6: GatewayMode::Nat,
        }
    }
}

/// How a network's containers meet the world (Docker 27/28's gateway
/// modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayMode {
    /// Masquerade out, published ports in; container addresses are not
    /// reachable from outside by routing (Docker 28).
    #[default]
    Nat,
    /// As `nat`, but every container port is reachable by routing to the
    /// container's address too.
    NatUnprotected,
    /// No NAT at all: containers' own addresses on the wire; from outside
    /// only published container ports (by the container's address) and
    /// replies to the containers' own connections get in.
    Routed,
    /// Internal networks only: the bridge has no address on the host.
    Isolated,
}

impl GatewayMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayMode::Nat => "nat",
            GatewayMode::NatUnprotected => "nat-unprotected",
            GatewayMode::Routed => "routed",
            GatewayMode::Isolated => "isolated",
        }
    }

    /// Whether the containers' traffic out is masqueraded (`masquerade`
    /// can still turn it off).
    pub fn nat(self) -> bool {
        matches!(self, GatewayMode::Nat | GatewayMode::NatUnprotected)
    }
}

/// What a network's gateway mode and options mean on the wire: the one
/// reading all three datapaths render from (see the README's "Gateway
/// modes").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wire {
    /// Traffic to the world leaves with the host's address (`nat` and
    /// `nat-unprotected` with masquerade on; never an internal network).
    pub masquerade: bool,
    /// Published host ports are DNATed to the containers (every mode but
    /// `routed`, where the host port of `-p` is not used).
    pub host_ports: bool,
    /// Nothing from outside the bridge reaches a container's address
    /// (Docker 28's raw-table rule): `nat` with masquerade on.
    pub protected: bool,
    /// Published container ports are reachable by routing to the
    /// container's address: `routed`, and `nat` without masquerade (whose
    /// containers' own addresses are on the wire anyway).
    pub direct_ports: bool,
    /// ICMP is reachable by routing (`routed`, as Docker allows it).
    pub direct_icmp: bool,
    /// Every port is reachable by routing (`nat-unprotected`).
    pub direct_all: bool,
    /// Containers of other networks on the host may route to this one's
    /// published container ports and ICMP (`routed`; the others are
    /// isolated).
    pub from_other_networks: bool,
    /// The subnet lies inside the cluster CIDR (`--cluster-cidr`): its
    /// traffic to cluster addresses is never masqueraded, and every
    /// cluster address reaches its containers on every port.
    pub cluster: bool,
}

impl std::str::FromStr for GatewayMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<GatewayMode> {
        Ok(match s {
            "nat" => GatewayMode::Nat,
            "nat-unprotected" => GatewayMode::NatUnprotected,
            "routed" => GatewayMode::Routed,
            "isolated" => GatewayMode::Isolated,
            _ => anyhow::bail!(
                "invalid gateway mode {s:?}: expected nat, nat-unprotected, routed or isolated"
            ),
        })
    }
}

/// Another node of the cluster: its pods' addresses are routed via its
/// address, without NAT (`netd node add`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub pod_cidr: Cidr,
    pub address: Ipv4Addr,
}

/// A bridge network (the built-ins `host` and `none` are not stored).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created: String,
    pub bridge: String,
    /// IPv4 on the network: its subnet, gateway and addresses; `None` on
    /// an IPv6-only network (`--ipv4=false`).
    #[serde(default)]
    pub ipam: Option<Allocator>,
    pub options: NetworkOptions,
    /// The `-o` options as given, for inspect.
    pub raw_options: BTreeMap<String, String>,
    /// The default `bridge` network: no name resolution, Docker's legacy
    /// behaviour.
    pub default: bool,
    /// Who manages the network: netd's API, or an engine through one of
    /// netd's plugins (then netd's `network rm` refuses it).
    #[serde(default)]
    pub owner: NetworkOwner,
    /// IPv6 on the network (`--ipv6`): its subnet, gateway and addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam6: Option<crate::ipam6::Allocator6>,
}

/// Who created a network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NetworkOwner {
    /// `netd network create` (and the default network).
    #[default]
    Netd,
    /// Docker, through the network driver plugin `plugin`: `network` is
    /// Docker's network id.
    Docker { plugin: String, network: String },
    /// A CNI network config (`name`), created by the plugin's first ADD.
    Cni { config: String },
}

impl Network {
    /// The Docker plugin's network with Docker's id `id`.
    pub fn is_docker(&self, id: &str) -> bool {
        matches!(&self.owner, NetworkOwner::Docker { network, .. } if network == id)
    }
    /// Whether Docker manages it, through netd's plugin.
    pub fn is_docker_owned(&self) -> bool {
        matches!(self.owner, NetworkOwner::Docker { .. })
    }
    /// The IPv4 subnet (`None`: an IPv6-only network).
    pub fn subnet(&self) -> Option<Cidr> {
        self.ipam.as_ref().map(|a| a.subnet())
    }
    /// Whether the network has IPv4 (all but `--ipv4=false` ones).
    pub fn enable_ipv4(&self) -> bool {
        self.ipam.is_some()
    }
    /// What the network's gateway mode and options mean on the wire, in a
    /// cluster with pod range `cluster` (if any).
    pub fn wire(&self, cluster: Option<Cidr>) -> Wire {
        let cluster = match (cluster, self.subnet()) {
            (Some(c), Some(s)) => c.contains_cidr(&s),
            _ => false,
        };
        self.wire_of(self.options.gateway_mode, cluster)
    }
    /// The same for the network's IPv6 side (`gateway_mode_ipv6`; the
    /// cluster CIDR is IPv4, so never `cluster`).
    pub fn wire6(&self) -> Wire {
        self.wire_of(self.options.gateway_mode_ipv6, false)
    }
    fn wire_of(&self, mode: GatewayMode, cluster: bool) -> Wire {
        let o = &self.options;
        if o.internal {
            return Wire {
                host_ports: mode != GatewayMode::Routed,
                ..Wire::default()
            };
        }
        Wire {
            masquerade: mode.nat() && o.masquerade,
            host_ports: mode != GatewayMode::Routed,
            protected: mode == GatewayMode::Nat && o.masquerade,
            direct_ports: mode == GatewayMode::Routed
                || (mode == GatewayMode::Nat && !o.masquerade),
            direct_icmp: mode == GatewayMode::Routed,
            direct_all: mode == GatewayMode::NatUnprotected,
            from_other_networks: mode == GatewayMode::Routed,
            cluster,
        }
    }
    /// The IPv4 gateway, the bridge's address (`None`: IPv6-only).
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.ipam.as_ref().map(|a| a.gateway())
    }
    /// Where the network's embedded DNS server listens, and its
    /// containers' resolv.conf points: the bridge's IPv4 address, or its
    /// IPv6 one on an IPv6-only network.
    pub fn dns_address(&self) -> Option<IpAddr> {
        match (self.gateway(), self.gateway6()) {
            (Some(g), _) => Some(IpAddr::V4(g)),
            (None, g6) => g6.map(IpAddr::V6),
        }
    }
    pub fn enable_ipv6(&self) -> bool {
        self.ipam6.is_some()
    }
    pub fn subnet6(&self) -> Option<ipnet::Ipv6Net> {
        self.ipam6.as_ref().map(|a| a.subnet())
    }
    pub fn gateway6(&self) -> Option<std::net::Ipv6Addr> {
        self.ipam6.as_ref().map(|a| a.gateway())
    }
}

impl Endpoint {
    /// Its addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ip
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ip6.map(IpAddr::V6))
    }
}

/// One container's attachment to one network.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub network: String,
    /// The IPv4 address: `None` on an IPv6-only network, and before a
    /// first start (0.0.0.0 in older state files means the same).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    pub mac: [u8; 6],
    /// Host-side veth name.
    pub veth: String,
    /// Interface name inside the container (eth0, eth1, ...).
    pub ifname: String,
    /// Network-scoped names (`--network-alias`, `network connect --alias`),
    /// answered by the network's embedded DNS server.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The address was asked for (`--ip`): a restart must get it back.
    /// Otherwise `ip` is only held while the container runs.
    #[serde(default)]
    pub static_ip: bool,
    /// The IPv6 address on a network with IPv6 (held like `ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// `--ip6` was given.
    #[serde(default)]
    pub static_ip6: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", content = "target", rename_all = "lowercase")]
pub enum Mode {
    /// Own namespace on bridge networks (the default `bridge` or user ones).
    #[default]
    Bridge,
    Host,
    None,
    /// Shares the namespace of the named container (by id).
    Container(String),
}

/// A container is `running` while its sandbox (namespace, interfaces,
/// published ports) exists, and `exited` when it does not: after `stop`,
/// when its main process ended, or after a reboot.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    #[default]
    Exited,
}

/// Who a container (a set of endpoints with one network namespace) is
/// for. netd's own containers have a namespace, files, a cgroup and
/// processes of netd's; the others are attachments netd wires into a
/// namespace that an engine owns, with the same datapath behind them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Owner {
    #[default]
    Netd,
    /// A Docker endpoint (libnetwork remote driver): Docker moves the
    /// container end of the veth into its sandbox (`sandbox`, once Join
    /// told it).
    Docker {
        endpoint: String,
        sandbox: Option<std::path::PathBuf>,
    },
    /// A CNI attachment: `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`.
    Cni {
        container_id: String,
        netns: std::path::PathBuf,
        ifname: String,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub created: String,
    pub hostname: String,
    pub mode: Mode,
    pub status: Status,
    /// Endpoints by network id (bridge mode).
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Requested at create time: the first network, --ip and --mac-address.
    pub requested_network: Option<String>,
    pub requested_ip: Option<Ipv4Addr>,
    pub requested_mac: Option<[u8; 6]>,
    /// -p specs as given, and the concrete bindings while running.
    pub port_specs: Vec<crate::portspec::PortSpec>,
    pub publish_all: bool,
    pub exposed: Vec<((u16, u16), Proto)>,
    pub ports: Vec<PortBinding>,
    /// The main process's command (`run`, and `start` again), with the
    /// environment and directory it was given; empty for a bare sandbox
    /// (`create`).
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<std::path::PathBuf>,
    /// `--rm`: the daemon removes the container when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// The running main process.
    #[serde(default)]
    pub main: Option<crate::process::ProcId>,
    /// How the last main process ended (255 when the daemon could not
    /// tell: it ended while the daemon was down).
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub owner: Owner,
    /// `--network-alias` names for the first network.
    #[serde(default)]
    pub requested_aliases: Vec<String>,
    /// Name resolution settings: resolv.conf, /etc/hosts, links.
    #[serde(default)]
    pub dns: DnsSettings,
}

/// A container's name resolution settings (Docker's `--dns`,
/// `--dns-search`, `--dns-option`, `--add-host`, `--link`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsSettings {
    /// Upstream resolvers: the nameservers of the container's resolv.conf
    /// on the default bridge, the embedded server's forwarders on user
    /// networks.
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
    /// `--add-host NAME:IP` entries for /etc/hosts.
    pub extra_hosts: Vec<(String, IpAddr)>,
    pub links: Vec<Link>,
}

/// `--link NAME[:ALIAS]`: a one-way name for another container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    /// The linked container, by id.
    pub target: String,
    pub alias: String,
}

impl Container {
    /// Whether netd made this container (namespace, files, cgroup,
    /// processes), or only wires an interface into an engine's sandbox.
    pub fn is_netd(&self) -> bool {
        self.owner == Owner::Netd
    }

    /// Endpoints in attachment order (eth0 first).
    pub fn endpoints_in_order(&self) -> Vec<&Endpoint> {
        let mut v: Vec<&Endpoint> = self.endpoints.values().collect();
        v.sort_by_key(|e| {
            e.ifname
                .trim_start_matches("eth")
                .parse::<u32>()
                .unwrap_or(u32::MAX)
        });
        v
    }

    /// The first endpoint (eth0): default route, published ports,
    /// `IPAddress` in inspect.
    pub fn primary(&self) -> Option<&Endpoint> {
        self.endpoints_in_order().into_iter().next()
    }

    /// A CNI attachment's `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`
    /// (None for any other owner).
    pub fn cni(&self) -> Option<(&str, &std::path::Path, &str)> {
        match &self.owner {
            Owner::Cni {
                container_id,
                netns,
                ifname,
            } => Some((container_id, netns, ifname)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_of_each_gateway_mode() {
        let subnet: Cidr = "10.244.1.0/24".parse().unwrap();
        let net = |mode: GatewayMode, masquerade: bool, internal: bool| Network {
            id: "n".into(),
            name: "n".into(),
            created: String::new(),
            bridge: "br".into(),
            ipam: Some(Allocator::new(subnet, subnet.first_host(), None).unwrap()),
            ipam6: None,
            options: NetworkOptions {
                gateway_mode: mode,
                masquerade,
                internal,
                ..NetworkOptions::default()
            },
            raw_options: BTreeMap::new(),
            default: false,
            owner: NetworkOwner::Netd,
        };
        let nat = net(GatewayMode::Nat, true, false).wire(None);
        assert!(nat.masquerade && nat.host_ports && nat.protected);
        assert!(!nat.direct_ports && !nat.direct_all && !nat.cluster);
        let unp = net(GatewayMode::NatUnprotected, true, false).wire(None);
        assert!(unp.masquerade && unp.host_ports && !unp.protected && unp.direct_all);
        let rtd = net(GatewayMode::Routed, true, false).wire(None);
        assert!(!rtd.masquerade && !rtd.host_ports && !rtd.protected);
        assert!(rtd.direct_ports && rtd.direct_icmp && rtd.from_other_networks);
        // nat without masquerade: its addresses are on the wire, its
        // published container ports reachable by routing (replies too).
        let bare = net(GatewayMode::Nat, false, false).wire(None);
        assert!(!bare.masquerade && !bare.protected && bare.direct_ports && bare.host_ports);
        let iso = net(GatewayMode::Isolated, true, true).wire(None);
        assert_eq!(
            iso,
            Wire {
                host_ports: true,
                ..Wire::default()
            }
        );
        // The cluster: a subnet inside the cluster CIDR, not an internal one.
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(net(GatewayMode::Nat, true, false).wire(Some(c)).cluster);
        assert!(!net(GatewayMode::Nat, true, true).wire(Some(c)).cluster);
        let other: Cidr = "10.245.0.0/16".parse().unwrap();
        assert!(!net(GatewayMode::Nat, true, false).wire(Some(other)).cluster);
        // IPv6 has its own mode (gateway_mode_ipv6), never the cluster.
        let mut dual = net(GatewayMode::Nat, true, false);
        dual.options.gateway_mode_ipv6 = GatewayMode::Routed;
        assert_eq!(dual.wire6(), rtd);
        assert!(!dual.wire6().cluster && dual.wire(Some(c)).cluster);
        dual.options.gateway_mode_ipv6 = GatewayMode::Nat;
        assert_eq!(dual.wire6(), nat);
    }

    /// State files from before IPv6-only networks load unchanged: the
    /// IPv4 allocator and the endpoints' addresses as they were, 0.0.0.0
    /// (never assigned) read as it was written and treated as none.
    #[test]
    fn older_state_loads_and_ipv6_only_round_trips() {
        let subnet: Cidr = "10.9.0.0/24".parse().unwrap();
        let mut net = serde_json::to_value(Network {
            id: "n".into(),
            name: "n".into(),
            created: String::new(),
            bridge: "br".into(),
            ipam: Some(Allocator::new(subnet, subnet.first_host(), None).unwrap()),
            ipam6: None,
            options: NetworkOptions::default(),
            raw_options: BTreeMap::new(),
            default: false,
            owner: NetworkOwner::Netd,
        })
        .unwrap();
        let old: Network = serde_json::from_value(net.clone()).unwrap();
        assert_eq!(old.subnet(), Some(subnet));
        assert_eq!(old.gateway(), Some("10.9.0.1".parse().unwrap()));
        let ep = serde_json::json!({
            "id": "e", "network": "n", "ip": "10.9.0.2", "mac": [2, 66, 10, 9, 0, 2],
            "veth": "v", "ifname": "eth0",
        });
        let ep: Endpoint = serde_json::from_value(ep).unwrap();
        assert_eq!(ep.ip, Some("10.9.0.2".parse().unwrap()));
        assert_eq!(ep.addrs().count(), 1);
        // IPv6-only: no allocator, no address, and back.
        net["ipam"] = serde_json::Value::Null;
        let v6only: Network = serde_json::from_value(net).unwrap();
        assert!(!v6only.enable_ipv4() && v6only.subnet().is_none());
        assert_eq!(v6only.dns_address(), None);
        let again: Network =
            serde_json::from_value(serde_json::to_value(&v6only).unwrap()).unwrap();
        assert!(again.ipam.is_none());
    }
}
