//! The iptables datapath: the rules Docker installs (without the userland
//! proxy), in chains named NETD-*. It is the baseline the eBPF datapath is
//! measured against and the oracle for its behaviour.
//!
//! Every sync renders all NETD-* chains from the state and applies them in
//! one `iptables-restore --noflush` batch: declaring a chain in the batch
//! flushes it, so the result is exactly the state, atomically per table.
//! The jumps from the built-in chains are installed once, by `init`.
use std::{
    fmt::Write as _,
    io::Write,
    net::Ipv4Addr,
    process::{Command, Stdio},
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
    ("nat", "PREROUTING", "-m addrtype --dst-type LOCAL -j NETD"),
    // Host processes, loopback included (route_localnet is set on the
    // bridges, as Docker does without the userland proxy).
    ("nat", "OUTPUT", "-m addrtype --dst-type LOCAL -j NETD"),
    ("nat", "POSTROUTING", "-j NETD-POSTROUTING"),
    ("filter", "FORWARD", "-j NETD-FORWARD"),
];

const NAT_CHAINS: &[&str] = &["NETD", "NETD-POSTROUTING"];
const FILTER_CHAINS: &[&str] = &[
    "NETD-FORWARD",
    "NETD-ISOLATION-1",
    "NETD-ISOLATION-2",
    "NETD-PORTS",
];

#[derive(Default)]
pub struct Iptables {
    /// The last batch applied, to skip identical re-applies.
    last: String,
}

fn iptables(args: &[&str]) -> Result<bool> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running iptables (is the iptables package installed?)")?;
    Ok(out.status.success())
}

fn restore(batch: &str) -> Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (is the iptables package installed?)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(batch.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}\n--- batch ---\n{batch}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Renders every NETD-* chain for `state`.
pub fn render(state: &State) -> String {
    let mut nat = String::new();
    let mut ports = String::new();
    let mut fwd = String::new();
    let mut iso1 = String::new();
    let mut internal = String::new();
    let mut iso2 = String::new();
    for net in state.networks.values() {
        let (br, subnet) = (&net.bridge, net.subnet());
        let o = &net.options;
        if o.internal {
            // First in NETD-FORWARD: nothing, not even a published port
            // reached through a host address, leaves an internal network.
            let _ = writeln!(internal, "-A NETD-FORWARD -i {br} ! -d {subnet} -j DROP");
            let _ = writeln!(internal, "-A NETD-FORWARD -o {br} ! -s {subnet} -j DROP");
        } else {
            let _ = writeln!(
                iso1,
                "-A NETD-ISOLATION-1 -i {br} ! -o {br} -j NETD-ISOLATION-2"
            );
            let _ = writeln!(iso2, "-A NETD-ISOLATION-2 -o {br} -j DROP");
            if o.masquerade {
                let _ = writeln!(
                    nat,
                    "-A NETD-POSTROUTING -s {subnet} ! -o {br} -j MASQUERADE"
                );
            }
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
            let _ = writeln!(fwd, "-A NETD-FORWARD -i {br} ! -o {br} -j ACCEPT");
        }
        let _ = writeln!(fwd, "-A NETD-FORWARD -o {br} -j DROP");
    }
    for c in state
        .containers
        .values()
        .filter(|c| c.status == Status::Running)
    {
        // Ports are published to the container's first endpoint (eth0).
        let Some(ep) = c.primary() else {
            continue;
        };
        let Some(net) = state.networks.get(&ep.network) else {
            continue;
        };
        for b in &c.ports {
            let p = b.proto.as_str();
            let dst = match b.host_ip {
                std::net::IpAddr::V4(ip) if ip != Ipv4Addr::UNSPECIFIED => format!("-d {ip}/32 "),
                std::net::IpAddr::V4(_) => String::new(),
                std::net::IpAddr::V6(_) => continue,
            };
            let _ = writeln!(
                nat,
                "-A NETD {dst}-p {p} -m {p} --dport {} -j DNAT --to-destination {}:{}",
                b.host_port, ep.ip, b.container_port
            );
            // Hairpin: a container reaching its own published port.
            let _ = writeln!(
                nat,
                "-A NETD-POSTROUTING -s {ip}/32 -d {ip}/32 -p {p} -m {p} --dport {cp} -j MASQUERADE",
                ip = ep.ip,
                cp = b.container_port
            );
            let _ = writeln!(
                ports,
                "-A NETD-PORTS -d {}/32 -o {} -p {p} -m {p} --dport {} -j ACCEPT",
                ep.ip, net.bridge, b.container_port
            );
        }
    }
    let mut out = String::from("*nat\n");
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
    out.push_str(&iso1);
    let _ = writeln!(out, "-A NETD-ISOLATION-1 -j RETURN");
    out.push_str(&iso2);
    let _ = writeln!(out, "-A NETD-ISOLATION-2 -j RETURN");
    out.push_str(&ports);
    out.push_str("COMMIT\n");
    out
}

impl Datapath for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn init(&mut self) -> Result<()> {
        sysctl_write("net/ipv4/ip_forward", "1")?;
        // icc=false between containers on one bridge needs bridged frames
        // to traverse iptables (Docker loads br_netfilter for this).
        if sysctl_read("net/bridge/bridge-nf-call-iptables").is_ok() {
            sysctl_write("net/bridge/bridge-nf-call-iptables", "1")?;
        } else {
            tracing::warn!(
                "br_netfilter is not available: icc=false cannot be enforced by iptables"
            );
        }
        // Chains first (empty), then the jumps to them.
        restore(&render(&State::default()))?;
        for (table, chain, spec) in HOOKS {
            let spec: Vec<&str> = spec.split(' ').collect();
            let mut check = vec!["-t", table, "-C", chain];
            check.extend(&spec);
            if !iptables(&check)? {
                let mut add = vec!["-t", table, "-I", chain, "1"];
                add.extend(&spec);
                if !iptables(&add)? {
                    bail!(
                        "could not install the jump {table}/{chain} {}",
                        spec.join(" ")
                    );
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self, state: &State) -> Result<()> {
        super::route_localnet(state)?;
        let batch = render(state);
        if batch != self.last {
            restore(&batch)?;
            self.last = batch;
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for (table, chain, spec) in HOOKS {
            let mut del = vec!["-t", table, "-D", chain];
            del.extend(spec.split(' '));
            while iptables(&del).unwrap_or(false) {}
        }
        for (table, chains) in [("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)] {
            for ch in chains.iter() {
                let _ = iptables(&["-t", table, "-F", ch]);
            }
            for ch in chains.iter() {
                if !iptables(&["-t", table, "-X", ch]).unwrap_or(false) {
                    errors.push(format!("{table}/{ch}"));
                }
            }
        }
        self.last.clear();
        if !errors.is_empty() {
            bail!("could not delete chains: {}", errors.join(", "));
        }
        Ok(())
    }
}
