//! Docker's `-p`/`--publish` and `--expose` grammars, and the expansion of a parsed spec into
//! concrete host port → container port bindings.
//!
//! `-p` takes `[HOSTIP:][HOSTPORT[-END]:]CPORT[-END][/tcp|/udp]`: `80`, `8080:80/udp`,
//! `127.0.0.1::80`, `8000-8010:80-90`, `[::1]:8080:80`. An IPv6 host address must be in
//! brackets. Pure logic: no I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// The grammar of `-p`, quoted in error messages.
const GRAMMAR: &str = "[HOSTIP:][HOSTPORT[-END]:]CONTAINERPORT[-END][/PROTO]";

/// A transport protocol that ports can be published for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The lowercase name: `"tcp"` or `"udp"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number: 6 for TCP, 17 for UDP.
    pub fn number(&self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = anyhow::Error;

    /// Accepts `tcp` and `udp`, in any case (as Docker does).
    fn from_str(s: &str) -> Result<Proto> {
        if s.eq_ignore_ascii_case("tcp") {
            Ok(Proto::Tcp)
        } else if s.eq_ignore_ascii_case("udp") {
            Ok(Proto::Udp)
        } else {
            bail!("unknown protocol {s:?} (expected tcp or udp)")
        }
    }
}

/// One parsed -p argument, possibly a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The host address to listen on; `None` = all addresses (0.0.0.0).
    pub host_ip: Option<IpAddr>,
    /// Inclusive range; `None` = pick a free host port for each container port.
    pub host_ports: Option<(u16, u16)>,
    /// Inclusive range.
    pub container_ports: (u16, u16),
    pub proto: Proto,
}

impl FromStr for PortSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<PortSpec> {
        parse(spec)
    }
}

/// The canonical form, which parses back to the same spec: `127.0.0.1:8000-8010:80-90/tcp`,
/// `[::1]::80/udp`, `80/tcp`.
impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            None => {}
        }
        match self.host_ports {
            Some(h) => write!(f, "{}:", Range(h))?,
            None if self.host_ip.is_some() => f.write_str(":")?,
            None => {}
        }
        write!(f, "{}/{}", Range(self.container_ports), self.proto)
    }
}

/// Parses one `-p` argument: `[HOSTIP:][HOSTPORT[-END]:]CPORT[-END][/tcp|/udp]`.
///
/// Errors read `invalid port spec "80:x": container port "x" is not a number`.
pub fn parse(spec: &str) -> Result<PortSpec> {
    parse_spec(spec).map_err(|e| anyhow!("invalid port spec {spec:?}: {e}"))
}

fn parse_spec(spec: &str) -> Result<PortSpec> {
    if spec.is_empty() {
        bail!("it is empty (expected {GRAMMAR})");
    }
    let (addr, proto) = split_proto(spec)?;
    let (host_ip, host_ports, container_ports) = split_fields(addr)?;
    let host_ip = match host_ip {
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| anyhow!("host IP {ip:?} is not a valid IP address"))?,
        ),
        None => None,
    };
    let spec = PortSpec {
        host_ip,
        host_ports: host_ports
            .map(|h| parse_range(h, "host port"))
            .transpose()?,
        container_ports: parse_range(container_ports, "container port")?,
        proto,
    };
    check(&spec)?;
    Ok(spec)
}

/// Splits off an optional `/PROTO` suffix (default TCP).
fn split_proto(s: &str) -> Result<(&str, Proto)> {
    match s.rsplit_once('/') {
        Some((rest, proto)) => Ok((rest, proto.parse()?)),
        None => Ok((s, Proto::Tcp)),
    }
}

