//! Policy end to end (issue 11, and issue 10's isolation holes): what a
//! neighbour, the world or a hostile container can reach, and the
//! conntrack/NAT behaviours users hit (big datagrams, small uplink MTUs,
//! host clients on published port numbers, SYN floods). Every scenario
//! runs against a real daemon on each datapath (`scenarios!`), through
//! the CLI, with real traffic; hostile traffic is crafted as raw frames
//! (AF_PACKET) inside the namespace it comes from.
//!
//! Negative checks never wait on a clock: after the frames that must not
//! arrive, a control frame that must arrive is sent along the same path,
//! and the capture is read until the control shows up.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, Stdio},
    time::Duration,
};

use netd::netns::NetNs;
use netd_tests::{
    HOST_IP, OUTSIDE_IP,
    daemon::{Netd, netd_bin},
    packet::{self, Frame, TCP_SYN},
    wait_until,
};

fn me() -> String {
    netd_bin().to_string_lossy().into_owned()
}

/// `netd run -d --name NAME [ARGS] -- sleep 600`.
fn run(n: &Netd, name: &str, args: &[&str]) {
    let mut a = vec!["run", "-d", "--name", name];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--", "sleep", "600"]);
    n.ok(&a);
}

/// Starts `netd tool ARGS` in the background inside a container.
fn tool_in(n: &Netd, name: &str, args: &str) {
    n.ok(&["exec", name, "--", "true"]);
    let o = n
        .netd(&[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            &format!("{} tool {args} >/dev/null 2>&1 &", me()),
        ])
        .unwrap();
    assert!(o.status.success());
}

fn ip_of(n: &Netd, name: &str) -> Ipv4Addr {
    n.ip_of(name).parse().unwrap()
}

/// The container's network namespace.
fn sandbox(n: &Netd, name: &str) -> NetNs {
    let key = n.inspect(name)["NetworkSettings"]["SandboxKey"]
        .as_str()
        .unwrap()
        .to_string();
    NetNs::at(key)
}

fn mac_in(ns: &NetNs, ifname: &str) -> [u8; 6] {
    let ifname = ifname.to_string();
    ns.run(move || netd::link::link_mac(&ifname)).unwrap()
}

/// A raw (AF_PACKET) socket on `ifname` inside `ns`: sends crafted frames
/// and captures every frame the interface sees.
struct Raw {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

impl Raw {
    fn open(ns: &NetNs, ifname: &str) -> Raw {
        let name = ifname.to_string();
        let (fd, ifindex) = ns
            .run(move || {
                let proto = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket(2); the fd is owned below.
                let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                // SAFETY: fd is a fresh socket we own.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let ifindex = netd::link::ifindex(&name) as i32;
                // SAFETY: an all-zero sockaddr_ll is valid; filled below.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = ifindex;
                // SAFETY: bind(2) with a properly sized sockaddr_ll.
                let rc = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                let tv = libc::timeval {
                    tv_sec: 1,
                    tv_usec: 0,
                };
                // SAFETY: setsockopt(2) with a timeval.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        &tv as *const libc::timeval as *const libc::c_void,
                        std::mem::size_of::<libc::timeval>() as u32,
                    )
                };
                Ok((fd, ifindex))
            })
            .unwrap();
        Raw {
            fd,
            ifindex,
            mac: mac_in(ns, ifname),
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: an all-zero sockaddr_ll is valid; filled below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sendto(2) of a buffer we own.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            rc,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame the interface received (not one it sent), or None
    /// after a second without any.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: recv(2) into a buffer we own.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return None;
            }
            let f = buf[..n as usize].to_vec();
            if f.len() >= 12 && f[6..12] != self.mac {
                return Some(f);
            }
        }
    }

    /// Every frame received until one matches `control` (which must come:
    /// 30 quiet seconds fail the test).
    fn until(&self, what: &str, control: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        let mut quiet = 0;
        loop {
            match self.recv() {
                Some(f) if control(&f) => return seen,
                Some(f) => seen.push(f),
                None => {
                    quiet += 1;
                    assert!(quiet < 30, "the control frame ({what}) never arrived");
                }
            }
        }
    }
}

