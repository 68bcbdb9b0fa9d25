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
}

pub fn add_endpoint(p: &mut Programs, e: Endpoint) {
    let mut m: HashMap<&mut MapData, u32, Endpoint> =
        HashMap::try_from(p.map_mut(maps::ENDPOINTS).unwrap()).unwrap();
    m.insert(e.ip, e, 0).unwrap();
    let mut m: HashMap<&mut MapData, EndpointKey, Endpoint> =
        HashMap::try_from(p.map_mut(maps::ENDPOINTS_BY_IF).unwrap()).unwrap();
    m.insert(EndpointKey { ifindex: e.ifindex }, e, 0).unwrap();
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
