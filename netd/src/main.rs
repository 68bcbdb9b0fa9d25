use std::net::SocketAddr;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netd",
    version,
    about = "Container networking with an eBPF datapath"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a throwaway topology, attach the programs, send traffic, print counters.
    Demo,
    /// Traffic tools used by tests, the demo and benchmarks.
    #[command(hide = true, subcommand)]
    Tool(Tool),
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
    UdpSend {
        to: SocketAddr,
        msg: String,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    // The demo shows the programs' own aya-log output (debug level).
    let default_filter = match cli.cmd {
        Cmd::Demo => "info,netd_ebpf=debug",
        _ => "info",
    };
    netd::logging::init(default_filter);
    if let Err(e) = run(cli) {
        eprintln!("netd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Demo => netd::demo::run(),
        Cmd::Tool(Tool::HttpServe { listen, name }) => netd::tool::http_serve(listen, &name),
        Cmd::Tool(Tool::UdpEcho { listen, name }) => netd::tool::udp_echo(listen, &name),
        Cmd::Tool(Tool::UdpSend {
            to,
            msg,
            timeout_ms,
        }) => netd::tool::udp_send(to, &msg, timeout_ms),
    }
}
