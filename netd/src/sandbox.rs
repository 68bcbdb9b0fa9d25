//! A container's sandbox on the host: its network namespace (a file under
//! `<exec-root>/netns`), its endpoints (a veth pair per network, the host
//! end on the network's bridge), the bridges themselves, and the files it
//! resolves names with (`<exec-root>/containers/<id>/`).
//!
//! Every link netd creates carries its instance's marker as its alias
//! (`ip link show` prints it), so that reconcile can tell what is this
//! instance's and never touches another instance's links. (The kernel
//! takes an alias only on an existing link, so a crash can fall between
//! creating a link and marking it: the operation's recorded intent, see
//! daemon::txn, covers that window.)
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{
    dns::{self, files::ResolvConf},
    link::{self, Netlink},
    model::{Container, Endpoint, GatewayMode, Mode, Network, Status},
    netns::NetNs,
    state::State,
};

/// Prefix of every host-side veth netd creates (`vnd` + 9 hex digits).
pub const VETH_PREFIX: &str = "vnd";
/// Prefix of the container end of an engine's endpoint while it is in
/// the host namespace (`vnc` + 9 hex digits), before the engine moves it
/// into its sandbox.
pub const PEER_PREFIX: &str = "vnc";
/// Prefix of user networks' bridges (`netd-` + 10 hex digits).
pub const BRIDGE_PREFIX: &str = "netd-";

/// Where an instance keeps its sandboxes, and how it marks its links.
#[derive(Clone)]
pub struct Sandboxes {
    exec_root: PathBuf,
    /// The alias of every link this instance creates: `netd:<instance>`.
    pub marker: String,
    /// Bridge ports in hairpin mode (the netfilter datapaths want it).
    pub hairpin: bool,
    /// The ephemeral port range of netd's own containers, if the
    /// datapath wants one (`Datapath::container_port_range`).
    pub port_range: Option<(u16, u16)>,
    pub nl: Netlink,
}

impl Sandboxes {
    /// Prepares `<exec-root>/netns` and `<exec-root>/containers`.
    pub fn new(
        exec_root: &Path,
        instance: &str,
        hairpin: bool,
        port_range: Option<(u16, u16)>,
        nl: Netlink,
    ) -> Result<Sandboxes> {
        let netns = exec_root.join("netns");
        std::fs::create_dir_all(&netns).with_context(|| format!("creating {}", netns.display()))?;
        std::fs::create_dir_all(exec_root.join("containers"))?;
        crate::netns::share_mount(&netns)?;
        Ok(Sandboxes {
            exec_root: exec_root.to_path_buf(),
            marker: format!("netd:{instance}"),
            hairpin,
            port_range,
            nl,
        })
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.exec_root.join("netns")
    }

