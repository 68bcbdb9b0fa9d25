//! CNI results in the shape of each version netd speaks (SPEC.md
//! "Success", spec-v0.4.0, spec-v1.0.0, spec-v1.1.0), and what CHECK
//! reads back from a previous result.
//!
//! An ADD result lists three interfaces, as the reference `bridge`
//! plugin does: the network's bridge, the host-side veth (no `sandbox`:
//! the `bandwidth` plugin finds it there by name) and the container's
//! interface (`sandbox` = `CNI_NETNS`; `portmap` takes the address whose
//! `interface` index points at it). A `prevResult` (netd after another
//! plugin) is kept: netd's interfaces, addresses, routes are appended.
use serde_json::{Map, Value, json};

use super::types::{CniError, code, version_ge};
use crate::api::cni::RouteSpec;

/// The ADD result for `version` from the daemon's answer (`/cni/add`)
/// and the previous plugin's result, if any.
pub fn add_result(version: &str, answer: &Value, prev: Option<&Value>) -> Value {
    let with_mtu = version_ge(version, "1.1.0");
    let with_ip_version = !version_ge(version, "1.0.0");
    let list = |v: Option<&Value>, key: &str| -> Vec<Value> {
        v.and_then(|p| p[key].as_array().cloned())
            .unwrap_or_default()
    };
    let mut interfaces = list(prev, "interfaces");
    let mut ips = list(prev, "ips");
    let mut routes = list(prev, "routes");
    let iface = |v: &Value, sandbox: Option<&Value>| {
        let mut m = Map::new();
        m.insert("name".into(), v["Name"].clone());
        m.insert("mac".into(), v["Mac"].clone());
        if with_mtu && v["Mtu"].is_u64() {
            m.insert("mtu".into(), v["Mtu"].clone());
        }
        if let Some(s) = sandbox {
            m.insert("sandbox".into(), s.clone());
        }
        Value::Object(m)
    };
    interfaces.push(json!({
        "name": answer["Bridge"]["Name"],
        "mac": answer["Bridge"]["Mac"],
    }));
    interfaces.push(iface(&answer["HostInterface"], None));
    interfaces.push(iface(
        &answer["Interface"],
        Some(&answer["Interface"]["Sandbox"]),
    ));
    // IPv4 (none on an IPv6-only network).
    if answer["Address"].is_string() {
        let mut ip = json!({
            "interface": interfaces.len() - 1,
            "address": answer["Address"],
            "gateway": answer["Gateway"],
        });
        if with_ip_version {
            ip["version"] = json!("4");
        }
        ips.push(ip);
    }
    // Dual stack: the IPv6 address on the same interface.
    if answer["Address6"].is_string() {
        let mut ip6 = json!({
            "interface": interfaces.len() - 1,
            "address": answer["Address6"],
            "gateway": answer["Gateway6"],
        });
        if with_ip_version {
            ip6["version"] = json!("6");
        }
        ips.push(ip6);
    }
    for r in answer["Routes"].as_array().into_iter().flatten() {
        let mut route = json!({ "dst": r["Dst"] });
        if r["Gw"].is_string() {
            route["gw"] = r["Gw"].clone();
        }
        routes.push(route);
    }
    let mut dns = prev
        .and_then(|p| p.get("dns").cloned())
        .unwrap_or_else(|| json!({}));
    if let Some(ns) = answer["Dns"]["Nameservers"].as_array()
        && !ns.is_empty()
    {
        dns["nameservers"] = json!(ns);
    }
    let mut out = json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "dns": dns,
    });
    if !routes.is_empty() {
        out["routes"] = json!(routes);
    }
    out
}

/// What CHECK compares, read from the previous result.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub mac: Option<String>,
    pub addresses: Vec<String>,
    pub routes: Vec<RouteSpec>,
    pub host_interfaces: Vec<String>,
}