/// An IPv4 frame's (proto, src, dst, sport, dport), if it is one.
fn ipv4(f: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr, u16, u16)> {
    if f.len() < 14 + 20 || f[12..14] != [8, 0] {
        return None;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = ip.get(ihl..ihl + 4).unwrap_or(&[0, 0, 0, 0]);
    Some((
        ip[9],
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    ))
}

/// A frame from the outside namespace to the host's uplink MAC.
fn from_outside(n: &Netd, out: &Raw, dst: Ipv4Addr) -> Frame {
    Frame {
        src_mac: out.mac,
        dst_mac: mac_in(&n.tb.host, "eth0"),
        src: OUTSIDE_IP,
        dst,
        ttl: 64,
    }
}

/// Issue 11 item 1 / issue 10 item 7: nothing from outside reaches a
/// container's address (published container ports included: they are
/// reached through the host's port), TCP, UDP or ICMP, one way too.
fn unpublished_ports_unreachable_by_routing(dp: &str) {
    let n = Netd::start(dp).unwrap();
    run(&n, "web", &["-p", "8080:80", "-p", "5353:53/udp"]);
    tool_in(&n, "web", "udp-echo 0.0.0.0:53 --name web");
    let cip = ip_of(&n, "web");
    let cap = Raw::open(&sandbox(&n, "web"), "eth0");
    let out = Raw::open(&n.tb.outside, "eth0");
    let f = from_outside(&n, &out, cip);
    for frame in [
        f.tcp(40001, 8082, TCP_SYN, b""),
        f.tcp(40002, 80, TCP_SYN, b""),
        f.udp(40003, 54, b"one way to an unpublished port"),
        f.udp(40004, 53, b"one way to a published container port"),
        f.icmp_echo(40005, false),
    ] {
        out.send(&frame);
    }
    // The control, along the same path: the published port.
    out.send(&from_outside(&n, &out, HOST_IP).udp(40009, 5353, b"control"));
    let seen = cap.until("the published UDP port", |f| {
        ipv4(f).is_some_and(|(p, s, _, sp, _)| p == 17 && s == OUTSIDE_IP && sp == 40009)
    });
    let leaked: Vec<_> = seen
        .iter()
        .filter_map(|f| ipv4(f))
        .filter(|(_, s, _, _, _)| *s == OUTSIDE_IP)
        .collect();
    assert!(leaked.is_empty(), "{dp}: reached the container: {leaked:?}");
    // The published port itself works, from the real stack.
    let udp =
        n.tb.ok(
            &n.tb.outside,
            &[
                &me(),
                "tool",
                "udp-send",
                &format!("{HOST_IP}:5353"),
                "hi",
                "--timeout-ms",
                "1000",
            ],
        )
        .unwrap();
    assert!(udp.starts_with("web:hi"), "{udp}");
}

/// Issue 11 item 4: `ping -s 3000` and a 3000-byte UDP exchange, through
/// masquerade and through a published port (fragments both ways).
fn big_datagrams_through_nat(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    run(&n, "c", &["-p", "5353:53/udp"]);
    tool_in(&n, "c", "udp-echo 0.0.0.0:53 --name c");
    let outside = n.tb.outside.clone();
    n.tb.spawn(
        &outside,
        &[&me(), "tool", "udp-echo", "0.0.0.0:9999", "--name", "world"],
    )
    .unwrap();
    let ping_ok = wait_until(Duration::from_secs(10), || {
        n.netd(&[
            "exec",
            "c",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-s",
            "3000",
            &OUTSIDE_IP.to_string(),
        ])
        .is_ok_and(|o| o.status.success())
    });
    assert!(
        ping_ok,
        "{dp}: ping -s 3000 through masquerade\n{}",
        n.log()
    );
    let big = "x".repeat(3000);
    let mut reply = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        n.netd(&[
            "exec",
            "c",
            "--",
            &me(),
            "tool",
            "udp-send",
            &format!("{OUTSIDE_IP}:9999"),
            &big,
            "--timeout-ms",
            "1000",
        ])
        .is_ok_and(|o| {
            reply = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success()
        })
    });
    assert!(
        ok && reply.contains(&big),
        "{dp}: 3000-byte UDP through masquerade: {reply:.80}"
    );
    assert!(
        reply.contains(&format!("from {HOST_IP}:")),
        "masqueraded: {reply:.80}"
    );
    let mut reply = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        n.tb.exec(
            &n.tb.outside,
            &[
                &me(),
                "tool",
                "udp-send",
                &format!("{HOST_IP}:5353"),
                &big,
                "--timeout-ms",
                "1000",
            ],
        )
        .is_ok_and(|o| {
            reply = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success()
        })
    });
    assert!(
        ok && reply.starts_with("c:xxx"),
        "{dp}: 3000-byte UDP through a published port"
    );
    assert!(
        reply.contains(&format!("from {OUTSIDE_IP}:")),
        "{reply:.80}"
    );
}

/// A namespace behind the outside one (a server one router away), removed
/// on drop: `far` 10.77.0.2/24 on its eth0, the outside 10.77.0.1 on
/// `far0`, forwarding.
struct Far(NetNs);

