//! The host-port allocator: turns a container's `-p`/`-P` specs into
//! concrete bindings that conflict with nothing already published. Pure:
//! the caller passes what is in use and keeps the cursor.
use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Result, anyhow};

use crate::{
    api::ApiError,
    portspec::{self, PortBinding, PortSpec, Proto},
};

/// Where `-P` and a missing host port take ports from (Docker's default,
/// the kernel's ephemeral range).
pub const EPHEMERAL: (u16, u16) = (32768, 60999);

/// Whether two bindings claim the same host port (a `routed` network's
/// bindings claim none). `0.0.0.0` claims the port on every address of
/// both families (as Docker's `-p 8080:80` does on 0.0.0.0 and [::]),
/// `::` on every IPv6 address, any other address on itself only.
pub fn conflicts(a: &PortBinding, b: &PortBinding) -> bool {
    a.host_port != 0
        && a.proto == b.proto
        && a.host_port == b.host_port
        && (covers(a.host_ip, b.host_ip) || covers(b.host_ip, a.host_ip))
}

/// Whether a binding on `wide` claims the port on `addr` too.
pub(crate) fn covers(wide: IpAddr, addr: IpAddr) -> bool {
    match wide {
        IpAddr::V4(w) if w.is_unspecified() => true,
        IpAddr::V6(w) if w.is_unspecified() => addr.is_ipv6(),
        w => w == addr,
    }
}

/// Concrete bindings for `specs` (plus one ephemeral binding per exposed
/// port with `publish_all`), with `default_ip` for specs without a host
/// address. `next` is the per-protocol cursor of the ephemeral range; on
/// success it has moved past what was handed out. Errors are API errors:
/// a conflict (409) names both bindings, a bad spec is a 400.
pub fn allocate(
    specs: &[PortSpec],
    exposed: &[((u16, u16), Proto)],
    publish_all: bool,
    default_ip: IpAddr,
    used: &[PortBinding],
    next: &mut BTreeMap<Proto, u16>,
) -> Result<Vec<PortBinding>> {
    let mut specs = specs.to_vec();
    if publish_all {
        specs.extend(exposed.iter().map(|(ports, proto)| PortSpec {
            host_ip: None,
            host_ports: None,
            container_ports: *ports,
            proto: *proto,
        }));
    }
    let mut cursor = next.clone();
    let mut out: Vec<PortBinding> = Vec::new();
    for spec in &specs {
        let mut spec = spec.clone();
        spec.host_ip.get_or_insert(default_ip);
        let taken: Vec<PortBinding> = used.iter().chain(out.iter()).copied().collect();
        let mut alloc = |proto: Proto, ip: IpAddr| -> Result<u16> {
            let (lo, hi) = EPHEMERAL;
            let start = cursor.get(&proto).copied().unwrap_or(lo).clamp(lo, hi);
            let span = u32::from(hi - lo) + 1;
            for i in 0..span {
                let p = lo + ((u32::from(start - lo) + i) % span) as u16;
                let cand = PortBinding {
                    host_ip: ip,
                    host_port: p,
                    container_port: 0,
                    proto,
                };
                if !taken.iter().any(|b| conflicts(b, &cand)) {
                    cursor.insert(proto, if p == hi { lo } else { p + 1 });
                    return Ok(p);
                }
            }
            Err(ApiError::conflict(format!("no free host port left in {lo}-{hi}")).into())
        };
        let bindings = portspec::expand(&spec, &mut alloc).map_err(|e| {
            if e.is::<ApiError>() {
                e
            } else {
                ApiError::bad(format!("{e:#}")).into()
            }
        })?;
        for b in bindings {
            if let Some(o) = used.iter().chain(out.iter()).find(|o| conflicts(o, &b)) {
                return Err(anyhow!(ApiError::conflict(format!(
                    "port is already allocated: {}:{}/{} is published already ({}:{})",
                    b.host_ip, b.host_port, b.proto, o.host_ip, o.host_port
                ))));
            }
            out.push(b);
        }
    }
    *next = cursor;
    Ok(out)
}

