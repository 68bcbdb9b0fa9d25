use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use netd::{
    api::Client,
    cli::{self, CreateArgs, NetworkCmd},
    config::{self, Config},
    datapath::Kind,
    dns::tools as dns,
};

#[derive(Parser)]
#[command(
    name = "netd",
    version,
    about = "Container networking with an eBPF datapath"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(
        short = 'H',
        long = "socket",
        global = true,
        env = "NETD_SOCKET",
        default_value = "/run/netd/netd.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Daemon(DaemonArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// The other nodes of a cluster: routes to their pods, without NAT.
    #[command(subcommand)]
    Node(cli::NodeCmd),
    /// Create a container (its network namespace and interfaces).
    Create(CreateArgs),
    /// Create a container and run a command in it.
    Run {
        #[command(flatten)]
        args: CreateArgs,
        /// Run in the background and print the container ID.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Remove the container when the command exits.
        #[arg(long)]
        rm: bool,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run a command in a running container.
    Exec {
        name: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List containers.
    Ps {
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Show containers as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List a container's port bindings.
    Port { name: String },
    /// Start a stopped container again: its networking, then its command.
    Start { name: String },
    /// Stop a container: SIGTERM its processes (SIGKILL after 3 s), remove
    /// its networking.
    Stop { name: String },
    /// Send a signal to a container's main process.
    Kill {
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        name: String,
    },
    /// Wait until a container stops; print its main process's exit code.
    Wait { name: String },
    /// Print the output of a container's detached main process.
    Logs { name: String },
    /// Remove a container.
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Datapath counters: per-endpoint traffic, drops by reason, NAT and conntrack.
    Stats {
        /// Only this container's endpoints.
        name: Option<String>,
        #[arg(long)]
        format: Option<String>,
    },
    /// Benchmark the datapaths side by side (throwaway namespaces).
    Bench {
        /// Comma-separated: ebpf, nftables, iptables.
        #[arg(long, default_value = "ebpf,nftables,iptables")]
        datapaths: String,
        /// Comma-separated: c2c, dnat, c2c6, dnat6 (their IPv6 variants,
        /// netd's datapaths only), egress, scaling, control, bpf,
        /// node2node, xdp.
        #[arg(
            long,
            default_value = "c2c,dnat,c2c6,dnat6,egress,scaling,control,bpf,node2node,xdp"
        )]
        scenarios: String,
        /// CPU placements of each request/response load, comma-separated:
        /// same (client and servers on CPU 0), cross (servers on CPU 0,
        /// client on CPU 1), free (unpinned). The first one leads the
        /// report and the targets.
        #[arg(long, default_value = "same,cross,free")]
        cpus: String,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Other published ports for the scaling scenario.
        #[arg(long, default_value = "0,1000,10000")]
        ports: String,
        #[arg(long, default_value = "bench-report")]
        out: PathBuf,
        /// One short round per scenario (CI smoke test).
        #[arg(long)]
        quick: bool,
        /// Real peers, comma-separated: docker (Docker's default bridge),
        /// podman (Podman with netavark), docker+netd (Docker on netd's
        /// plugin, per datapath); `auto`: docker and podman where
        /// installed (a missing one is reported); `none`.
        #[arg(long, default_value = "auto")]
        peers: String,
        /// Older spelling of the Docker peers: yes = docker,docker+netd
        /// (required), no = without any Docker peer, auto = as --peers.
        #[arg(long, value_parser = ["auto", "yes", "no"])]
        docker: Option<String>,
    },
    /// Build a throwaway topology and show netd at work.
    Demo,
    /// Traffic tools used by tests, the demo and benchmarks.
    #[command(hide = true, subcommand)]
    Tool(Tool),
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// ebpf (default), iptables (the Docker-compatible baseline) or nftables
    /// (the same rules as one nftables table with sets and maps).
    #[arg(long)]
    datapath: Option<Kind>,
    /// Masquerade source ports of the ebpf datapath, MIN-MAX.
    #[arg(long)]
    nat_port_range: Option<String>,
    /// Conntrack table size of the ebpf datapath (two entries per flow).
    #[arg(long)]
    conntrack_size: Option<u32>,
    /// cgroup v2 directory whose processes reach published ports from the
    /// host directly (ebpf datapath; default: the cgroup v2 root).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// The host's uplink interface (default: the default route's).
    #[arg(long)]
    uplink: Option<String>,
    #[arg(long, default_value = "/var/lib/netd")]
    state_dir: PathBuf,
    /// Runtime files: container namespaces, hosts/resolv.conf.
    #[arg(long, default_value = "/run/netd")]
    exec_root: PathBuf,
    #[arg(long, default_value = "/sys/fs/bpf/netd")]
    bpffs: PathBuf,
    /// TOML file with daemon.json equivalents (bip, mtu, datapath, uplink, default-address-pools).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Default bridge address, e.g. 172.17.0.1/16.
    #[arg(long)]
    bip: Option<String>,
    #[arg(long)]
    mtu: Option<u32>,
    /// Device name of the default bridge network.
    #[arg(long, default_value = "netd0")]
    bridge_name: String,
    /// Remove all networking netd made when the daemon exits.
    #[arg(long)]
    cleanup_on_exit: bool,
    /// Enter this network namespace (a bind-mounted netns file) before starting.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Upstream DNS server for containers (repeatable); default: the
    /// host's resolv.conf.
    #[arg(long = "dns", value_name = "IP")]
    dns: Vec<IpAddr>,
    /// Serve Docker's network driver plugin protocol as NAME, at
    /// /run/docker/plugins/NAME.sock (`docker network create -d NAME`).
    #[arg(long, value_name = "NAME")]
    docker_plugin: Option<String>,
    /// The cluster's pod range: traffic between containers and these
    /// addresses is never masqueraded (pods see each other's addresses).
    #[arg(long = "cluster-cidr", value_name = "CIDR")]
    cluster_cidr: Option<String>,
    /// IPv6 on the default bridge (needs --fixed-cidr-v6).
    #[arg(long)]
    ipv6: bool,
    /// The default bridge's IPv6 subnet.
    #[arg(long = "fixed-cidr-v6", value_name = "CIDR")]
    fixed_cidr_v6: Option<String>,
    /// Serve published ports on [::1] with a userland proxy in the daemon
    /// (iptables and nftables datapaths; as Docker's docker-proxy).
    /// Default true; `--userland-proxy=false`: [::1] reaches nothing there.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    userland_proxy: Option<bool>,
}

#[derive(Subcommand)]
enum Tool {
    HttpServe {
        listen: SocketAddr,
        #[arg(long, default_value = "netd")]
        name: String,
    },
    UdpEcho {
        listen: SocketAddr,
        #[arg(long, default_value = "netd")]
        name: String,
    },
    RrServer {
        listen: SocketAddr,
    },
    RrClient {
        to: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    CrrClient {
        to: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    UdpRrClient {
        to: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    UdpSend {
        to: SocketAddr,
        msg: String,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Reads each connection to its end, then answers and closes.
    EofServe {
        listen: SocketAddr,
        #[arg(long, default_value = "netd")]
        name: String,
    },
    /// Sends MSG, half-closes, prints the answer.
    EofSend {
        to: SocketAddr,
        msg: String,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Loads the embedded eBPF object (nothing attached) and prints each
    /// program's size: instructions, verified instructions, JITed bytes.
    ProgSizes {
        /// Another build of netd's eBPF object instead (an older netd's
        /// `target/ebpf/bpfel-unknown-none/release/netd-ebpf`), to compare.
        #[arg(long)]
        object: Option<std::path::PathBuf>,
    },
    /// One DNS query; prints the status and the answers.
    DnsQuery {
        server: IpAddr,
        name: String,
        #[arg(default_value = "A")]
        qtype: String,
        #[arg(long, default_value_t = 53)]
        port: u16,
        #[arg(long)]
        tcp: bool,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// A DNS server with fixed A records (NAME=IP), NXDOMAIN otherwise.
    DnsServe {
        listen: SocketAddr,
        #[arg(long = "record")]
        records: Vec<String>,
    },
    /// One client, one query in flight: queries/s and latency p50/p99.
    DnsBench {
        server: SocketAddr,
        name: String,
        #[arg(long, default_value = "A")]
        qtype: String,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// Random and mutated DNS messages over UDP and TCP.
    DnsFuzz {
        server: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        count: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 200)]
        tcp_connections: u32,
    },
}

fn main() {
    // A container runtime running netd as a CNI plugin: no arguments,
    // the request in the environment and on stdin (see netd::cni).
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(netd::cni::main());
    }
    let cli = Cli::parse();
    let default_filter = match cli.cmd {
        Cmd::Demo => "info,netd_ebpf=debug",
        _ => "info",
    };
    netd::logging::init(default_filter);
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn daemon(socket: PathBuf, a: DaemonArgs) -> Result<i32> {
    if let Some(name) = &a.docker_plugin {
        netd::plugin::docker::check_name(name)?;
    }
    if let Some(ns) = &a.netns {
        // Before any thread exists: the whole daemon lives in `ns`.
        let f =
            std::fs::File::open(ns).with_context(|| format!("opening netns {}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", ns.display()))?;
    }
    let file = match &a.config {
        Some(p) => config::File::load(p)?,
        None => config::File::default(),
    };
    let bip_explicit = a.bip.is_some() || file.bip.is_some();
    let bip = a.bip.or(file.bip).unwrap_or_else(|| "172.17.0.1/16".into());
    let config::Pools {
        v4: pools4,
        v6: pools6,
    } = match &file.default_address_pools {
        Some(raw) => config::split_pools(raw)?,
        None => config::Pools { v4: None, v6: None },
    };
    let cfg = Config {
        datapath: a.datapath.or(file.datapath).unwrap_or(Kind::Ebpf),
        uplink: a.uplink.or(file.uplink),
        state_dir: a.state_dir,
        exec_root: a.exec_root,
        socket,
        bpffs: a.bpffs,
        bip: config::parse_bip(&bip)?,
        bip_explicit,
        pools: pools4.unwrap_or_else(netd::ipam::default_pools),
        pools6: pools6.unwrap_or_default(),
        default_ipv6: match (
            a.ipv6 || file.ipv6.unwrap_or(false),
            a.fixed_cidr_v6.or(file.fixed_cidr_v6),
        ) {
            (false, None) => None,
            (true, Some(c)) => {
                let net: ipnet::Ipv6Net = c
                    .parse()
                    .with_context(|| format!("invalid --fixed-cidr-v6 {c:?}"))?;
                netd::ipam6::check_subnet(&net)?;
                Some(net)
            }
            (true, None) => {
                anyhow::bail!("--ipv6 on the default bridge needs --fixed-cidr-v6 CIDR")
            }
            (false, Some(_)) => anyhow::bail!("--fixed-cidr-v6 needs --ipv6"),
        },
        mtu: a.mtu.or(file.mtu).unwrap_or(1500),
        cleanup_on_exit: a.cleanup_on_exit,
        default_bridge: a.bridge_name,
        nat_ports: config::parse_port_range(
            &a.nat_port_range
                .or(file.nat_port_range)
                .unwrap_or_else(|| "61000-65535".into()),
        )?,
        ct_entries: a
            .conntrack_size
            .or(file.conntrack_size)
            .unwrap_or(netd_common::DEFAULT_CT_ENTRIES),
        cgroup: a.cgroup.or(file.cgroup),
        dns: if a.dns.is_empty() {
            file.dns.unwrap_or_default()
        } else {
            a.dns
        },
        docker_plugin: a.docker_plugin,
        cluster_cidr: match a.cluster_cidr.or(file.cluster_cidr) {
            Some(c) => Some(
                c.parse::<netd::ipam::Cidr>()
                    .with_context(|| format!("invalid --cluster-cidr {c:?}"))?,
            ),
            None => None,
        },
        userland_proxy: a.userland_proxy.or(file.userland_proxy).unwrap_or(true),
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(netd::daemon::run(cfg))?;
    Ok(0)
}

fn run(cli: Cli) -> Result<i32> {
    let c = Client::new(cli.socket.clone());
    match cli.cmd {
        Cmd::Daemon(a) => daemon(cli.socket, a),
        Cmd::Network(n) => cli::network(&c, n),
        Cmd::Node(n) => cli::node(&c, n),
        Cmd::Create(a) => {
            println!("{}", cli::create(&c, &a)?);
            Ok(0)
        }
        Cmd::Run {
            args,
            detach,
            rm,
            cmd,
        } => cli::run(&c, &args, detach, rm, &cmd),
        Cmd::Exec { name, cmd } => cli::exec(&c, &name, &cmd),
        Cmd::Ps { all } => cli::ps(&c, all).map(|_| 0),
        Cmd::Inspect { names } => cli::inspect_cmd(&c, &names),
        Cmd::Port { name } => cli::port(&c, &name).map(|_| 0),
        Cmd::Start { name } => c
            .post(&format!("/containers/{name}/start"), &serde_json::json!({}))
            .map(|_| {
                println!("{name}");
                0
            }),
        Cmd::Stop { name } => c
            .post(&format!("/containers/{name}/stop"), &serde_json::json!({}))
            .map(|_| {
                println!("{name}");
                0
            }),
        Cmd::Kill { signal, name } => c
            .post(
                &format!("/containers/{name}/kill?signal={signal}"),
                &serde_json::json!({}),
            )
            .map(|_| {
                println!("{name}");
                0
            }),
        Cmd::Wait { name } => c
            .post(&format!("/containers/{name}/wait"), &serde_json::json!({}))
            .map(|v| {
                println!("{}", v["StatusCode"]);
                0
            }),
        Cmd::Logs { name } => c.get(&format!("/containers/{name}/logs")).map(|v| {
            print!("{}", v.as_str().unwrap_or_default());
            0
        }),
        Cmd::Rm { force, names } => {
            let mut code = 0;
            for n in names {
                let q = if force { "?force=1" } else { "" };
                match c.delete(&format!("/containers/{n}{q}")) {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        Cmd::Stats { name, format } => {
            cli::stats(&c, name.as_deref(), format.as_deref()).map(|_| 0)
        }
        Cmd::Bench {
            datapaths,
            scenarios,
            cpus,
            rounds,
            duration,
            ports,
            out,
            quick,
            peers,
            docker,
        } => {
            let list = |s: &str| -> Vec<String> {
                s.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            };
            let ports = list(&ports)
                .iter()
                .map(|p| {
                    p.parse::<u32>()
                        .with_context(|| format!("invalid --ports entry {p:?}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let scenarios = list(&scenarios);
            for s in &scenarios {
                if !netd::bench::ALL_SCENARIOS.contains(&s.as_str()) {
                    anyhow::bail!(
                        "unknown scenario {s:?}: expected one of {}",
                        netd::bench::ALL_SCENARIOS.join(", ")
                    );
                }
            }
            let cpus = list(&cpus)
                .iter()
                .map(|c| c.parse::<netd::bench::Placement>())
                .collect::<Result<Vec<_>>>()?;
            let (mut peers, mut optional) = match peers.as_str() {
                "auto" => {
                    let l = vec!["docker".to_string(), "podman".to_string()];
                    (l.clone(), l)
                }
                "none" => (vec![], vec![]),
                l => (list(l), vec![]),
            };
            for p in &peers {
                if !netd::bench::PEER_KINDS.contains(&p.as_str()) {
                    anyhow::bail!(
                        "unknown peer {p:?}: expected {}, auto or none",
                        netd::bench::PEER_KINDS.join(", ")
                    );
                }
            }
            match docker.as_deref() {
                Some("yes") => {
                    peers.retain(|p| !p.starts_with("docker"));
                    peers.extend(["docker".to_string(), "docker+netd".to_string()]);
                    optional.retain(|p| !p.starts_with("docker"));
                }
                Some("no") => peers.retain(|p| !p.starts_with("docker")),
                _ => {}
            }
            netd::bench::run(netd::bench::Opts {
                datapaths: list(&datapaths),
                peers,
                optional_peers: optional,
                cpus,
                scenarios,
                rounds,
                duration,
                ports,
                out,
                quick,
            })
            .map(|_| 0)
        }
        Cmd::Demo => netd::demo::run().map(|_| 0),
        Cmd::Tool(Tool::HttpServe { listen, name }) => {
            netd::tool::http_serve(listen, &name).map(|_| 0)
        }
        Cmd::Tool(Tool::UdpEcho { listen, name }) => netd::tool::udp_echo(listen, &name).map(|_| 0),
        Cmd::Tool(Tool::RrServer { listen }) => netd::tool::rr_server(listen).map(|_| 0),
        Cmd::Tool(Tool::RrClient { to, secs }) => netd::tool::rr_client(to, secs).map(|_| 0),
        Cmd::Tool(Tool::CrrClient { to, secs }) => netd::tool::crr_client(to, secs).map(|_| 0),
        Cmd::Tool(Tool::UdpRrClient { to, secs }) => netd::tool::udp_rr_client(to, secs).map(|_| 0),
        Cmd::Tool(Tool::UdpSend {
            to,
            msg,
            timeout_ms,
        }) => netd::tool::udp_send(to, &msg, timeout_ms).map(|_| 0),
        Cmd::Tool(Tool::EofServe { listen, name }) => {
            netd::tool::eof_serve(listen, &name).map(|_| 0)
        }
        Cmd::Tool(Tool::EofSend {
            to,
            msg,
            timeout_ms,
        }) => netd::tool::eof_send(to, &msg, timeout_ms).map(|_| 0),
        Cmd::Tool(Tool::ProgSizes { object }) => {
            let p = match object {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    netd::bpf::Programs::load_object(
                        &bytes,
                        netd::bpf::BpfLogLevel::Off,
                        None,
                        netd_common::DEFAULT_CT_ENTRIES,
                    )?
                }
                None => netd::bpf::Programs::load(netd::bpf::BpfLogLevel::Off)?,
            };
            println!(
                "{:<20} {:>6} {:>9} {:>7}",
                "program", "insns", "verified", "jited"
            );
            for s in p.sizes()? {
                println!(
                    "{:<20} {:>6} {:>9} {:>7}",
                    s.name, s.insns, s.verified_insns, s.jited_bytes
                );
            }
            Ok(0)
        }
        Cmd::Tool(Tool::DnsQuery {
            server,
            name,
            qtype,
            port,
            tcp,
            timeout_ms,
        }) => dns::dns_query(
            SocketAddr::new(server, port),
            &name,
            &qtype,
            tcp,
            timeout_ms,
        )
        .map(|_| 0),
        Cmd::Tool(Tool::DnsServe { listen, records }) => {
            dns::dns_serve(listen, &records).map(|_| 0)
        }
        Cmd::Tool(Tool::DnsBench {
            server,
            name,
            qtype,
            secs,
        }) => dns::dns_bench(server, &name, &qtype, secs).map(|_| 0),
        Cmd::Tool(Tool::DnsFuzz {
            server,
            count,
            seed,
            tcp_connections,
        }) => dns::dns_fuzz(server, count, seed, tcp_connections).map(|_| 0),
    }
}
