//! The CLI: Docker's words and flags, a client of the daemon's API.
//! `run` and `exec` start the process themselves, inside the container's
//! namespaces (as `ip netns exec` does), after asking the daemon where the
//! container's network namespace and files are.
use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
};

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
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long = "ip-range")]
        ip_range: Option<String>,
        #[arg(long)]
        internal: bool,
        /// Driver options: icc, masquerade, mtu, bridge-name, host-binding-ipv4.
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
        /// A name for the container on this network (repeatable).
        #[arg(long = "alias", value_name = "NAME")]
        alias: Vec<String>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network.
    Disconnect { network: String, container: String },
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
            opt,
            name,
        } => {
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
                         "IpRange": ip_range, "Internal": internal, "Options": options }),
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
                println!(
                    "{:<14}{:<20}{:<10}{:<8}SUBNET",
                    "NETWORK ID", "NAME", "DRIVER", "SCOPE"
                );
                for n in v.as_array().into_iter().flatten() {
                    let id = n["Id"].as_str().unwrap_or_default();
                    println!(
                        "{:<14}{:<20}{:<10}{:<8}{}",
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
            alias,
            network,
            container,
        } => {
            c.post(
                &format!("/networks/{network}/connect"),
                &json!({ "Container": container, "Ip": ip, "Aliases": alias }),
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

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).context("NUL in a path")
}

/// Starts `cmd` inside the container described by `info` (its inspect
/// JSON): network namespace, a private mount namespace with the
/// container's /etc/hosts and /etc/resolv.conf, and its hostname.
pub fn command_in(info: &Value, cmd: &[String]) -> Result<Command> {
    if cmd.is_empty() {
        bail!("no command given: netd exec NAME -- CMD [ARG]...");
    }
    let sandbox = info["NetworkSettings"]["SandboxKey"]
        .as_str()
        .context("no SandboxKey")?;
    let host_mode = info["HostConfig"]["NetworkMode"] == "host";
    let ns = std::fs::File::open(sandbox)
        .with_context(|| format!("opening the container's network namespace {sandbox}"))?;
    let hosts = cstr(info["HostsPath"].as_str().unwrap_or_default())?;
    let resolv = cstr(info["ResolvConfPath"].as_str().unwrap_or_default())?;
    let hostname = info["Config"]["Hostname"]
        .as_str()
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    let (etc_hosts, etc_resolv, root) =
        (cstr("/etc/hosts")?, cstr("/etc/resolv.conf")?, cstr("/")?);
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    use std::os::fd::AsRawFd;
    // SAFETY: runs in the forked child before exec and only makes
    // async-signal-safe system calls on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET))?;
            if host_mode {
                return Ok(());
            }
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            for (src, dst) in [(&hosts, &etc_hosts), (&resolv, &etc_resolv)] {
                if !src.as_bytes().is_empty() {
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
            }
            if !hostname.is_empty() {
                check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            }
            Ok(())
        });
    }
    Ok(command)
}

fn inspect(c: &Client, name: &str) -> Result<Value> {
    c.get(&format!("/containers/{name}/json"))
}

pub fn exec(c: &Client, name: &str, cmd: &[String]) -> Result<i32> {
    let info = inspect(c, name)?;
    if info["State"]["Running"] != true {
        bail!("container {name} is not running");
    }
    let status = command_in(&info, cmd)?
        .status()
        .with_context(|| format!("running {:?} in {name}", cmd[0]))?;
    Ok(status.code().unwrap_or(128 + 9))
}

pub fn run(c: &Client, args: &CreateArgs, detach: bool, rm: bool, cmd: &[String]) -> Result<i32> {
    if cmd.is_empty() {
        bail!("no command given: netd run [OPTIONS] -- CMD [ARG]...");
    }
    let id = create(c, args)?;
    let info = inspect(c, &id)?;
    let mut command = command_in(&info, cmd)?;
    if detach {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = match command.spawn() {
            Ok(ch) => ch,
            Err(e) => {
                let _ = c.delete(&format!("/containers/{id}?force=1"));
                return Err(e).with_context(|| format!("starting {:?}", cmd[0]));
            }
        };
        c.post(
            &format!("/containers/{id}/pids"),
            &json!({ "Pid": child.id() }),
        )?;
        println!("{id}");
        return Ok(0);
    }
    let status = command.status();
    if rm {
        let _ = c.delete(&format!("/containers/{id}?force=1"));
    }
    let status = status.with_context(|| format!("running {:?}", cmd[0]))?;
    Ok(status.code().unwrap_or(128 + 9))
}

pub fn ps(c: &Client, all: bool) -> Result<()> {
    let v = c.get(if all {
        "/containers/json?all=1"
    } else {
        "/containers/json"
    })?;
    println!(
        "{:<14}{:<18}{:<10}{:<16}{:<16}PORTS",
        "CONTAINER ID", "NAMES", "STATUS", "NETWORK", "IP"
    );
    for ct in v.as_array().into_iter().flatten() {
        let id = ct["Id"].as_str().unwrap_or_default();
        let ports: Vec<&str> = ct["PortBindings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .collect();
        println!(
            "{:<14}{:<18}{:<10}{:<16}{:<16}{}",
            &id[..id.len().min(12)],
            ct["Name"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/'),
            ct["State"]["Status"].as_str().unwrap_or_default(),
            ct["HostConfig"]["NetworkMode"].as_str().unwrap_or_default(),
            ct["NetworkSettings"]["IPAddress"]
                .as_str()
                .unwrap_or_default(),
            ports.join(", ")
        );
    }
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
    println!("datapath: {}", v["Datapath"].as_str().unwrap_or("?"));
    if let Some(eps) = v["Endpoints"].as_object() {
        println!(
            "{:<24}{:<16}{:>12}{:>14}{:>12}{:>14}",
            "ENDPOINT", "NETWORK", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES"
        );
        for (k, s) in eps {
            println!(
                "{:<24}{:<16}{:>12}{:>14}{:>12}{:>14}",
                k,
                s["Network"].as_str().unwrap_or_default(),
                s["rx_packets"],
                s["rx_bytes"],
                s["tx_packets"],
                s["tx_bytes"]
            );
        }
    }
    if name.is_none() {
        for (title, key) in [("counters", "Counters"), ("drops by reason", "Drops")] {
            if let Some(m) = v[key].as_object() {
                println!("{title}:");
                for (k, n) in m {
                    println!("  {k:<24}{n}");
                }
            }
        }
        if let Some(n) = v["ConntrackEntries"].as_u64() {
            println!("conntrack entries: {n}");
        }
    }
    Ok(())
}
