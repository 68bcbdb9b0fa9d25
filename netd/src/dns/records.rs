//! What the embedded DNS server knows: an immutable snapshot of the names
//! on each user-defined network, rebuilt from the daemon's state after
//! every change and swapped in atomically (readers never wait for the
//! daemon, the daemon never waits for readers).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    ipam::Cidr,
    model::{Mode, Status},
    state::State,
};

/// One user-defined network's names.
#[derive(Debug, Default)]
pub struct Zone {
    pub network_id: String,
    /// Lower case.
    pub name: String,
    pub subnet: Option<Cidr>,
    pub internal: bool,
    /// Lower-case name -> addresses on this network (container name,
    /// hostname, short id, aliases), IPv4 and (on networks with IPv6)
    /// IPv6: A and AAAA.
    pub names: HashMap<String, Vec<IpAddr>>,
    /// Address -> `NAME.NETWORK` (PTR, in-addr.arpa and ip6.arpa).
    pub ptr: HashMap<IpAddr, String>,
    /// The network's IPv6 subnet.
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// The containers on this network, by their addresses on it.
    pub clients: HashMap<IpAddr, Arc<Client>>,
}

/// A container asking: its scope and its own resolver settings.
#[derive(Debug, Default)]
pub struct Client {
    /// Server addresses (zone keys) of every user network the container
    /// is on.
    pub zones: Vec<IpAddr>,
    /// Its `--dns` servers (forwarders); empty means the daemon's.
    pub upstreams: Vec<SocketAddr>,
    /// `--link` aliases on user networks: names only this container sees.
    pub links: HashMap<String, Vec<IpAddr>>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// By the server's address on the network (its IPv4 gateway, the
    /// IPv6 one on an IPv6-only network): a query's scope is the network
    /// whose server it was sent to.
    pub zones: HashMap<IpAddr, Zone>,
    /// The daemon's forwarders (`--dns`, config, or the host's resolv.conf).
    pub upstreams: Vec<SocketAddr>,
}

/// Where an answer comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Addresses of a container name on a network in scope.
    Found(Vec<IpAddr>),
    /// A name under a network in scope (`x.mynet`) or a single label that
    /// is no container: NXDOMAIN, not forwarded.
    NoSuchName,
    /// Not ours: forward it.
    Elsewhere,
}

pub fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

