//! The iptables datapath: the rules Docker installs (without the userland
//! proxy), in chains named NETD-*. It is the baseline the eBPF datapath is
//! measured against and the oracle for its behaviour.
//!
//! Every sync renders all NETD-* chains from the state and applies them in
//! one `iptables-restore --noflush` batch: declaring a chain in the batch
//! flushes it, so the result is exactly the state, atomically per table.
//! The bridge-level rules (containers speak IPv4, honest ARP and, on
//! networks with IPv6, IPv6 from their own addresses only) are
//! one `ebtables-restore --noflush` batch of their own chain. The jumps
//! from the built-in chains are installed once, by `init`. Networks with
//! IPv6 get the same chains in the ip6 tables ([`render6`], applied with
//! `ip6tables-restore`).
//!
//! Beyond Docker's filter and nat rules, the raw table (Docker 28's
//! reference) drops, before conntrack and NAT, anything from outside the
//! loopback addressed to 127/8 (a 127.0.0.1-bound published port stays
//! the host's: route_localnet is on for the bridges) and anything
//! addressed to a container of a masquerading network that does not come
//! from its bridge (container ports are reached through published host
//! ports, never by routing to the container).
use std::{
    fmt::Write as _,
    io::Write,
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::Datapath;
use crate::{
    model::Status,
    netns::{sysctl_read, sysctl_write},
    state::State,
};

/// Jumps from built-in chains: (table, chain, rule spec).
const HOOKS: &[(&str, &str, &str)] = &[
    ("raw", "PREROUTING", "-j NETD-RAW"),
    ("nat", "PREROUTING", "-m addrtype --dst-type LOCAL -j NETD"),
    // Host processes, loopback included (route_localnet is set on the
    // bridges, as Docker does without the userland proxy).
    ("nat", "OUTPUT", "-m addrtype --dst-type LOCAL -j NETD"),
    ("nat", "POSTROUTING", "-j NETD-POSTROUTING"),
    ("filter", "FORWARD", "-j NETD-FORWARD"),
];

const RAW_CHAINS: &[&str] = &["NETD-RAW"];
const NAT_CHAINS: &[&str] = &["NETD", "NETD-POSTROUTING"];
const FILTER_CHAINS: &[&str] = &[
    "NETD-FORWARD",
    "NETD-ISOLATION-1",
    "NETD-ISOLATION-2",
    "NETD-PORTS",
];

/// The bridge (ebtables) chain, jumped to from FORWARD and INPUT.
const BRIDGE_CHAIN: &str = "NETD-BRIDGE";
const BRIDGE_HOOKS: &[&str] = &["FORWARD", "INPUT"];

/// How long a rule tool may run before it is killed.
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Iptables {
    /// The last batches applied, to skip identical re-applies.
    last: String,
    last6: String,
    last_bridge: String,
    /// The host has IPv6 (ip6tables rules are kept).
    ipv6: bool,
    conntrack: super::KernelConntrack,
    /// `[::1]` published ports (not DNATed: see [`super::loopback_proxy`]).
    proxy: super::loopback_proxy::LoopbackProxy,
}

/// Runs `program args` with `input` on its stdin, killing it after
/// [`TOOL_TIMEOUT`]. The output is returned whatever the exit status.
pub(crate) fn run_tool(program: &str, args: &[&str], input: &str) -> Result<Output> {
    run_tool_within(program, args, input, TOOL_TIMEOUT)
}

fn run_tool_within(program: &str, args: &[&str], input: &str, timeout: Duration) -> Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let pid = child.id() as i32;
    let stdin = child.stdin.take();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => {
            let _ = writer.join();
            Ok(out?)
        }
        Err(_) => {
            // SAFETY: kill(2) of our own child, not reaped yet (the
            // waiting thread reaps it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            let _ = writer.join();
            bail!(
                "{program} did not finish within {}s and was killed",
                timeout.as_secs_f64()
            )
        }
    }
}

/// The line a rule tool's error names ("line 5 failed", "Error occurred
/// at line: 5", nft's "/dev/stdin:5:3-10: Error"), with its text.
pub(crate) fn failing_line(stderr: &str, input: &str) -> Option<(usize, String)> {
    let n = stderr.lines().find_map(|l| {
        let after = if let Some(i) = l.find("line: ") {
            &l[i + 6..]
        } else if let Some(i) = l.find("line ") {
            &l[i + 5..]
        } else if let Some(i) = l.find("stdin:") {
            &l[i + 6..]
        } else {
            return None;
        };
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok()
    })?;
    let text = input.lines().nth(n.checked_sub(1)?)?;
    Some((n, text.trim().to_string()))
}

