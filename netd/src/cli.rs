//! The CLI: Docker's words and flags, a client of the daemon's API.
//! `run` and `exec` ask the daemon to start the process, which gets the
//! CLI's standard streams, environment and working directory (the daemon
//! takes the streams through the connection's pidfd), so the CLI needs
//! neither the container's namespace files nor any privilege of its own.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::api::Client;

#[derive(Args, Clone, Debug, Default)]
pub struct CreateArgs {
    /// Assign a name to the container.
    #[arg(long)]
    pub name: Option<String>,
    /// bridge (default), host, none, container:NAME, or a network name.
    #[arg(long = "network", visible_alias = "net")]
    pub network: Option<String>,
    /// Publish ports: [HOSTIP:][HOSTPORT[-END]:]CPORT[-END][/tcp|/udp].
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish all exposed ports to random host ports.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Expose a port or a range: PORT[-END][/PROTO].
    #[arg(long)]
    pub expose: Vec<String>,
    /// IPv4 address on the first network.
    #[arg(long)]
    pub ip: Option<String>,
    /// IPv6 address on the first network (one with IPv6).
    #[arg(long)]
    pub ip6: Option<String>,
    /// MAC address on the first network.
    #[arg(long = "mac-address")]
    pub mac_address: Option<String>,
    /// Container host name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// A name for the container on its (user-defined) network; repeatable.
    #[arg(long = "network-alias", value_name = "NAME")]
    pub network_alias: Vec<String>,
    /// Upstream DNS server (repeatable).
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// DNS search domain (repeatable; "." for none).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// resolv.conf option (repeatable), e.g. ndots:2.
    #[arg(long = "dns-option", value_name = "OPTION")]
    pub dns_option: Vec<String>,
    /// An /etc/hosts entry, NAME:IP (IP may be host-gateway); repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// Link to another container on the default bridge: NAME[:ALIAS].
    #[arg(long = "link", value_name = "NAME[:ALIAS]")]
    pub link: Vec<String>,
}

