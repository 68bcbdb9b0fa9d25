//! The eBPF datapath's IPv6 maps (netd_common::v6): endpoints of IPv6
//! networks by address and by veth, published ports over IPv6 (a binding
//! on 0.0.0.0 covers both families, `[::]` and an IPv6 host address IPv6
//! only), published container ports by the container's IPv6 address
//! (routed gateway modes), the host's IPv6 addresses, the uplink's global
//! IPv6 address (the NAT66 source), and the IPv6 conntrack table's
//! garbage collection and stale entries.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
};

use anyhow::Result;
use aya::maps::{Array, HashMap, IterableMap, MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use netd_common::{
    EndpointKey, NET_DIRECT_ALL, NET_DIRECT_ICMP, NET_DIRECT_PORTS, NET_ICC, NET_INTERNAL,
    NET_IPV6, NET_MASQUERADE, Network, ct_kind,
    v6::{
        Config6, CtEntry6, CtKey6, Endpoint6, Ip6, PORT_KEY6_FULL_PREFIX, PortKey6, PortTarget6,
        maps,
    },
};

use super::{
    ct,
    ports::{PortRun, PublishedRuns, V6, port_blocks},
};
use crate::{
    bpf::Programs,
    datapath::{ConntrackGc, GcRun},
    model::Status,
    state::State,
};

pub fn ip6(a: Ipv6Addr) -> Ip6 {
    Ip6::from_bytes(a.octets())
}

/// An LPM key as an orderable value: (protocol, address, first port of
/// the block, prefix bits of the port).
type PortId6 = (u8, [u8; 16], u16, u32);

/// A run of published ports over IPv6: host (or, routed, the
/// container's own) address -> the container's IPv6 address.
type Run6 = PortRun<Ipv6Addr, Ipv6Addr>;

/// A run's LPM entries: prefix-aligned blocks of its host ports.
fn run_entries(r: &Run6) -> impl Iterator<Item = (PortId6, PortTarget6)> + '_ {
    let t = PortTarget6 {
        container_ip: ip6(r.container),
        host_port_min: r.host_min,
        host_port_max: r.host_max,
        container_port_min: r.container_min,
        _pad: 0,
    };
    port_blocks(r.host_min, r.host_max)
        .into_iter()
        .map(move |(start, bits)| ((r.proto, r.host.octets(), start, bits), t))
}

#[derive(Default, Clone, PartialEq)]
pub struct Desired6 {
    networks: BTreeMap<u32, Network>,
    by_ip: BTreeMap<Ip6, Endpoint6>,
    by_if: BTreeMap<EndpointKey, Endpoint6>,
    ports: BTreeMap<PortId6, PortTarget6>,
    direct: BTreeMap<PortId6, PortTarget6>,
    local: BTreeMap<Ip6, u32>,
    /// (proto, container address, first and last host port) of every
    /// published run.
    live_ports: BTreeSet<(u8, Ip6, u16, u16)>,
}

impl Desired6 {
    /// `slots`: each endpoint's stats slot by host veth ifindex (its
    /// IPv4 side's). `prev`: the last sync's, whose host addresses are
    /// kept while the networks (their bridges' addresses) are the same:
    /// reading them lists every interface (getifaddrs), a cost every
    /// container operation would pay; the periodic refresh
    /// ([`refresh_local`]) follows the rest. `ports`: each container's
    /// runs of the last sync, replaced by this one's.
    pub(super) fn from_state(
        state: &State,
        slots: &BTreeMap<u32, u32>,
        prev: Option<&Desired6>,
        links: &mut super::Links,
        ports: &mut PublishedRuns,
    ) -> Desired6 {
        let mut d = Desired6::default();
        let mut gw_macs = BTreeMap::new();
        let mut wires = BTreeMap::new();
        for n in state.networks.values().filter(|n| n.enable_ipv6()) {
            gw_macs.insert(n.id.clone(), links.mac(&n.bridge));
            let w = wire6(n);
            let mut flags = NET_IPV6;
            for (on, flag) in [
                (n.options.icc, NET_ICC),
                (w.masquerade, NET_MASQUERADE),
                (n.options.internal, NET_INTERNAL),
                (w.direct_ports, NET_DIRECT_PORTS),
                (w.direct_icmp, NET_DIRECT_ICMP),
                (w.direct_all, NET_DIRECT_ALL),
            ] {
                if on {
                    flags |= flag;
                }
            }
            d.networks.insert(
                super::net_id(&n.id),
                Network {
                    flags,
                    bridge_ifindex: links.index(&n.bridge),
                },
            );
            wires.insert(n.id.clone(), w);
        }
        for c in state
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
        {
            for ep in c.endpoints.values() {
                let (Some(a), Some(gw_mac)) = (ep.ip6, gw_macs.get(&ep.network)) else {
                    continue;
                };
                let idx = links.index(&ep.veth);
                if idx == 0 {
                    continue;
                }
                let e = Endpoint6 {
                    ifindex: idx,
                    net_id: super::net_id(&ep.network),
                    ip: ip6(a),
                    mac: ep.mac,
                    gw_mac: *gw_mac,
                    slot: slots.get(&idx).copied().unwrap_or_default(),
                };
                d.by_ip.insert(e.ip, e);
                d.by_if.insert(EndpointKey { ifindex: idx }, e);
            }
            let Some(ep) = c.primary() else { continue };
            let (Some(cip), Some(w)) = (ep.ip6, wires.get(&ep.network)) else {
                continue;
            };
            if c.ports.is_empty() {
                continue;
            }
            let wire = (w.host_ports, w.direct_ports);
            let runs = ports.runs::<V6>(&c.id, &c.ports, cip, wire);
            for r in &runs.host {
                d.live_ports
                    .insert((r.proto, ip6(r.container), r.host_min, r.host_max));
                d.ports.extend(run_entries(r));
            }
            for r in &runs.direct {
                d.direct.extend(run_entries(r));
            }
        }
        d.local = match prev {
            Some(p) if p.networks == d.networks => p.local.clone(),
            _ => local_addrs6(),
        };
        d
    }
}

