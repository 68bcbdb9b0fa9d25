//! One daemon per state directory, exec root and socket; a reboot leaves
//! no container running; a daemon started with another datapath removes
//! the previous one's rules first.
use std::time::Duration;

use netd_tests::{HOST_IP, daemon::Netd, wait_until};

use super::*;

/// A second daemon on the same state dir, exec root or socket exits with
/// a message naming the first, and touches nothing; the first goes on.
pub fn second_daemon_refused(dp: &str) {
    let n = Netd::start(dp).unwrap();
    n.ok(&[
        "run", "-d", "--name", "c", "-p", "8080:80", "--", "sleep", "600",
    ]);
    let (links, files, rules) = (n.host_links(), n.netns_files(), n.rules());
    let first = n.daemon_pid().unwrap();
    let other = n.dir.join("other");
    let path = |p: &str| other.join(p).to_string_lossy().into_owned();
    let (state2, sock2, state3, run3) =
        (path("state"), path("s.sock"), path("state3"), path("run3"));
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        // The same everything.
        (vec![], "another netd daemon"),
        // Its own state and socket, the same exec root.
        (
            vec![("--state-dir", &state2), ("--socket", &sock2)],
            "another netd daemon",
        ),
        // Its own state and exec root, the same socket.
        (
            vec![("--state-dir", &state3), ("--exec-root", &run3)],
            "another process serves",
        ),
    ];
    for (overrides, needle) in cases {
        let out = n.daemon_command_with(&overrides).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "second daemon must exit: {err}");
        assert!(err.contains(needle), "{overrides:?}: {err}");
        if needle == "another netd daemon" {
            assert!(
                err.contains(&format!("pid {first}")),
                "names the first: {err}"
            );
        }
    }
    assert!(
        n.socket.exists(),
        "the first daemon's socket is still there"
    );
    assert!(
        n.ok(&["ps"]).contains("c"),
        "the first daemon still answers"
    );
    assert_eq!(n.host_links(), links);
    assert_eq!(n.netns_files(), files);
    assert_eq!(n.rules(), rules);
    let url = format!("http://{HOST_IP}:8080/");
    serve_http(&n, "c", 80);
    assert!(wait_until(Duration::from_secs(10), || outside_curl(
        &n, &url
    )
    .is_some()));
}