/// Splits `[HOSTIP:][HOSTPORT:]CPORT` into its fields. Empty host IP and host port fields
/// (`::80`, `127.0.0.1::80`) are `None`, except that a bracketed IP must not be empty.
fn split_fields(s: &str) -> Result<(Option<&str>, Option<&str>, &str)> {
    if let Some(after) = s.strip_prefix('[') {
        let Some((ip, rest)) = after.split_once(']') else {
            bail!("the host IP is missing its closing \"]\"");
        };
        let Some((host, container)) = rest.strip_prefix(':').and_then(|r| r.split_once(':')) else {
            bail!("expected [{ip}]:HOSTPORT:CONTAINERPORT (or [{ip}]::CONTAINERPORT)");
        };
        if container.contains(':') {
            bail!("too many colons (expected {GRAMMAR})");
        }
        return Ok((Some(ip), non_empty(host), container));
    }
    let fields: Vec<&str> = s.split(':').collect();
    match fields[..] {
        [container] => Ok((None, None, container)),
        [host, container] => Ok((None, non_empty(host), container)),
        [ip, host, container] => Ok((non_empty(ip), non_empty(host), container)),
        _ => bail!(
            "too many colons (expected {GRAMMAR}; an IPv6 host IP must be in brackets, \
             e.g. [::1]:8080:80)"
        ),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Parses `PORT` or `PORT-END` (inclusive). `what` names the field in errors.
fn parse_range(s: &str, what: &str) -> Result<(u16, u16)> {
    let range = match s.split_once('-') {
        Some((start, end)) => (parse_port(start, what)?, parse_port(end, what)?),
        None => {
            let port = parse_port(s, what)?;
            (port, port)
        }
    };
    if range.1 < range.0 {
        bail!("{what} range {s:?} ends before it starts");
    }
    Ok(range)
}

/// Parses one port number, 1-65535.
fn parse_port(s: &str, what: &str) -> Result<u16> {
    if s.is_empty() {
        bail!("{what} is missing");
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        bail!("{what} {s:?} is not a number");
    }
    match s.parse::<u16>() {
        Ok(0) => bail!("{what} 0 is not allowed (ports are 1-65535)"),
        Ok(port) => Ok(port),
        // All digits, so the only failure is overflow.
        Err(_) => bail!("{what} {s} is out of range (ports are 1-65535)"),
    }
}

/// Checks what the grammar cannot: ranges are ordered, nonzero, and host and container ranges
/// have the same length. `PortSpec`'s fields are public, so `expand` checks again.
fn check(spec: &PortSpec) -> Result<()> {
    let c = spec.container_ports;
    for (range, what) in [(Some(c), "container port"), (spec.host_ports, "host port")] {
        let Some(range) = range else { continue };
        if range.0 == 0 {
            bail!("{what} 0 is not allowed (ports are 1-65535)");
        }
        if range.1 < range.0 {
            bail!("{what} range {}-{} ends before it starts", range.0, range.1);
        }
    }
    let Some(h) = spec.host_ports else {
        return Ok(());
    };
    if len(h) != len(c) {
        if len(c) == 1 {
            bail!(
                "host port range {} needs a container port range of the same length, \
                 not the single container port {} (give one host port, or {} container ports)",
                Range(h),
                c.0,
                len(h)
            );
        }
        bail!(
            "host port {} has {} port(s) but container port {} has {}; \
             the two ranges must be the same length",
            Range(h),
            len(h),
            Range(c),
            len(c)
        );
    }
    Ok(())
}

/// The number of ports in an inclusive range (which must be ordered).
fn len(range: (u16, u16)) -> u32 {
    u32::from(range.1 - range.0) + 1
}

/// Displays an inclusive port range as `80` or `80-90`.
struct Range((u16, u16));

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (start, end) = self.0;
        if start == end {
            write!(f, "{start}")
        } else {
            write!(f, "{start}-{end}")
        }
    }
}

/// Parses `--expose PORT[-END][/PROTO]` (default TCP).
///
/// Errors read `invalid expose port "x": port "x" is not a number`.
pub fn parse_expose(s: &str) -> Result<((u16, u16), Proto)> {
    let parsed = split_proto(s).and_then(|(ports, proto)| Ok((parse_range(ports, "port")?, proto)));
    parsed.map_err(|e| anyhow!("invalid expose port {s:?}: {e}"))
}

/// One concrete host port -> container port binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    /// 0.0.0.0 for all addresses.
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

/// Docker's `port` line: `80/tcp -> 0.0.0.0:8080` (IPv6 hosts in brackets: `[::1]:8080`).
impl fmt::Display for PortBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = SocketAddr::new(self.host_ip, self.host_port);
        write!(f, "{}/{} -> {host}", self.container_port, self.proto)
    }
}