    /// Undoes what [`new`](Self::new) mounted (`--cleanup-on-exit`): the
    /// namespace directory's own mount.
    pub fn unmount(&self) -> Result<()> {
        let dir = self.netns_dir();
        match nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("unmounting {}", dir.display())),
        }
    }

    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir().join(id)
    }

    /// The network namespace a container's processes run in (the
    /// runtime's `CNI_NETNS` for a CNI attachment).
    pub fn sandbox_key(&self, c: &Container) -> PathBuf {
        if let Some((_, netns, _)) = c.cni() {
            return netns.to_path_buf();
        }
        match &c.mode {
            Mode::Container(t) => self.netns_path(t),
            _ => self.netns_path(&c.id),
        }
    }

    pub fn files_dir(&self, id: &str) -> PathBuf {
        self.exec_root.join("containers").join(id)
    }

    /// The directory holding the files a container's processes see
    /// (container:NAME shares its target's).
    pub fn files_of(&self, c: &Container) -> PathBuf {
        match &c.mode {
            Mode::Container(t) => self.files_dir(t),
            _ => self.files_dir(&c.id),
        }
    }

    /// The output of a container's detached main process.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.files_dir(id).join("output.log")
    }

    /// Whether a link is this instance's.
    pub fn is_ours(&self, l: &link::Link) -> bool {
        l.alias.as_deref() == Some(self.marker.as_str())
    }

    /// Creates (or adopts and marks) a network's bridge with its gateway
    /// address and fixed MAC; returns whether it was created now.
    pub async fn ensure_bridge(&self, n: &Network) -> Result<bool> {
        let existed = self.nl.link_by_name(&n.bridge).await?;
        // A fixed address (02:42 + the gateway's, as containers' MACs
        // are made): the gateway's MAC never changes under the
        // containers' ARP caches.
        let i = self
            .nl
            .ensure_bridge(
                &n.bridge,
                n.options.mtu,
                Some(link::mac_for_endpoint(n.gateway(), n.gateway6())),
            )
            .await?;
        if existed.as_ref().is_none_or(|l| !self.is_ours(l)) {
            self.nl.set_alias(i, &self.marker).await?;
        }
        // Docker's `isolated` gateway mode: no address on the host (per
        // family: gateway_mode_ipv4, gateway_mode_ipv6).
        if n.options.gateway_mode != GatewayMode::Isolated
            && let (Some(gw), Some(subnet)) = (n.gateway(), n.subnet())
        {
            self.nl.add_addr(i, gw, subnet.prefix).await?;
        }
        if n.options.gateway_mode_ipv6 != GatewayMode::Isolated
            && let (Some(gw), Some(subnet)) = (n.gateway6(), n.subnet6())
        {
            enable_ipv6_forwarding()?;
            self.nl.add_addr6(i, gw, subnet.prefix_len()).await?;
        }
        self.nl.set_up(i).await?;
        Ok(existed.is_none())
    }

    /// Gives a namespace of netd's own the datapath's ephemeral port range
    /// (`net.ipv4.ip_local_port_range`), if it wants one.
    pub fn set_port_range(&self, ns: &NetNs) -> Result<()> {
        if let Some((lo, hi)) = self.port_range {
            let v = format!("{lo} {hi}");
            ns.run(move || crate::netns::sysctl_write("net/ipv4/ip_local_port_range", &v))
                .context("setting the container's ephemeral port range")?;
        }
        Ok(())
    }

    /// Creates an endpoint's veth pair: the host end (marked) on the
    /// network's bridge, the container end inside `ns` with its address,
    /// IPv6 off (the network is IPv4-only, as Docker does), and the
    /// default route via the gateway on the first endpoint.
    pub async fn wire_endpoint(
        &self,
        ns: &NetNs,
        ep: &Endpoint,
        net: &Network,
        default_route: bool,
    ) -> Result<()> {
        let br = self.nl.index_of(&net.bridge).await?;
        let vi = self
            .nl
            .create_veth(&ep.veth, &ep.ifname, ns, ep.mac, net.options.mtu)
            .await?;
        self.nl.set_alias(vi, &self.marker).await?;
        self.nl.set_master_up(vi, br).await?;
        if self.hairpin {
            self.nl.set_hairpin(vi).await?;
        }
        // IPv6 only where the network has it (Docker disables it on the
        // interfaces of IPv4-only networks).
        if ep.ip6.is_none() {
            let ifname = ep.ifname.clone();
            ns.run(move || disable_ipv6(&ifname))?;
        }
        let cn = Netlink::in_ns(ns)?;
        let ci = cn.index_of(&ep.ifname).await?;
        if let (Some(ip), Some(subnet)) = (ep.ip, net.subnet()) {
            cn.add_addr(ci, ip, subnet.prefix).await?;
        }
        if let (Some(ip6), Some(subnet)) = (ep.ip6, net.subnet6()) {
            cn.add_addr6(ci, ip6, subnet.prefix_len()).await?;
        }
        cn.set_up(ci).await?;
        if default_route && !net.options.internal {
            if let (Some(_), Some(gw)) = (ep.ip, net.gateway()) {
                cn.add_default_route(gw).await?;
            }
            if let (Some(_), Some(gw6)) = (ep.ip6, net.gateway6()) {
                cn.add_default_route6(gw6).await?;
            }
        }
        Ok(())
    }

    /// A Docker endpoint's veth pair, both ends in the host namespace:
    /// the host end (marked) on the network's bridge, the other end
    /// (`ep.ifname`, with the endpoint's MAC) for Docker to move into its
    /// sandbox, where Docker names it, gives it its address and routes.
    pub async fn wire_docker_endpoint(&self, ep: &Endpoint, net: &Network) -> Result<()> {
        let br = self.nl.index_of(&net.bridge).await?;
        let here = NetNs::at("/proc/thread-self/ns/net");
        let vi = self
            .nl
            .create_veth(&ep.veth, &ep.ifname, &here, ep.mac, net.options.mtu)
            .await?;
        self.nl.set_alias(vi, &self.marker).await?;
        self.nl.set_master_up(vi, br).await?;
        if self.hairpin {
            self.nl.set_hairpin(vi).await?;
        }
        Ok(())
    }

    /// Removes a container's links and namespace (not its state entry),
    /// going on after errors and returning them all. An engine's
    /// endpoint has only its links here.
    pub async fn teardown(&self, c: &Container) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        for ep in c.endpoints.values() {
            if let Err(e) = self.nl.delete_by_name(&ep.veth).await {
                errors.push(e.context(format!("removing {}", ep.veth)));
            }
        }
        // An engine's namespace (Docker's sandbox, a CNI runtime's
        // namespace) is never removed.
        if c.is_netd()
            && !matches!(c.mode, Mode::Container(_))
            && let Err(e) = NetNs::at(self.netns_path(&c.id)).remove()
        {
            errors.push(e);
        }
        errors
    }

    /// Writes the container's /etc/hosts, /etc/resolv.conf and hostname
    /// files. They are bind-mounted into running processes, so they are
    /// rewritten in place (same inode), and only when they change.
    pub fn write_files(&self, c: &Container, state: &State, daemon_dns: &[IpAddr]) -> Result<()> {
        let dir = self.files_dir(&c.id);
        std::fs::create_dir_all(&dir)?;
        let eps = c.endpoints_in_order();
        let nets: Vec<&Network> = eps
            .iter()
            .filter_map(|e| state.networks.get(&e.network))
            .collect();
        // The first user-defined network's embedded DNS server.
        let embedded = nets
            .iter()
            .find(|n| !n.default)
            .and_then(|n| n.dns_address());
        let resolv = dns::files::container_resolv_conf(
            &ResolvConf::host(),
            embedded,
            &c.dns.servers,
            daemon_dns,
            &c.dns.search,
            &c.dns.options,
        );
        let own: Vec<(IpAddr, Vec<String>)> = eps
            .iter()
            .flat_map(|e| e.addrs())
            .map(|ip| (ip, vec![c.hostname.clone(), c.name.clone()]))
            .collect();
        // --link on the default bridge: the target's address there, one
        // way (only this container's file has it).
        let links: Vec<(IpAddr, Vec<String>)> = eps
            .iter()
            .zip(&nets)
            .filter(|(_, n)| n.default)
            .flat_map(|(e, _)| {
                c.dns.links.iter().filter_map(|l| {
                    let t = state.containers.get(&l.target)?;
                    let te = t.endpoints.get(&e.network)?;
                    let ip = te.ip?;
                    (t.status == Status::Running)
                        .then(|| (IpAddr::V4(ip), vec![l.alias.clone(), t.name.clone()]))
                })
            })
            .collect();
        let hosts = dns::files::hosts(&own, &links, &c.dns.extra_hosts);
        write_if_changed(&dir.join("hosts"), &hosts)?;
        write_if_changed(&dir.join("resolv.conf"), &resolv.render())?;
        write_if_changed(&dir.join("hostname"), &format!("{}\n", c.hostname))?;
        Ok(())
    }
}

/// `net.ipv6.conf.IF.disable_ipv6=1` in the calling thread's namespace
/// (a no-op on kernels without IPv6).
fn disable_ipv6(ifname: &str) -> Result<()> {
    let key = format!("net/ipv6/conf/{ifname}/disable_ipv6");
    if Path::new("/proc/sys").join(&key).exists() {
        crate::netns::sysctl_write(&key, "1")?;
    }
    Ok(())
}

/// IPv6 forwarding in the daemon's namespace (Docker sets it when a
/// network has IPv6), once.
fn enable_ipv6_forwarding() -> Result<()> {
    for key in [
        "net/ipv6/conf/all/forwarding",
        "net/ipv6/conf/default/forwarding",
    ] {
        if crate::netns::sysctl_read(key).is_ok_and(|v| v != "1") {
            crate::netns::sysctl_write(key, "1")?;
        }
    }
    Ok(())
}

/// Replaces a file's contents in place (keeping its inode, which bind
/// mounts refer to), unless it already has them.
fn write_if_changed(path: &Path, contents: &str) -> Result<()> {
    if std::fs::read(path).is_ok_and(|b| b == contents.as_bytes()) {
        return Ok(());
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