impl Snapshot {
    /// Builds the snapshot: every user-defined network has a zone, and
    /// every running container contributes its names on each of them.
    pub fn build(state: &State, upstreams: Vec<SocketAddr>) -> Snapshot {
        let mut snap = Snapshot {
            zones: HashMap::new(),
            upstreams,
        };
        // Docker's networks have Docker's own name resolution (its
        // embedded server at 127.0.0.11 in the container).
        for n in state
            .networks
            .values()
            .filter(|n| !n.default && !n.is_docker_owned())
        {
            let Some(server) = n.dns_address() else {
                continue;
            };
            snap.zones.insert(
                server,
                Zone {
                    network_id: n.id.clone(),
                    name: lower(&n.name),
                    subnet: n.subnet(),
                    subnet6: n.subnet6(),
                    internal: n.options.internal,
                    ..Zone::default()
                },
            );
        }
        // A forwarder that is one of our own listeners would loop.
        snap.upstreams.retain(|u| !snap.zones.contains_key(&u.ip()));
        let running = || {
            state
                .containers
                .values()
                .filter(|c| c.status == Status::Running && c.mode == Mode::Bridge)
        };
        let gw_of = |nid: &str| {
            state
                .networks
                .get(nid)
                .filter(|n| !n.default && !n.is_docker_owned())
                .and_then(|n| n.dns_address())
        };
        for c in running() {
            let eps: Vec<_> = c
                .endpoints_in_order()
                .into_iter()
                .filter_map(|e| gw_of(&e.network).map(|gw| (gw, e)))
                .collect();
            if eps.is_empty() {
                continue;
            }
            let mut links: HashMap<String, Vec<IpAddr>> = HashMap::new();
            for l in &c.dns.links {
                let Some(t) = state.containers.get(&l.target) else {
                    continue;
                };
                if t.status != Status::Running {
                    continue;
                }
                for (_, e) in &eps {
                    if let Some(te) = t.endpoints.get(&e.network) {
                        let ips = links.entry(lower(&l.alias)).or_default();
                        ips.extend(te.addrs());
                    }
                }
            }
            let client = Arc::new(Client {
                zones: eps.iter().map(|(gw, _)| *gw).collect(),
                upstreams: c
                    .dns
                    .servers
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, 53))
                    .collect(),
                links,
            });
            for (gw, e) in &eps {
                let Some(zone) = snap.zones.get_mut(gw) else {
                    continue;
                };
                // A CNI attachment's name (`ID:IFNAME`) is no DNS name:
                // it answers to its hostname (the pod's name).
                let name = match c.cni() {
                    Some(_) => c.hostname.as_str(),
                    None => c.name.as_str(),
                };
                let mut names = vec![name, c.hostname.as_str(), &c.id[..12]];
                names.extend(e.aliases.iter().map(String::as_str));
                let addrs: Vec<IpAddr> = e.addrs().collect();
                for n in names {
                    let ips = zone.names.entry(lower(n)).or_default();
                    for a in &addrs {
                        if !ips.contains(a) {
                            ips.push(*a);
                        }
                    }
                }
                for a in addrs {
                    zone.ptr
                        .insert(a, format!("{}.{}", name, state.networks[&e.network].name));
                    zone.clients.insert(a, client.clone());
                }
            }
        }
        snap
    }

    /// The zones a query sent to `gw` from `src` may see: the network it
    /// arrived on first, then the other user networks of the same
    /// container (a container resolves the names of every network it is
    /// attached to, and only those).
    pub fn scope(&self, gw: IpAddr, src: Option<&Client>) -> Vec<&Zone> {
        let mut v: Vec<&Zone> = self.zones.get(&gw).into_iter().collect();
        if let Some(c) = src {
            v.extend(
                c.zones
                    .iter()
                    .filter(|z| **z != gw)
                    .filter_map(|z| self.zones.get(z)),
            );
        }
        v
    }

    /// Resolves a lower-case name without a trailing dot.
    pub fn lookup(&self, scope: &[&Zone], src: Option<&Client>, name: &str) -> Lookup {
        if let Some(ips) = src.and_then(|c| c.links.get(name)) {
            return Lookup::Found(ips.clone());
        }
        for z in scope {
            if let Some(ips) = z.names.get(name) {
                return Lookup::Found(ips.clone());
            }
        }
        for z in scope {
            if let Some(host) = name
                .strip_suffix(z.name.as_str())
                .and_then(|h| h.strip_suffix('.'))
            {
                return match z.names.get(host) {
                    Some(ips) => Lookup::Found(ips.clone()),
                    None => Lookup::NoSuchName,
                };
            }
        }
        if !name.is_empty() && !name.contains('.') {
            return Lookup::NoSuchName;
        }
        Lookup::Elsewhere
    }

    /// PTR: `Some(Some(name))` for a container's address in scope,
    /// `Some(None)` for another address inside a network in scope
    /// (NXDOMAIN), `None` when the address is not ours (forward).
    pub fn reverse(&self, scope: &[&Zone], ip: IpAddr) -> Option<Option<String>> {
        for z in scope {
            if let Some(n) = z.ptr.get(&ip) {
                return Some(Some(n.clone()));
            }
        }
        scope
            .iter()
            .any(|z| match ip {
                IpAddr::V4(v4) => z.subnet.is_some_and(|s| s.contains(v4)),
                IpAddr::V6(v6) => z.subnet6.is_some_and(|s| s.contains(&v6)),
            })
            .then_some(None)
    }
}
