//! Bad input is refused with a clear message and changes nothing.

use netd_tests::daemon::{Netd, netd_bin};

pub fn bad_input_changes_nothing(dp: &str) {
    let n = Netd::start(dp).unwrap();
    n.ok(&["network", "create", "--subnet", "10.50.0.0/24", "taken"]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "taken",
        "--ip",
        "10.50.0.10",
        "-p",
        "8080:80",
        "--",
        "sleep",
        "600",
    ]);
    let (links, files, rules) = (n.host_links(), n.netns_files(), n.ruleset());
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["network", "create", "--subnet", "10.0.0/24", "x"],
            "10.0.0/24",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.60.0.0/24",
                "--gateway",
                "10.61.0.1",
                "x",
            ],
            "outside",
        ),
        (
            &["network", "create", "--subnet", "10.50.0.0/16", "x"],
            "overlaps",
        ),
        (&["network", "create", "taken"], "already exists"),
        (&["network", "create", "-o", "icc=maybe", "x"], "icc"),
        (&["network", "rm", "nosuchnet"], "not found"),
        (&["network", "rm", "taken"], "active endpoints"),
        (&["network", "connect", "nosuchnet", "c1"], "not found"),
        (&["create", "--name", "c1"], "already in use"),
        (&["create", "--network", "nosuchnet"], "not found"),
        (&["create", "-p", "8080:80"], "already allocated"),
        (&["create", "-p", "80:x"], "80:x"),
        (&["create", "-p", "0:80"], "0"),
        (&["create", "-p", "70000:80"], "70000"),
        (&["create", "--network", "none", "-p", "80"], "none"),
        (
            &["create", "--network", "container:c1", "-p", "80"],
            "Conflicting options",
        ),
        (
            &["create", "--network", "taken", "--ip", "10.51.0.5"],
            "outside the subnet",
        ),
        (
            &["create", "--network", "taken", "--ip", "10.50.0.10"],
            "in use",
        ),
        (&["exec", "nosuch", "--", "true"], "no such container"),
        // What would reach the kernel, a file or another tool unchecked.
        (
            &["network", "create", "-o", "bridge-name=eth+", "x"],
            "invalid bridge name",
        ),
        (
            &["network", "create", "--subnet", "127.1.0.0/24", "x"],
            "loopback",
        ),
        (
            &["network", "create", "--subnet", "10.70.0.1/32", "x"],
            "no room",
        ),
        (
            &["network", "create", "--subnet", "169.254.3.0/24", "x"],
            "link-local",
        ),
        (
            &["create", "--hostname", "web\nevil", "--name", "h1"],
            "invalid hostname",
        ),
        (
            &[
                "create",
                "--mac-address",
                "00:00:00:00:00:00",
                "--name",
                "m1",
            ],
            "all-zero",
        ),
        (
            &[
                "create",
                "--mac-address",
                "01:00:5e:00:00:01",
                "--name",
                "m2",
            ],
            "multicast",
        ),
        (
            &["create", "-p", "192.0.2.77:8081:80", "--name", "p1"],
            "no such address",
        ),
        (
            &[
                "create",
                "--network",
                "taken",
                "--network-alias",
                "bad alias",
                "--name",
                "a1",
            ],
            "invalid network alias",
        ),
        (
            &["network", "connect", "--alias", "x;y", "taken", "c1"],
            "invalid network alias",
        ),
        (&["rm", "c1"], "running"),
    ];
    for (args, needle) in cases {
        let e = n.fails(args);
        assert!(
            e.to_lowercase().contains(&needle.to_lowercase()),
            "netd {args:?}: {e:?} should mention {needle:?}"
        );
    }
    assert_eq!(n.host_links(), links, "no link left behind");
    assert_eq!(n.netns_files(), files, "no namespace left behind");
    assert_eq!(strip(&n.ruleset()), strip(&rules), "no rule changed");
    let ps = n.ok(&["ps", "-a"]);
    assert_eq!(ps.lines().count(), 2, "only c1 exists: {ps}");

    // Daemon not running: the CLI says so and where it looked.
    let o = std::process::Command::new(netd_bin())
        .args(["-H", "/nonexistent/netd.sock", "ps"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("/nonexistent/netd.sock") && e.contains("daemon"),
        "{e}"
    );
}