/// The host's IPv6 addresses again (the periodic refresh): written to the
/// map, and to `last`, when they changed.
pub fn refresh_local(progs: &mut Programs, last: Option<&mut Desired6>) -> Result<()> {
    let Some(last) = last else { return Ok(()) };
    let local = local_addrs6();
    if local != last.local {
        sync_hash(
            &mut HashMap::try_from(progs.map_mut(maps::LOCAL6)?)?,
            Some(&last.local),
            &local,
        )?;
        last.local = local;
    }
    Ok(())
}

/// What the network's IPv6 gateway mode (`gateway_mode_ipv6`) means
/// for its IPv6 side (never the cluster: pod networks are IPv4).
fn wire6(n: &crate::model::Network) -> crate::model::Wire {
    n.wire6()
}

/// The IPv6 addresses of this namespace.
fn local_addrs6() -> BTreeMap<Ip6, u32> {
    nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|a| a.address?.as_sockaddr_in6().map(|s| ip6(s.ip())))
        .map(|a| (a, 1))
        .collect()
}

/// The uplink's global IPv6 address (the NAT66 source): not link-local,
/// not deprecated ones first is not tracked; the first global one.
pub fn uplink_ip6(uplink: &str) -> Option<Ipv6Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| a.interface_name == uplink)
        .filter_map(|a| a.address?.as_sockaddr_in6().map(|s| s.ip()))
        .find(|a| !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 && !a.is_multicast())
}

fn port_key(id: &PortId6) -> Key<PortKey6> {
    Key::new(
        PORT_KEY6_FULL_PREFIX - 16 + id.3,
        PortKey6 {
            proto: id.0,
            addr: id.1,
            port: id.2.to_be_bytes(),
            _pad: 0,
        },
    )
}

/// The inverse of [`port_key`].
fn port_id(k: &Key<PortKey6>) -> PortId6 {
    let d = k.data();
    (
        d.proto,
        d.addr,
        u16::from_be_bytes(d.port),
        (k.prefix_len() + 16).saturating_sub(PORT_KEY6_FULL_PREFIX),
    )
}

fn sync_hash<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut HashMap<&mut MapData, K, V>,
    have: Option<&BTreeMap<K, V>>,
    want: &BTreeMap<K, V>,
) -> Result<()> {
    let have_keys: Vec<K> = match have {
        Some(h) => h.keys().copied().collect(),
        None => map.keys().collect::<Result<_, _>>()?,
    };
    for k in have_keys {
        if !want.contains_key(&k) {
            let _ = map.remove(&k);
        }
    }
    for (k, v) in want {
        let same = match have {
            Some(h) => h.get(k) == Some(v),
            None => map.get(k, 0).ok().as_ref() == Some(v),
        };
        if !same {
            map.insert(k, v, 0)?;
        }
    }
    Ok(())
}

fn sync_lpm(
    map: &mut LpmTrie<&mut MapData, PortKey6, PortTarget6>,
    have: Option<&BTreeMap<PortId6, PortTarget6>>,
    want: &BTreeMap<PortId6, PortTarget6>,
) -> Result<()> {
    let gone: Vec<Key<PortKey6>> = match have {
        Some(h) => h
            .keys()
            .filter(|k| !want.contains_key(k))
            .map(port_key)
            .collect(),
        None => map
            .keys()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|k| !want.contains_key(&port_id(k)))
            .collect(),
    };
    for k in gone {
        let _ = map.remove(&k);
    }
    for (id, t) in want {
        if have.and_then(|h| h.get(id)) != Some(t) {
            map.insert(&port_key(id), *t, 0)?;
        }
    }
    Ok(())
}

