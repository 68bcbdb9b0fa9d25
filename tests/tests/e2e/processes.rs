//! Container processes belong to the daemon: it starts them (in the
//! container's cgroup), stops only them, removes `--rm` containers when
//! their process exits, and reports exit codes.
use std::time::Duration;

use netd_tests::{daemon::Netd, wait_until};

use super::*;

/// `curl --unix-socket` against the daemon's API: (HTTP status, body).
pub fn api(n: &Netd, method: &str, path: &str, body: &str) -> (u16, String) {
    let sock = n.socket.to_string_lossy().into_owned();
    let url = format!("http://netd{path}");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "--unix-socket",
            &sock,
            "-X",
            method,
            "-H",
            "content-type: application/json",
            "-w",
            "\n%{http_code}",
        ])
        .args(if body.is_empty() {
            vec![]
        } else {
            vec!["-d", body]
        })
        .arg(&url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A host process the API is asked, in every way it allows, to treat as
/// a container's survives `stop` and `rm -f`; only the container's own
/// processes die.
pub fn stop_kills_only_the_container(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    // The sacrificial host process, in the host namespace.
    let host = n.tb.host.clone();
    let mut sacrifice = netd_tests::spawn_in(&host, &["sleep", "600"]).unwrap();
    let victim = sacrifice.child.id() as i32;
    sleeper(&n, "c", "bridge");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "h",
        "--network",
        "host",
        "--",
        "sleep",
        "600",
    ]);
    n.ok(&["create", "--name", "side", "--network", "container:c"]);
    // The old pid registration is gone: no pid number is taken from a client.
    for body in [
        format!("{{\"Pid\": {victim}}}"),
        "{\"Pid\": -1}".into(),
        "{\"Pid\": 1}".into(),
    ] {
        let (code, text) = api(&n, "POST", "/containers/c/pids", &body);
        assert_eq!(code, 404, "pids endpoint must be gone: {text}");
    }
    // kill goes to the main process, and nothing else.
    let (code, _) = api(&n, "POST", "/containers/side/kill?signal=KILL", "");
    assert_eq!(code, 409, "side has no main process");
    let main_c = n.inspect("c")["State"]["Pid"].as_i64().unwrap() as i32;
    let main_h = n.inspect("h")["State"]["Pid"].as_i64().unwrap() as i32;
    assert!(main_c > 1 && main_h > 1 && alive(main_c) && alive(main_h));
    // An exec'd process is the container's too.
    n.ok(&["exec", "c", "--", "sh", "-c", "sleep 600 >/dev/null 2>&1 &"]);
    n.ok(&["stop", "side"]);
    n.ok(&["stop", "h"]);
    n.ok(&["rm", "-f", "c"]);
    assert!(!alive(main_c), "the container's main process is stopped");
    assert!(
        !alive(main_h),
        "the host-mode container's process is stopped"
    );
    assert!(
        alive(victim),
        "a host process outside the container survives"
    );
    assert!(alive(std::process::id() as i32));
    let ps = n.ok(&["ps", "-a"]);
    assert!(ps.contains("exited") && !ps.contains("running"), "{ps}");
    let _ = sacrifice.child.kill();
    n.stop_daemon(false);
}

/// `run --rm` is removed by the daemon when its process exits (attached
/// or detached), `run` reports the process's exit code, a container
/// whose main process exits frees its ports, `wait` and `logs` work, and
/// `exec` works from another mount namespace (`ip netns exec`).
pub fn run_exit_codes_and_rm(dp: &str) {
    let n = Netd::start(dp).unwrap();
    // Attached: the exit code is the command's.
    let o = n
        .netd(&[
            "run",
            "--rm",
            "--name",
            "three",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ])
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    assert!(wait_until(Duration::from_secs(10), || !n
        .ok(&["ps", "-a"])
        .contains("three")));
    // Detached --rm: removed when the process exits, by the daemon.
    n.ok(&[
        "run",
        "-d",
        "--rm",
        "--name",
        "brief",
        "-p",
        "8085:80",
        "--",
        "sh",
        "-c",
        "sleep 0.3",
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || !n
            .ok(&["ps", "-a"])
            .contains("brief")),
        "run -d --rm disappears when its process exits\n{}",
        n.log()
    );
    // Without --rm: exited, with its code; its port is free again.
    n.ok(&[
        "run",
        "-d",
        "--name",
        "seven",
        "-p",
        "8085:80",
        "--",
        "sh",
        "-c",
        "echo out; exit 7",
    ]);
    assert_eq!(n.ok(&["wait", "seven"]).trim(), "7");
    let st = n.inspect("seven")["State"].clone();
    assert_eq!(st["Status"], "exited", "{st}");
    assert_eq!(st["ExitCode"], 7, "{st}");
    assert_eq!(n.ok(&["logs", "seven"]), "out\n");
    assert!(
        n.ok(&["port", "seven"]).is_empty(),
        "an exited container publishes nothing"
    );
    sleeper(&n, "reuse", "bridge");
    n.ok(&["rm", "-f", "reuse"]);
    n.ok(&[
        "run", "-d", "--name", "p", "-p", "8085:80", "--", "sleep", "600",
    ]);
    // `netd start` runs the command again.
    n.ok(&["rm", "-f", "p"]);
    n.ok(&["start", "seven"]);
    assert_eq!(n.ok(&["wait", "seven"]).trim(), "7");
    assert_eq!(n.ok(&["logs", "seven"]), "out\nout\n");
    // exec from another mount namespace: ip netns exec remounts /sys and
    // makes a private mount namespace.
    sleeper(&n, "x", "bridge");
    let ns_name =
        n.tb.host
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns_name])
        .arg(netd_tests::daemon::netd_bin())
        .arg("-H")
        .arg(&n.socket)
        .args(["exec", "x", "--", "cat", "/etc/hostname"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = n.inspect("x")["Id"].as_str().unwrap().to_string();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), &id[..12]);
    // A command that does not exist: a clear error, nothing left running.
    let e = n.fails(&["exec", "x", "--", "/nonexistent/cmd"]);
    assert!(e.contains("not found"), "{e}");
    let e = n.fails(&["run", "--rm", "--name", "nope", "--", "/nonexistent/cmd"]);
    assert!(e.contains("not found"), "{e}");
    assert!(!n.ok(&["ps", "-a"]).contains("nope"));
    let e = n.fails(&[
        "run",
        "-d",
        "--name",
        "nf",
        "-p",
        "8086:80",
        "--",
        "/nonexistent/cmd",
    ]);
    assert!(e.contains("not found"), "{e}");
    let st = n.inspect("nf")["State"].clone();
    assert_eq!(st["Status"], "exited", "{st}");
    assert_eq!(st["ExitCode"], 127, "{st}");
    assert!(n.ok(&["port", "nf"]).is_empty(), "its port is free again");
}
