//! A throwaway cluster: node namespaces joined by an "underlay" bridge
//! (198.51.100.0/24, the RFC 5737 documentation range), and an outside
//! namespace on the same underlay playing the internet and the nodes'
//! default gateway (198.51.100.254). Each node's host namespace has
//! `eth0` = 198.51.100.N/24 (N = 1, 2, ...), forwarding on, as a
//! Kubernetes node has. Everything goes on drop.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use super::{Testbed, block_on, unique_stem};
use crate::{
    link::{Netlink, mac_for_ip},
    netns::NetNs,
};

pub const UNDERLAY_PREFIX: u8 = 24;
/// The outside namespace's address on the underlay (the nodes' gateway).
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

/// Node `n`'s (1-based) address on the underlay.
pub fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n)
}

pub struct Cluster {
    pub stem: String,
    pub underlay: NetNs,
    pub outside: NetNs,
    /// The nodes' host namespaces, node 1 first.
    pub nodes: Vec<NetNs>,
}

impl Cluster {
    pub fn new(tag: &str, nodes: u8) -> Result<Cluster> {
        let stem = unique_stem(tag);
        let underlay = NetNs::create_named(&format!("{stem}-ul"))?;
        let mut c = Cluster {
            stem: stem.clone(),
            underlay: underlay.clone(),
            outside: NetNs::at("/nonexistent"),
            nodes: vec![],
        };
        c.outside = NetNs::create_named(&format!("{stem}-out"))?;
        for i in 1..=nodes {
            c.nodes.push(NetNs::create_named(&format!("{stem}-n{i}"))?);
        }
        let (ul, out, nodes) = (c.underlay.clone(), c.outside.clone(), c.nodes.clone());
        block_on(async move {
            let un = Netlink::in_ns(&ul)?;
            let br = un.ensure_bridge("ul0", 1500, None).await?;
            un.set_up(br).await?;
            let mut ends: Vec<(String, NetNs, Ipv4Addr)> =
                vec![("out".into(), out.clone(), ROUTER_IP)];
            for (i, n) in nodes.iter().enumerate() {
                ends.push((format!("n{}", i + 1), n.clone(), node_ip(i as u8 + 1)));
            }
            for (name, ns, ip) in &ends {
                let v = un
                    .create_veth(name, "eth0", ns, mac_for_ip(*ip), 1500)
                    .await?;
                un.set_master_up(v, br).await?;
                let nn = Netlink::in_ns(ns)?;
                let i = nn.index_of("eth0").await?;
                nn.add_addr(i, *ip, UNDERLAY_PREFIX).await?;
                nn.set_up(i).await?;
                if *ip != ROUTER_IP {
                    nn.add_default_route(ROUTER_IP).await?;
                }
            }
            anyhow::Ok(())
        })
        .context("wiring the underlay")?;
        for n in &c.nodes {
            n.run(|| crate::netns::sysctl_write("net/ipv4/ip_forward", "1"))?;
        }
        Ok(c)
    }

    /// A testbed view of node `n` (1-based) for a daemon harness: its host
    /// namespace, and the cluster's outside namespace. Dropping it removes
    /// the node's namespace (the cluster removes the rest).
    pub fn node_testbed(&self, n: u8) -> Testbed {
        Testbed::on(
            format!("{}-n{n}", self.stem),
            self.nodes[n as usize - 1].clone(),
            self.outside.clone(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&self.outside, &self.underlay]) {
            if let Err(e) = ns.remove() {
                eprintln!("cluster cleanup: {e:#}");
            }
        }
    }
}