/// Applies a batch with a restore-style tool; an error names the line
/// that failed (its number and text) and the tool's own message.
pub(crate) fn apply_batch(program: &str, args: &[&str], batch: &str) -> Result<()> {
    let out = run_tool(program, args, batch)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = stderr.trim();
        match failing_line(&stderr, batch) {
            Some((n, text)) => bail!("{program} failed at line {n} ({text:?}): {msg}"),
            None => bail!("{program} failed: {msg}"),
        }
    }
    Ok(())
}

fn iptables(args: &[&str]) -> Result<bool> {
    let mut a = vec!["-w", "5"];
    a.extend_from_slice(args);
    let out = run_tool("iptables", &a, "").context("is the iptables package installed?")?;
    Ok(out.status.success())
}

fn ip6tables(args: &[&str]) -> Result<bool> {
    let mut a = vec!["-w", "5"];
    a.extend_from_slice(args);
    let out = run_tool("ip6tables", &a, "").context("is the iptables package installed?")?;
    Ok(out.status.success())
}

/// The iptables tool of a family (`-w 5` first).
fn tool_of(fam: Family) -> fn(&[&str]) -> Result<bool> {
    match fam {
        Family::V4 => iptables,
        Family::V6 => ip6tables,
    }
}

fn ebtables(args: &[&str]) -> Result<bool> {
    let out = run_tool("ebtables", args, "").context("is the ebtables package installed?")?;
    Ok(out.status.success())
}

fn restore(batch: &str) -> Result<()> {
    apply_batch("iptables-restore", &["-w", "5", "--noflush"], batch)
}

fn restore6(batch: &str) -> Result<()> {
    apply_batch("ip6tables-restore", &["-w", "5", "--noflush"], batch)
}

/// Whether the host has IPv6 at all (a kernel booted with ipv6.disable=1
/// has no ip6tables either: netd's IPv6 rules are then skipped, and IPv6
/// networks cannot be made anyway).
pub(crate) fn host_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Installs the jumps from the built-in chains of one family.
fn install_hooks(fam: Family) -> Result<()> {
    let tool = tool_of(fam);
    for (table, chain, spec) in HOOKS {
        let spec: Vec<&str> = spec.split(' ').collect();
        let mut check = vec!["-t", table, "-C", chain];
        check.extend(&spec);
        if !tool(&check)? {
            let mut add = vec!["-t", table, "-I", chain, "1"];
            add.extend(&spec);
            if !tool(&add)? {
                bail!(
                    "could not install the jump {table}/{chain} {} ({fam:?})",
                    spec.join(" ")
                );
            }
        }
    }
    Ok(())
}

/// Removes one family's jumps and NETD-* chains; returns the chains that
/// would not go.
fn remove_chains(fam: Family) -> Vec<String> {
    let tool = tool_of(fam);
    let mut errors = Vec::new();
    for (table, chain, spec) in HOOKS {
        let mut del = vec!["-t", table, "-D", chain];
        del.extend(spec.split(' '));
        while tool(&del).unwrap_or(false) {}
    }
    for (table, chains) in [
        ("raw", RAW_CHAINS),
        ("nat", NAT_CHAINS),
        ("filter", FILTER_CHAINS),
    ] {
        for ch in chains.iter() {
            let _ = tool(&["-t", table, "-F", ch]);
        }
        for ch in chains.iter() {
            // Only chains that exist (an older netd had no raw chain, nor
            // any IPv6 chain).
            if tool(&["-t", table, "-n", "-L", ch]).unwrap_or(false)
                && !tool(&["-t", table, "-X", ch]).unwrap_or(false)
            {
                errors.push(format!("{fam:?} {table}/{ch}"));
            }
        }
    }
    errors
}

/// Renders the bridge chain: each container port passes IPv4, and ARP
/// whose sender is the endpoint (address 0.0.0.0: a probe); on a network
/// with IPv6, IPv6 from the endpoint's address, its link-local addresses
/// (fe80::/10: NDP, router solicitations) and :: (duplicate address
/// detection); everything else from a container (IPv6 on an IPv4-only
/// network or from another address, VLAN tags, ARP claiming another
/// address) is dropped, whatever the container's own settings.
pub fn render_bridge(state: &State) -> String {
    let mut out = format!("*filter\n:{BRIDGE_CHAIN} RETURN\n");
    for c in state
        .containers
        .values()
        .filter(|c| c.status == Status::Running)
    {
        for ep in c.endpoints.values() {
            let v = &ep.veth;
            let mac = ep
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            let ch = BRIDGE_CHAIN;
            // An endpoint without IPv4 (an IPv6-only network) sends no
            // IPv4 and no ARP: the final DROP.
            if let Some(ip) = ep.ip {
                let _ = writeln!(out, "-A {ch} -i {v} -p IPv4 -j RETURN");
                let _ = writeln!(out, "-A {ch} -i {v} -p ARP --arp-mac-src ! {mac} -j DROP");
                let _ = writeln!(out, "-A {ch} -i {v} -p ARP --arp-ip-src 0.0.0.0 -j RETURN");
                let _ = writeln!(out, "-A {ch} -i {v} -p ARP --arp-ip-src ! {ip} -j DROP");
                let _ = writeln!(out, "-A {ch} -i {v} -p ARP -j RETURN");
            }
            if let Some(ip6) = ep.ip6
                && state
                    .networks
                    .get(&ep.network)
                    .is_some_and(|n| n.enable_ipv6())
            {
                for src in [format!("{ip6}/128"), "fe80::/10".into(), "::/128".into()] {
                    let _ = writeln!(out, "-A {ch} -i {v} -p IPv6 --ip6-src {src} -j RETURN");
                }
            }
            let _ = writeln!(out, "-A {ch} -i {v} -j DROP");
        }
    }
    out.push_str("COMMIT\n");
    out
}

