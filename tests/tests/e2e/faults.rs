//! Crash safety under fault injection: every step of every multi-step
//! operation, walked with a kill -9 of the daemon at exactly that step
//! (`NETD_FAULT=OP/STEP`, debug builds). After a restart the state is the
//! one before the operation or the one after it, never a mix; the kernel
//! matches it (no leaked or missing link, namespace, cgroup or rule); and
//! nothing an operation had committed to remove comes back.
use std::collections::BTreeSet;

use netd_tests::daemon::Netd;

type Cmds = &'static [&'static [&'static str]];

struct Op {
    name: &'static str,
    setup: Cmds,
    run: &'static [&'static str],
    reset: Cmds,
}

const NET: &[&str] = &[
    "network",
    "create",
    "--subnet",
    "10.77.0.0/24",
    "-o",
    "bridge-name=fbr0",
    "fnet",
];
const CREATE: &[&str] = &["create", "--name", "fc", "-p", "8090:80"];
const RUN: &[&str] = &[
    "run", "-d", "--name", "fc", "-p", "8090:80", "--", "sleep", "600",
];
const RM_FC: &[&str] = &["rm", "-f", "fc"];
const RM_NET: &[&str] = &["network", "rm", "fnet"];

const OPS: &[Op] = &[
    Op {
        name: "network-create",
        setup: &[],
        run: NET,
        reset: &[RM_NET],
    },
    Op {
        name: "network-rm",
        setup: &[NET],
        run: RM_NET,
        reset: &[RM_NET],
    },
    Op {
        name: "create",
        setup: &[],
        run: CREATE,
        reset: &[RM_FC],
    },
    Op {
        name: "start",
        setup: &[RUN, &["stop", "fc"]],
        run: &["start", "fc"],
        reset: &[RM_FC],
    },
    Op {
        name: "stop",
        setup: &[RUN],
        run: &["stop", "fc"],
        reset: &[RM_FC],
    },
    Op {
        name: "rm",
        setup: &[RUN],
        run: RM_FC,
        reset: &[RM_FC],
    },
    Op {
        name: "connect",
        setup: &[NET, CREATE],
        run: &["network", "connect", "fnet", "fc"],
        reset: &[RM_FC, RM_NET],
    },
    Op {
        name: "disconnect",
        setup: &[NET, CREATE, &["network", "connect", "fnet", "fc"]],
        run: &["network", "disconnect", "fnet", "fc"],
        reset: &[RM_FC, RM_NET],
    },
];

/// What the daemon says exists, and what the kernel has.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Snapshot {
    /// (name, status) of every container, and its networks.
    containers: BTreeSet<String>,
    networks: BTreeSet<String>,
    /// Kernel: bridges, the number of netd veths, namespaces, cgroups, rules.
    bridges: BTreeSet<String>,
    veths: usize,
    namespaces: usize,
    cgroups: usize,
    rules: BTreeSet<String>,
}

fn snapshot(n: &Netd) -> Snapshot {
    // `inspect` prints `[]` (and fails) when fc does not exist.
    let out = n.netd(&["inspect", "fc"]).unwrap();
    let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut containers = BTreeSet::new();
    for c in ps.as_array().into_iter().flatten() {
        let nets: Vec<&String> = c["NetworkSettings"]["Networks"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        containers.insert(format!(
            "{} {} {:?} {}",
            c["Name"], c["State"]["Status"], nets, c["NetworkSettings"]["IPAddress"]
        ));
    }
    let networks = n
        .ok(&["network", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    let links = n.host_links();
    let cgroups = std::fs::read_dir(&n.cgroup)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("netd-"))
        .map(|e| {
            std::fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|c| c.file_type().is_ok_and(|t| t.is_dir()))
                .count()
        })
        .sum();
    Snapshot {
        containers,
        networks,
        bridges: links
            .iter()
            .filter(|l| l.starts_with("fbr") || l.starts_with("netd"))
            .cloned()
            .collect(),
        veths: links.iter().filter(|l| l.starts_with("vnd")).count(),
        namespaces: n.netns_files().len(),
        cgroups,
        // Sorted: the order of networks' rules follows their random ids.
        rules: n
            .ruleset()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
            .map(|l| {
                l.split('"')
                    .map(|w| if w.starts_with("vnd") { "vnd*" } else { w })
                    .collect::<Vec<_>>()
                    .join("\"")
            })
            .collect(),
    }
}

fn all_ok(n: &Netd, cmds: Cmds) {
    for c in cmds {
        n.ok(c);
    }
}

fn best_effort(n: &Netd, cmds: Cmds) {
    for c in cmds {
        // Undoing what may or may not have happened: failures are expected.
        let _ = n.netd(c);
    }
}

/// Walks every fault point of every operation on one datapath.
pub fn fault_injection_walk(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    let baseline = snapshot(&n);
    let trace = n.dir.join("fault-trace");
    let mut walked = 0;
    for op in OPS {
        // Discover the steps: run the operation once with tracing on.
        n.stop_daemon(false);
        n.start_daemon_with(&[("NETD_FAULT_TRACE", trace.to_str().unwrap())])
            .unwrap();
        all_ok(&n, op.setup);
        let before = snapshot(&n);
        std::fs::write(&trace, "").unwrap();
        n.ok(op.run);
        let after = snapshot(&n);
        let steps: Vec<String> = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with(&format!("{}/", op.name))),
            "{}: no fault point traced: {steps:?}",
            op.name
        );
        best_effort(&n, op.reset);
        assert_eq!(snapshot(&n), baseline, "{}: reset", op.name);
        n.stop_daemon(false);
        n.start_daemon().unwrap();
        // The first save of a removal is its point of no return.
        let committed_at = steps.iter().position(|s| s.ends_with("/save"));
        for (i, step) in steps.iter().enumerate() {
            all_ok(&n, op.setup);
            assert_eq!(snapshot(&n), before, "{step}: setup");
            n.stop_daemon(false);
            n.start_daemon_with(&[("NETD_FAULT", step)]).unwrap();
            let _ = n.netd(op.run);
            let status = n.reap_daemon();
            assert!(
                status.is_some_and(|s| !s.success()),
                "{step}: the daemon should have been killed there\n{}",
                n.log()
            );
            n.start_daemon().unwrap();
            let got = snapshot(&n);
            assert!(
                got == before || got == after,
                "{dp} {step}: the state and kernel after a crash are neither the state before nor the one after:\n got    {got:?}\n before {before:?}\n after  {after:?}\n{}",
                n.log()
            );
            let removal = ["network-rm", "stop", "rm", "disconnect"].contains(&op.name);
            if removal && committed_at.is_some_and(|c| i > c) {
                assert_eq!(
                    got, after,
                    "{step}: a committed removal is finished, not undone"
                );
            }
            best_effort(&n, op.reset);
            assert_eq!(snapshot(&n), baseline, "{step}: reset");
            walked += 1;
        }
    }
    eprintln!(
        "{dp}: walked {walked} fault points over {} operations",
        OPS.len()
    );
}