/// The bindings of a container on a `routed` network: Docker does not use
/// the host port there, and the host address only says which address
/// family a mapping is for. Each container port is published on the
/// container's own address: a binding with host port 0 (shown without
/// one, claiming no host port). A host address or port given anyway is
/// ignored with a warning, as Docker does; IPv6 mappings are skipped
/// (netd's networks are IPv4-only). `-P` publishes the exposed ports the
/// same way.
pub fn routed(
    specs: &[PortSpec],
    exposed: &[((u16, u16), Proto)],
    publish_all: bool,
) -> Result<Vec<PortBinding>> {
    let mut specs = specs.to_vec();
    if publish_all {
        specs.extend(exposed.iter().map(|(ports, proto)| PortSpec {
            host_ip: None,
            host_ports: None,
            container_ports: *ports,
            proto: *proto,
        }));
    }
    let mut out: Vec<PortBinding> = Vec::new();
    for spec in &specs {
        if spec.host_ip.is_some_and(|ip| ip.is_ipv6()) {
            continue;
        }
        if spec.host_ports.is_some() || spec.host_ip.is_some_and(|ip| !ip.is_unspecified()) {
            tracing::warn!(
                "-p {spec}: a routed network publishes the container port on the container's address; the host address and port are not used"
            );
        }
        let bare = PortSpec {
            host_ip: None,
            host_ports: None,
            ..spec.clone()
        };
        let bindings = portspec::expand(&bare, &mut |_, _| Ok(0))
            .map_err(|e| anyhow!(ApiError::bad(format!("{e:#}"))))?;
        for b in bindings {
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const ALL: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

    fn specs(s: &[&str]) -> Vec<PortSpec> {
        s.iter().map(|s| portspec::parse(s).unwrap()).collect()
    }

    #[test]
    fn fixed_and_ephemeral() {
        let mut next = BTreeMap::new();
        let b = allocate(&specs(&["8080:80", "90"]), &[], false, ALL, &[], &mut next).unwrap();
        assert_eq!(b[0].host_port, 8080);
        assert_eq!(b[1].host_port, EPHEMERAL.0);
        assert_eq!(next[&Proto::Tcp], EPHEMERAL.0 + 1);
        // -P publishes exposed ports; the cursor moves on.
        let b2 = allocate(&[], &[((80, 81), Proto::Udp)], true, ALL, &b, &mut next).unwrap();
        assert_eq!(b2.len(), 2);
        assert!(b2.iter().all(|x| x.proto == Proto::Udp));
    }

    #[test]
    fn conflicts_are_409_and_leave_the_cursor() {
        let mut next = BTreeMap::new();
        let used = allocate(&specs(&["8080:80"]), &[], false, ALL, &[], &mut next).unwrap();
        let before = next.clone();
        let e = allocate(
            &specs(&["99", "8080:81"]),
            &[],
            false,
            ALL,
            &used,
            &mut next,
        )
        .unwrap_err();
        let api = e.downcast::<ApiError>().unwrap();
        assert_eq!(api.status, 409);
        assert!(api.message.contains("already allocated"), "{}", api.message);
        assert_eq!(next, before, "nothing handed out on failure");
        // A specific host address conflicts with the wildcard too.
        let e = allocate(
            &specs(&["127.0.0.1:8080:80"]),
            &[],
            false,
            ALL,
            &used,
            &mut next,
        )
        .unwrap_err();
        assert_eq!(e.downcast::<ApiError>().unwrap().status, 409);
        // [::] claims IPv6 addresses only; 0.0.0.0 both families.
        let v6 = allocate(&specs(&["[::]:9090:80"]), &[], false, ALL, &[], &mut next).unwrap();
        allocate(
            &specs(&["127.0.0.1:9090:80"]),
            &[],
            false,
            ALL,
            &v6,
            &mut next,
        )
        .unwrap();
        for clash in ["[::1]:9090:80", "9090:80", "[::]:9090:81"] {
            let e = allocate(&specs(&[clash]), &[], false, ALL, &v6, &mut next).unwrap_err();
            assert_eq!(e.downcast::<ApiError>().unwrap().status, 409, "{clash}");
        }
        let e = allocate(
            &specs(&["[::1]:8080:80"]),
            &[],
            false,
            ALL,
            &used,
            &mut next,
        )
        .unwrap_err();
        assert_eq!(
            e.downcast::<ApiError>().unwrap().status,
            409,
            "0.0.0.0 covers ::1"
        );
        // Another protocol does not.
        allocate(&specs(&["8080:80/udp"]), &[], false, ALL, &used, &mut next).unwrap();
    }

    #[test]
    fn routed_bindings_claim_no_host_port() {
        let b = routed(
            &specs(&["8080:80", "81-82", "127.0.0.1:9000:90/udp", "[::1]:8080:83"]),
            &[((80, 80), Proto::Tcp), ((7, 7), Proto::Udp)],
            true,
        )
        .unwrap();
        let got: Vec<(u16, u16, Proto)> = b
            .iter()
            .map(|b| (b.host_port, b.container_port, b.proto))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 80, Proto::Tcp),
                (0, 81, Proto::Tcp),
                (0, 82, Proto::Tcp),
                (0, 90, Proto::Udp),
                (0, 7, Proto::Udp),
            ],
            "host ports and addresses ignored, IPv6 skipped, duplicates once"
        );
        assert!(b.iter().all(|b| b.host_ip == ALL));
        // Two routed containers never conflict; a nat binding is free to
        // take any host port beside them.
        assert!(!conflicts(&b[0], &b[0]));
        let mut next = BTreeMap::new();
        allocate(&specs(&["80:80"]), &[], false, ALL, &b, &mut next).unwrap();
    }

    #[test]
    fn bad_spec_is_400() {
        let mut next = BTreeMap::new();
        let spec = PortSpec {
            host_ip: None,
            host_ports: Some((10, 11)),
            container_ports: (80, 80),
            proto: Proto::Tcp,
        };
        let e = allocate(&[spec], &[], false, ALL, &[], &mut next).unwrap_err();
        assert_eq!(e.downcast::<ApiError>().unwrap().status, 400);
    }
}