impl CreateArgs {
    fn body(&self) -> Value {
        json!({
            "Name": self.name, "Network": self.network, "Publish": self.publish,
            "PublishAll": self.publish_all, "Expose": self.expose, "Ip": self.ip,
            "Ip6": self.ip6,
            "MacAddress": self.mac_address, "Hostname": self.hostname,
            "NetworkAliases": self.network_alias, "Dns": self.dns,
            "DnsSearch": self.dns_search, "DnsOptions": self.dns_option,
            "ExtraHosts": self.add_host, "Links": self.link,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a bridge network.
    Create {
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        /// A subnet; once per family (an IPv6 one needs --ipv6).
        #[arg(long)]
        subnet: Vec<String>,
        /// A gateway; once per family.
        #[arg(long)]
        gateway: Vec<String>,
        #[arg(long = "ip-range")]
        ip_range: Option<String>,
        #[arg(long)]
        internal: bool,
        /// IPv6 too: the --subnet given, or a /64 of the IPv6 pools.
        #[arg(long)]
        ipv6: bool,
        /// --ipv4=false: an IPv6-only network.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        ipv4: Option<bool>,
        /// Driver options: icc, masquerade, mtu, bridge-name, host-binding-ipv4, gateway_mode_ipv4, gateway_mode_ipv6.
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        name: String,
    },
    /// List networks.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long)]
        format: Option<String>,
    },
    /// Show networks as JSON (shaped like docker network inspect).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a container to a network (a new interface appears in it).
    Connect {
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        ip6: Option<String>,
        /// A name for the container on this network (repeatable).
        #[arg(long = "alias", value_name = "NAME")]
        alias: Vec<String>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network.
    Disconnect { network: String, container: String },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Route another node's pod range via its address (what a Kubernetes
    /// node watcher does for each Node's spec.podCIDR and InternalIP).
    Add {
        name: String,
        #[arg(long = "pod-cidr")]
        pod_cidr: String,
        #[arg(long)]
        address: String,
    },
    /// Remove a node and its route.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List the nodes.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long)]
        format: Option<String>,
    },
}

pub fn node(c: &Client, cmd: NodeCmd) -> Result<i32> {
    match cmd {
        NodeCmd::Add {
            name,
            pod_cidr,
            address,
        } => {
            c.post(
                "/nodes",
                &json!({ "Name": name, "PodCidr": pod_cidr, "Address": address }),
            )?;
            println!("{name}");
        }
        NodeCmd::Rm { names } => {
            let mut code = 0;
            for n in names {
                match c.delete(&format!("/nodes/{n}")) {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        NodeCmd::Ls { format } => {
            let v = c.get("/nodes")?;
            if format.as_deref() == Some("json") {
                print_json(&v);
                return Ok(0);
            }
            let mut rows = vec![["NAME".to_string(), "POD CIDR".into(), "ADDRESS".into()]];
            for n in v.as_array().into_iter().flatten() {
                rows.push([
                    n["Name"].as_str().unwrap_or_default().to_string(),
                    n["PodCidr"].as_str().unwrap_or_default().to_string(),
                    n["Address"].as_str().unwrap_or_default().to_string(),
                ]);
            }
            print!("{}", table(&rows, 3));
        }
    }
    Ok(0)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn network(c: &Client, cmd: NetworkCmd) -> Result<i32> {
    match cmd {
        NetworkCmd::Create {
            driver,
            subnet,
            gateway,
            ip_range,
            internal,
            ipv6,
            ipv4,
            opt,
            name,
        } => {
            // One value per family: IPv6 ones have a colon.
            let family =
                |list: &[String], what: &str| -> Result<(Option<String>, Option<String>)> {
                    let (v6, v4): (Vec<&String>, Vec<&String>) =
                        list.iter().partition(|s| s.contains(':'));
                    if v4.len() > 1 || v6.len() > 1 {
                        bail!("at most one IPv4 and one IPv6 --{what}");
                    }
                    Ok((
                        v4.first().map(|s| s.to_string()),
                        v6.first().map(|s| s.to_string()),
                    ))
                };
            let (subnet, subnet6) = family(&subnet, "subnet")?;
            let (gateway, gateway6) = family(&gateway, "gateway")?;
            let mut options = serde_json::Map::new();
            for o in &opt {
                let (k, v) = o
                    .split_once('=')
                    .with_context(|| format!("invalid option {o:?}: expected KEY=VALUE"))?;
                options.insert(k.to_string(), json!(v));
            }
            let r = c.post(
                "/networks/create",
                &json!({ "Name": name, "Driver": driver, "Subnet": subnet, "Gateway": gateway,
                         "IpRange": ip_range, "Internal": internal, "Options": options,
                         "EnableIPv6": ipv6, "EnableIPv4": ipv4,
                         "Subnet6": subnet6, "Gateway6": gateway6 }),
            )?;
            println!("{}", r["Id"].as_str().unwrap_or_default());
        }
        NetworkCmd::Ls { format } => {
            let v = c.get("/networks")?;
            if format.as_deref() == Some("json") {
                for n in v.as_array().into_iter().flatten() {
                    println!("{}", serde_json::to_string(n)?);
                }
            } else {
                // Wide enough for a plugin's driver (docker:NAME).
                let dw = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| n["Driver"].as_str().unwrap_or_default().len() + 2)
                    .max()
                    .unwrap_or(0)
                    .max(10);
                println!(
                    "{:<14}{:<20}{:<dw$}{:<8}SUBNET",
                    "NETWORK ID", "NAME", "DRIVER", "SCOPE"
                );
                for n in v.as_array().into_iter().flatten() {
                    let id = n["Id"].as_str().unwrap_or_default();
                    println!(
                        "{:<14}{:<20}{:<dw$}{:<8}{}",
                        &id[..id.len().min(12)],
                        n["Name"].as_str().unwrap_or_default(),
                        n["Driver"].as_str().unwrap_or_default(),
                        n["Scope"].as_str().unwrap_or_default(),
                        n["IPAM"]["Config"][0]["Subnet"]
                            .as_str()
                            .unwrap_or_default()
                    );
                }
            }
        }
        NetworkCmd::Inspect { names } => {
            let mut out = Vec::new();
            let mut code = 0;
            for n in names {
                match c.get(&format!("/networks/{n}")) {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            print_json(&Value::Array(out));
            return Ok(code);
        }
        NetworkCmd::Rm { names } => {
            let mut code = 0;
            for n in names {
                match c.delete(&format!("/networks/{n}")) {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        NetworkCmd::Connect {
            ip,
            ip6,
            alias,
            network,
            container,
        } => {
            c.post(
                &format!("/networks/{network}/connect"),
                &json!({ "Container": container, "Ip": ip, "Ip6": ip6, "Aliases": alias }),
            )?;
        }
        NetworkCmd::Disconnect { network, container } => {
            c.post(
                &format!("/networks/{network}/disconnect"),
                &json!({ "Container": container }),
            )?;
        }
    }
    Ok(0)
}

pub fn create(c: &Client, args: &CreateArgs) -> Result<String> {
    let r = c.post("/containers/create", &args.body())?;
    for w in r["Warnings"].as_array().into_iter().flatten() {
        eprintln!("WARNING: {}", w.as_str().unwrap_or_default());
    }
    Ok(r["Id"].as_str().unwrap_or_default().to_string())
}

/// The caller's environment and working directory: a process `run` or
/// `exec` starts sees them, as with `ip netns exec`.
fn caller_context() -> (Vec<String>, Option<String>) {
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v.to_str()?)))
        .collect();
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| d.to_str().map(str::to_string));
    (env, cwd)
}

/// An error that may mean the daemon went away while the process ran:
/// then the process goes on (as with `docker exec`), only its exit code
/// is lost.
fn lost(e: anyhow::Error, program: &str, container: &str) -> anyhow::Error {
    if e.is::<crate::api::ApiError>() {
        return e;
    }
    e.context(format!(
        "lost the daemon while {program:?} ran in {container}; the process may still be running"
    ))
}

fn inspect(c: &Client, name: &str) -> Result<Value> {
    c.get(&format!("/containers/{name}/json"))
}

/// `exec`: the daemon starts the command in the container (its
/// namespaces and cgroup) with this process's standard streams, and
/// answers with its exit code.
pub fn exec(c: &Client, name: &str, cmd: &[String]) -> Result<i32> {
    if cmd.is_empty() {
        bail!("no command given: netd exec NAME -- CMD [ARG]...");
    }
    let (env, cwd) = caller_context();
    let r = c
        .post(
            &format!("/containers/{name}/exec"),
            &json!({ "Cmd": cmd, "Env": env, "WorkingDir": cwd }),
        )
        .map_err(|e| lost(e, &cmd[0], name))?;
    Ok(r["ExitCode"].as_i64().unwrap_or(255) as i32)
}

pub fn run(c: &Client, args: &CreateArgs, detach: bool, rm: bool, cmd: &[String]) -> Result<i32> {
    if cmd.is_empty() {
        bail!("no command given: netd run [OPTIONS] -- CMD [ARG]...");
    }
    let (env, cwd) = caller_context();
    let mut body = args.body();
    body["Cmd"] = json!(cmd);
    body["Env"] = json!(env);
    body["WorkingDir"] = json!(cwd);
    body["AutoRemove"] = json!(rm);
    let r = c.post("/containers/create", &body)?;
    for w in r["Warnings"].as_array().into_iter().flatten() {
        eprintln!("WARNING: {}", w.as_str().unwrap_or_default());
    }
    let id = r["Id"].as_str().unwrap_or_default().to_string();
    if detach {
        if let Err(e) = c.post(&format!("/containers/{id}/start"), &json!({})) {
            if rm && let Err(e2) = c.delete(&format!("/containers/{id}?force=1")) {
                eprintln!("Error: removing {id}: {e2:#}");
            }
            return Err(e);
        }
        println!("{id}");
        return Ok(0);
    }
    // Attached: the main process gets our streams; signals we receive
    // go to it (Docker's --sig-proxy), and its exit code is ours.
    sig_proxy(c.clone(), id.clone())?;
    let r = c.post(
        &format!("/containers/{id}/start"),
        &json!({ "Attach": true }),
    );
    match r.map_err(|e| lost(e, &cmd[0], &id)) {
        Ok(v) => Ok(v["StatusCode"].as_i64().unwrap_or(255) as i32),
        Err(e) => {
            if rm && let Err(e2) = c.delete(&format!("/containers/{id}?force=1")) {
                eprintln!("Error: removing {id}: {e2:#}");
            }
            Err(e)
        }
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the
/// container's main process, from a thread that lives as long as the CLI.
fn sig_proxy(c: Client, id: String) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    // Blocked here and in every thread started later: only the proxy
    // thread takes them, with sigwait.
    set.thread_block().context("blocking signals")?;
    std::thread::Builder::new()
        .name("sig-proxy".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                let path = format!("/containers/{id}/kill?signal={}", sig as i32);
                if let Err(e) = c.post(&path, &json!({})) {
                    eprintln!("Error: forwarding {sig}: {e:#}");
                }
            }
        })?;
    Ok(())
}

pub fn ps(c: &Client, all: bool) -> Result<()> {
    let v = c.get(if all {
        "/containers/json?all=1"
    } else {
        "/containers/json"
    })?;
    // Columns as wide as their widest cell: CNI attachments are named
    // after the runtime's (64-character) container ids.
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "NAMES".into(),
        "STATUS".into(),
        "NETWORK".into(),
        "IP".into(),
        "PORTS".into(),
    ]];
    for ct in v.as_array().into_iter().flatten() {
        let id = ct["Id"].as_str().unwrap_or_default();
        let ports: Vec<&str> = ct["PortBindings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .collect();
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        rows.push([
            id[..id.len().min(12)].to_string(),
            s(&ct["Name"]).trim_start_matches('/').to_string(),
            s(&ct["State"]["Status"]),
            s(&ct["HostConfig"]["NetworkMode"]),
            s(&ct["NetworkSettings"]["IPAddress"]),
            ports.join(", "),
        ]);
    }
    print!("{}", table(&rows, 6));
    Ok(())
}

pub fn port(c: &Client, name: &str) -> Result<()> {
    let info = inspect(c, name)?;
    for p in info["PortBindings"].as_array().into_iter().flatten() {
        println!("{}", p.as_str().unwrap_or_default());
    }
    Ok(())
}

pub fn inspect_cmd(c: &Client, names: &[String]) -> Result<i32> {
    let mut out = Vec::new();
    let mut code = 0;
    for n in names {
        match inspect(c, n) {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("Error: {e:#}");
                code = 1;
            }
        }
    }
    print_json(&Value::Array(out));
    Ok(code)
}

pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/netd/netd.sock")
}

/// `netd stats [NAME] [--format json]`.
pub fn stats(c: &Client, name: Option<&str>, format: Option<&str>) -> Result<()> {
    let mut v = c.get("/stats")?;
    if let Some(n) = name {
        // Resolves (and checks) the name.
        let info = inspect(c, n)?;
        let n = info["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        if let Some(eps) = v.get_mut("Endpoints").and_then(|e| e.as_object_mut()) {
            eps.retain(|k, _| k.split('/').next() == Some(n.as_str()));
        }
    }
    if format == Some("json") {
        print_json(&v);
        return Ok(());
    }
    print!("{}", render_stats(&v, name.is_none()));
    Ok(())
}

/// The stats as aligned text: one table of endpoints, then (for the
/// whole host) the counters, drops and conntrack size.
pub fn render_stats(v: &Value, global: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "datapath: {}", v["Datapath"].as_str().unwrap_or("?")).ok();
    if let Some(eps) = v["Endpoints"].as_object() {
        let mut rows = vec![[
            "ENDPOINT".to_string(),
            "NETWORK".into(),
            "RX PKTS".into(),
            "RX BYTES".into(),
            "TX PKTS".into(),
            "TX BYTES".into(),
        ]];
        for (k, s) in eps {
            let n = |f: &str| s[f].as_u64().unwrap_or(0).to_string();
            rows.push([
                k.clone(),
                s["Network"].as_str().unwrap_or_default().to_string(),
                n("rx_packets"),
                n("rx_bytes"),
                n("tx_packets"),
                n("tx_bytes"),
            ]);
        }
        out.push_str(&table(&rows, 2));
    }
    if global {
        for (title, key) in [("counters", "Counters"), ("drops by reason", "Drops")] {
            if let Some(m) = v[key].as_object() {
                writeln!(out, "{title}:").ok();
                let rows: Vec<[String; 2]> = m
                    .iter()
                    .map(|(k, n)| [format!("  {k}"), n.to_string()])
                    .collect();
                out.push_str(&table(&rows, 1));
            }
        }
        if let Some(n) = v["ConntrackEntries"].as_u64() {
            writeln!(out, "conntrack entries: {n}").ok();
        }
        let gc = &v["ConntrackGC"];
        if gc.is_object() {
            let pass = |p: &Value| {
                format!(
                    "{} entries, {} expired, {} us CPU, {} us wall",
                    p["Entries"], p["Expired"], p["CpuMicros"], p["WallMicros"]
                )
            };
            writeln!(
                out,
                "conntrack gc: {} passes, {} expired; last: {}; costliest: {}",
                gc["Runs"],
                gc["ExpiredTotal"],
                pass(&gc["Last"]),
                pass(&gc["Max"])
            )
            .ok();
        }
        if let Some(progs) = v["Programs"].as_array().filter(|p| !p.is_empty()) {
            let mut rows = vec![[
                "PROGRAM".to_string(),
                "INSNS".into(),
                "VERIFIED".into(),
                "JITED BYTES".into(),
            ]];
            for p in progs {
                let n = |f: &str| p[f].as_u64().unwrap_or(0).to_string();
                rows.push([
                    p["Name"].as_str().unwrap_or_default().to_string(),
                    n("Insns"),
                    n("VerifiedInsns"),
                    n("JitedBytes"),
                ]);
            }
            writeln!(out, "programs:").ok();
            out.push_str(&table(&rows, 1));
        }
        if let Some(n) = v["CniAttachments"].as_u64().filter(|n| *n > 0) {
            writeln!(out, "cni attachments: {n}").ok();
        }
    }
    out
}

/// Columns padded to their widest cell, two spaces apart; the first
/// `left` columns left-aligned, the rest (numbers) right-aligned.
fn table<const N: usize>(rows: &[[String; N]], left: usize) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i < left {
                    format!("{cell:<w$}", w = width[i])
                } else {
                    format!("{cell:>w$}", w = width[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_columns_align() {
        let v = json!({
            "Datapath": "ebpf",
            "Endpoints": {
                "tomcat01/eth0": { "Network": "bridge", "rx_packets": 1410766580u64, "rx_bytes": 5, "tx_packets": 7, "tx_bytes": 9 },
                "a/eth1": { "Network": "mynet", "rx_packets": 1, "rx_bytes": 22, "tx_packets": 333, "tx_bytes": 4444 },
            },
            "Counters": { "snat": 1, "forwarded": 12345 },
        });
        let text = render_stats(&v, true);
        let lines: Vec<&str> = text.lines().collect();
        // Header and rows: every column starts where the header's does.
        let header = lines[1];
        let col = header.find("RX PKTS").unwrap();
        assert!(lines[2].starts_with("a/eth1 "), "{text}");
        // The numbers are right-aligned under their header's end.
        let end = col + "RX PKTS".len();
        let rx = header.find("RX PKTS").unwrap();
        assert!(rx > 0);
        let row = lines[3];
        assert!(row.contains("tomcat01/eth0  bridge"), "{text}");
        assert!(
            row[..end].ends_with("1410766580") || row.len() >= end,
            "{text}"
        );
        assert!(!row.contains("bridge1410766580"), "{text}");
        assert!(text.contains("  forwarded  12345"), "{text}");
    }
}
