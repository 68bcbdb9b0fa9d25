//! Daemon configuration: flags override the TOML config file, which holds
//! Docker daemon.json equivalents.
//!
//! ```toml
//! bip = "172.17.0.1/16"          # default bridge address (gateway/prefix)
//! mtu = 1500
//! datapath = "iptables"
//! uplink = "eth0"
//! default-address-pools = [ { base = "10.10.0.0/16", size = 24 },
//!                           { base = "fd12:3456:789a::/48", size = 64 } ]   # IPv6 pools too
//! dns = ["198.18.0.1"]           # upstream resolvers (default: the host's resolv.conf)
//! userland-proxy = true          # [::1] published ports on the iptables/nftables datapaths
//! ```
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::{datapath::Kind, ipam::Pool, ipam6::Pool6};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct File {
    pub bip: Option<String>,
    pub mtu: Option<u32>,
    pub datapath: Option<Kind>,
    pub uplink: Option<String>,
    /// IPv4 and IPv6 pools in one list, as in Docker's daemon.json.
    pub default_address_pools: Option<Vec<RawPool>>,
    /// Masquerade source ports for the eBPF datapath, "MIN-MAX".
    pub nat_port_range: Option<String>,
    /// Conntrack table size of the eBPF datapath (entries; two per flow).
    pub conntrack_size: Option<u32>,
    /// cgroup v2 directory for the host-socket programs (eBPF datapath).
    pub cgroup: Option<PathBuf>,
    /// Upstream resolvers for containers (Docker's `dns`): the
    /// nameservers of default-bridge containers' resolv.conf and the
    /// embedded DNS server's forwarders. Default: the host's resolv.conf.
    pub dns: Option<Vec<std::net::IpAddr>>,
    /// The cluster's pod range (`--cluster-cidr`).
    pub cluster_cidr: Option<String>,
    /// IPv6 on the default bridge (`--ipv6`), with `fixed-cidr-v6`.
    pub ipv6: Option<bool>,
    pub fixed_cidr_v6: Option<String>,
    /// Docker's `userland-proxy` (`--userland-proxy`): `[::1]` published
    /// ports on the iptables and nftables datapaths (default true).
    pub userland_proxy: Option<bool>,
}

/// A pool as written in the config file (either family).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub base: String,
    pub size: u8,
}

/// The config file's pools by family; `None` keeps a family's defaults.
pub struct Pools {
    pub v4: Option<Vec<Pool>>,
    pub v6: Option<Vec<Pool6>>,
}

/// Splits the config file's pools by family.
pub fn split_pools(raw: &[RawPool]) -> Result<Pools> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for p in raw {
        if p.base.contains(':') {
            let base: ipnet::Ipv6Net = p
                .base
                .parse()
                .with_context(|| format!("invalid IPv6 pool base {:?}", p.base))?;
            v6.push(Pool6 { base, size: p.size });
        } else {
            v4.push(Pool {
                base: p.base.parse()?,
                size: p.size,
            });
        }
    }
    Ok(Pools {
        v4: (!v4.is_empty()).then_some(v4),
        v6: (!v6.is_empty()).then_some(v6),
    })
}

impl File {
    pub fn load(path: &std::path::Path) -> Result<File> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

/// The daemon's effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub datapath: Kind,
    pub uplink: Option<String>,
    pub state_dir: PathBuf,
    pub exec_root: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    /// Default bridge: gateway address and prefix.
    pub bip: (std::net::Ipv4Addr, u8),
    /// `bip` was given (flag or config file): kept even when the host
    /// already routes its subnet; else a free pool is taken then.
    pub bip_explicit: bool,
    pub pools: Vec<Pool>,
    /// IPv6 pools for `--ipv6` without a subnet (empty: a ULA /48 of this
    /// instance's, split into /64s).
    pub pools6: Vec<Pool6>,
    /// The default bridge's IPv6 subnet (`--ipv6 --fixed-cidr-v6`).
    pub default_ipv6: Option<ipnet::Ipv6Net>,
    pub mtu: u32,
    pub cleanup_on_exit: bool,
    /// Name of the default network's bridge device.
    pub default_bridge: String,
    pub nat_ports: (u16, u16),
    pub ct_entries: u32,
    pub cgroup: Option<PathBuf>,
    /// Upstream resolvers (`--dns`, `dns`); empty: the host's resolv.conf.
    pub dns: Vec<std::net::IpAddr>,
    /// `--docker-plugin NAME`: serve Docker's network driver plugin
    /// protocol at /run/docker/plugins/NAME.sock.
    pub docker_plugin: Option<String>,
    /// Addresses containers reach without masquerade: the pods of every
    /// node of the cluster.
    pub cluster_cidr: Option<crate::ipam::Cidr>,
    /// The userland proxy serves `[::1]` published ports on the netfilter
    /// datapaths (`--userland-proxy=false`: `[::1]` reaches nothing there,
    /// as Docker without docker-proxy).
    pub userland_proxy: bool,
}

pub fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("invalid port range {s:?}: expected MIN-MAX"))?;
    let a: u16 = a
        .trim()
        .parse()
        .with_context(|| format!("invalid port range {s:?}"))?;
    let b: u16 = b
        .trim()
        .parse()
        .with_context(|| format!("invalid port range {s:?}"))?;
    if a == 0 || b < a {
        anyhow::bail!("invalid port range {s:?}: need 1 <= MIN <= MAX");
    }
    Ok((a, b))
}

pub fn parse_bip(s: &str) -> Result<(std::net::Ipv4Addr, u8)> {
    let (ip, prefix) = s.split_once('/').with_context(|| {
        format!("invalid bip {s:?}: expected ADDRESS/PREFIX like 172.17.0.1/16")
    })?;
    let ip = ip
        .parse()
        .with_context(|| format!("invalid bip {s:?}: bad address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 30)
        .with_context(|| format!("invalid bip {s:?}: prefix must be a number up to 30"))?;
    Ok((ip, prefix))
}
