//! The API under careless or hostile clients: half-sent requests, huge
//! bodies, chunked bodies, keep-alive, running out of descriptors.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use netd_tests::{daemon::Netd, wait_until};

use super::processes::api;

fn request(sock: &std::path::Path, raw: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    // The answer (the server closes or we time out after it).
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .is_some_and(|len| body.len() >= len)
        {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn api_survives_hostile_clients() {
    if !netd_tests::require_root("api_survives_hostile_clients") {
        return;
    }
    let n = Netd::start("iptables").unwrap();
    let sock = n.socket.clone();
    let pid = n.daemon_pid().unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let quiet = fds();
    // 200 connections that send half a request and wait.
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(b"POST /networks/create HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n")
                .unwrap();
            s
        })
        .collect();
    // A 64 MiB body, streamed: refused with 413 after at most 1 MiB.
    let big = std::thread::spawn({
        let sock = sock.clone();
        move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let head = format!(
                "POST /networks/create HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                64 << 20
            );
            s.write_all(head.as_bytes()).unwrap();
            let chunk = vec![b' '; 1 << 16];
            for _ in 0..1024 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        }
    });
    // The API answers meanwhile.
    assert!(n.ok(&["network", "ls"]).contains("bridge"));
    let big = big.join().unwrap();
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    // A chunked body is a body.
    let chunked = request(
        &sock,
        b"POST /networks/create HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n10\r\n{\"Name\": \"chunk\"\r\n1\r\n}\r\n0\r\n\r\n",
    );
    assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");
    assert!(n.ok(&["network", "ls"]).contains("chunk"));
    // Keep-alive: two requests on one connection.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /_ping HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        let k = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..k]).starts_with("HTTP/1.1 200"));
    }
    // Headers over 16 KiB: refused.
    let mut huge = b"GET /_ping HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    huge.extend(vec![b'a'; 64 << 10]);
    huge.extend(b"\r\n\r\n");
    let r = request(&sock, &huge);
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    // Malformed JSON: a 400 that says so.
    let (code, body) = api(&n, "POST", "/networks/create", "{nope");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed"), "{body}");
    drop(idle);

    // Out of descriptors: accept() fails with EMFILE for a while, and the
    // API comes back when descriptors are free again.
    // The idle connections are closed on the daemon's side too.
    assert!(wait_until(Duration::from_secs(20), || fds() <= quiet + 4));
    let used = fds();
    // The soft limit only: root here cannot raise a hard limit again.
    let soft = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .unwrap();
    let lim = format!("{}:", used + 8);
    let o = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={lim}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let hog: Vec<UnixStream> = (0..64)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    // Held open until the daemon has run out of descriptors.
    assert!(
        wait_until(Duration::from_secs(20), || n.log().contains("API accept")),
        "the daemon should have hit EMFILE with {} connections open\n{}",
        hog.len(),
        n.log()
    );
    drop(hog);
    let o = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(
        wait_until(Duration::from_secs(20), || n
            .netd(&["network", "ls"])
            .is_ok_and(|o| o.status.success())),
        "the API serves again after EMFILE\n{}",
        n.log()
    );
}