/// A simulated reboot (kill -9, every namespace and the exec root gone,
/// the state dir kept): no container is running afterwards, their ports
/// and addresses are free, and `start` brings one back.
pub fn reboot_releases_containers(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    n.ok(&[
        "network",
        "create",
        "--subnet",
        "10.88.0.0/24",
        "--gateway",
        "10.88.0.1",
        "rb",
    ]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "rb",
        "--ip",
        "10.88.0.9",
        "-p",
        "8080:80",
        "--",
        "sleep",
        "600",
    ]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "dyn",
        "--network",
        "rb",
        "--",
        "sleep",
        "600",
    ]);
    let dyn_ip = n.ip_of("dyn");
    n.stop_daemon(true);
    // The reboot: every process of the containers and every namespace
    // file goes, and so does the exec root (a tmpfs on a real host).
    for f in n.netns_files() {
        let ns = netd::netns::NetNs::at(n.dir.join("run/netns").join(&f));
        if let Ok(ino) = ns.inode() {
            for p in netd::netns::pids_in(ino) {
                // SAFETY: plain kill(2) of a container's process.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        ns.remove().unwrap();
    }
    let _ = nix::mount::umount2(&n.dir.join("run/netns"), nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_dir_all(n.dir.join("run")).unwrap();
    n.start_daemon().unwrap();
    let ps = n.ok(&["ps", "-a"]);
    assert!(!ps.contains("running"), "nothing runs after a reboot: {ps}");
    assert_eq!(n.inspect("web")["State"]["Status"], "exited");
    assert!(n.netns_files().is_empty(), "nothing rebuilt");
    // Ports and addresses are free.
    n.ok(&[
        "run",
        "-d",
        "--name",
        "taker",
        "--network",
        "rb",
        "--ip",
        &dyn_ip,
        "-p",
        "8080:80",
        "--",
        "sleep",
        "600",
    ]);
    // `start` rebuilds web (its static address is free), but not its port.
    let e = n.fails(&["start", "web"]);
    assert!(e.contains("already allocated"), "{e}");
    assert_eq!(n.inspect("web")["State"]["Status"], "exited");
    n.ok(&["rm", "-f", "taker"]);
    n.ok(&["start", "web"]);
    assert_eq!(n.ip_of("web"), "10.88.0.9");
    assert_eq!(n.inspect("web")["State"]["Status"], "running");
    serve_http(&n, "web", 80);
    let url = format!("http://{HOST_IP}:8080/");
    assert!(wait_until(Duration::from_secs(10), || outside_curl(
        &n, &url
    )
    .is_some()));
}

/// What a datapath leaves on the host while its daemon is down (live
/// restore), by datapath: iptables chains, the nftables table, eBPF pins.
fn artifacts(n: &Netd, dp: &str) -> bool {
    match dp {
        "iptables" => n.iptables_save().contains("NETD"),
        "nftables" => {
            let r = n.nft_ruleset();
            r.contains("table ip netd") || r.contains("table ip6 netd")
        }
        _ => ["links", "maps"].iter().any(|d| {
            std::fs::read_dir(n.dir.join("bpffs").join(d)).is_ok_and(|mut e| e.next().is_some())
        }),
    }
}

/// For every ordered pair of datapaths: a daemon started with the second
/// on the state of the first removes the first one's rules, table or pins,
/// and the published port works through the second.
#[test]
fn datapath_switch_removes_the_previous_one() {
    if !netd_tests::require_root("datapath_switch_removes_the_previous_one") {
        return;
    }
    const ALL: [&str; 3] = ["ebpf", "iptables", "nftables"];
    for from in ALL {
        let mut n = Netd::start(from).unwrap();
        n.ok(&[
            "run", "-d", "--name", "web", "-p", "8080:80", "--", "sleep", "600",
        ]);
        serve_http(&n, "web", 80);
        let url = format!("http://{HOST_IP}:8080/");
        assert!(wait_until(Duration::from_secs(10), || outside_curl(
            &n, &url
        )
        .is_some()));
        let mut prev = from;
        for to in ALL.iter().copied().filter(|d| *d != from).chain([from]) {
            n.stop_daemon(false);
            assert!(
                artifacts(&n, prev),
                "{prev} keeps working while the daemon is down"
            );
            n.datapath = to.to_string();
            n.start_daemon().unwrap();
            assert!(
                !artifacts(&n, prev) || prev == to,
                "{prev} -> {to}: the {prev} datapath's rules or pins are gone\n{}",
                n.log()
            );
            assert!(artifacts(&n, to), "{to} is in place");
            assert!(
                wait_until(Duration::from_secs(10), || outside_curl(&n, &url).is_some()),
                "{prev} -> {to}: the published port works\n{}",
                n.log()
            );
            prev = to;
        }
    }
}

/// A daemon where the host prepared nothing: under `ip netns exec`, which
/// remounts /sys (no bpffs at /sys/fs/bpf, no cgroup v2 mounted), with the
/// default `--bpffs` and no `--cgroup`. It mounts what it needs, says so,
/// and works.
#[test]
fn daemon_mounts_what_the_host_lacks() {
    if !netd_tests::require_root("daemon_mounts_what_the_host_lacks") {
        return;
    }
    let mut n = Netd::start("ebpf").unwrap();
    n.stop_daemon(false);
    let dir = n.dir.join("bare");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("netd.sock");
    let ns_name =
        n.tb.host
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut daemon = std::process::Command::new("ip")
        .args(["netns", "exec", &ns_name])
        .arg(netd_tests::daemon::netd_bin())
        .args(["daemon", "--datapath", "ebpf", "--cleanup-on-exit"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--exec-root")
        .arg(dir.join("run"))
        .arg("--socket")
        .arg(&sock)
        .args(["--dns", &netd_tests::OUTSIDE_IP.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    n.socket = sock.clone();
    let log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    // The cgroup this daemon makes at the root of the hierarchy goes even
    // if the test fails.
    struct CgroupGuard(std::path::PathBuf);
    impl Drop for CgroupGuard {
        fn drop(&mut self) {
            netd_tests::daemon::remove_cgroup_tree(&self.0);
        }
    }
    let up = wait_until(Duration::from_secs(30), || {
        n.netd(&["network", "ls"]).is_ok_and(|o| o.status.success())
    });
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/state.json")).unwrap_or_default())
            .unwrap_or_default();
    let _guard = CgroupGuard(netd::cgroup::cgroup2_root().unwrap().join(format!(
        "netd-{}",
        state["instance"].as_str().unwrap_or("none")
    )));
    assert!(up, "the daemon came up under ip netns exec:\n{}", log());
    let l = log();
    assert!(l.contains("mounted a bpffs at /sys/fs/bpf"), "{l}");
    assert!(l.contains("cgroup v2"), "{l}");
    n.ok(&[
        "run", "-d", "--name", "web", "-p", "8080:80", "--", "sleep", "600",
    ]);
    serve_http(&n, "web", 80);
    let url = format!("http://{HOST_IP}:8080/");
    assert!(
        wait_until(Duration::from_secs(10), || outside_curl(&n, &url).is_some()),
        "{}",
        log()
    );
    // SAFETY: signalling our own child (ip exec'd into netd).
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(status.success(), "clean exit: {status}\n{}", log());
}