impl Far {
    fn new(n: &Netd, far_mtu: u32) -> Far {
        let name = format!("{}-far", n.tb.stem);
        let far = Far(NetNs::create_named(&name).unwrap());
        let mtu = far_mtu.to_string();
        let o = &n.tb.outside;
        // The peer is made in the outside namespace (which has an eth0
        // already) as "fareth", moved, then renamed.
        for cmd in [
            vec![
                "ip", "link", "add", "far0", "mtu", &mtu, "type", "veth", "peer", "name", "fareth",
            ],
            vec!["ip", "link", "set", "fareth", "netns", &name],
            vec!["ip", "addr", "add", "10.77.0.1/24", "dev", "far0"],
            vec!["ip", "link", "set", "far0", "up"],
            vec!["sysctl", "-w", "net.ipv4.ip_forward=1"],
        ] {
            n.tb.ok(o, &cmd).unwrap();
        }
        for cmd in [
            vec!["ip", "link", "set", "fareth", "name", "eth0"],
            vec!["ip", "addr", "add", "10.77.0.2/24", "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "route", "add", "default", "via", "10.77.0.1"],
        ] {
            n.tb.ok(&far.0, &cmd).unwrap();
        }
        far
    }
}

impl Drop for Far {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

const FAR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Uploads `bytes` from container `name` to FAR_IP:port; returns what
/// the server received.
fn upload(n: &Netd, far: &Far, name: &str, port: u16, bytes: usize) -> Result<usize, String> {
    let sink = far
        .0
        .run(move || Ok(TcpListener::bind(("0.0.0.0", port))?))
        .unwrap();
    let c = sandbox(n, name);
    std::thread::scope(|s| {
        let got = s.spawn(|| {
            let (mut conn, _) = sink.accept().map_err(|e| e.to_string())?;
            // A hang guard, not a timing assertion.
            conn.set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let mut total = 0;
            let mut buf = vec![0u8; 65536];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => return Ok(total),
                    Ok(k) => total += k,
                    Err(e) => return Err(format!("after {total} bytes: {e}")),
                }
            }
        });
        let sent = c.run(|| {
            let mut t = TcpStream::connect((FAR_IP, port))?;
            t.set_write_timeout(Some(Duration::from_secs(60)))?;
            t.write_all(&vec![7u8; bytes])?;
            t.shutdown(std::net::Shutdown::Write)?;
            Ok(())
        });
        let got = got.join().unwrap();
        sent.map_err(|e| format!("{e:#}"))?;
        got
    })
}

/// Issue 11 item 5: a 1400-byte link between the host and the next hop
/// (the uplink), with the containers, the bridge and the server at 1500
/// (so the server's MSS does not hide it): a container's TCP upload keeps
/// flowing, path-MTU discovery works through the datapath. Once with
/// GSO (veth passes GSO packets whatever the MTU: only a datapath that
/// checks the segments keeps to it) and once without (every segment an
/// MTU-sized packet, as from a NIC without TSO).
fn small_uplink_mtu_keeps_uploads_flowing(dp: &str) {
    let n = Netd::start(dp).unwrap();
    let far = Far::new(&n, 1500);
    for ns in [&n.tb.host, &n.tb.outside] {
        n.tb.ok(ns, &["ip", "link", "set", "eth0", "mtu", "1400"])
            .unwrap();
    }
    run(&n, "gso", &[]);
    run(&n, "nogso", &[]);
    n.tb.ok(
        &sandbox(&n, "nogso"),
        &["ip", "link", "set", "dev", "eth0", "gso_max_segs", "1"],
    )
    .unwrap();
    const BYTES: usize = 4 << 20;
    for (name, port) in [("nogso", 9001), ("gso", 9000)] {
        let got = upload(&n, &far, name, port, BYTES);
        assert_eq!(
            got,
            Ok(BYTES),
            "{dp}: {name}: the whole upload arrived\n{}",
            n.log()
        );
    }
}