/// Expands specs into concrete bindings. `alloc(proto, host_ip)` returns a free host port
/// from the ephemeral range (the caller owns the allocation state); it is called once for
/// each container port whose host port is not given.
///
/// The bindings come in container port order. An error from `alloc` is returned as is; ports
/// it handed out before the error are the caller's to release.
pub fn expand(
    spec: &PortSpec,
    alloc: &mut dyn FnMut(Proto, IpAddr) -> Result<u16>,
) -> Result<Vec<PortBinding>> {
    check(spec).map_err(|e| anyhow!("invalid port spec {:?}: {e}", spec.to_string()))?;
    let host_ip = spec.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let (first, last) = spec.container_ports;
    (first..=last)
        .map(|container_port| {
            let host_port = match spec.host_ports {
                Some((host_first, _)) => host_first + (container_port - first),
                None => alloc(spec.proto, host_ip)?,
            };
            Ok(PortBinding {
                host_ip,
                host_port,
                container_port,
                proto: spec.proto,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    const ALL: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn spec(
        host_ip: Option<IpAddr>,
        host_ports: Option<(u16, u16)>,
        container_ports: (u16, u16),
        proto: Proto,
    ) -> PortSpec {
        PortSpec {
            host_ip,
            host_ports,
            container_ports,
            proto,
        }
    }

    /// The error message of `parse(s)`, which must fail.
    fn err(s: &str) -> String {
        match parse(s) {
            Ok(p) => panic!("{s:?} parsed as {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[track_caller]
    fn assert_err(s: &str, want: &str) {
        let got = err(s);
        let prefix = format!("invalid port spec {s:?}: ");
        assert!(got.starts_with(&prefix), "{s:?}: {got:?} lacks {prefix:?}");
        assert!(got.contains(want), "{s:?}: {got:?} lacks {want:?}");
    }

    #[test]
    fn proto() {
        assert_eq!("tcp".parse::<Proto>().unwrap(), Proto::Tcp);
        assert_eq!("UDP".parse::<Proto>().unwrap(), Proto::Udp);
        assert_eq!(Proto::Tcp.number(), 6);
        assert_eq!(Proto::Udp.number(), 17);
        assert_eq!(Proto::Udp.to_string(), "udp");
        assert_eq!(Proto::Tcp.as_str(), "tcp");
        let e = "sctp".parse::<Proto>().unwrap_err().to_string();
        assert_eq!(e, r#"unknown protocol "sctp" (expected tcp or udp)"#);
        assert_eq!(serde_json::to_string(&Proto::Udp).unwrap(), r#""udp""#);
        assert_eq!(
            serde_json::from_str::<Proto>(r#""tcp""#).unwrap(),
            Proto::Tcp
        );
    }

    #[test]
    fn parses_examples() {
        let tcp = Proto::Tcp;
        let cases = [
            ("80", spec(None, None, (80, 80), tcp)),
            ("8080:80", spec(None, Some((8080, 8080)), (80, 80), tcp)),
            (
                "8080:80/udp",
                spec(None, Some((8080, 8080)), (80, 80), Proto::Udp),
            ),
            (
                "127.0.0.1:8080:80",
                spec(Some(LOCAL), Some((8080, 8080)), (80, 80), tcp),
            ),
            ("127.0.0.1::80", spec(Some(LOCAL), None, (80, 80), tcp)),
            (
                "8000-8010:80-90",
                spec(None, Some((8000, 8010)), (80, 90), tcp),
            ),
            ("80-90", spec(None, None, (80, 90), tcp)),
            (
                "0.0.0.0:80:80/tcp",
                spec(Some(ALL), Some((80, 80)), (80, 80), tcp),
            ),
            (
                "[::1]:8080:80",
                spec(
                    Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                    Some((8080, 8080)),
                    (80, 80),
                    tcp,
                ),
            ),
            (
                "[::]::53/udp",
                spec(
                    Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                    None,
                    (53, 53),
                    Proto::Udp,
                ),
            ),
            (
                "[127.0.0.1]:1:1",
                spec(Some(LOCAL), Some((1, 1)), (1, 1), tcp),
            ),
            ("::80", spec(None, None, (80, 80), tcp)),
            (":80", spec(None, None, (80, 80), tcp)),
            (
                "65535:65535/TCP",
                spec(None, Some((65535, 65535)), (65535, 65535), tcp),
            ),
            ("80-80", spec(None, None, (80, 80), tcp)),
        ];
        for (s, want) in cases {
            let got = parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(got, want, "{s:?}");
            assert_eq!(s.parse::<PortSpec>().unwrap(), want, "{s:?}");
            // Display gives a form that parses back to the same spec.
            assert_eq!(parse(&got.to_string()).unwrap(), want, "{s:?} -> {got}");
        }
    }

    #[test]
    fn display() {
        let show = |s: &str| parse(s).unwrap().to_string();
        assert_eq!(show("80"), "80/tcp");
        assert_eq!(show("127.0.0.1::80"), "127.0.0.1::80/tcp");
        assert_eq!(show("8000-8010:80-90/udp"), "8000-8010:80-90/udp");
        assert_eq!(show("[::1]:8080:80"), "[::1]:8080:80/tcp");
    }

    #[test]
    fn the_documented_error_message() {
        assert_eq!(
            err("80:x"),
            r#"invalid port spec "80:x": container port "x" is not a number"#
        );
    }

    #[test]
    fn rejects_empty() {
        assert_err("", "it is empty");
        assert_err("8080:", "container port is missing");
        assert_err("/tcp", "container port is missing");
        assert_err("80-", "container port is missing");
        assert_err("-80", "container port is missing");
    }

    #[test]
    fn rejects_non_numeric_ports() {
        assert_err("x", r#"container port "x" is not a number"#);
        assert_err("x:80", r#"host port "x" is not a number"#);
        assert_err("+80", r#"container port "+80" is not a number"#);
        assert_err(" 80", r#"container port " 80" is not a number"#);
        assert_err("80-90-100", r#"container port "90-100" is not a number"#);
    }

    #[test]
    fn rejects_port_zero() {
        assert_err("0", "container port 0 is not allowed");
        assert_err("0:80", "host port 0 is not allowed");
        assert_err("0-5", "container port 0 is not allowed");
    }

    #[test]
    fn rejects_ports_over_65535() {
        assert_err("65536", "container port 65536 is out of range");
        assert_err(
            "99999999999999999999:80",
            "host port 99999999999999999999 is out of range",
        );
    }

    #[test]
    fn rejects_backwards_ranges() {
        assert_err(
            "90-80",
            r#"container port range "90-80" ends before it starts"#,
        );
        assert_err(
            "8010-8000:80-90",
            r#"host port range "8010-8000" ends before it starts"#,
        );
    }

    #[test]
    fn rejects_range_length_mismatch() {
        assert_err(
            "8000-8010:80-85",
            "host port 8000-8010 has 11 port(s) but container port 80-85 has 6",
        );
        assert_err(
            "8080:80-81",
            "host port 8080 has 1 port(s) but container port 80-81 has 2",
        );
        assert_err(
            "8000-8010:80",
            "host port range 8000-8010 needs a container port range of the same length, \
             not the single container port 80",
        );
    }

    #[test]
    fn rejects_malformed_ips() {
        assert_err(
            "1.2.3:80:80",
            r#"host IP "1.2.3" is not a valid IP address"#,
        );
        assert_err(
            "localhost:80:80",
            r#"host IP "localhost" is not a valid IP address"#,
        );
        assert_err("[::1:80:80", r#"missing its closing "]""#);
        assert_err("[]:80:80", r#"host IP "" is not a valid IP address"#);
        assert_err("[::1]:80", "expected [::1]:HOSTPORT:CONTAINERPORT");
        assert_err("[::1]80:80", "expected [::1]:HOSTPORT:CONTAINERPORT");
    }

    #[test]
    fn rejects_unknown_protocols() {
        assert_err(
            "80/sctp",
            r#"unknown protocol "sctp" (expected tcp or udp)"#,
        );
        assert_err("80/", r#"unknown protocol """#);
        assert_err("80/tcp/udp", r#"container port "80/tcp" is not a number"#);
    }

    #[test]
    fn rejects_too_many_colons() {
        assert_err("1:2:3:4", "too many colons");
        assert_err("::1:8080:80", "an IPv6 host IP must be in brackets");
        assert_err("[::1]:1:2:3", "too many colons");
    }

    #[test]
    fn expose() {
        assert_eq!(parse_expose("80").unwrap(), ((80, 80), Proto::Tcp));
        assert_eq!(parse_expose("53/udp").unwrap(), ((53, 53), Proto::Udp));
        assert_eq!(
            parse_expose("8000-8010/tcp").unwrap(),
            ((8000, 8010), Proto::Tcp)
        );
        let e = |s: &str| parse_expose(s).unwrap_err().to_string();
        assert_eq!(
            e("x"),
            r#"invalid expose port "x": port "x" is not a number"#
        );
        assert_eq!(e(""), r#"invalid expose port "": port is missing"#);
        assert!(e("0").contains("port 0 is not allowed"));
        assert!(e("70000").contains("port 70000 is out of range"));
        assert!(e("90-80").contains("ends before it starts"));
        assert!(e("80/sctp").contains(r#"unknown protocol "sctp""#));
        assert!(e("8080:80").contains(r#"port "8080:80" is not a number"#));
    }

    /// An allocator that hands out 32768, 32769, ... and records its calls.
    fn counter(calls: &mut Vec<(Proto, IpAddr)>) -> impl FnMut(Proto, IpAddr) -> Result<u16> {
        let mut next = 32768;
        move |proto, ip| {
            calls.push((proto, ip));
            next += 1;
            Ok(next - 1)
        }
    }

    fn binding(host_ip: IpAddr, host_port: u16, container_port: u16, proto: Proto) -> PortBinding {
        PortBinding {
            host_ip,
            host_port,
            container_port,
            proto,
        }
    }

    #[test]
    fn expand_given_host_ports() {
        let mut calls = Vec::new();
        let got = expand(
            &parse("127.0.0.1:8000-8002:80-82/udp").unwrap(),
            &mut counter(&mut calls),
        )
        .unwrap();
        let udp = Proto::Udp;
        assert_eq!(
            got,
            [
                binding(LOCAL, 8000, 80, udp),
                binding(LOCAL, 8001, 81, udp),
                binding(LOCAL, 8002, 82, udp)
            ]
        );
        assert!(
            calls.is_empty(),
            "alloc called for given host ports: {calls:?}"
        );
    }

    #[test]
    fn expand_allocates_missing_host_ports() {
        let mut calls = Vec::new();
        let got = expand(&parse("80-81").unwrap(), &mut counter(&mut calls)).unwrap();
        let tcp = Proto::Tcp;
        assert_eq!(
            got,
            [binding(ALL, 32768, 80, tcp), binding(ALL, 32769, 81, tcp)]
        );
        assert_eq!(calls, [(tcp, ALL), (tcp, ALL)]);

        let mut calls = Vec::new();
        let got = expand(&parse("[::1]::53/udp").unwrap(), &mut counter(&mut calls)).unwrap();
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(got, [binding(v6, 32768, 53, Proto::Udp)]);
        assert_eq!(calls, [(Proto::Udp, v6)]);
    }

    #[test]
    fn expand_passes_on_alloc_errors() {
        let mut alloc = |_, _| -> Result<u16> { bail!("no free host port") };
        let e = expand(&parse("80").unwrap(), &mut alloc).unwrap_err();
        assert_eq!(e.to_string(), "no free host port");
    }

    #[test]
    fn expand_checks_hand_built_specs() {
        let mut alloc = |_, _| -> Result<u16> { Ok(1) };
        let bad = spec(None, Some((8000, 8001)), (80, 80), Proto::Tcp);
        let e = expand(&bad, &mut alloc).unwrap_err().to_string();
        assert!(
            e.starts_with(r#"invalid port spec "8000-8001:80/tcp": "#),
            "{e}"
        );
        let bad = spec(None, None, (90, 80), Proto::Tcp);
        let e = expand(&bad, &mut alloc).unwrap_err().to_string();
        assert!(
            e.contains("container port range 90-80 ends before it starts"),
            "{e}"
        );
        let bad = spec(None, Some((0, 0)), (80, 80), Proto::Tcp);
        let e = expand(&bad, &mut alloc).unwrap_err().to_string();
        assert!(e.contains("host port 0 is not allowed"), "{e}");
    }

    #[test]
    fn binding_display() {
        assert_eq!(
            binding(ALL, 8080, 80, Proto::Tcp).to_string(),
            "80/tcp -> 0.0.0.0:8080"
        );
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            binding(v6, 5353, 53, Proto::Udp).to_string(),
            "53/udp -> [::1]:5353"
        );
    }

    #[test]
    fn serde_round_trip() {
        let s = parse("127.0.0.1:8000-8001:80-81/udp").unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<PortSpec>(&json).unwrap(), s);
        let b = binding(LOCAL, 8080, 80, Proto::Tcp);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<PortBinding>(&json).unwrap(), b);
    }
}
