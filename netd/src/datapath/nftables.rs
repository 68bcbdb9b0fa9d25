//! The nftables datapath: the iptables datapath's behaviour (Docker's
//! rules, no userland proxy), written the way nftables is meant to be
//! used: one table of netd's own (`table ip netd`), a fixed set of rules,
//! and everything that grows with the state (bridges, subnets, published
//! ports) in sets and maps. Publishing a port adds map elements, never a
//! rule: DNAT is one map lookup whatever the number of ports.
//!
//! Every sync renders the whole table and applies it with `nft -f -` in
//! one transaction (create the table if missing, delete it, define it
//! again): the kernel switches from the old table to the new one
//! atomically. Nothing is applied when the rendered text did not change.
//!
//! The IPv4 table (`ip` family; networks with IPv6 get the same as
//! `table ip6 netd`, see [`CHAINS6`]):
//!
//! - `prerouting` (nat, dstnat) and `output` (nat, -100, not to
//!   127.0.0.0/8): destinations that are the host's own addresses
//!   (`fib daddr type local`) jump to `published-ports`, which DNATs
//!   through `dnat_host_ports` (host IP . proto . port) then `dnat_ports`
//!   (proto . port, for bindings on 0.0.0.0);
//! - `postrouting` (nat, srcnat): hairpin masquerade (`hairpin`: a
//!   container reaching its own published port) and masquerade of the
//!   subnets in `masq_subnets` leaving by anything but their own bridge;
//! - `forward` (filter, filter): isolation between bridges, internal
//!   networks kept to their subnet, `ct state established,related`,
//!   published ports (`published`), icc per bridge (`icc_verdict`), egress
//!   of non-internal bridges, and everything else to a bridge dropped;
//! - `raw` (filter, raw: before conntrack and NAT, Docker 28's raw-table
//!   rules): nothing from outside the loopback to 127/8 (a
//!   127.0.0.1-bound published port stays the host's), nothing to a
//!   container of a masquerading network except from its own bridge.
//!
//! A bridge table, `table bridge netd`, replaced in the same transaction,
//! lets only IPv4, ARP whose sender is the endpoint (or 0.0.0.0, a
//! probe) and, on a network with IPv6, IPv6 from the endpoint's address,
//! fe80::/10 and :: out of a container's bridge port: no IPv6 on an
//! IPv4-only network (link-local included: icc=false holds), no VLAN
//! tags, no ARP claiming another address.
//!
//! A separate `ip6` table rather than one `inet` table: the sets are typed
//! per family anyway, and the IPv4 table stays as it was.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context, Result, bail};

use super::{
    Datapath,
    iptables::{Family, binding_host, ep_addr, net_family},
};
use crate::{
    model::Status,
    netns::{sysctl_read, sysctl_write},
    portspec::Proto,
    state::State,
};

/// The family and name of netd's table.
pub const TABLE: &str = "ip netd";
/// The family and name of netd's IPv6 table.
pub const TABLE6: &str = "ip6 netd";
/// The bridge-level table.
pub const BRIDGE_TABLE: &str = "bridge netd";

/// The bridge table's rules (its state is in the sets).
const BRIDGE_CHAINS: &str = "\
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname @ports jump from-container
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iifname @ports jump from-container
	}

	chain from-container {
		iifname @ports_no_ipv4 ether type { ip, arp } drop
		ether type ip return
		ether type ip6 iifname . ip6 saddr @port_ip6 return
		ether type ip6 iifname @ports6 ip6 saddr fe80::/10 return
		ether type ip6 iifname @ports6 ip6 saddr :: return
		ether type arp iifname . arp saddr ether != @port_mac drop
		ether type arp arp saddr ip 0.0.0.0 return
		ether type arp iifname . arp saddr ip != @port_ip drop
		ether type arp return
		drop
	}
";

/// The rules: fixed, whatever the state (the state lives in the sets and
/// maps). Mirrors the iptables datapath's chains in the same order.
const CHAINS: &str = "\
	chain raw {
		type filter hook prerouting priority raw; policy accept;
		iifname != \"lo\" ip daddr 127.0.0.0/8 drop
		ip saddr @cluster ip daddr @cluster_subnets return
		iifname @routed_bridges return
		ip daddr @nat_endpoints ip daddr . iifname != @endpoint_bridges drop
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local jump published-ports
	}

	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local jump published-ports
	}

	chain published-ports {
		dnat to ip daddr . meta l4proto . th dport map @dnat_host_ports
		dnat to meta l4proto . th dport map @dnat_ports
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr . ip daddr . meta l4proto . th dport @hairpin masquerade
		ip saddr @cluster ip daddr @cluster return
		oifname @routed_bridges return
		ip saddr @masq_subnets ip saddr . oifname != @subnets masquerade
		oifname @bridges ip saddr 127.0.0.0/8 masquerade
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname @internal_bridges ip daddr . iifname != @subnets drop
		oifname @internal_bridges ip saddr . oifname != @subnets drop
		ct state established,related accept
		ct status dnat oifname . ip daddr . meta l4proto . th dport @published accept
		iifname @egress_bridges oifname @bridges oifname != @routed_bridges iifname . oifname != @same_bridge drop
		iifname . oifname vmap @icc_verdict
		oifname . ip daddr . meta l4proto . th dport @direct_ports accept
		oifname @icmp_bridges meta l4proto icmp accept
		ip saddr @cluster oifname @cluster_bridges accept
		oifname @open_bridges accept
		oifname @bridges drop
		iifname @egress_bridges accept
	}