/// Issue 11 item 6: a host client whose source port is a published port
/// number gets its replies (TCP and UDP), not the container.
fn host_client_on_a_published_port_number(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    run(&n, "web", &["-p", "8080:80", "-p", "5353:53/udp"]);
    tool_in(&n, "web", "http-serve 0.0.0.0:80 --name web");
    tool_in(&n, "web", "udp-echo 0.0.0.0:53 --name web");
    let outside = n.tb.outside.clone();
    n.tb.spawn(
        &outside,
        &[
            &me(),
            "tool",
            "http-serve",
            "0.0.0.0:8000",
            "--name",
            "world",
        ],
    )
    .unwrap();
    n.tb.spawn(
        &outside,
        &[&me(), "tool", "udp-echo", "0.0.0.0:9999", "--name", "world"],
    )
    .unwrap();
    let url = format!("http://{OUTSIDE_IP}:8000/");
    let mut body = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        let o = n.host(
            false,
            &["curl", "-s", "-m", "3", "--local-port", "8080", &url],
        );
        body = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.success()
    });
    assert!(
        ok,
        "{dp}: a host client on port 8080 got no reply\n{}",
        n.log()
    );
    assert!(
        body.contains("hello from world to 198.18.0.2:8080"),
        "{body}"
    );
    let reply =
        n.tb.host
            .run(|| {
                let s = UdpSocket::bind("0.0.0.0:5353")?;
                s.connect((OUTSIDE_IP, 9999))?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut buf = [0u8; 2048];
                // Until the world's echo server is up (a refusal comes
                // back at once while it is not): a readiness deadline.
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while std::time::Instant::now() < deadline {
                    s.send(b"host")?;
                    match s.recv(&mut buf) {
                        Ok(k) => return Ok(String::from_utf8_lossy(&buf[..k]).into_owned()),
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
                anyhow::bail!("no UDP reply")
            })
            .unwrap_or_else(|e| panic!("{dp}: host UDP client on 5353: {e:#}"));
    assert!(reply.starts_with("world:host"), "{reply}");
    // The published ports still work for the world.
    let udp =
        n.tb.ok(
            &n.tb.outside,
            &[
                &me(),
                "tool",
                "udp-send",
                &format!("{HOST_IP}:5353"),
                "q",
                "--timeout-ms",
                "1000",
            ],
        )
        .unwrap();
    assert!(udp.starts_with("web:q"), "{udp}");
}

/// The daemon's own command line (as the harness starts it), plus `extra`.
fn daemon_with(n: &Netd, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(n.dir.join("daemon.log"))
        .unwrap();
    Command::new(netd_bin())
        .arg("daemon")
        .arg("--netns")
        .arg(n.tb.host.path())
        .args(["--datapath", &n.datapath])
        .arg("--state-dir")
        .arg(n.dir.join("state"))
        .arg("--exec-root")
        .arg(n.dir.join("run"))
        .arg("--socket")
        .arg(&n.socket)
        .arg("--bpffs")
        .arg(n.dir.join("bpffs"))
        .arg("--cgroup")
        .arg(&n.cgroup)
        .arg("--dns")
        .arg(OUTSIDE_IP.to_string())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A daemon this test started itself, killed on drop (before the
/// harness's cleanup).
struct Own(Child);
impl Drop for Own {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request/response on an rr-server connection.
fn rr(t: &mut TcpStream) -> std::io::Result<()> {
    t.write_all(b"r")?;
    let mut b = [0u8; 1];
    t.read_exact(&mut b)
}

const CT_BOUND: u64 = 4096;

/// Issue 11 item 7 (and 12: a pinned table resized): 10,000 spoofed SYNs
/// to a published port leave an established connection working, a new
/// one possible, and (ebpf) the table within `--conntrack-size`.
fn syn_flood_keeps_established_flows(dp: &str) {
    let mut n = Netd::start(dp).unwrap();
    run(&n, "srv", &["-p", "8080:80"]);
    tool_in(&n, "srv", "rr-server 0.0.0.0:80");
    let mut conn = None;
    assert!(wait_until(Duration::from_secs(10), || {
        conn =
            n.tb.outside
                .run(|| {
                    let mut t = TcpStream::connect((HOST_IP, 8080))?;
                    t.set_read_timeout(Some(Duration::from_secs(5)))?;
                    rr(&mut t)?;
                    Ok(t)
                })
                .ok();
        conn.is_some()
    }));
    let mut conn = conn.unwrap();
    // The daemon again, with a small table: the pinned table is resized
    // and its entries (this connection's) carried over.
    n.stop_daemon(false);
    let _own = Own(daemon_with(
        &n,
        &["--conntrack-size", &CT_BOUND.to_string()],
    ));
    assert!(wait_until(Duration::from_secs(30), || {
        n.netd(&["network", "ls"]).is_ok_and(|o| o.status.success())
    }));
    rr(&mut conn).unwrap_or_else(|e| panic!("{dp}: established flow across the restart: {e}"));

    let out = Raw::open(&n.tb.outside, "eth0");
    let host_mac = mac_in(&n.tb.host, "eth0");
    for i in 0..10_000u32 {
        let f = Frame {
            src_mac: out.mac,
            dst_mac: host_mac,
            src: Ipv4Addr::new(10, 200, (i >> 8) as u8, i as u8),
            dst: HOST_IP,
            ttl: 64,
        };
        out.send(&f.tcp(1024 + (i % 60000) as u16, 8080, TCP_SYN, b""));
    }
    rr(&mut conn).unwrap_or_else(|e| panic!("{dp}: established flow after the flood: {e}"));
    let fresh = n.tb.outside.run(|| {
        let mut t =
            TcpStream::connect_timeout(&SocketAddr::from((HOST_IP, 8080)), Duration::from_secs(5))?;
        t.set_read_timeout(Some(Duration::from_secs(5)))?;
        rr(&mut t)?;
        Ok(())
    });
    assert!(
        fresh.is_ok(),
        "{dp}: a new connection during the flood: {fresh:?}"
    );
    if dp == "ebpf" {
        let s: serde_json::Value =
            serde_json::from_str(&n.ok(&["stats", "--format", "json"])).unwrap();
        let entries = s["ConntrackEntries"].as_u64().unwrap();
        assert!(entries <= CT_BOUND, "table within its bound: {s}");
        assert!(
            s["Counters"]["ct.evicted"].as_u64().unwrap() > 0,
            "unconfirmed flows made room: {s}"
        );
    }
}

/// Re-enables IPv6 in a container (a hostile one can) and returns its
/// link-local address once usable.
fn ipv6_on(n: &Netd, ns: &NetNs) -> String {
    ns.run(|| {
        netd::netns::sysctl_write("net/ipv6/conf/all/disable_ipv6", "0")?;
        netd::netns::sysctl_write("net/ipv6/conf/eth0/disable_ipv6", "0")
    })
    .unwrap();
    let mut addr = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        let o =
            n.tb.ok(
                ns,
                &[
                    "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
                ],
            )
            .unwrap_or_default();
        if o.contains("tentative") {
            return false;
        }
        addr = o
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        !addr.is_empty()
    }));
    addr
}

/// An icc=false network with two containers, q1 and q2, their raw
/// sockets and addresses.
struct Pair {
    n: Netd,
    r1: Raw,
    r2: Raw,
    q1ip: Ipv4Addr,
    q2ip: Ipv4Addr,
    gw: Ipv4Addr,
}

fn icc_false_pair(dp: &str) -> Pair {
    let n = Netd::start(dp).unwrap();
    n.ok(&["network", "create", "-o", "icc=false", "noicc"]);
    run(&n, "q1", &["--network", "noicc"]);
    run(&n, "q2", &["--network", "noicc"]);
    let (s1, s2) = (sandbox(&n, "q1"), sandbox(&n, "q2"));
    let gw = n.inspect("q1")["NetworkSettings"]["Gateway"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    Pair {
        r1: Raw::open(&s1, "eth0"),
        r2: Raw::open(&s2, "eth0"),
        q1ip: ip_of(&n, "q1"),
        q2ip: ip_of(&n, "q2"),
        gw,
        n,
    }
}

/// Issue 10 item 7: on an icc=false network containers cannot talk IPv6
/// (link-local) to each other, even after re-enabling IPv6, nor send each
/// other IPv6 or VLAN-tagged raw frames.
fn icc_false_holds_for_ipv6(dp: &str) {
    let p = icc_false_pair(dp);
    let n = &p.n;
    let _a1 = ipv6_on(n, &sandbox(n, "q1"));
    let a2 = ipv6_on(n, &sandbox(n, "q2"));
    let ping6 = n
        .netd(&[
            "exec",
            "q1",
            "--",
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "1",
            &format!("{a2}%eth0"),
        ])
        .unwrap();
    assert!(
        !ping6.status.success(),
        "{dp}: IPv6 link-local between icc=false containers"
    );
    // Raw frames: IPv6 and a VLAN-tagged frame from q1 to q2, then an
    // honest ARP broadcast (which must arrive) as the control.
    let (r1, r2) = (&p.r1, &p.r2);
    r1.send(&packet::ipv6_echo(r2.mac, r1.mac, [0xfe; 16], [0xfe; 16]));
    let q1_to_q2 = Frame {
        src_mac: r1.mac,
        dst_mac: r2.mac,
        src: p.q1ip,
        dst: p.q2ip,
        ttl: 64,
    };
    r1.send(&packet::vlan_tagged(&q1_to_q2.udp(1, 2, b"tagged"), 7));
    r1.send(&packet::arp(r1.mac, 1, r1.mac, p.q1ip, [0; 6], p.gw));
    let seen = r2.until("q1's ARP request", |f| {
        f[6..12] == r1.mac && f[12..14] == [8, 6] && f[14 + 14..14 + 18] == p.q1ip.octets()
    });
    let bad: Vec<_> = seen.iter().filter(|f| f[6..12] == r1.mac).collect();
    assert!(
        bad.is_empty(),
        "{dp}: frames from q1 reached q2: {bad:02x?}"
    );
}

/// Issue 10 item 7: a container cannot poison the host's neighbour entry
/// of another container (ARP sender checked against the endpoint).
fn arp_spoofing_is_dropped(dp: &str) {
    let p = icc_false_pair(dp);
    let (n, r1, r2) = (&p.n, &p.r1, &p.r2);
    // The host knows q2, and would update the entry at once (locktime 0).
    let bridge = n.inspect_network("noicc");
    n.tb.ok(
        &n.tb.host,
        &[
            "sysctl",
            "-w",
            &format!("net.ipv4.neigh.{bridge}.locktime=0"),
        ],
    )
    .unwrap();
    n.tb.ok(
        &n.tb.host,
        &["ping", "-c", "1", "-W", "1", &p.q2ip.to_string()],
    )
    .unwrap();
    let br_mac = mac_in(&n.tb.host, &bridge);
    // q1 claims q2's address: a reply to the host, a gratuitous request.
    r1.send(&packet::arp(r1.mac, 2, r1.mac, p.q2ip, br_mac, p.gw));
    r1.send(&packet::arp(r1.mac, 1, r1.mac, p.q2ip, [0; 6], p.q2ip));
    // Control: q1 asks for the gateway; the host's answer means it has
    // handled the frames before.
    r1.send(&packet::arp(r1.mac, 1, r1.mac, p.q1ip, [0; 6], p.gw));
    r1.until("the host's ARP reply", |f| {
        f[6..12] == br_mac && f[12..14] == [8, 6] && f[20..22] == [0, 2]
    });
    let neigh =
        n.tb.ok(&n.tb.host, &["ip", "neigh", "show", &p.q2ip.to_string()])
            .unwrap();
    let q2mac = r2
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        neigh.contains(&q2mac),
        "{dp}: the host's entry for q2 was poisoned: {neigh}"
    );
}

trait NetworkBridge {
    fn inspect_network(&self, name: &str) -> String;
}

impl NetworkBridge for Netd {
    /// A network's bridge device.
    fn inspect_network(&self, name: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["network", "inspect", name])).unwrap();
        v[0]["Options"]["com.docker.network.bridge.name"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Issue 11 item 3 / issue 10 item 7: a port published on 127.0.0.1 is
/// not reachable by a frame to the host's MAC with destination
/// 127.0.0.1 from a neighbour.
fn loopback_port_unreachable_from_a_neighbour(dp: &str) {
    let n = Netd::start(dp).unwrap();
    run(&n, "web", &["-p", "127.0.0.1:8080:80", "-p", "8081:80"]);
    tool_in(&n, "web", "http-serve 0.0.0.0:80 --name web");
    let cap = Raw::open(&sandbox(&n, "web"), "eth0");
    let out = Raw::open(&n.tb.outside, "eth0");
    out.send(&from_outside(&n, &out, Ipv4Addr::LOCALHOST).tcp(40000, 8080, TCP_SYN, b""));
    out.send(&from_outside(&n, &out, HOST_IP).tcp(40001, 8081, TCP_SYN, b""));
    let seen = cap.until("the SYN to 8081", |f| {
        ipv4(f).is_some_and(|(p, s, _, sp, _)| p == 6 && s == OUTSIDE_IP && sp == 40001)
    });
    let leaked: Vec<_> = seen
        .iter()
        .filter_map(|f| ipv4(f))
        .filter(|(_, s, _, sp, _)| *s == OUTSIDE_IP && *sp == 40000)
        .collect();
    assert!(
        leaked.is_empty(),
        "{dp}: the crafted SYN reached the container: {leaked:?}"
    );
    // The host itself still reaches it.
    let body = n.host(true, &["curl", "-s", "-m", "3", "http://127.0.0.1:8080/"]);
    assert!(
        String::from_utf8_lossy(&body.stdout).contains("hello from web"),
        "{dp}: 127.0.0.1:8080 from the host"
    );
}

/// Issue 11 item 12: a datagram above the container's MTU (a network
/// with `-o mtu=1400` behind a 1500-byte uplink) still gets through (the
/// eBPF datapath delivers it whole with bpf_redirect_peer, the container
/// accepts it; the netfilter datapaths answer "fragmentation needed" and
/// the sender fragments), and so does the answer.
fn datagram_above_the_container_mtu(dp: &str) {
    let n = Netd::start(dp).unwrap();
    n.ok(&["network", "create", "-o", "mtu=1400", "small"]);
    run(&n, "c", &["--network", "small", "-p", "5353:53/udp"]);
    tool_in(&n, "c", "udp-echo 0.0.0.0:53 --name c");
    let msg = "y".repeat(1472);
    let mut reply = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        n.tb.exec(
            &n.tb.outside,
            &[
                &me(),
                "tool",
                "udp-send",
                &format!("{HOST_IP}:5353"),
                &msg,
                "--timeout-ms",
                "1000",
            ],
        )
        .is_ok_and(|o| {
            reply = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success()
        })
    });
    assert!(
        ok && reply.contains(&msg),
        "{dp}: a 1500-byte datagram into a 1400-byte network"
    );
}

