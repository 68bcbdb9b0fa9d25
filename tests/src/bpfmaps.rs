//! Filling and reading netd's maps from tests (BPF_PROG_TEST_RUN walks).
use std::net::Ipv4Addr;

use aya::maps::{
    Array, HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use netd::bpf::Programs;
use netd_common::{
    Config, CtEntry, CtKey, Endpoint, EndpointKey, Network, PORT_KEY_FULL_PREFIX, PortKey,
    PortTarget, maps,
};

pub fn be(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

pub fn set_config(p: &mut Programs, c: Config) {
    let mut a: Array<&mut MapData, Config> =
        Array::try_from(p.map_mut(maps::CONFIG).unwrap()).unwrap();
    a.set(0, c, 0).unwrap();
}

/// Adds (or changes) a network; its endpoints' copies of the flags follow,
/// as the daemon keeps them.
pub fn add_network(p: &mut Programs, id: u32, flags: u32) {
    let mut m: HashMap<&mut MapData, u32, Network> =
        HashMap::try_from(p.map_mut(maps::NETWORKS).unwrap()).unwrap();
    m.insert(
        id,
        Network {
            flags,
            bridge_ifindex: 0,
        },
        0,
    )
    .unwrap();
    let eps: Vec<Endpoint> = {
        let m: HashMap<&mut MapData, u32, Endpoint> =
            HashMap::try_from(p.map_mut(maps::ENDPOINTS).unwrap()).unwrap();
        m.iter().map(|r| r.unwrap().1).collect()
    };
    for e in eps.into_iter().filter(|e| e.net_id == id) {
        add_endpoint(p, e);
    }
}

/// Adds an endpoint as the daemon writes it: its stats slot (the test's
/// ifindex, modulo the array), its network's flags (when the network
/// exists) and, unless given, a /16 subnet mask filled in.
pub fn add_endpoint(p: &mut Programs, mut e: Endpoint) {
    e.slot = slot_of(e.ifindex);
    if e.mask == 0 {
        e.mask = 0xffff_0000u32.to_be();
    }
    let nets: HashMap<&mut MapData, u32, Network> =
        HashMap::try_from(p.map_mut(maps::NETWORKS).unwrap()).unwrap();
    if let Ok(n) = nets.get(&e.net_id, 0) {
        e.net_flags = n.flags;
    }
    // An endpoint without IPv4 (0: an IPv6-only network) is only in the
    // by-interface map, as the daemon writes it.
    if e.ip != 0 {
        let mut m: HashMap<&mut MapData, u32, Endpoint> =
            HashMap::try_from(p.map_mut(maps::ENDPOINTS).unwrap()).unwrap();
        m.insert(e.ip, e, 0).unwrap();
    }
    let mut m: HashMap<&mut MapData, EndpointKey, Endpoint> =
        HashMap::try_from(p.map_mut(maps::ENDPOINTS_BY_IF).unwrap()).unwrap();
    m.insert(EndpointKey { ifindex: e.ifindex }, e, 0).unwrap();
    // The caches, as the daemon fills them: a slot that is free or this
    // endpoint's.
    let mut c: Array<&mut MapData, Endpoint> =
        Array::try_from(p.map_mut(maps::ENDPOINTS_CACHE).unwrap()).unwrap();
    let slot = netd_common::ep_cache_slot_ip(e.ip);
    let cur = c.get(&slot, 0).unwrap();
    if cur == Endpoint::default() || cur.ip == e.ip {
        c.set(slot, e, 0).unwrap();
    }
    let mut c: Array<&mut MapData, Endpoint> =
        Array::try_from(p.map_mut(maps::ENDPOINTS_BY_IF_CACHE).unwrap()).unwrap();
    let slot = netd_common::ep_cache_slot_if(e.ifindex);
    let cur = c.get(&slot, 0).unwrap();
    if cur == Endpoint::default() || cur.ifindex == e.ifindex {
        c.set(slot, e, 0).unwrap();
    }
}

/// The endpoint caches' slot entries for address `ip` and veth `ifindex`
/// (zeroed: free).
pub fn ep_cache_slots(p: &mut Programs, ip: Ipv4Addr, ifindex: u32) -> (Endpoint, Endpoint) {
    let c: Array<&mut MapData, Endpoint> =
        Array::try_from(p.map_mut(maps::ENDPOINTS_CACHE).unwrap()).unwrap();
    let by_ip = c.get(&netd_common::ep_cache_slot_ip(be(ip)), 0).unwrap();
    let c: Array<&mut MapData, Endpoint> =
        Array::try_from(p.map_mut(maps::ENDPOINTS_BY_IF_CACHE).unwrap()).unwrap();
    let by_if = c.get(&netd_common::ep_cache_slot_if(ifindex), 0).unwrap();
    (by_ip, by_if)
}

/// The stats slot tests give the endpoint on veth `ifindex`.
pub fn slot_of(ifindex: u32) -> u32 {
    ifindex % netd_common::MAX_ENDPOINTS
}

/// Publishes host ports [min, max] (one exact entry per port: the
/// decomposition into prefix blocks is tested in netd's unit tests).
pub fn add_ports(
    p: &mut Programs,
    proto: u8,
    host: Ipv4Addr,
    min: u16,
    max: u16,
    cip: Ipv4Addr,
    cport: u16,
) {
    let mut m: LpmTrie<&mut MapData, PortKey, PortTarget> =
        LpmTrie::try_from(p.map_mut(maps::PORTS).unwrap()).unwrap();
    let t = PortTarget {
        container_ip: be(cip),
        host_port_min: min,
        host_port_max: max,
        container_port_min: cport,
        _pad: 0,
    };
    for port in min..=max {
        let k = Key::new(
            PORT_KEY_FULL_PREFIX,
            PortKey {
                proto,
                addr: host.octets(),
                port: port.to_be_bytes(),
                _pad: 0,
            },
        );
        m.insert(&k, t, 0).unwrap();
    }
}

/// Publishes container ports [min, max] of `cip` for routing to the
/// container's address (NETD_DIRECT; one exact entry per port).
pub fn add_direct(p: &mut Programs, proto: u8, cip: Ipv4Addr, min: u16, max: u16) {
    let mut m: LpmTrie<&mut MapData, PortKey, PortTarget> =
        LpmTrie::try_from(p.map_mut(maps::DIRECT).unwrap()).unwrap();
    let t = PortTarget {
        container_ip: be(cip),
        host_port_min: min,
        host_port_max: max,
        container_port_min: min,
        _pad: 0,
    };
    for port in min..=max {
        let k = Key::new(
            PORT_KEY_FULL_PREFIX,
            PortKey {
                proto,
                addr: cip.octets(),
                port: port.to_be_bytes(),
                _pad: 0,
            },
        );
        m.insert(&k, t, 0).unwrap();
    }
}

/// Sets the cluster CIDR in the config (`prefix` 0: no cluster).
pub fn set_cluster(p: &mut Programs, net: Ipv4Addr, prefix: u8) {
    let mut a: Array<&mut MapData, Config> =
        Array::try_from(p.map_mut(maps::CONFIG).unwrap()).unwrap();
    let mut c = a.get(&0, 0).unwrap();
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    c.cluster_net = be(net);
    c.cluster_mask = mask.to_be();
    a.set(0, c, 0).unwrap();
}

pub fn ct(p: &mut Programs) -> Vec<(CtKey, CtEntry)> {
    let m: HashMap<&mut MapData, CtKey, CtEntry> =
        HashMap::try_from(p.map_mut(maps::CT).unwrap()).unwrap();
    m.iter().map(|r| r.unwrap()).collect()
}

/// Every entry of the maps the programs must never write (for the
/// robustness test), as raw bytes.
pub fn control_maps_snapshot(p: &mut Programs) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    {
        let m: HashMap<&mut MapData, u32, Endpoint> =
            HashMap::try_from(p.map_mut(maps::ENDPOINTS).unwrap()).unwrap();
        for (k, v) in m.iter().map(|r| r.unwrap()) {
            out.push((
                "ep".into(),
                k.to_ne_bytes().to_vec(),
                bytemuck::bytes_of(&v).to_vec(),
            ));
        }
    }
    {
        let m: HashMap<&mut MapData, u32, Network> =
            HashMap::try_from(p.map_mut(maps::NETWORKS).unwrap()).unwrap();
        for (k, v) in m.iter().map(|r| r.unwrap()) {
            out.push((
                "net".into(),
                k.to_ne_bytes().to_vec(),
                bytemuck::bytes_of(&v).to_vec(),
            ));
        }
    }
    {
        let m: LpmTrie<&mut MapData, PortKey, PortTarget> =
            LpmTrie::try_from(p.map_mut(maps::PORTS).unwrap()).unwrap();
        for (k, v) in m.iter().map(|r| r.unwrap()) {
            out.push((
                "ports".into(),
                bytemuck::bytes_of(&k.data()).to_vec(),
                bytemuck::bytes_of(&v).to_vec(),
            ));
        }
    }
    {
        let a: Array<&mut MapData, Config> =
            Array::try_from(p.map_mut(maps::CONFIG).unwrap()).unwrap();
        out.push((
            "cfg".into(),
            vec![],
            bytemuck::bytes_of(&a.get(&0, 0).unwrap()).to_vec(),
        ));
    }
    out
}

pub fn remove_endpoint(p: &mut Programs, e: &Endpoint) {
    let mut c: Array<&mut MapData, Endpoint> =
        Array::try_from(p.map_mut(maps::ENDPOINTS_CACHE).unwrap()).unwrap();
    let slot = netd_common::ep_cache_slot_ip(e.ip);
    if c.get(&slot, 0).unwrap().ip == e.ip {
        c.set(slot, Endpoint::default(), 0).unwrap();
    }
    let mut c: Array<&mut MapData, Endpoint> =
        Array::try_from(p.map_mut(maps::ENDPOINTS_BY_IF_CACHE).unwrap()).unwrap();
    let slot = netd_common::ep_cache_slot_if(e.ifindex);
    if c.get(&slot, 0).unwrap().ifindex == e.ifindex {
        c.set(slot, Endpoint::default(), 0).unwrap();
    }
    let mut m: HashMap<&mut MapData, u32, Endpoint> =
        HashMap::try_from(p.map_mut(maps::ENDPOINTS).unwrap()).unwrap();
    let _ = m.remove(&e.ip);
    let mut m: HashMap<&mut MapData, EndpointKey, Endpoint> =
        HashMap::try_from(p.map_mut(maps::ENDPOINTS_BY_IF).unwrap()).unwrap();
    let _ = m.remove(&EndpointKey { ifindex: e.ifindex });
}

pub fn remove_network(p: &mut Programs, id: u32) {
    let mut m: HashMap<&mut MapData, u32, Network> =
        HashMap::try_from(p.map_mut(maps::NETWORKS).unwrap()).unwrap();
    let _ = m.remove(&id);
}

/// Writes one conntrack entry (a test ages or rewrites what the programs
/// stored).
pub fn ct_set(p: &mut Programs, k: &CtKey, e: &CtEntry) {
    let mut m: HashMap<&mut MapData, CtKey, CtEntry> =
        HashMap::try_from(p.map_mut(maps::CT).unwrap()).unwrap();
    m.insert(k, e, 0).unwrap();
}

pub fn ct_clear(p: &mut Programs) {
    let mut m: HashMap<&mut MapData, CtKey, CtEntry> =
        HashMap::try_from(p.map_mut(maps::CT).unwrap()).unwrap();
    let keys: Vec<CtKey> = m.keys().map(|k| k.unwrap()).collect();
    for k in keys {
        let _ = m.remove(&k);
    }
}

/// The endpoint counters of `ifindex` (its slot), summed over CPUs.
pub fn endpoint_stats(p: &mut Programs, ifindex: u32) -> netd_common::EndpointStats {
    let m: aya::maps::PerCpuArray<&mut MapData, netd_common::EndpointStats> =
        aya::maps::PerCpuArray::try_from(p.map_mut(maps::EP_STATS).unwrap()).unwrap();
    let mut t = netd_common::EndpointStats::default();
    if let Ok(v) = m.get(&slot_of(ifindex), 0) {
        for s in v.iter() {
            t.rx_packets += s.rx_packets;
            t.tx_packets += s.tx_packets;
            t.rx_bytes += s.rx_bytes;
            t.tx_bytes += s.tx_bytes;
        }
    }
    t
}

/// Checks that the conntrack table is made of whole flows: every entry's
/// reverse key exists and leads back to it. Returns the entries.
pub fn ct_consistent(p: &mut Programs) -> Result<Vec<(CtKey, CtEntry)>, String> {
    let all = ct(p);
    let by: std::collections::BTreeMap<CtKey, CtEntry> = all.iter().copied().collect();
    for (k, e) in &all {
        let rk = k.reverse(e);
        let Some(re) = by.get(&rk) else {
            return Err(format!("orphan entry {k:?} -> {e:?} (no {rk:?})"));
        };
        if rk.reverse(re) != *k {
            return Err(format!("{k:?} and {rk:?} do not point at each other"));
        }
    }
    Ok(all)
}

/// BPF_PROG_TEST_RUN on a program fd, usable from several threads at once
/// (aya's test_run needs `&mut`). Returns the verdict.
pub fn test_run_fd(prog_fd: i32, frame: &[u8]) -> std::io::Result<i32> {
    test_run_repeat(prog_fd, frame, 1).map(|(v, _)| v)
}

/// BPF_PROG_TEST_RUN `repeat` times; returns the verdict and the kernel's
/// average run time in ns.
pub fn test_run_repeat(prog_fd: i32, frame: &[u8], repeat: u32) -> std::io::Result<(i32, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    // SAFETY: bpf(BPF_PROG_TEST_RUN) reads `frame` and writes at most
    // data_size_out bytes into `out`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            10 as libc::c_long,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((attr.retval as i32, attr.duration))
}

/// One global counter, summed over CPUs.
pub fn counter(p: &mut Programs, c: netd_common::Counter) -> u64 {
    let m: aya::maps::PerCpuArray<&mut MapData, netd_common::Counters> =
        aya::maps::PerCpuArray::try_from(p.map_mut(maps::COUNTERS).unwrap()).unwrap();
    m.get(&0, 0).unwrap().iter().map(|v| v.v[c as usize]).sum()
}

/// IPv6 maps.
pub mod v6 {
    use std::net::Ipv6Addr;

    use aya::maps::{Array, HashMap, MapData, lpm_trie::Key, lpm_trie::LpmTrie};
    use netd::bpf::Programs;
    use netd_common::{
        EndpointKey,
        v6::{
            Config6, CtEntry6, CtKey6, Endpoint6, Ip6, PORT_KEY6_FULL_PREFIX, PortKey6,
            PortTarget6, maps,
        },
    };

    pub fn ip6(a: Ipv6Addr) -> Ip6 {
        Ip6::from_bytes(a.octets())
    }

    /// A network's IPv6 side (NET_IPV6 is added to `flags`).
    pub fn add_network(p: &mut Programs, id: u32, flags: u32) {
        let mut m: HashMap<&mut MapData, u32, netd_common::Network> =
            HashMap::try_from(p.map_mut(maps::NETWORKS6).unwrap()).unwrap();
        m.insert(
            id,
            netd_common::Network {
                flags: flags | netd_common::NET_IPV6,
                bridge_ifindex: 0,
            },
            0,
        )
        .unwrap();
    }

    pub fn set_uplink(p: &mut Programs, a: Ipv6Addr) {
        let mut m: Array<&mut MapData, Config6> =
            Array::try_from(p.map_mut(maps::CONFIG6).unwrap()).unwrap();
        m.set(0, Config6 { uplink_ip: ip6(a) }, 0).unwrap();
    }

    /// An endpoint's IPv6 side (its stats slot: its IPv4 side's).
    pub fn add_endpoint(p: &mut Programs, mut e: Endpoint6) {
        e.slot = super::slot_of(e.ifindex);
        let mut m: HashMap<&mut MapData, Ip6, Endpoint6> =
            HashMap::try_from(p.map_mut(maps::ENDPOINTS6).unwrap()).unwrap();
        m.insert(e.ip, e, 0).unwrap();
        let mut m: HashMap<&mut MapData, EndpointKey, Endpoint6> =
            HashMap::try_from(p.map_mut(maps::ENDPOINTS6_BY_IF).unwrap()).unwrap();
        m.insert(EndpointKey { ifindex: e.ifindex }, e, 0).unwrap();
    }

    /// Publishes one host port over IPv6 (`host` :: is the wildcard).
    pub fn add_port(
        p: &mut Programs,
        proto: u8,
        host: Ipv6Addr,
        port: u16,
        cip: Ipv6Addr,
        cport: u16,
    ) {
        let mut m: LpmTrie<&mut MapData, PortKey6, PortTarget6> =
            LpmTrie::try_from(p.map_mut(maps::PORTS6).unwrap()).unwrap();
        let k = Key::new(
            PORT_KEY6_FULL_PREFIX,
            PortKey6 {
                proto,
                addr: host.octets(),
                port: port.to_be_bytes(),
                _pad: 0,
            },
        );
        let t = PortTarget6 {
            container_ip: ip6(cip),
            host_port_min: port,
            host_port_max: port,
            container_port_min: cport,
            _pad: 0,
        };
        m.insert(&k, t, 0).unwrap();
    }

    pub fn ct(p: &mut Programs) -> Vec<(CtKey6, CtEntry6)> {
        let m: HashMap<&mut MapData, CtKey6, CtEntry6> =
            HashMap::try_from(p.map_mut(maps::CT6).unwrap()).unwrap();
        m.iter().filter_map(|r| r.ok()).collect()
    }
}