";

/// The IPv6 table's rules: [`CHAINS`] for `ip6` (no loopback rule: the
/// kernel drops ::1 arriving on anything but `lo`; no cluster; ICMPv6;
/// [::1] is not translated: the reply of a connection DNATed from ::1 to a
/// container is turned back to ::1 in br_netfilter's bridge-level pass,
/// and the bridge's IPv6 input drops a loopback destination, so such a
/// connection would hang; the daemon's userland proxy listens on `[::1]`
/// instead (see `loopback_proxy`), and a DNAT in `output` would take the
/// connection from it;
/// an internal network's subnet check leaves traffic between its own
/// ports to icc: bridged neighbour discovery goes to multicast addresses
/// and comes from link-local ones).
const CHAINS6: &str = "\
	chain raw {
		type filter hook prerouting priority raw; policy accept;
		iifname @routed_bridges return
		ip6 daddr @nat_endpoints ip6 daddr . iifname != @endpoint_bridges drop
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local jump published-ports
	}

	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local jump published-ports
	}

	chain published-ports {
		ip6 daddr ::1 return
		dnat to ip6 daddr . meta l4proto . th dport map @dnat_host_ports
		dnat to meta l4proto . th dport map @dnat_ports
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip6 saddr . ip6 daddr . meta l4proto . th dport @hairpin masquerade
		oifname @routed_bridges return
		ip6 saddr @masq_subnets ip6 saddr . oifname != @subnets masquerade
		oifname @bridges ip6 saddr ::1 masquerade
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname @internal_bridges iifname . oifname != @same_bridge ip6 daddr . iifname != @subnets drop
		oifname @internal_bridges iifname . oifname != @same_bridge ip6 saddr . oifname != @subnets drop
		ct state established,related accept
		ct status dnat oifname . ip6 daddr . meta l4proto . th dport @published accept
		iifname @egress_bridges oifname @bridges oifname != @routed_bridges iifname . oifname != @same_bridge drop
		iifname . oifname vmap @icc_verdict
		oifname . ip6 daddr . meta l4proto . th dport @direct_ports accept
		oifname @icmp_bridges meta l4proto ipv6-icmp accept
		oifname @open_bridges accept
		oifname @bridges drop
		iifname @egress_bridges accept
	}
";

#[derive(Default)]
pub struct Nftables {
    /// The last table applied, to skip identical re-applies.
    last: String,
    conntrack: super::KernelConntrack,
    /// `[::1]` published ports (not DNATed: see [`super::loopback_proxy`]).
    proxy: super::loopback_proxy::LoopbackProxy,
}

/// Runs `nft -f -` with `script` (one transaction; killed after 30 s; an
/// error names the failing line).
fn nft(script: &str) -> Result<()> {
    super::iptables::apply_batch("nft", &["-f", "-"], script)
        .context("applying netd's nftables tables (is the nftables package installed?)")
}

/// An interface name as an nft string; refuses what could not be quoted.
fn ifname(name: &str) -> Result<String> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'))
    {
        bail!("bridge name {name:?} cannot be used in an nftables ruleset");
    }
    Ok(format!("\"{name}\""))
}