/// ebpf: an upgrade from a map version whose conntrack layout this one
/// reads keeps established connections: the v2 table's entries are
/// carried into the new one.
#[test]
fn ebpf_upgrade_carries_connections_over() {
    if !netd_tests::require_root("ebpf_upgrade_carries_connections_over") {
        return;
    }
    let mut n = Netd::start("ebpf").unwrap();
    run(&n, "srv", &["-p", "8080:80"]);
    tool_in(&n, "srv", "rr-server 0.0.0.0:80");
    let mut conn = None;
    assert!(wait_until(Duration::from_secs(10), || {
        conn =
            n.tb.outside
                .run(|| {
                    let mut t = TcpStream::connect((HOST_IP, 8080))?;
                    t.set_read_timeout(Some(Duration::from_secs(5)))?;
                    rr(&mut t)?;
                    Ok(t)
                })
                .ok();
        conn.is_some()
    }));
    let mut conn = conn.unwrap();
    n.stop_daemon(true);
    // What the previous version's daemon left: its conntrack table
    // pinned as NETD_CT_<that version>.
    let maps = n.dir.join("bpffs/maps");
    let old = maps.join(format!("NETD_CT_{}", netd_common::MIGRATE_FROM[0]));
    std::fs::rename(
        maps.join(format!("NETD_CT_{}", netd_common::MAP_VERSION)),
        &old,
    )
    .unwrap();
    n.start_daemon().unwrap();
    assert!(!old.exists(), "the old pin is gone");
    assert!(n.log().contains("NETD_CT entries over"), "{}", n.log());
    // Without the carried entries this segment (no SYN) would be the
    // host's, which answers with an RST.
    rr(&mut conn).unwrap_or_else(|e| panic!("the connection across the upgrade: {e}"));
}

