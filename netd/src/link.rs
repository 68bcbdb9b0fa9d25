//! rtnetlink: links, addresses and routes, in any namespace. No `ip`.
use std::{ffi::CString, net::Ipv4Addr, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressFlags},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::netns::NetNs;

/// The protocol number netd's routes carry (`ip route` shows `proto
/// 78`), so reconcile can tell them from everybody else's.
pub const ROUTE_PROTOCOL: u8 = 78;

/// A netlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// What netd needs to know of a link.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    /// IFLA_IFALIAS: netd marks its links with its instance.
    pub alias: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// IFLA_LINK: a veth's peer index (in the peer's namespace).
    pub peer: Option<u32>,
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

pub fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(libc::EEXIST)
}

pub fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(
        errno(e),
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
    )
}

impl Netlink {
    /// A connection in the calling thread's namespace. Needs a tokio
    /// runtime (the connection task is spawned on it).
    pub fn current() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside `ns`: the socket is created on a thread that
    /// entered `ns`, and stays bound to it.
    pub fn in_ns(ns: &NetNs) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns.run(|| {
            let _guard = rt.enter();
            rtnetlink::new_connection().context("opening a netlink socket")
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(msg) = s.try_next().await? {
            out.push(parse_link(&msg));
        }
        Ok(out)
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(parse_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
        }
    }

    pub async fn index_of(&self, name: &str) -> Result<u32> {
        Ok(self
            .link_by_name(name)
            .await?
            .with_context(|| format!("no link named {name}"))?
            .index)
    }

    /// Creates a bridge (up), or returns the existing one's index.
    /// Creates a bridge (or finds it). With `mac` its address is set
    /// explicitly, which pins it: a bridge whose address the kernel chose
    /// takes the lowest address of its ports and changes whenever such a
    /// port comes or goes, and containers that cached the gateway's old
    /// address lose it (the frames reach the host as "other host").
    pub async fn ensure_bridge(&self, name: &str, mtu: u32, mac: Option<[u8; 6]>) -> Result<u32> {
        if let Some(l) = self.link_by_name(name).await? {
            if l.kind.as_deref() != Some("bridge") {
                bail!("link {name} exists and is not a bridge");
            }
            if let Some(mac) = mac {
                self.handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(l.index)
                            .address(mac.to_vec())
                            .build(),
                    )
                    .execute()
                    .await
                    .with_context(|| format!("setting the MAC address of bridge {name}"))?;
            }
            return Ok(l.index);
        }
        let mut b = LinkBridge::new(name).mtu(mtu).up();
        if let Some(mac) = mac {
            b = b.address(mac.to_vec());
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        self.index_of(name).await
    }

    /// Creates a veth pair: `host_name` here (attached to `master`, up) and
    /// `peer_name` directly inside `peer_ns` with `peer_mac`. One netlink
    /// request: either both ends exist afterwards or neither does.
    pub async fn create_veth(
        &self,
        host_name: &str,
        peer_name: &str,
        peer_ns: &NetNs,
        peer_mac: [u8; 6],
        mtu: u32,
    ) -> Result<u32> {
        let ns_file = peer_ns.open()?;
        use std::os::fd::AsRawFd;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name.to_string())
            .mtu(mtu)
            .address(peer_mac.to_vec())
            .setns_by_fd(ns_file.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host_name, peer_name)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| format!("creating veth {host_name} <-> {peer_name}"))?;
        drop(ns_file);
        self.index_of(host_name).await
    }

    pub async fn set_master_up(&self, index: u32, master: u32) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(master)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("enslaving link {index} to {master}"))
    }

    /// Hairpin mode on a bridge port: frames may leave by the port they
    /// came in (a container reaching its own published port through the
    /// host, as Docker sets it without the userland proxy).
    pub async fn set_hairpin(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set_port(rtnetlink::LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .with_context(|| format!("setting hairpin mode on bridge port {index}"))
    }

    /// Sets a link's alias (IFLA_IFALIAS).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).build())
            .execute()
            .await
            .with_context(|| format!("setting the alias of link {index}"))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("setting link {index} up"))
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn delete(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting link {index}")),
        }
    }

    pub async fn delete_by_name(&self, name: &str) -> Result<()> {
        match self.link_by_name(name).await? {
            Some(l) => self.delete(l.index).await,
            None => Ok(()),
        }
    }

    /// Adds an address; an identical address already present is fine.
    pub async fn add_addr(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, addr.into(), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding {addr}/{prefix} to link {index}")),
        }
    }

    /// Adds an IPv6 address without duplicate address detection (netd
    /// hands out the addresses: nothing to detect, and no 1-2 s of
    /// "tentative" during which the address does not work); an identical
    /// address already present is fine.
    pub async fn add_addr6(&self, index: u32, addr: std::net::Ipv6Addr, prefix: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, addr.into(), prefix);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding {addr}/{prefix} to link {index}")),
        }
    }

    /// The IPv6 default route via `gateway`.
    pub async fn add_default_route6(&self, gateway: std::net::Ipv6Addr) -> Result<()> {
        let route = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .gateway(gateway)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("adding the IPv6 default route via {gateway}"))
            }
        }
    }

    /// IPv4 addresses of a link (or of all links with `None`).
    pub async fn addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let all = self.addresses(index, AddressFamily::Inet).await?;
        Ok(all
            .into_iter()
            .filter_map(|(i, a, p)| match a {
                std::net::IpAddr::V4(a) => Some((i, a, p)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// IPv6 addresses of a link (or of all links with `None`).
    pub async fn addrs6(&self, index: Option<u32>) -> Result<Vec<(u32, std::net::Ipv6Addr, u8)>> {
        let all = self.addresses(index, AddressFamily::Inet6).await?;
        Ok(all
            .into_iter()
            .filter_map(|(i, a, p)| match a {
                std::net::IpAddr::V6(a) => Some((i, a, p)),
                std::net::IpAddr::V4(_) => None,
            })
            .collect())
    }

    /// The addresses of one family: (link index, address, prefix length).
    async fn addresses(
        &self,
        index: Option<u32>,
        family: AddressFamily,
    ) -> Result<Vec<(u32, std::net::IpAddr, u8)>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let mut s = req.execute();
        let mut out = Vec::new();
        while let Some(msg) = s.try_next().await? {
            if msg.header.family != family {
                continue;
            }
            for a in &msg.attributes {
                if let AddressAttribute::Address(ip) = a {
                    out.push((msg.header.index, *ip, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding default route via {gateway}")),
        }
    }

    /// The IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = s.try_next().await? {
            if msg.header.table != 254 {
                continue;
            }
            let mut r = Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix: msg.header.destination_prefix_length,
                gateway: None,
                oif: None,
            };
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    _ => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Adds (or replaces) the route `dst/prefix via gateway`, marked as
    /// netd's ([`ROUTE_PROTOCOL`]).
    pub async fn replace_route(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        src: Option<Ipv4Addr>,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(gateway)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if let Some(src) = src {
            b = b.pref_source(src);
        }
        let route = b.build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding the route {dst}/{prefix} via {gateway}"))
    }

    /// Deletes netd's route `dst/prefix via gateway`; a missing one is
    /// fine.
    pub async fn delete_route(&self, dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(gateway)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting the route {dst}/{prefix}")),
        }
    }

    /// Routes of the main table that netd made ([`ROUTE_PROTOCOL`]): (dst,
    /// prefix, gateway).
    pub async fn own_routes(&self) -> Result<Vec<OwnRoute>> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = s.try_next().await? {
            if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                continue;
            }
            let gw = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let src = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if let (Some((dst, prefix)), Some(gw)) = (route_dst(&msg), gw) {
                out.push(OwnRoute {
                    dst,
                    prefix,
                    gateway: gw,
                    src,
                });
            }
        }
        Ok(out)
    }

    /// IPv4 destinations of the main table (prefix, length), for overlap
    /// checks; the default route is left out.
    pub async fn route_prefixes(&self) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = s.try_next().await? {
            if let Some(p) = route_dst(&msg)
                && p.1 > 0
            {
                out.push(p);
            }
        }
        Ok(out)
    }
}

/// One of netd's routes (marked with its protocol): `dst/prefix via
/// gateway`, with the source address the host prefers for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnRoute {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub src: Option<Ipv4Addr>,
}