/// Reads the container interface `ifname` (the one with a sandbox), its
/// addresses (both families), the IPv4 routes and the host-side interfaces out of a
/// previous result.
pub fn expected(prev: Option<&Value>, ifname: &str) -> Result<Expected, CniError> {
    let Some(prev) = prev else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "Required prevResult missing",
            "CHECK needs the result of ADD as prevResult",
        ));
    };
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let sandboxed = |i: &Value| i["sandbox"].as_str().is_some_and(|s| !s.is_empty());
    let Some(index) = interfaces
        .iter()
        .position(|i| i["name"] == ifname && sandboxed(i))
    else {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!("prevResult has no interface {ifname} in a sandbox"),
            format!("prevResult: {prev}"),
        ));
    };
    let v4 = |s: &str| {
        s.split('/')
            .next()
            .is_some_and(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
    };
    Ok(Expected {
        mac: interfaces[index]["mac"].as_str().map(str::to_string),
        addresses: prev["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|ip| ip["interface"].as_u64() == Some(index as u64))
            .filter_map(|ip| ip["address"].as_str())
            .map(str::to_string)
            .collect(),
        routes: prev["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let dst = r["dst"].as_str()?;
                v4(dst).then(|| RouteSpec {
                    dst: dst.to_string(),
                    gw: r["gw"].as_str().map(str::to_string),
                })
            })
            .collect(),
        host_interfaces: interfaces
            .iter()
            .filter(|i| !sandboxed(i))
            .filter_map(|i| i["name"].as_str().map(str::to_string))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Value {
        json!({
            "Bridge": {"Name": "netd-0123456789", "Mac": "02:42:0a:58:07:01"},
            "HostInterface": {"Name": "vnd012345678", "Mac": "5e:f4:e1:76:ad:b0", "Mtu": 1500},
            "Interface": {"Name": "eth0", "Mac": "02:42:0a:58:07:02", "Mtu": 1500, "Sandbox": "/run/netns/c1"},
            "Address": "10.88.7.2/24",
            "Gateway": "10.88.7.1",
            "Routes": [{"Dst": "0.0.0.0/0", "Gw": "10.88.7.1"}],
            "Dns": {"Nameservers": ["10.88.7.1"]},
        })
    }

    #[test]
    fn shapes_per_version() {
        let v040 = add_result("0.4.0", &answer(), None);
        assert_eq!(
            v040,
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [
                    {"name": "netd-0123456789", "mac": "02:42:0a:58:07:01"},
                    {"name": "vnd012345678", "mac": "5e:f4:e1:76:ad:b0"},
                    {"name": "eth0", "mac": "02:42:0a:58:07:02", "sandbox": "/run/netns/c1"},
                ],
                "ips": [{"version": "4", "interface": 2, "address": "10.88.7.2/24", "gateway": "10.88.7.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.7.1"}],
                "dns": {"nameservers": ["10.88.7.1"]},
            })
        );
        let v100 = add_result("1.0.0", &answer(), None);
        assert_eq!(v100["cniVersion"], "1.0.0");
        assert!(v100["ips"][0].get("version").is_none());
        assert!(v100["interfaces"][1].get("mtu").is_none());
        let v110 = add_result("1.1.0", &answer(), None);
        assert_eq!(v110["interfaces"][1]["mtu"], 1500);
        assert_eq!(v110["interfaces"][2]["mtu"], 1500);
        assert!(v110["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn appends_to_a_previous_result() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo0", "sandbox": "/run/netns/c1"}],
            "ips": [{"interface": 0, "address": "192.0.2.2/32"}],
            "dns": {"search": ["example"]},
        });
        let r = add_result("1.0.0", &answer(), Some(&prev));
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 4);
        assert_eq!(r["ips"][1]["interface"], 3);
        assert_eq!(r["ips"][0], prev["ips"][0]);
        assert_eq!(r["dns"]["search"], json!(["example"]));
        assert_eq!(r["dns"]["nameservers"], json!(["10.88.7.1"]));
    }

    #[test]
    fn check_reads_the_previous_result() {
        let r = add_result("1.0.0", &answer(), None);
        let e = expected(Some(&r), "eth0").unwrap();
        assert_eq!(e.mac.as_deref(), Some("02:42:0a:58:07:02"));
        assert_eq!(e.addresses, vec!["10.88.7.2/24".to_string()]);
        assert_eq!(
            e.routes,
            vec![RouteSpec {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.88.7.1".into())
            }]
        );
        assert_eq!(e.host_interfaces, vec!["netd-0123456789", "vnd012345678"]);
        assert_eq!(
            expected(None, "eth0").unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            expected(Some(&r), "eth1").unwrap_err().code,
            code::CHECK_FAILED
        );
    }
}