/// ebpf: the daemon keeps the direct-mapped endpoint caches (`NETD_EP_C`
/// by address, `NETD_EP_IF_C` by host veth) in step with its endpoints:
/// filled when containers start, a removed container's slots emptied,
/// adopted as they are by a restarted daemon.
#[test]
fn ebpf_keeps_the_endpoint_caches() {
    use aya::maps::{Array, Map, MapData};
    use netd_common::{Endpoint, MAP_VERSION};
    if !netd_tests::require_root("ebpf_keeps_the_endpoint_caches") {
        return;
    }
    let mut n = Netd::start("ebpf").unwrap();
    run(&n, "a", &[]);
    run(&n, "b", &[]);
    let maps = n.dir.join("bpffs/maps");
    let cache = |name: &str| -> Vec<Endpoint> {
        let m = MapData::from_pin(maps.join(format!("{name}_{MAP_VERSION}"))).unwrap();
        let a: Array<MapData, Endpoint> = Array::try_from(Map::Array(m)).unwrap();
        (0..netd_common::EP_CACHE_SIZE)
            .map(|i| a.get(&i, 0).unwrap())
            .filter(|e| *e != Endpoint::default())
            .collect()
    };
    let (a, b) = (ip_of(&n, "a"), ip_of(&n, "b"));
    let by_ip = cache("NETD_EP_C");
    let by_if = cache("NETD_EP_IF_C");
    for ip in [a, b] {
        let e = by_ip
            .iter()
            .find(|e| e.ip == u32::from(ip).to_be())
            .unwrap_or_else(|| panic!("{ip} cached: {by_ip:?}"));
        assert!(by_if.contains(e), "its veth's slot holds the same endpoint");
        assert_ne!(e.ifindex, 0);
    }
    n.ok(&["rm", "-f", "b"]);
    let by_ip = cache("NETD_EP_C");
    assert!(
        by_ip.iter().all(|e| e.ip != u32::from(b).to_be()),
        "b's slot emptied"
    );
    assert!(by_ip.iter().any(|e| e.ip == u32::from(a).to_be()));
    let before = (by_ip, cache("NETD_EP_IF_C"));
    n.stop_daemon(true);
    n.start_daemon().unwrap();
    assert_eq!(
        (cache("NETD_EP_C"), cache("NETD_EP_IF_C")),
        before,
        "adopted"
    );
}

