//! The behaviour contract: every scenario runs against a real daemon in a
//! throwaway host namespace, through the real CLI, with real traffic. The
//! datapath is a parameter: `scenarios!` below instantiates every scenario
//! once per datapath (modules `ebpf`, `iptables`, `nftables`).
//!
//! One module per concern; the helpers every scenario uses live here.
use std::time::Duration;

use netd_tests::{daemon::Netd, daemon::netd_bin, wait_until};

mod api;
mod bad_input;
mod cluster;
mod dns;
mod ebpf_only;
mod faults;
mod gateway_modes;
mod instances;
mod ipv6;
mod ipv6_only;
mod modes;
mod networks;
mod nftables_only;
mod ports;
mod processes;
mod restart;

use bad_input::*;
use cluster::*;
use dns::*;
use faults::*;
use gateway_modes::*;
use instances::*;
use ipv6::*;
use ipv6_only::*;
use modes::*;
use networks::*;
use ports::*;
use processes::*;
use restart::*;

pub fn me() -> String {
    netd_bin().to_string_lossy().into_owned()
}

/// Starts an HTTP server (reports the client address) in a container.
pub fn serve_http(n: &Netd, name: &str, port: u16) {
    let listen = format!("0.0.0.0:{port}");
    n.ok(&["exec", name, "--", "true"]);
    let out = n
        .netd(&[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            &format!(
                "{} tool http-serve {listen} --name {name} >/dev/null 2>&1 & echo $!",
                me()
            ),
        ])
        .unwrap();
    assert!(out.status.success());
}

/// `netd run -d --name NAME --network NET -- sleep 600`.
pub fn sleeper(n: &Netd, name: &str, net: &str) {
    n.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "--",
        "sleep",
        "600",
    ]);
}

pub fn curl(n: &Netd, from: &str, url: &str) -> Option<String> {
    let o = n
        .netd(&["exec", from, "--", "curl", "-s", "-m", "3", url])
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn curl_wait(n: &Netd, from: &str, url: &str) -> String {
    let mut got = None;
    wait_until(Duration::from_secs(10), || {
        got = curl(n, from, url);
        got.is_some()
    });
    got.unwrap_or_else(|| panic!("curl {url} from {from} failed\n{}", n.log()))
}

pub fn ping(n: &Netd, from: &str, ip: &str) -> bool {
    n.netd(&["exec", from, "--", "ping", "-c", "1", "-W", "1", ip])
        .is_ok_and(|o| o.status.success())
}

pub fn outside_curl(n: &Netd, url: &str) -> Option<String> {
    let o =
        n.tb.exec(&n.tb.outside, &["curl", "-s", "-m", "3", url])
            .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn stats(n: &Netd) -> serde_json::Value {
    serde_json::from_str(&n.ok(&["stats", "--format", "json"])).unwrap()
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        scenarios!(@datapath ebpf: $($name),*);
        scenarios!(@datapath iptables: $($name),*);
        scenarios!(@datapath nftables: $($name),*);
    };
    (@datapath $dp:ident: $($name:ident),*) => {
        mod $dp {
            $(
                #[test]
                fn $name() {
                    if !netd_tests::require_root(concat!(stringify!($dp), "::", stringify!($name))) {
                        return;
                    }
                    super::$name(stringify!($dp));
                }
            )*
        }
    };
}

scenarios!(
    host_and_hairpin,
    four_modes,
    published_ports_and_egress,
    user_networks_isolation,
    bad_input_changes_nothing,
    kill9_and_reconcile,
    dns_names,
    dns_links_and_files,
    dns_forwarding,
    dns_port_taken,
    dns_fuzz,
    stop_kills_only_the_container,
    run_exit_codes_and_rm,
    second_daemon_refused,
    reboot_releases_containers,
    fault_injection_walk,
    cluster_node_routes,
    cluster_pod_traffic,
    gateway_modes,
    removed_containers_leave_no_flows,
    ipv6_control_plane,
    ipv6_traffic,
    ipv6_only_networks,
);
