//! `netd demo`: builds a throwaway host/outside topology with two
//! containers on a bridge, attaches netd's programs, sends real traffic and
//! prints what the kernel counted.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    bpf::{self, BpfLogLevel, Programs},
    testbed::{self, HOST_IP, OUTSIDE_IP, Testbed, UPLINK},
};

pub fn run() -> Result<()> {
    if !testbed::is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    let me = std::env::current_exe()?;
    let me = me.to_str().context("non-UTF-8 path")?;
    let rt = tokio::runtime::Runtime::new()?;
    let _rt = rt.enter();

    println!("== topology (throwaway namespaces; the machine's own is untouched)");
    let mut tb = Testbed::new("demo")?;
    let gw = Ipv4Addr::new(172, 17, 0, 1);
    tb.bridge("netd0", gw, 16)?;
    let c1 = tb.container(
        "c1",
        "netd0",
        "veth-c1",
        Ipv4Addr::new(172, 17, 0, 2),
        16,
        gw,
    )?;
    let c2 = tb.container(
        "c2",
        "netd0",
        "veth-c2",
        Ipv4Addr::new(172, 17, 0, 3),
        16,
        gw,
    )?;
    println!(
        "host    {}  uplink {UPLINK} {HOST_IP}/24",
        tb.host.path().display()
    );
    println!("outside {}  {OUTSIDE_IP}/24", tb.outside.path().display());
    println!(
        "c1      {}  eth0 172.17.0.2/16 via bridge netd0 (veth-c1)",
        c1.path().display()
    );
    println!(
        "c2      {}  eth0 172.17.0.3/16 via bridge netd0 (veth-c2)",
        c2.path().display()
    );
    tb.spawn(
        &c2,
        &[me, "tool", "http-serve", "0.0.0.0:80", "--name", "c2"],
    )?;

    println!("\n== load and attach (TCX)");
    let mut progs = Programs::load(BpfLogLevel::Debug)?;
    progs.spawn_logger()?;
    let l1 = progs.attach_ingress(bpf::FROM_CONTAINER, &tb.host, "veth-c1")?;
    let l2 = progs.attach_ingress(bpf::FROM_WORLD, &tb.host, UPLINK)?;
    println!("host$ bpftool link show   (type 11 = tcx; Debian's bpftool predates the name)");
    println!(
        "{}",
        tb.ok(&tb.host, &["bpftool", "link", "show"])?.trim_end()
    );
    let progs_shown = tb.ok(&tb.host, &["bpftool", "prog", "show"])?;
    for l in progs_shown.lines().filter(|l| l.contains("from_")) {
        println!("{l}");
    }

    println!("\n== traffic");
    let ping = tb.ok(
        &c1,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "172.17.0.3"],
    )?;
    println!(
        "c1$ ping 172.17.0.3: {}",
        ping.lines().find(|l| l.contains("packets")).unwrap_or("")
    );
    testbed::wait_until(Duration::from_secs(5), || {
        tb.exec(&c1, &["curl", "-s", "-m", "1", "http://172.17.0.3/"])
            .is_ok_and(|o| o.status.success())
    });
    let body = tb.ok(&c1, &["curl", "-s", "-m", "5", "http://172.17.0.3/"])?;
    println!("c1$ curl http://172.17.0.3/ -> {}", body.trim());
    let ping = tb.ok(
        &tb.host,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &OUTSIDE_IP.to_string(),
        ],
    )?;
    println!(
        "host$ ping {OUTSIDE_IP}: {}",
        ping.lines().find(|l| l.contains("packets")).unwrap_or("")
    );
    // Let the logger task drain the ring buffer.
    std::thread::sleep(Duration::from_millis(200));

    println!("\n== counters read from the kernel (per-CPU maps, summed)");
    for (name, v) in progs.counters()? {
        println!("{name:<24} {v}");
    }
    let drops: u64 = progs.drops()?.values().sum();
    println!("{:<24} {drops}", "drops (all reasons)");

    progs.detach(bpf::FROM_CONTAINER, l1)?;
    progs.detach(bpf::FROM_WORLD, l2)?;
    println!("\n== detached; removing the topology");
    drop(tb);
    Ok(())
}