/// ebpf: netd's containers get the NAT range as their ephemeral ports,
/// and masquerade keeps a port of that range: the world sees the
/// container's own port (a port outside the range would be rewritten
/// into it: issue 11's item 8). The netfilter datapaths leave the
/// kernel's default range.
#[test]
fn ebpf_containers_ephemeral_ports_are_the_nat_range_and_kept() {
    if !netd_tests::require_root("ebpf_containers_ephemeral_ports_are_the_nat_range_and_kept") {
        return;
    }
    for dp in ["ebpf", "iptables"] {
        let mut n = Netd::start(dp).unwrap();
        run(&n, "c", &[]);
        let range = n.ok(&[
            "exec",
            "c",
            "--",
            "cat",
            "/proc/sys/net/ipv4/ip_local_port_range",
        ]);
        let range: Vec<&str> = range.split_whitespace().collect();
        if dp == "iptables" {
            assert_ne!(range, ["61000", "65535"], "{dp}");
            continue;
        }
        assert_eq!(range, ["61000", "65535"], "{dp}");
        let outside = n.tb.outside.clone();
        n.tb.spawn(
            &outside,
            &[
                &me(),
                "tool",
                "http-serve",
                "0.0.0.0:8000",
                "--name",
                "world",
            ],
        )
        .unwrap();
        let url = format!("http://{OUTSIDE_IP}:8000/");
        let mut out = String::new();
        assert!(wait_until(Duration::from_secs(10), || {
            out = n
                .netd(&[
                    "exec",
                    "c",
                    "--",
                    "curl",
                    "-s",
                    "-m",
                    "2",
                    "-w",
                    " local %{local_port}",
                    &url,
                ])
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out.contains("hello from world")
        }));
        // "hello from world to 198.18.0.2:PORT\n local PORT"
        let seen = out
            .split("to 198.18.0.2:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        let local = out.rsplit("local ").next().unwrap_or_default().trim();
        assert_eq!(seen, local, "masquerade keeps the container's port: {out}");
    }
}

/// ebpf: the masquerade source follows the uplink's address.
#[test]
fn ebpf_follows_the_uplink_address() {
    if !netd_tests::require_root("ebpf_follows_the_uplink_address") {
        return;
    }
    let mut n = Netd::start("ebpf").unwrap();
    run(&n, "c", &[]);
    let outside = n.tb.outside.clone();
    n.tb.spawn(
        &outside,
        &[
            &me(),
            "tool",
            "http-serve",
            "0.0.0.0:8000",
            "--name",
            "world",
        ],
    )
    .unwrap();
    let url = format!("http://{OUTSIDE_IP}:8000/");
    let curl = |n: &Netd| {
        n.netd(&["exec", "c", "--", "curl", "-s", "-m", "2", &url])
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    assert!(wait_until(Duration::from_secs(10), || curl(&n)
        .contains("to 198.18.0.2:")));
    let new = "198.18.0.3";
    for cmd in [
        // (Deleting the primary address deletes its secondaries.)
        vec!["ip", "addr", "del", "198.18.0.2/24", "dev", "eth0"],
        vec!["ip", "addr", "add", "198.18.0.3/24", "dev", "eth0"],
        vec!["ip", "route", "replace", "default", "via", "198.18.0.1"],
    ] {
        n.tb.ok(&n.tb.host, &cmd).unwrap();
    }
    let mut body = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        body = curl(&n);
        body.contains(&format!("to {new}:"))
    });
    assert!(ok, "egress after the address change: {body:?}\n{}", n.log());
}