fn restore_bridge(batch: &str) -> Result<()> {
    apply_batch("ebtables-restore", &["--noflush"], batch)
}

/// An address family the netfilter datapaths render rules for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    /// The ICMP protocol's name in a rule.
    fn icmp(self) -> &'static str {
        match self {
            Family::V4 => "icmp",
            Family::V6 => "ipv6-icmp",
        }
    }
    /// A host route's prefix length.
    fn host(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// A network as one family sees it: its subnet and what its gateway
/// mode means for that family (None: the network lacks the family).
pub(crate) fn net_family(
    net: &crate::model::Network,
    fam: Family,
    cluster: Option<crate::ipam::Cidr>,
) -> Option<(String, crate::model::Wire)> {
    match fam {
        Family::V4 => net.subnet().map(|s| (s.to_string(), net.wire(cluster))),
        Family::V6 => net.subnet6().map(|s| (s.to_string(), net.wire6())),
    }
}

/// An endpoint's address in `fam`.
pub(crate) fn ep_addr(ep: &crate::model::Endpoint, fam: Family) -> Option<std::net::IpAddr> {
    match fam {
        Family::V4 => ep.ip.map(Into::into),
        Family::V6 => ep.ip6.map(Into::into),
    }
}

/// Which host addresses of `fam` a binding is published on: `Some(None)`
/// every address (0.0.0.0 means both families, `::` IPv6's), `Some(ip)`
/// one, `None` none of this family.
pub(crate) fn binding_host(
    b: &crate::portspec::PortBinding,
    fam: Family,
) -> Option<Option<std::net::IpAddr>> {
    use std::net::IpAddr;
    match (b.host_ip, fam) {
        (IpAddr::V4(ip), _) if ip.is_unspecified() => Some(None),
        (IpAddr::V4(ip), Family::V4) => Some(Some(ip.into())),
        (IpAddr::V6(ip), Family::V6) if ip.is_unspecified() => Some(None),
        (IpAddr::V6(ip), Family::V6) => Some(Some(ip.into())),
        _ => None,
    }
}

/// Renders every NETD-* chain for `state` (IPv4: iptables-restore).
///
/// Gateway modes (see [`crate::model::Wire`]): `nat` masquerades and
/// protects container addresses in the raw table; `nat-unprotected`
/// masquerades and accepts anything routed to its containers; `routed`
/// neither masquerades nor DNATs, and accepts published container ports
/// and ICMP routed to its containers, from the world and from other
/// networks (Docker's `-o BRIDGE -j RETURN` in the isolation chain). In a
/// cluster (`--cluster-cidr`), traffic between two cluster addresses is
/// never masqueraded, and cluster addresses reach the containers of
/// cluster networks (subnets inside the cluster CIDR) on every port.
pub fn render(state: &State) -> String {
    render_family(state, Family::V4)
}

/// The same chains for IPv6 (ip6tables-restore): the networks with IPv6
/// and their containers' IPv6 addresses, each network's
/// `gateway_mode_ipv6` (NAT66 in `nat`, as Docker does by default), no
/// cluster, and no loopback rule in raw (the kernel drops ::1 arriving on
/// anything but `lo` itself).
pub fn render6(state: &State) -> String {
    render_family(state, Family::V6)
}

fn render_family(state: &State, fam: Family) -> String {
    let cluster = if fam == Family::V4 {
        state.cluster_cidr
    } else {
        None
    };
    let hostlen = fam.host();
    let mut raw = String::new();
    if fam == Family::V4 {
        let _ = writeln!(raw, "-A NETD-RAW -d 127.0.0.0/8 ! -i lo -j DROP");
    }
    let mut raw_protect = String::new();
    let mut nat = String::new();
    if fam == Family::V6 {
        // [::1] cannot reach a container through netfilter (the reply,
        // turned back to ::1 in br_netfilter's pass, is dropped by the
        // bridge's IPv6 input): not translated here, the daemon's
        // userland proxy listens there (see `loopback_proxy`); a DNAT in
        // OUTPUT would take the connection from it.
        let _ = writeln!(nat, "-A NETD -d ::1/128 -j RETURN");
    }
    let mut masq = String::new();
    let mut routed_in = String::new();
    let mut ports = String::new();
    let mut fwd = String::new();
    let mut fwd_out = String::new();
    let mut iso1 = String::new();
    let mut iso1_routed = String::new();
    let mut internal = String::new();
    let mut iso2 = String::new();
    for net in state.networks.values() {
        let Some((subnet, w)) = net_family(net, fam, cluster) else {
            continue;
        };
        let br = &net.bridge;
        let o = &net.options;
        if o.internal {
            // First in NETD-FORWARD: nothing, not even a published port
            // reached through a host address, leaves an internal network.
            // IPv6: not between the bridge's own ports (bridged neighbour
            // discovery goes to multicast and from link-local addresses;
            // icc decides there).
            let same = match fam {
                Family::V4 => String::new(),
                Family::V6 => format!("! -o {br} "),
            };
            let _ = writeln!(
                internal,
                "-A NETD-FORWARD -i {br} {same}! -d {subnet} -j DROP"
            );
            let same = same.replace("-o", "-i");
            let _ = writeln!(
                internal,
                "-A NETD-FORWARD -o {br} {same}! -s {subnet} -j DROP"
            );
        } else {
            let _ = writeln!(
                iso1,
                "-A NETD-ISOLATION-1 -i {br} ! -o {br} -j NETD-ISOLATION-2"
            );
            let _ = writeln!(iso2, "-A NETD-ISOLATION-2 -o {br} -j DROP");
            if w.from_other_networks {
                // Routed: other networks may route in (the port filter
                // below decides), and keep their addresses doing so.
                let _ = writeln!(iso1_routed, "-A NETD-ISOLATION-1 -o {br} -j RETURN");
                let _ = writeln!(routed_in, "-A NETD-POSTROUTING -o {br} -j RETURN");
                // Their replies come back from this bridge to their own
                // addresses (isolation still drops anything else).
                let _ = writeln!(raw, "-A NETD-RAW -i {br} -j RETURN");
            }
            if w.masquerade {
                let _ = writeln!(
                    masq,
                    "-A NETD-POSTROUTING -s {subnet} ! -o {br} -j MASQUERADE"
                );
            }
        }
        if w.cluster
            && let Some(c) = cluster
        {
            // Pods of other nodes reach this node's pods directly.
            let _ = writeln!(raw, "-A NETD-RAW -s {c} -d {subnet} -j RETURN");
        }
        // Host processes reaching published ports (127.0.0.1 included)
        // leave with a host source address: masquerade it.
        let _ = writeln!(
            nat,
            "-A NETD-POSTROUTING -o {br} -m addrtype --src-type LOCAL -j MASQUERADE"
        );
        let _ = writeln!(fwd, "-A NETD-FORWARD -o {br} -j NETD-PORTS");
        let icc = if o.icc { "ACCEPT" } else { "DROP" };
        let _ = writeln!(fwd, "-A NETD-FORWARD -i {br} -o {br} -j {icc}");
        if !o.internal {
            // After every bridge's own filter (a routed network's
            // published ports are open to other networks, nothing else).
            let _ = writeln!(fwd_out, "-A NETD-FORWARD -i {br} ! -o {br} -j ACCEPT");
        }
        if w.direct_icmp {
            let _ = writeln!(fwd, "-A NETD-FORWARD -o {br} -p {} -j ACCEPT", fam.icmp());
        }
        if w.cluster
            && let Some(c) = cluster
        {
            let _ = writeln!(fwd, "-A NETD-FORWARD -s {c} -o {br} -j ACCEPT");
        }
        let last = if w.direct_all { "ACCEPT" } else { "DROP" };
        let _ = writeln!(fwd, "-A NETD-FORWARD -o {br} -j {last}");
    }
    for c in state
        .containers
        .values()
        .filter(|c| c.status == Status::Running)
    {
        // Container addresses are not reachable by routing from outside
        // their bridge (`nat` networks with masquerade; the others are
        // routed to, their containers' replies come that way).
        for ep in c.endpoints.values() {
            if let Some(net) = state.networks.get(&ep.network)
                && let Some((_, w)) = net_family(net, fam, cluster)
                && w.protected
                && let Some(ip) = ep_addr(ep, fam)
            {
                let _ = writeln!(
                    raw_protect,
                    "-A NETD-RAW -d {ip}/{hostlen} ! -i {} -j DROP",
                    net.bridge
                );
            }
        }
        // Ports are published to the container's first endpoint (eth0).
        let Some(ep) = c.primary() else {
            continue;
        };
        let Some(net) = state.networks.get(&ep.network) else {
            continue;
        };
        let (Some((_, w)), Some(ip)) = (net_family(net, fam, cluster), ep_addr(ep, fam)) else {
            continue;
        };
        // DNAT's target: an IPv6 address in brackets.
        let to = match ip {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        for b in &c.ports {
            let p = b.proto.as_str();
            let Some(host) = binding_host(b, fam) else {
                continue;
            };
            let dst = match host {
                Some(h) => format!("-d {h}/{hostlen} "),
                None => String::new(),
            };
            if w.host_ports && b.host_port != 0 {
                let _ = writeln!(
                    nat,
                    "-A NETD {dst}-p {p} -m {p} --dport {} -j DNAT --to-destination {to}:{}",
                    b.host_port, b.container_port
                );
                // Hairpin: a container reaching its own published port.
                let _ = writeln!(
                    nat,
                    "-A NETD-POSTROUTING -s {ip}/{hostlen} -d {ip}/{hostlen} -p {p} -m {p} --dport {cp} -j MASQUERADE",
                    cp = b.container_port
                );
            }
            let _ = writeln!(
                ports,
                "-A NETD-PORTS -d {ip}/{hostlen} -o {} -p {p} -m {p} --dport {} -j ACCEPT",
                net.bridge, b.container_port
            );
        }
    }
    // Pods talking to the cluster keep their addresses: after the hairpin
    // and host rules, before the subnets' masquerade.
    if let Some(c) = cluster
        && !masq.is_empty()
    {
        let _ = writeln!(nat, "-A NETD-POSTROUTING -s {c} -d {c} -j RETURN");
    }
    // Containers of other networks reach a routed network's containers
    // with their own addresses (as the eBPF datapath delivers them).
    nat.push_str(&routed_in);
    nat.push_str(&masq);
    raw.push_str(&raw_protect);
    let mut out = String::from("*raw\n");
    for ch in RAW_CHAINS {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    out.push_str(&raw);
    out.push_str("COMMIT\n*nat\n");
    for ch in NAT_CHAINS {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    out.push_str(&nat);
    out.push_str("COMMIT\n*filter\n");
    for ch in FILTER_CHAINS {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    // A published port reached through a host address from another
    // network (hairpin) is not isolation's business, nor are its replies.
    out.push_str(&internal);
    let _ = writeln!(
        out,
        "-A NETD-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    let _ = writeln!(
        out,
        "-A NETD-FORWARD -m conntrack --ctstate DNAT -j NETD-PORTS"
    );
    let _ = writeln!(out, "-A NETD-FORWARD -j NETD-ISOLATION-1");
    out.push_str(&fwd);
    out.push_str(&fwd_out);
    out.push_str(&iso1_routed);
    out.push_str(&iso1);
    let _ = writeln!(out, "-A NETD-ISOLATION-1 -j RETURN");
    out.push_str(&iso2);
    let _ = writeln!(out, "-A NETD-ISOLATION-2 -j RETURN");
    out.push_str(&ports);
    out.push_str("COMMIT\n");
    out
}

impl Iptables {
    /// `userland_proxy`: serve `[::1]` published ports (see
    /// [`super::loopback_proxy`]).
    pub fn new(userland_proxy: bool) -> Iptables {
        Iptables {
            proxy: super::loopback_proxy::LoopbackProxy::new(userland_proxy),
            ..Default::default()
        }
    }
}

impl Datapath for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn init(&mut self) -> Result<()> {
        sysctl_write("net/ipv4/ip_forward", "1")?;
        // icc=false between containers on one bridge needs bridged frames
        // to traverse iptables (Docker loads br_netfilter for this), and
        // ip6tables for IPv6 networks.
        if sysctl_read("net/bridge/bridge-nf-call-iptables").is_ok() {
            sysctl_write("net/bridge/bridge-nf-call-iptables", "1")?;
            if host_has_ipv6() {
                sysctl_write("net/bridge/bridge-nf-call-ip6tables", "1")?;
            }
        } else {
            tracing::warn!(
                "br_netfilter is not available: icc=false cannot be enforced by iptables"
            );
        }
        self.ipv6 = host_has_ipv6();
        // Chains first (empty), then the jumps to them.
        restore(&render(&State::default()))?;
        if self.ipv6 {
            restore6(&render6(&State::default()))?;
        } else {
            tracing::warn!("the host has no IPv6: no ip6tables rules");
        }
        restore_bridge(&render_bridge(&State::default()))?;
        for chain in BRIDGE_HOOKS {
            let listed = run_tool("ebtables", &["-L", chain], "")
                .context("is the ebtables package installed?")?;
            let jump = format!("-j {BRIDGE_CHAIN}");
            if !String::from_utf8_lossy(&listed.stdout).contains(&jump)
                && !ebtables(&["-I", chain, "1", "-j", BRIDGE_CHAIN])?
            {
                bail!("could not install the jump bridge {chain} -j {BRIDGE_CHAIN}");
            }
        }
        install_hooks(Family::V4)?;
        if self.ipv6 {
            install_hooks(Family::V6)?;
        }
        Ok(())
    }

    fn sync(&mut self, state: &State) -> Result<()> {
        // First: a [::1] port another process holds refuses the change
        // before any rule is written.
        if self.ipv6 {
            self.proxy.sync(state)?;
        }
        super::route_localnet(state)?;
        let batch = render(state);
        if batch != self.last {
            restore(&batch)?;
            self.last = batch;
        }
        if self.ipv6 {
            let batch = render6(state);
            if batch != self.last6 {
                restore6(&batch)?;
                self.last6 = batch;
            }
        }
        let bridge = render_bridge(state);
        if bridge != self.last_bridge {
            restore_bridge(&bridge)?;
            self.last_bridge = bridge;
        }
        self.conntrack.sync(state)
    }

    fn refresh(&mut self, _state: &State) -> Result<()> {
        self.proxy.retry();
        Ok(())
    }

    fn cleanup(&mut self) -> Result<()> {
        self.proxy.stop_all();
        let mut errors = remove_chains(Family::V4);
        if host_has_ipv6() {
            errors.extend(remove_chains(Family::V6));
        }
        for chain in BRIDGE_HOOKS {
            while ebtables(&["-D", chain, "-j", BRIDGE_CHAIN]).unwrap_or(false) {}
        }
        let _ = ebtables(&["-F", BRIDGE_CHAIN]);
        if ebtables(&["-L", BRIDGE_CHAIN]).unwrap_or(false)
            && !ebtables(&["-X", BRIDGE_CHAIN]).unwrap_or(false)
        {
            errors.push(format!("bridge/{BRIDGE_CHAIN}"));
        }
        self.last_bridge.clear();
        self.last.clear();
        self.last6.clear();
        if !errors.is_empty() {
            bail!("could not delete chains: {}", errors.join(", "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_failing_line_is_named_with_its_text() {
        let batch = "*filter\n:NETD - [0:0]\n-A NETD -j BOGUS\nCOMMIT\n";
        for stderr in [
            "iptables-restore: line 3 failed: No chain/target/match by that name.",
            "iptables-restore v1.8.9 (nf_tables): Chain 'BOGUS' does not exist\nError occurred at line: 3\nTry `iptables-restore -h'",
            "/dev/stdin:3:12-16: Error: Could not process rule: No such file or directory",
        ] {
            assert_eq!(
                failing_line(stderr, batch),
                Some((3, "-A NETD -j BOGUS".to_string())),
                "{stderr}"
            );
        }
        assert_eq!(failing_line("something else", batch), None);
        assert_eq!(failing_line("line 99 failed", batch), None);
    }

    #[test]
    fn raw_and_bridge_rules_follow_the_containers() {
        use std::collections::BTreeMap;

        use crate::{
            ipam::{Allocator, Cidr},
            model::{Container, Endpoint, Network, NetworkOptions},
        };
        let subnet: Cidr = "172.17.0.0/16".parse().unwrap();
        let net = Network {
            id: "def".into(),
            name: "bridge".into(),
            created: String::new(),
            bridge: "netd0".into(),
            ipam: Some(Allocator::new(subnet, subnet.first_host(), None).unwrap()),
            options: NetworkOptions {
                icc: false,
                ..NetworkOptions::default()
            },
            raw_options: BTreeMap::new(),
            default: true,
            owner: Default::default(),
            ipam6: None,
        };
        let ep = Endpoint {
            id: "e".into(),
            network: "def".into(),
            ip: Some(Ipv4Addr::new(172, 17, 0, 2)),
            mac: [2, 0x42, 0xac, 0x11, 0, 2],
            veth: "vndweb".into(),
            ifname: "eth0".into(),
            aliases: Vec::new(),
            static_ip: false,
            ip6: None,
            static_ip6: false,
        };
        let c = Container {
            id: "web".into(),
            name: "web".into(),
            status: Status::Running,
            endpoints: BTreeMap::from([("def".to_string(), ep)]),
            ..Container::default()
        };
        let mut s = State::default();
        s.networks.insert("def".into(), net);
        s.containers.insert("web".into(), c);
        let r = render(&s);
        assert!(r.starts_with("*raw\n:NETD-RAW - [0:0]\n"), "{r}");
        assert!(r.contains("-A NETD-RAW -d 127.0.0.0/8 ! -i lo -j DROP\n"));
        assert!(r.contains("-A NETD-RAW -d 172.17.0.2/32 ! -i netd0 -j DROP\n"));
        let b = render_bridge(&s);
        assert!(b.starts_with("*filter\n:NETD-BRIDGE RETURN\n"), "{b}");
        assert!(b.contains(
            "-A NETD-BRIDGE -i vndweb -p ARP --arp-mac-src ! 02:42:ac:11:00:02 -j DROP\n"
        ));
        assert!(b.contains("-A NETD-BRIDGE -i vndweb -p ARP --arp-ip-src ! 172.17.0.2 -j DROP\n"));
        assert!(
            b.ends_with("-A NETD-BRIDGE -i vndweb -j DROP\nCOMMIT\n"),
            "{b}"
        );
        let mut s2 = s.clone();
        s2.networks.get_mut("def").unwrap().options.masquerade = false;
        assert!(
            !render(&s2).contains("172.17.0.2/32 ! -i"),
            "routed: replies come in"
        );
    }

    #[test]
    fn gateway_modes_and_the_cluster() {
        let r = render(&crate::datapath::nftables::tests::modes_state());
        let has = |l: &str| r.lines().any(|x| x == l);
        // nat: masquerade and protection.
        assert!(has(
            "-A NETD-POSTROUTING -s 172.17.0.0/16 ! -o netd0 -j MASQUERADE"
        ));
        assert!(has("-A NETD-RAW -d 172.17.0.2/32 ! -i netd0 -j DROP"));
        // nat-unprotected: masquerade, no protection, all open.
        assert!(has(
            "-A NETD-POSTROUTING -s 10.10.0.0/24 ! -o netd-unp -j MASQUERADE"
        ));
        assert!(!r.contains("-d 10.10.0.2/32 ! -i"), "{r}");
        assert!(has("-A NETD-FORWARD -o netd-unp -j ACCEPT"));
        // routed: no masquerade, no DNAT, the container port and ICMP by
        // routing, other networks may route in.
        assert!(!r.contains("-s 10.20.0.0/24 ! -o netd-rtd -j MASQUERADE"));
        assert!(!r.contains("--to-destination 10.20.0.2"));
        assert!(!r.contains("-d 10.20.0.2/32 ! -i"));
        assert!(has(
            "-A NETD-PORTS -d 10.20.0.2/32 -o netd-rtd -p tcp -m tcp --dport 80 -j ACCEPT"
        ));
        assert!(has("-A NETD-FORWARD -o netd-rtd -p icmp -j ACCEPT"));
        assert!(has("-A NETD-FORWARD -o netd-rtd -j DROP"));
        assert!(has("-A NETD-ISOLATION-1 -o netd-rtd -j RETURN"));
        assert!(has("-A NETD-RAW -i netd-rtd -j RETURN"));
        let pos = |l: &str| r.find(l).unwrap_or_else(|| panic!("{l}"));
        assert!(
            pos("-A NETD-POSTROUTING -o netd-rtd -j RETURN")
                < pos("-A NETD-POSTROUTING -s 172.17.0.0/16 ! -o netd0 -j MASQUERADE")
        );
        assert!(
            pos("-A NETD-ISOLATION-1 -o netd-rtd -j RETURN")
                < pos("-A NETD-ISOLATION-1 -i netd0 ! -o netd0 -j NETD-ISOLATION-2")
        );
        // Every bridge's own filter before any bridge's egress accept.
        assert!(
            pos("-A NETD-FORWARD -o netd-rtd -j DROP")
                < pos("-A NETD-FORWARD -i netd0 ! -o netd0 -j ACCEPT")
        );
        // isolated: internal.
        assert!(has("-A NETD-FORWARD -i netd-iso ! -d 10.30.0.0/24 -j DROP"));
        // The cluster: no masquerade between its addresses (after the
        // hairpin rules, before the subnets'), and its sources reach the
        // pods past the raw table and the forward filter.
        let ret = pos("-A NETD-POSTROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN");
        assert!(ret < pos("-A NETD-POSTROUTING -s 10.244.1.0/24 ! -o netd-pods -j MASQUERADE"));
        assert!(pos("-A NETD-POSTROUTING -s 10.244.1.2/32 -d 10.244.1.2/32") < ret);
        assert!(
            pos("-A NETD-RAW -s 10.244.0.0/16 -d 10.244.1.0/24 -j RETURN")
                < pos("-A NETD-RAW -d 10.244.1.2/32 ! -i netd-pods -j DROP")
        );
        assert!(
            pos("-A NETD-FORWARD -s 10.244.0.0/16 -o netd-pods -j ACCEPT")
                < pos("-A NETD-FORWARD -o netd-pods -j DROP")
        );
    }

    #[test]
    fn ipv6_rules_for_ip6tables() {
        let s = crate::datapath::nftables::tests::dual_state();
        let r = render6(&s);
        let has = |l: &str| r.lines().any(|x| x == l);
        assert!(r.starts_with("*raw\n:NETD-RAW - [0:0]\n"), "{r}");
        // NAT66 and protection of the nat network; DNAT of 0.0.0.0, ::
        // and ::1 bindings to the container's IPv6 address.
        assert!(has(
            "-A NETD-POSTROUTING -s fd00:17::/64 ! -o netd0 -j MASQUERADE"
        ));
        assert!(has("-A NETD-RAW -d fd00:17::2/128 ! -i netd0 -j DROP"));
        assert!(has(
            "-A NETD -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:17::2]:80"
        ));
        assert!(has(
            "-A NETD -p tcp -m tcp --dport 8081 -j DNAT --to-destination [fd00:17::2]:81"
        ));
        // [::1] is left alone (before any DNAT).
        let pos = |l: &str| r.find(l).unwrap_or_else(|| panic!("{l}"));
        assert!(pos("-A NETD -d ::1/128 -j RETURN\n") < pos("-A NETD -p tcp"));
        assert!(!r.contains("8083"), "127.0.0.1 is IPv4 only");
        assert!(has(
            "-A NETD-POSTROUTING -s fd00:17::2/128 -d fd00:17::2/128 -p tcp -m tcp --dport 80 -j MASQUERADE"
        ));
        assert!(has(
            "-A NETD-POSTROUTING -o netd0 -m addrtype --src-type LOCAL -j MASQUERADE"
        ));
        // icc=false, isolation, the egress accept.
        assert!(has("-A NETD-FORWARD -i netd0 -o netd0 -j DROP"));
        assert!(has(
            "-A NETD-ISOLATION-1 -i netd0 ! -o netd0 -j NETD-ISOLATION-2"
        ));
        assert!(has("-A NETD-ISOLATION-2 -o netd0 -j DROP"));
        // gateway_mode_ipv6=routed: no NAT66, no DNAT, the port and ICMPv6.
        assert!(!r.contains("-s fd00:20::/64 ! -o netd-rtd6 -j MASQUERADE"));
        assert!(!r.contains("[fd00:20::2]"));
        assert!(!r.contains("-d fd00:20::2/128 ! -i"));
        assert!(has(
            "-A NETD-PORTS -d fd00:20::2/128 -o netd-rtd6 -p tcp -m tcp --dport 80 -j ACCEPT"
        ));
        assert!(has("-A NETD-FORWARD -o netd-rtd6 -p ipv6-icmp -j ACCEPT"));
        assert!(has("-A NETD-ISOLATION-1 -o netd-rtd6 -j RETURN"));
        // ...while its IPv4 side is nat.
        let r4 = render(&s);
        assert!(r4.contains("-A NETD-POSTROUTING -s 10.20.0.0/24 ! -o netd-rtd6 -j MASQUERADE"));
        assert!(!r4.contains("fd00:") && !r4.contains("8081") && !r4.contains("8082"));
        // IPv4-only networks and IPv4 things are absent.
        assert!(!r.contains("netd-v4") && !r.contains("127.0.0.0/8") && !r.contains("172.17."));
        // An internal network with IPv6 keeps IPv6 in its subnet.
        let mut s2 = s.clone();
        s2.networks.get_mut("def").unwrap().options.internal = true;
        let r2 = render6(&s2);
        assert!(r2.contains("-A NETD-FORWARD -i netd0 ! -o netd0 ! -d fd00:17::/64 -j DROP\n"));
        assert!(r2.contains("-A NETD-FORWARD -o netd0 ! -i netd0 ! -s fd00:17::/64 -j DROP\n"));
        assert!(!r2.contains("-s fd00:17::/64 ! -o netd0 -j MASQUERADE"));
        // The bridge chain: the endpoint's address, link-local and ::
        // on IPv6 networks; nothing IPv6 from an IPv4-only network's port.
        let b = render_bridge(&s);
        for src in ["fd00:17::2/128", "fe80::/10", "::/128"] {
            let l = format!("-A NETD-BRIDGE -i vndweb -p IPv6 --ip6-src {src} -j RETURN\n");
            assert!(b.contains(&l), "{b}");
        }
        assert!(b.contains("-A NETD-BRIDGE -i vndr -p IPv6 --ip6-src fd00:20::2/128 -j RETURN\n"));
        assert!(!b.contains("-i vndo -p IPv6"), "{b}");
        let web_ipv6 = b.find("-i vndweb -p IPv6 --ip6-src fe80::/10").unwrap();
        assert!(web_ipv6 < b.find("-A NETD-BRIDGE -i vndweb -j DROP").unwrap());
    }

    #[test]
    fn a_tool_that_hangs_is_killed() {
        let out = run_tool("cat", &[], "hello").unwrap();
        assert_eq!(out.stdout, b"hello");
        assert!(run_tool("/nonexistent-tool", &[], "").is_err());
        // `sleep` stands for a tool stuck on a lock.
        let e = run_tool_within("sleep", &["600"], "", Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("was killed"), "{e}");
    }
}