/// One `set`/`map` definition; `elements` sorted and one per line.
fn define(out: &mut String, kind: &str, name: &str, ty: &str, interval: bool, elements: &[String]) {
    let _ = writeln!(out, "\t{kind} {name} {{\n\t\ttype {ty}");
    if interval {
        out.push_str("\t\tflags interval\n");
    }
    if !elements.is_empty() {
        out.push_str("\t\telements = {\n");
        for (i, e) in elements.iter().enumerate() {
            let sep = if i + 1 < elements.len() { "," } else { "" };
            let _ = writeln!(out, "\t\t\t{e}{sep}");
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n\n");
}

/// Renders netd's tables for `state` (the `table ip netd { ... }`,
/// `table ip6 netd { ... }` and `table bridge netd { ... }` blocks;
/// [`apply_script`] wraps them in the replacing transaction).
pub fn render(state: &State) -> Result<String> {
    render_with(state, true)
}

/// [`render`], without the `ip6` table when `ipv6` is false (a host
/// without IPv6).
pub fn render_with(state: &State, ipv6: bool) -> Result<String> {
    let mut out = render_family(state, Family::V4)?;
    if ipv6 {
        out.push_str(&render_family(state, Family::V6)?);
    }
    out.push_str(&render_bridge(state)?);
    Ok(out)
}

/// One family's table: `table ip netd` or `table ip6 netd` (the networks
/// with IPv6, their `gateway_mode_ipv6`, no cluster).
fn render_family(state: &State, fam: Family) -> Result<String> {
    let mut bridges = BTreeSet::new();
    let mut egress = BTreeSet::new();
    let mut internal = BTreeSet::new();
    let mut subnets: BTreeSet<(String, String)> = BTreeSet::new();
    let mut masq: BTreeSet<String> = BTreeSet::new();
    let mut icc = BTreeMap::new();
    // Gateway modes (see crate::model::Wire) and the cluster (IPv4).
    let cluster = if fam == Family::V4 {
        state.cluster_cidr
    } else {
        None
    };
    let mut routed = BTreeSet::new();
    let mut icmp = BTreeSet::new();
    let mut open = BTreeSet::new();
    let mut cluster_bridges = BTreeSet::new();
    let mut cluster_subnets: BTreeSet<String> = BTreeSet::new();
    for net in state.networks.values() {
        let Some((subnet, w)) = net_family(net, fam, cluster) else {
            continue;
        };
        let br = ifname(&net.bridge)?;
        let o = &net.options;
        bridges.insert(br.clone());
        subnets.insert((subnet.clone(), br.clone()));
        if o.internal {
            internal.insert(br.clone());
        } else {
            egress.insert(br.clone());
            if w.masquerade {
                masq.insert(subnet.clone());
            }
        }
        if w.from_other_networks {
            routed.insert(br.clone());
        }
        if w.direct_icmp {
            icmp.insert(br.clone());
        }
        if w.direct_all {
            open.insert(br.clone());
        }
        if w.cluster {
            cluster_bridges.insert(br.clone());
            cluster_subnets.insert(subnet.clone());
        }
        icc.insert(br, if o.icc { "accept" } else { "drop" });
    }

    // Published ports. The first binding of a key wins, as the first
    // matching rule does in the iptables datapath (the control plane
    // refuses duplicates anyway).
    type Target = (IpAddr, u16);
    let mut any_ip: BTreeMap<(Proto, u16), Target> = BTreeMap::new();
    let mut host_ip: BTreeMap<(IpAddr, Proto, u16), Target> = BTreeMap::new();
    let mut published: BTreeSet<(String, IpAddr, Proto, u16)> = BTreeSet::new();
    let mut hairpin: BTreeSet<(IpAddr, Proto, u16)> = BTreeSet::new();
    let mut direct: BTreeSet<(String, IpAddr, Proto, u16)> = BTreeSet::new();
    let mut nat_endpoints: BTreeSet<(IpAddr, String)> = BTreeSet::new();
    for c in state
        .containers
        .values()
        .filter(|c| c.status == Status::Running)
    {
        for ep in c.endpoints.values() {
            if let Some(net) = state.networks.get(&ep.network)
                && let Some((_, w)) = net_family(net, fam, cluster)
                && w.protected
                && let Some(ip) = ep_addr(ep, fam)
            {
                nat_endpoints.insert((ip, ifname(&net.bridge)?));
            }
        }
        // Ports are published to the container's first endpoint (eth0).
        let Some(ep) = c.primary() else {
            continue;
        };
        let Some(net) = state.networks.get(&ep.network) else {
            continue;
        };
        let (Some((_, w)), Some(ip)) = (net_family(net, fam, cluster), ep_addr(ep, fam)) else {
            continue;
        };
        for b in &c.ports {
            let Some(host) = binding_host(b, fam) else {
                continue;
            };
            if w.direct_ports {
                direct.insert((ifname(&net.bridge)?, ip, b.proto, b.container_port));
            }
            if !w.host_ports || b.host_port == 0 {
                continue;
            }
            let target = (ip, b.container_port);
            match host {
                None => {
                    any_ip.entry((b.proto, b.host_port)).or_insert(target);
                }
                Some(h) => {
                    host_ip.entry((h, b.proto, b.host_port)).or_insert(target);
                }
            }
            published.insert((ifname(&net.bridge)?, ip, b.proto, b.container_port));
            hairpin.insert((ip, b.proto, b.container_port));
        }
    }

    let (table, addr) = match fam {
        Family::V4 => (TABLE, "ipv4_addr"),
        Family::V6 => (TABLE6, "ipv6_addr"),
    };
    let mut out = format!("table {table} {{\n");
    let service = "inet_proto . inet_service";
    let target = format!("{addr} . inet_service");
    define(
        &mut out,
        "map",
        "dnat_ports",
        &format!("{service} : {target}"),
        false,
        &any_ip
            .iter()
            .map(|((p, hp), (ip, cp))| format!("{} . {hp} : {ip} . {cp}", p.as_str()))
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "map",
        "dnat_host_ports",
        &format!("{addr} . {service} : {target}"),
        false,
        &host_ip
            .iter()
            .map(|((h, p, hp), (ip, cp))| format!("{h} . {} . {hp} : {ip} . {cp}", p.as_str()))
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "published",
        &format!("ifname . {addr} . {service}"),
        false,
        &published
            .iter()
            .map(|(br, ip, p, cp)| format!("{br} . {ip} . {} . {cp}", p.as_str()))
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "direct_ports",
        &format!("ifname . {addr} . {service}"),
        false,
        &direct
            .iter()
            .map(|(br, ip, p, cp)| format!("{br} . {ip} . {} . {cp}", p.as_str()))
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "hairpin",
        &format!("{addr} . {addr} . {service}"),
        false,
        &hairpin
            .iter()
            .map(|(ip, p, cp)| format!("{ip} . {ip} . {} . {cp}", p.as_str()))
            .collect::<Vec<_>>(),
    );
    let names = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
    for (name, set) in [
        ("bridges", &bridges),
        ("egress_bridges", &egress),
        ("internal_bridges", &internal),
        ("routed_bridges", &routed),
        ("icmp_bridges", &icmp),
        ("open_bridges", &open),
    ] {
        define(&mut out, "set", name, "ifname", false, &names(set));
    }
    if fam == Family::V4 {
        define(
            &mut out,
            "set",
            "cluster_bridges",
            "ifname",
            false,
            &names(&cluster_bridges),
        );
        define(
            &mut out,
            "set",
            "cluster",
            addr,
            true,
            &cluster.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        );
        define(
            &mut out,
            "set",
            "cluster_subnets",
            addr,
            true,
            &names(&cluster_subnets),
        );
    }
    define(
        &mut out,
        "set",
        "same_bridge",
        "ifname . ifname",
        false,
        &bridges
            .iter()
            .map(|b| format!("{b} . {b}"))
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "subnets",
        &format!("{addr} . ifname"),
        true,
        &subnets
            .iter()
            .map(|(s, b)| format!("{s} . {b}"))
            .collect::<Vec<_>>(),
    );
    define(&mut out, "set", "masq_subnets", addr, true, &names(&masq));
    define(
        &mut out,
        "map",
        "icc_verdict",
        "ifname . ifname : verdict",
        false,
        &icc.iter()
            .map(|(b, v)| format!("{b} . {b} : {v}"))
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "nat_endpoints",
        addr,
        false,
        &nat_endpoints
            .iter()
            .map(|(ip, _)| ip.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "endpoint_bridges",
        &format!("{addr} . ifname"),
        false,
        &nat_endpoints
            .iter()
            .map(|(ip, br)| format!("{ip} . {br}"))
            .collect::<Vec<_>>(),
    );
    out.push_str(match fam {
        Family::V4 => CHAINS,
        Family::V6 => CHAINS6,
    });
    out.push_str("}\n");
    Ok(out)
}

/// The bridge table: what may leave a container's bridge port.
fn render_bridge(state: &State) -> Result<String> {
    let mut ports: BTreeSet<String> = BTreeSet::new();
    let mut ports6: BTreeSet<String> = BTreeSet::new();
    let mut port_mac: BTreeSet<(String, String)> = BTreeSet::new();
    let mut port_ip: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
    let mut port_ip6: BTreeSet<(String, std::net::Ipv6Addr)> = BTreeSet::new();
    // Ports of endpoints without IPv4 (IPv6-only networks): no IPv4, no ARP.
    let mut ports_no_ipv4: BTreeSet<String> = BTreeSet::new();
    for c in state
        .containers
        .values()
        .filter(|c| c.status == Status::Running)
    {
        for ep in c.endpoints.values() {
            let veth = ifname(&ep.veth)?;
            let mac = ep
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            ports.insert(veth.clone());
            port_mac.insert((veth.clone(), mac));
            if let Some(ip6) = ep.ip6
                && state
                    .networks
                    .get(&ep.network)
                    .is_some_and(|n| n.enable_ipv6())
            {
                ports6.insert(veth.clone());
                port_ip6.insert((veth.clone(), ip6));
            }
            match ep.ip {
                Some(ip) => port_ip.insert((veth, ip)),
                None => ports_no_ipv4.insert(veth),
            };
        }
    }
    let mut out = format!("table {BRIDGE_TABLE} {{\n");
    define(
        &mut out,
        "set",
        "ports",
        "ifname",
        false,
        &ports.into_iter().collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "ports6",
        "ifname",
        false,
        &ports6.into_iter().collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "port_mac",
        "ifname . ether_addr",
        false,
        &port_mac
            .iter()
            .map(|(v, m)| format!("{v} . {m}"))
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "port_ip",
        "ifname . ipv4_addr",
        false,
        &port_ip
            .iter()
            .map(|(v, ip)| format!("{v} . {ip}"))
            .collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "ports_no_ipv4",
        "ifname",
        false,
        &ports_no_ipv4.iter().cloned().collect::<Vec<_>>(),
    );
    define(
        &mut out,
        "set",
        "port_ip6",
        "ifname . ipv6_addr",
        false,
        &port_ip6
            .iter()
            .map(|(v, ip)| format!("{v} . {ip}"))
            .collect::<Vec<_>>(),
    );
    out.push_str(BRIDGE_CHAINS);
    out.push_str("}\n");
    Ok(out)
}

/// The transaction that replaces netd's tables with `tables` (as
/// [`render`] makes them): make sure they exist, delete them, define them
/// again. `nft -f` applies it atomically.
pub fn apply_script(tables: &str) -> String {
    let mut out = String::new();
    for t in [TABLE, TABLE6, BRIDGE_TABLE] {
        // A host without IPv6 has no ip6 table (and renders none).
        if t == TABLE6 && !tables.contains(&format!("table {TABLE6} {{")) {
            continue;
        }
        let _ = writeln!(out, "table {t} {{}}\ndelete table {t}");
    }
    out.push_str(tables);
    out
}

impl Nftables {
    /// `userland_proxy`: serve `[::1]` published ports (see
    /// [`super::loopback_proxy`]).
    pub fn new(userland_proxy: bool) -> Nftables {
        Nftables {
            proxy: super::loopback_proxy::LoopbackProxy::new(userland_proxy),
            ..Default::default()
        }
    }
}

impl Datapath for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn init(&mut self) -> Result<()> {
        sysctl_write("net/ipv4/ip_forward", "1")?;
        // icc=false between containers on one bridge needs bridged frames
        // to traverse the IPv4 hooks (br_netfilter), as for iptables.
        if sysctl_read("net/bridge/bridge-nf-call-iptables").is_ok() {
            sysctl_write("net/bridge/bridge-nf-call-iptables", "1")?;
            if super::iptables::host_has_ipv6() {
                sysctl_write("net/bridge/bridge-nf-call-ip6tables", "1")?;
            }
        } else {
            tracing::warn!(
                "br_netfilter is not available: icc=false cannot be enforced by nftables"
            );
        }
        // Create the table if missing, and leave a previous daemon's
        // content in place: it keeps forwarding until the first sync
        // replaces it.
        nft(&format!("table {TABLE} {{}}\n"))
    }

    fn sync(&mut self, state: &State) -> Result<()> {
        // First: a [::1] port another process holds refuses the change
        // before any rule is written.
        if super::iptables::host_has_ipv6() {
            self.proxy.sync(state)?;
        }
        super::route_localnet(state)?;
        let table = render_with(state, super::iptables::host_has_ipv6())?;
        if table != self.last {
            nft(&apply_script(&table))?;
            self.last = table;
        }
        self.conntrack.sync(state)
    }

    fn refresh(&mut self, _state: &State) -> Result<()> {
        self.proxy.retry();
        Ok(())
    }

    fn cleanup(&mut self) -> Result<()> {
        self.proxy.stop_all();
        self.last.clear();
        let mut script = String::new();
        for t in [TABLE, TABLE6, BRIDGE_TABLE] {
            if t == TABLE6 && !super::iptables::host_has_ipv6() {
                continue;
            }
            let _ = writeln!(script, "table {t} {{}}\ndelete table {t}");
        }
        nft(&script)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        ipam::{Allocator, Cidr},
        model::{Container, Endpoint, Mode, Network, NetworkOptions},
        portspec::PortBinding,
    };

    fn network(id: &str, bridge: &str, subnet: &str, internal: bool, icc: bool) -> Network {
        let subnet: Cidr = subnet.parse().unwrap();
        Network {
            id: id.into(),
            name: id.into(),
            created: String::new(),
            bridge: bridge.into(),
            ipam: Some(Allocator::new(subnet, subnet.first_host(), None).unwrap()),
            options: NetworkOptions {
                gateway_mode: Default::default(),
                gateway_mode_ipv6: Default::default(),
                icc,
                masquerade: true,
                internal,
                mtu: 1500,
                host_binding_ipv4: Ipv4Addr::UNSPECIFIED,
            },
            raw_options: BTreeMap::new(),
            default: false,
            owner: Default::default(),
            ipam6: None,
        }
    }

    fn container(name: &str, net: &str, ip: Ipv4Addr, ports: Vec<PortBinding>) -> Container {
        let ep = Endpoint {
            id: format!("ep-{name}"),
            network: net.into(),
            ip: Some(ip),
            mac: [2, 0x42, 0, 0, 0, 2],
            veth: format!("vnd{name}"),
            ifname: "eth0".into(),
            aliases: Vec::new(),
            static_ip: false,
            ip6: None,
            static_ip6: false,
        };
        Container {
            id: name.into(),
            name: name.into(),
            created: String::new(),
            hostname: name.into(),
            mode: Mode::Bridge,
            status: Status::Running,
            endpoints: BTreeMap::from([(net.to_string(), ep)]),
            requested_network: None,
            requested_ip: None,
            requested_mac: None,
            port_specs: Vec::new(),
            publish_all: false,
            exposed: Vec::new(),
            ports,
            requested_aliases: Vec::new(),
            dns: Default::default(),
            ..Container::default()
        }
    }

    fn binding(host_ip: [u8; 4], host_port: u16, container_port: u16, proto: Proto) -> PortBinding {
        PortBinding {
            host_ip: IpAddr::V4(host_ip.into()),
            host_port,
            container_port,
            proto,
        }
    }

    fn small_state() -> State {
        let mut s = State::default();
        for n in [
            network("def", "netd0", "172.17.0.0/16", false, true),
            network("priv", "netd-priv", "10.99.0.0/24", true, true),
            network("noicc", "netd-noicc", "10.98.0.0/24", false, false),
        ] {
            s.networks.insert(n.id.clone(), n);
        }
        let web = container(
            "web",
            "def",
            Ipv4Addr::new(172, 17, 0, 2),
            vec![
                binding([0, 0, 0, 0], 8080, 80, Proto::Tcp),
                binding([0, 0, 0, 0], 5353, 53, Proto::Udp),
                binding([10, 0, 0, 1], 8443, 443, Proto::Tcp),
            ],
        );
        let mut stopped = container(
            "old",
            "def",
            Ipv4Addr::new(172, 17, 0, 3),
            vec![binding([0, 0, 0, 0], 9090, 90, Proto::Tcp)],
        );
        stopped.status = Status::Exited;
        for c in [web, stopped] {
            s.containers.insert(c.id.clone(), c);
        }
        s
    }

    /// The definition of set or map `name` in a rendered table.
    fn block(t: &str, name: &str) -> String {
        let start = t
            .find(&format!(" {name} {{"))
            .unwrap_or_else(|| panic!("{name} in {t}"));
        let end = start + t[start..].find("\n\t}\n").unwrap();
        t[start..end].to_string()
    }

    #[test]
    fn published_ports_are_map_elements() {
        let t = render(&small_state()).unwrap();
        assert!(t.starts_with("table ip netd {\n"), "{t}");
        assert!(t.contains("\t\t\ttcp . 8080 : 172.17.0.2 . 80,\n"), "{t}");
        assert!(t.contains("\t\t\tudp . 5353 : 172.17.0.2 . 53\n"), "{t}");
        assert!(
            t.contains("\t\t\t10.0.0.1 . tcp . 8443 : 172.17.0.2 . 443\n"),
            "{t}"
        );
        assert!(t.contains("\"netd0\" . 172.17.0.2 . tcp . 80"), "{t}");
        assert!(t.contains("172.17.0.2 . 172.17.0.2 . tcp . 80"), "{t}");
        assert!(!t.contains("9090"), "a stopped container publishes nothing");
        // The rules do not depend on the state: more ports, same rules.
        let rules = |t: &str| t.lines().filter(|l| l.contains("@")).count();
        assert_eq!(rules(&t), rules(&render(&State::default()).unwrap()));
    }

    #[test]
    fn masquerade_and_isolation_sets() {
        let t = render(&small_state()).unwrap();
        let set = |name: &str| block(&t, name);
        let masq = set("masq_subnets");
        assert!(masq.contains("172.17.0.0/16"), "{masq}");
        assert!(masq.contains("10.98.0.0/24"), "{masq}");
        assert!(
            !masq.contains("10.99.0.0"),
            "internal: no masquerade {masq}"
        );
        assert!(set("internal_bridges").contains("\"netd-priv\""));
        assert!(!set("egress_bridges").contains("\"netd-priv\""));
        assert!(set("subnets").contains("10.99.0.0/24 . \"netd-priv\""));
        let icc = set("icc_verdict");
        assert!(
            icc.contains("\"netd-noicc\" . \"netd-noicc\" : drop"),
            "{icc}"
        );
        assert!(icc.contains("\"netd0\" . \"netd0\" : accept"), "{icc}");
        assert!(t.contains("ip saddr @masq_subnets ip saddr . oifname != @subnets masquerade"));
    }

    #[test]
    fn masquerade_false_and_empty_state() {
        let mut s = small_state();
        for n in s.networks.values_mut() {
            n.options.masquerade = false;
        }
        let t = render(&s).unwrap();
        let masq = block(&t, "masq_subnets");
        assert!(!masq.contains("elements"), "{masq}");
        assert!(block(&t, "subnets").contains("172.17.0.0/16 . \"netd0\""));
        // An empty state renders sets without elements (nft refuses `{ }`).
        let e = render(&State::default()).unwrap();
        assert!(!e.contains("elements"), "{e}");
        assert!(apply_script(&e).starts_with("table ip netd {}\ndelete table ip netd\n"));
    }

    #[test]
    fn containers_are_fenced_at_the_bridge_and_in_raw() {
        let t = render(&small_state()).unwrap();
        assert!(t.contains("\ntable bridge netd {\n"), "{t}");
        assert!(block(&t, "ports").contains("\"vndweb\""));
        assert!(
            !block(&t, "ports").contains("vndold"),
            "a stopped container"
        );
        assert!(block(&t, "port_mac").contains("\"vndweb\" . 02:42:00:00:00:02"));
        assert!(block(&t, "port_ip").contains("\"vndweb\" . 172.17.0.2"));
        assert!(block(&t, "endpoint_bridges").contains("172.17.0.2 . \"netd0\""));
        assert!(t.contains("iifname != \"lo\" ip daddr 127.0.0.0/8 drop"));
        assert!(t.contains("ip daddr @nat_endpoints ip daddr . iifname != @endpoint_bridges drop"));
        let script = apply_script(&t);
        assert!(script.contains("delete table bridge netd\n"), "{script}");
    }

    /// One network per gateway mode (nat is the default bridge), each with
    /// a container publishing 8080:80, in a cluster whose CIDR holds the
    /// `nat` pod network `pods`.
    pub(crate) fn modes_state() -> State {
        use crate::model::GatewayMode;
        let mut s = State {
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            ..State::default()
        };
        for (id, br, subnet, mode, internal) in [
            ("def", "netd0", "172.17.0.0/16", GatewayMode::Nat, false),
            (
                "unp",
                "netd-unp",
                "10.10.0.0/24",
                GatewayMode::NatUnprotected,
                false,
            ),
            (
                "rtd",
                "netd-rtd",
                "10.20.0.0/24",
                GatewayMode::Routed,
                false,
            ),
            (
                "iso",
                "netd-iso",
                "10.30.0.0/24",
                GatewayMode::Isolated,
                true,
            ),
            (
                "pods",
                "netd-pods",
                "10.244.1.0/24",
                GatewayMode::Nat,
                false,
            ),
        ] {
            let mut n = network(id, br, subnet, internal, true);
            n.options.gateway_mode = mode;
            s.networks.insert(n.id.clone(), n);
        }
        for (name, net, ip) in [
            ("n", "def", [172, 17, 0, 2]),
            ("u", "unp", [10, 10, 0, 2]),
            ("i", "iso", [10, 30, 0, 2]),
            ("p", "pods", [10, 244, 1, 2]),
        ] {
            let c = container(
                name,
                net,
                ip.into(),
                vec![binding(
                    [0, 0, 0, 0],
                    8080 + ip[3] as u16 * 10 + ip[1] as u16,
                    80,
                    Proto::Tcp,
                )],
            );
            s.containers.insert(c.id.clone(), c);
        }
        // Routed: the container port, no host port.
        let r = container(
            "r",
            "rtd",
            Ipv4Addr::new(10, 20, 0, 2),
            vec![binding([0, 0, 0, 0], 0, 80, Proto::Tcp)],
        );
        s.containers.insert(r.id.clone(), r);
        s
    }

    #[test]
    fn gateway_modes_and_the_cluster_are_sets() {
        let t = render(&modes_state()).unwrap();
        let set = |name: &str| block(&t, name);
        // nat: masquerade, protection, DNAT.
        let masq = set("masq_subnets");
        for m in ["172.17.0.0/16", "10.10.0.0/24", "10.244.1.0/24"] {
            assert!(masq.contains(m), "{m}: {masq}");
        }
        assert!(!masq.contains("10.20.0.0"), "routed: no masquerade");
        let protected = set("nat_endpoints");
        assert!(protected.contains("172.17.0.2") && protected.contains("10.244.1.2"));
        assert!(
            !protected.contains("10.10.0.2"),
            "nat-unprotected: {protected}"
        );
        assert!(!protected.contains("10.20.0.2"), "routed: {protected}");
        // routed: no host port, the container port open by routing, ICMP,
        // other networks may route in.
        assert!(!set("dnat_ports").contains("10.20.0.2"));
        assert!(!set("hairpin").contains("10.20.0.2"));
        assert!(
            set("direct_ports").contains("\"netd-rtd\" . 10.20.0.2 . tcp . 80"),
            "{t}"
        );
        assert!(!set("direct_ports").contains("172.17.0.2"));
        assert!(set("icmp_bridges").contains("\"netd-rtd\""));
        assert!(set("routed_bridges").contains("\"netd-rtd\""));
        assert!(!set("routed_bridges").contains("netd0"));
        // nat-unprotected: everything open by routing.
        let open = set("open_bridges");
        assert!(
            open.contains("\"netd-unp\"") && !open.contains("netd0"),
            "{open}"
        );
        // isolated: internal, nothing else.
        assert!(set("internal_bridges").contains("\"netd-iso\""));
        // The cluster: no masquerade between its addresses, its sources
        // reach the pod network.
        assert!(set("cluster").contains("10.244.0.0/16"));
        assert!(set("cluster_subnets").contains("10.244.1.0/24"));
        let cb = set("cluster_bridges");
        assert!(
            cb.contains("\"netd-pods\"") && !cb.contains("netd0"),
            "{cb}"
        );
        for rule in [
            "ip saddr @cluster ip daddr @cluster return",
            "ip saddr @cluster ip daddr @cluster_subnets return",
            "ip saddr @cluster oifname @cluster_bridges accept",
            "oifname . ip daddr . meta l4proto . th dport @direct_ports accept",
        ] {
            assert!(t.contains(rule), "{rule}");
        }
        // Destination filters come before the bridges' egress accept.
        assert!(t.find("oifname @bridges drop") < t.find("iifname @egress_bridges accept"));
        // No cluster: the sets are empty, the rules the same.
        let mut s = modes_state();
        s.cluster_cidr = None;
        let t2 = render(&s).unwrap();
        assert!(!block(&t2, "cluster").contains("elements"));
        assert!(!block(&t2, "cluster_bridges").contains("elements"));
    }

    /// Dual stack: `def` (nat, IPv6 fd00:17::/64, icc off), `rtd6` (IPv4
    /// nat, IPv6 routed, fd00:20::/64), an IPv4-only network `v4only`;
    /// `web` on def publishes 0.0.0.0:8080 (both families), [::]:8081 (IPv6
    /// only), [::1]:8082 and 127.0.0.1:8083; `r` on rtd6 publishes port 80.
    pub(crate) fn dual_state() -> State {
        use crate::{ipam6::Allocator6, model::GatewayMode};
        let mut s = State::default();
        let mut def = network("def", "netd0", "172.17.0.0/16", false, false);
        def.ipam6 = Some(Allocator6::new("fd00:17::/64".parse().unwrap(), None).unwrap());
        let mut rtd = network("rtd6", "netd-rtd6", "10.20.0.0/24", false, true);
        rtd.ipam6 = Some(Allocator6::new("fd00:20::/64".parse().unwrap(), None).unwrap());
        rtd.options.gateway_mode_ipv6 = GatewayMode::Routed;
        let v4 = network("v4only", "netd-v4", "10.40.0.0/24", false, true);
        for n in [def, rtd, v4] {
            s.networks.insert(n.id.clone(), n);
        }
        let v6 = |h: &str, hp: u16, cp: u16| PortBinding {
            host_ip: h.parse().unwrap(),
            host_port: hp,
            container_port: cp,
            proto: Proto::Tcp,
        };
        let mut web = container(
            "web",
            "def",
            Ipv4Addr::new(172, 17, 0, 2),
            vec![
                binding([0, 0, 0, 0], 8080, 80, Proto::Tcp),
                v6("::", 8081, 81),
                v6("::1", 8082, 82),
                binding([127, 0, 0, 1], 8083, 83, Proto::Tcp),
            ],
        );
        web.endpoints.get_mut("def").unwrap().ip6 = Some("fd00:17::2".parse().unwrap());
        let mut r = container(
            "r",
            "rtd6",
            Ipv4Addr::new(10, 20, 0, 2),
            vec![binding([0, 0, 0, 0], 8090, 80, Proto::Tcp)],
        );
        r.endpoints.get_mut("rtd6").unwrap().ip6 = Some("fd00:20::2".parse().unwrap());
        let o = container("o", "v4only", Ipv4Addr::new(10, 40, 0, 2), vec![]);
        for c in [web, r, o] {
            s.containers.insert(c.id.clone(), c);
        }
        s
    }

    /// The `table FAMILY netd` block of a rendered script.
    fn table_block(t: &str, table: &str) -> String {
        let start = t.find(&format!("table {table} {{\n")).unwrap();
        let end = start + t[start..].find("\n}\n").unwrap();
        t[start..end].to_string()
    }

    #[test]
    fn ipv6_is_a_table_of_its_own() {
        let t = render(&dual_state()).unwrap();
        let v4 = table_block(&t, TABLE);
        let v6 = table_block(&t, TABLE6);
        assert!(!v4.contains("fd00:"), "{v4}");
        let set = |name: &str| block(&v6, name);
        // 0.0.0.0 and :: publish on IPv6, ::1 on its address, 127.0.0.1 not.
        let dnat = set("dnat_ports");
        assert!(dnat.contains("type inet_proto . inet_service : ipv6_addr . inet_service"));
        assert!(dnat.contains("tcp . 8080 : fd00:17::2 . 80"), "{dnat}");
        assert!(dnat.contains("tcp . 8081 : fd00:17::2 . 81"), "{dnat}");
        assert!(
            set("dnat_host_ports").contains("::1 . tcp . 8082 : fd00:17::2 . 82"),
            "{v6}"
        );
        // ... but [::1] is left alone (see CHAINS6).
        assert!(v6.contains("\t\tip6 daddr ::1 return\n\t\tdnat to ip6 daddr"));
        assert!(!v6.contains("8083"), "127.0.0.1 is IPv4 only");
        let dnat4 = block(&v4, "dnat_ports");
        assert!(dnat4.contains("tcp . 8080 : 172.17.0.2 . 80"), "{dnat4}");
        assert!(!v4.contains("8081") && !v4.contains("8082"), "{v4}");
        // NAT66 of the nat network, protection of its container; the
        // routed one: no NAT66, no DNAT, its port and ICMPv6 by routing.
        let masq = set("masq_subnets");
        assert!(masq.contains("fd00:17::/64") && !masq.contains("fd00:20::"));
        assert!(block(&v4, "masq_subnets").contains("10.20.0.0/24"));
        assert!(set("nat_endpoints").contains("fd00:17::2"));
        assert!(!set("nat_endpoints").contains("fd00:20::2"));
        assert!(!dnat.contains("fd00:20::2"));
        assert!(set("direct_ports").contains("\"netd-rtd6\" . fd00:20::2 . tcp . 80"));
        assert!(set("icmp_bridges").contains("\"netd-rtd6\""));
        assert!(set("routed_bridges").contains("\"netd-rtd6\""));
        assert!(!block(&v4, "routed_bridges").contains("netd-rtd6"));
        // icc and isolation per bridge; the IPv4-only network is absent.
        assert!(set("icc_verdict").contains("\"netd0\" . \"netd0\" : drop"));
        assert!(!v6.contains("netd-v4"), "{v6}");
        assert!(v6.contains("oifname @icmp_bridges meta l4proto ipv6-icmp accept"));
        assert!(v6.contains("ip6 saddr @masq_subnets ip6 saddr . oifname != @subnets masquerade"));
        assert!(!v6.contains("127.0.0.0/8") && !v6.contains("@cluster"));
        // The bridge table lets IPv6 out of ports of IPv6 networks only.
        let br = table_block(&t, BRIDGE_TABLE);
        assert!(block(&br, "port_ip6").contains("\"vndweb\" . fd00:17::2"));
        let p6 = block(&br, "ports6");
        assert!(p6.contains("\"vndweb\"") && p6.contains("\"vndr\""));
        assert!(!p6.contains("vndo"), "{p6}");
        assert!(br.contains("ether type ip6 iifname @ports6 ip6 saddr fe80::/10 return"));
        // The transaction replaces all three tables; without IPv6, two.
        let script = apply_script(&t);
        assert!(script.contains("table ip6 netd {}\ndelete table ip6 netd\n"));
        let no6 = render_with(&dual_state(), false).unwrap();
        assert!(!no6.contains("table ip6") && !apply_script(&no6).contains("ip6 netd"));
    }

    #[test]
    fn unquotable_bridge_names_are_refused() {
        let mut s = State::default();
        let n = network("x", "a\"b", "10.1.0.0/24", false, true);
        s.networks.insert(n.id.clone(), n);
        assert!(render(&s).is_err());
    }
}