/// ebpf: pins of links whose veth went away while no daemon ran are
/// removed on start.
#[test]
fn ebpf_removes_stale_link_pins() {
    if !netd_tests::require_root("ebpf_removes_stale_link_pins") {
        return;
    }
    let mut n = Netd::start("ebpf").unwrap();
    n.stop_daemon(true);
    // A veth of a container the state does not know, attached and pinned
    // as netd does, then deleted.
    n.tb.ok(
        &n.tb.host,
        &[
            "ip",
            "link",
            "add",
            "vndstale0",
            "type",
            "veth",
            "peer",
            "vndstale1",
        ],
    )
    .unwrap();
    let pin = n.dir.join("bpffs/links/vndstale0");
    let mut p = netd::bpf::Programs::load(netd::bpf::BpfLogLevel::Off).unwrap();
    n.tb.host
        .run(|| p.attach_pinned(netd::bpf::FROM_CONTAINER, "vndstale0", &pin))
        .unwrap();
    drop(p);
    n.tb.ok(&n.tb.host, &["ip", "link", "del", "vndstale0"])
        .unwrap();
    assert!(pin.exists());
    n.start_daemon().unwrap();
    assert!(!pin.exists(), "the stale pin is gone");
    assert!(
        n.dir.join("bpffs/links/eth0").exists(),
        "the uplink's is there"
    );
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
    unpublished_ports_unreachable_by_routing,
    big_datagrams_through_nat,
    small_uplink_mtu_keeps_uploads_flowing,
    host_client_on_a_published_port_number,
    syn_flood_keeps_established_flows,
    icc_false_holds_for_ipv6,
    arp_spoofing_is_dropped,
    loopback_port_unreachable_from_a_neighbour,
    datagram_above_the_container_mtu,
);