/// Makes the IPv6 maps match `d` (against `prev` when known, else the
/// maps' own contents), and removes the conntrack entries of containers
/// and published ports that went away.
pub fn sync(progs: &mut Programs, prev: Option<&Desired6>, d: &Desired6) -> Result<()> {
    // Networks first, endpoints after (and removed the other way round).
    sync_hash(
        &mut HashMap::try_from(progs.map_mut(maps::NETWORKS6)?)?,
        prev.map(|p| &p.networks),
        &d.networks,
    )?;
    sync_hash(
        &mut HashMap::try_from(progs.map_mut(maps::ENDPOINTS6)?)?,
        prev.map(|p| &p.by_ip),
        &d.by_ip,
    )?;
    sync_hash(
        &mut HashMap::try_from(progs.map_mut(maps::ENDPOINTS6_BY_IF)?)?,
        prev.map(|p| &p.by_if),
        &d.by_if,
    )?;
    sync_hash(
        &mut HashMap::try_from(progs.map_mut(maps::LOCAL6)?)?,
        prev.map(|p| &p.local),
        &d.local,
    )?;
    sync_lpm(
        &mut LpmTrie::try_from(progs.map_mut(maps::PORTS6)?)?,
        prev.map(|p| &p.ports),
        &d.ports,
    )?;
    sync_lpm(
        &mut LpmTrie::try_from(progs.map_mut(maps::DIRECT6)?)?,
        prev.map(|p| &p.direct),
        &d.direct,
    )?;
    let removed = prev.is_none_or(|p| {
        p.by_ip.keys().any(|k| !d.by_ip.contains_key(k))
            || p.live_ports.iter().any(|k| !d.live_ports.contains(k))
    });
    if removed {
        let mut table: HashMap<&mut MapData, CtKey6, CtEntry6> =
            HashMap::try_from(progs.map_mut(maps::CT6)?)?;
        let stale: Vec<CtKey6> = ct::dump::<CtKey6, CtEntry6>(table.map())?
            .into_iter()
            .filter(|(k, e)| stale(k, e, d))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            let _ = table.remove(&k);
        }
    }
    Ok(())
}

/// An entry whose container, or (DNAT) published port, is gone.
fn stale(k: &CtKey6, e: &CtEntry6, d: &Desired6) -> bool {
    if !d.by_ip.contains_key(&e.container_ip) {
        return true;
    }
    let host_port = match e.kind {
        ct_kind::DNAT => k.dport,
        ct_kind::REV_DNAT => e.port,
        _ => return false,
    };
    let runs = (k.proto, e.container_ip, 0, 0)..=(k.proto, e.container_ip, host_port, u16::MAX);
    !d.live_ports
        .range(runs)
        .any(|&(_, _, _, last)| last >= host_port)
}

/// Sets the NAT66 source (the uplink's global IPv6 address; unspecified
/// when it has none: nothing is masqueraded over IPv6). Returns whether
/// it changed; masqueraded flows of the old address are removed.
pub fn set_uplink(progs: &mut Programs, uplink: &str) -> Result<bool> {
    let want = uplink_ip6(uplink).map(ip6).unwrap_or(Ip6::UNSPECIFIED);
    let mut arr: Array<&mut MapData, Config6> = Array::try_from(progs.map_mut(maps::CONFIG6)?)?;
    let old = arr.get(&0, 0)?;
    if old.uplink_ip == want {
        return Ok(false);
    }
    arr.set(0, Config6 { uplink_ip: want }, 0)?;
    tracing::info!(
        "uplink {uplink}: IPv6 masquerade source {}",
        Ipv6Addr::from(want.to_bytes())
    );
    if !old.uplink_ip.is_unspecified() {
        let mut table: HashMap<&mut MapData, CtKey6, CtEntry6> =
            HashMap::try_from(progs.map_mut(maps::CT6)?)?;
        let gone: Vec<CtKey6> = ct::dump::<CtKey6, CtEntry6>(table.map())?
            .into_iter()
            .filter(|(k, e)| {
                (e.kind == ct_kind::SNAT && e.addr == old.uplink_ip)
                    || (e.kind == ct_kind::REV_SNAT && k.daddr == old.uplink_ip)
            })
            .map(|(k, _)| k)
            .collect();
        for k in gone {
            let _ = table.remove(&k);
        }
    }
    Ok(true)
}