fn route_dst(msg: &RouteMessage) -> Option<(Ipv4Addr, u8)> {
    if msg.header.table != 254 {
        return None;
    }
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            Some((*ip, msg.header.destination_prefix_length))
        }
        _ => None,
    })
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut l = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        master: None,
        mtu: None,
        alias: None,
        up: msg
            .header
            .flags
            .contains(netlink_packet_route::link::LinkFlags::Up),
        peer: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(m) if m.len() == 6 => {
                l.mac = Some(m.as_slice().try_into().expect("6 bytes"));
            }
            LinkAttribute::Controller(m) => l.master = Some(*m),
            LinkAttribute::Mtu(m) => l.mtu = Some(*m),
            LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
            LinkAttribute::Link(p) => l.peer = Some(*p),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(match k {
                            InfoKind::Bridge => "bridge".into(),
                            InfoKind::Veth => "veth".into(),
                            other => other.to_string(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Formats a MAC address the usual way.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("invalid MAC address {s:?}: expected six hex bytes like 02:42:ac:11:00:02");
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .with_context(|| format!("invalid MAC address {s:?}"))?;
    }
    if mac[0] & 1 == 1 {
        bail!("invalid MAC address {s:?}: a multicast address cannot be a container's MAC");
    }
    Ok(mac)
}

/// Docker's MAC for an address: 02:42 followed by the IPv4 address.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// An endpoint's MAC: from its IPv4 address as Docker derives it, or on
/// an IPv6-only network from the last 32 bits of its IPv6 address (unique
/// within a /64 whose addresses netd hands out from the bottom).
pub fn mac_for_endpoint(ip: Option<Ipv4Addr>, ip6: Option<std::net::Ipv6Addr>) -> [u8; 6] {
    match (ip, ip6) {
        (Some(ip), _) => mac_for_ip(ip),
        (None, Some(ip6)) => {
            let o = ip6.octets();
            [0x02, 0x42, o[12], o[13], o[14], o[15]]
        }
        (None, None) => mac_for_ip(Ipv4Addr::UNSPECIFIED),
    }
}

// ---- host helpers (ioctl and /proc; the calling thread's namespace) ----

/// if_nametoindex in the calling thread's namespace (0: no such link).
pub fn ifindex(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else { return 0 };
    // SAFETY: a valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn ifreq(name: &str, req: libc::c_ulong) -> Result<libc::ifreq> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; the ioctl writes only into it.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), req, &mut ifr) != 0 {
            bail!("ioctl on {name}: {}", std::io::Error::last_os_error());
        }
        Ok(ifr)
    }
}

/// The MAC address of a link in this namespace.
pub fn link_mac(name: &str) -> Result<[u8; 6]> {
    let ifr = ifreq(name, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = sa.sa_data[i] as u8;
    }
    Ok(mac)
}

/// The primary IPv4 address of a link in this namespace.
pub fn link_ipv4(name: &str) -> Result<Ipv4Addr> {
    let ifr = ifreq(name, libc::SIOCGIFADDR)?;
    // SAFETY: SIOCGIFADDR filled an AF_INET sockaddr.
    let sin: libc::sockaddr_in = unsafe { std::mem::transmute_copy(&ifr.ifr_ifru.ifru_addr) };
    Ok(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
}

/// The interface of the default route (the uplink unless configured).
pub fn default_route_iface() -> Result<String> {
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    routes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| f[0].to_string())
        .context("no default route: pass --uplink IFACE")
}