fn expired(now: u64, k: &CtKey6, e: &CtEntry6) -> bool {
    now.saturating_sub(e.last_seen) > ct::timeout(k.proto, e.state) * 1_000_000_000
}

/// Both directions of the flow of (k, e) idle past their timeout.
pub fn flow_expired(
    now: u64,
    k: &CtKey6,
    e: &CtEntry6,
    get: impl Fn(&CtKey6) -> Option<CtEntry6>,
) -> bool {
    if !expired(now, k, e) {
        return false;
    }
    let rk = k.reverse(e);
    get(&rk).is_none_or(|re| expired(now, &rk, &re))
}

/// The conntrack GC over both tables: the IPv4 one's collector, then the
/// IPv6 table the same way (a snapshot, each candidate read again just
/// before it is deleted).
pub struct Gc {
    pub v4: Box<dyn ConntrackGc>,
    pub ct6: HashMap<MapData, CtKey6, CtEntry6>,
}

impl ConntrackGc for Gc {
    fn run(&mut self) -> Result<GcRun> {
        // The pass's time covers both tables.
        let (cpu, wall) = (ct::thread_cpu_time(), std::time::Instant::now());
        let mut run = self.v4.run()?;
        let now = ct::monotonic_ns();
        let entries: BTreeMap<CtKey6, CtEntry6> = ct::dump::<CtKey6, CtEntry6>(self.ct6.map())?
            .into_iter()
            .collect();
        run.entries += entries.len() as u64;
        for (k, e) in &entries {
            if !flow_expired(now, k, e, |rk| entries.get(rk).copied()) {
                continue;
            }
            let now = ct::monotonic_ns();
            let Ok(e) = self.ct6.get(k, 0) else { continue };
            if flow_expired(now, k, &e, |rk| self.ct6.get(rk, 0).ok()) && self.ct6.remove(k).is_ok()
            {
                run.expired += 1;
            }
        }
        run.cpu_micros = ct::thread_cpu_time().saturating_sub(cpu).as_micros() as u64;
        run.wall_micros = wall.elapsed().as_micros() as u64;
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v6_flow_expires_when_both_directions_are_idle() {
        let a = ip6("fd00::2".parse().unwrap());
        let o = ip6("2001:db8::1".parse().unwrap());
        let h = ip6("2001:db8::2".parse().unwrap());
        let k = CtKey6 {
            saddr: a,
            daddr: o,
            sport: 40000,
            dport: 80,
            proto: 17,
            _pad: [0; 3],
        };
        let e = CtEntry6 {
            kind: ct_kind::SNAT,
            addr: h,
            port: 61000,
            container_ip: a,
            ..CtEntry6::default()
        };
        let rk = k.reverse(&e);
        assert_eq!((rk.saddr, rk.daddr, rk.sport, rk.dport), (o, h, 80, 61000));
        let r = CtEntry6 {
            kind: ct_kind::REV_SNAT,
            addr: a,
            port: 40000,
            last_seen: 100 * 1_000_000_000,
            ..e
        };
        let now = 100 * 1_000_000_000;
        assert!(
            !flow_expired(now, &k, &e, |_| Some(r)),
            "the reply is fresh"
        );
        assert!(flow_expired(now, &k, &e, |_| None), "orphan");
    }

    #[test]
    fn entries_go_with_their_container_and_published_port() {
        let a = ip6("fd00::2".parse().unwrap());
        let mut d = Desired6::default();
        d.by_ip.insert(a, Endpoint6::default());
        d.live_ports.insert((6, a, 8080, 8080));
        let k = |dport| CtKey6 {
            dport,
            proto: 6,
            ..CtKey6::default()
        };
        let e = |kind, port, container_ip| CtEntry6 {
            kind,
            port,
            container_ip,
            ..CtEntry6::default()
        };
        assert!(!stale(&k(8080), &e(ct_kind::DNAT, 80, a), &d));
        assert!(stale(&k(9090), &e(ct_kind::DNAT, 80, a), &d));
        assert!(stale(&k(1), &e(ct_kind::REV_DNAT, 9090, a), &d));
        assert!(!stale(&k(1), &e(ct_kind::SNAT, 61000, a), &d));
        assert!(stale(&k(1), &e(ct_kind::SNAT, 61000, Ip6::UNSPECIFIED), &d));
        // A published range: every port inside it lives, its neighbours not.
        d.live_ports.insert((6, a, 30000, 39999));
        for (port, gone) in [
            (29999, true),
            (30000, false),
            (35000, false),
            (39999, false),
            (40000, true),
        ] {
            assert_eq!(
                stale(&k(port), &e(ct_kind::DNAT, 80, a), &d),
                gone,
                "{port}"
            );
        }
    }
}
