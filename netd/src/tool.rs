//! Small traffic tools netd carries so tests, the demo and benchmarks need
//! nothing beyond the binary: an HTTP server that reports the client's
//! address, a UDP echo server, a half-close check. Hidden from `netd
//! --help`.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
};

use anyhow::{Context, Result};

/// Serves every request with `200 OK` and a body naming the server and the
/// client's address (`hello from NAME to IP:PORT`), so tests can assert who
/// answered and which source address arrived (masquerade, DNAT).
pub fn http_serve(listen: SocketAddr, name: &str) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let name = name.to_string();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("hello from {name} to {peer}\n");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
    Ok(())
}

/// Half-close: reads each connection until the client's FIN, then
/// answers `NAME got N bytes` and closes (a proxy that loses the
/// half-close leaves the client waiting).
pub fn eof_serve(listen: SocketAddr, name: &str) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        let name = name.to_string();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            if s.read_to_end(&mut got).is_ok() {
                let _ = write!(s, "{name} got {} bytes", got.len());
            }
        });
    }
    Ok(())
}

/// Connects, sends `msg`, half-closes (shutdown of the write side) and
/// prints what comes back until the server closes.
pub fn eof_send(to: SocketAddr, msg: &str, timeout_ms: u64) -> Result<()> {
    let timeout = std::time::Duration::from_millis(timeout_ms);
    let mut s = std::net::TcpStream::connect_timeout(&to, timeout)
        .with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(msg.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .with_context(|| format!("reading the answer from {to}"))?;
    println!("{answer}");
    Ok(())
}

/// Echoes every datagram back, prefixed with `NAME:` and followed by the
/// sender's address.
pub fn udp_echo(listen: SocketAddr, name: &str) -> Result<()> {
    let s = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let mut buf = [0u8; 65536];
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        let reply = format!("{name}:{} from {from}", String::from_utf8_lossy(&buf[..n]));
        let _ = s.send_to(reply.as_bytes(), from);
    }
}

/// Sends one datagram on a connected socket and prints the reply; fails
/// on timeout, and says "connection refused" when an ICMP port
/// unreachable comes back.
pub fn udp_send(to: SocketAddr, msg: &str, timeout_ms: u64) -> Result<()> {
    let s = UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
    s.connect(to)?;
    s.set_read_timeout(Some(std::time::Duration::from_millis(timeout_ms)))?;
    let mut buf = [0u8; 65536];
    for _ in 0..3 {
        s.send(msg.as_bytes())?;
        match s.recv(&mut buf) {
            Ok(n) => {
                println!("{}", String::from_utf8_lossy(&buf[..n]));
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                anyhow::bail!("{to}: connection refused (ICMP port unreachable)")
            }
            Err(_) => {}
        }
    }
    anyhow::bail!("no UDP reply from {to}")
}

/// TCP request/response server: answers every 1-byte request with 1 byte.
/// A `c` request (TCP_CRR) is answered and then the server closes (first,
/// as an HTTP/1.0 server does, so TIME_WAIT stays here and the client's
/// ports are never exhausted).
///
/// A TCP_CRR connection is served where it is accepted, as netperf's
/// server does: a thread per connection would cost every connection a
/// thread's creation and exit on the CPU that also runs the datapath's
/// work, the same for every datapath, and hide part of what tells them
/// apart. A connection whose first request is anything else (TCP_RR) gets
/// a thread of its own; one that sends nothing for a second is dropped.
pub fn rr_server(listen: SocketAddr) -> Result<()> {
    const FIRST_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        let mut b = [0u8; 1];
        let first = s
            .set_nodelay(true)
            .and_then(|()| s.set_read_timeout(Some(FIRST_REQUEST)))
            .and_then(|()| s.read_exact(&mut b))
            .and_then(|()| s.write_all(&b))
            .and_then(|()| s.set_read_timeout(None));
        if first.is_err() || b[0] == b'c' {
            continue;
        }
        std::thread::spawn(move || {
            while s.read_exact(&mut b).is_ok() {
                if s.write_all(&b).is_err() || b[0] == b'c' {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// TCP_RR: one connection, 1-byte request, 1-byte response, back to back
/// for `secs`; prints transactions/s and latency p50/p99 (microseconds).
pub fn rr_client(to: SocketAddr, secs: f64) -> Result<()> {
    let mut s = std::net::TcpStream::connect(to).with_context(|| format!("connecting {to}"))?;
    s.set_nodelay(true)?;
    let mut lat = Vec::with_capacity(1 << 20);
    let start = std::time::Instant::now();
    let mut b = [0u8; 1];
    while start.elapsed().as_secs_f64() < secs {
        let t = std::time::Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "{{\"transactions_per_sec\": {:.0}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"transactions\": {}}}",
        lat.len() as f64 / total,
        pct(0.50),
        pct(0.99),
        lat.len()
    );
    Ok(())
}

/// TCP_CRR: connect, 1-byte request, 1-byte response, the server closes
/// (first), then the client; back to back for `secs`; prints
/// connections/s and latency p50/p99 (microseconds) of connect..close.
pub fn crr_client(to: SocketAddr, secs: f64) -> Result<()> {
    const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
    let mut failures = 0u64;
    let mut lat = Vec::with_capacity(1 << 18);
    let start = std::time::Instant::now();
    let mut b = [0u8; 1];
    while start.elapsed().as_secs_f64() < secs {
        let t = std::time::Instant::now();
        let mut s = match std::net::TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        s.set_nodelay(true)?;
        s.write_all(b"c")?;
        s.read_exact(&mut b)?;
        // The server closes first: wait for its FIN, then close.
        let _ = s.read(&mut b);
        drop(s);
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    anyhow::ensure!(!lat.is_empty(), "no connection to {to} succeeded");
    println!(
        "{{\"connections_per_sec\": {:.0}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"connections\": {}, \"failed_connects\": {failures}}}",
        lat.len() as f64 / total,
        pct(0.50),
        pct(0.99),
        lat.len()
    );
    Ok(())
}

/// UDP request/response: 1-byte datagram, wait for the echo, back to back
/// for `secs` (a lost datagram is retried after 200 ms); prints
/// transactions/s and latency p50/p99 (microseconds).
pub fn udp_rr_client(to: SocketAddr, secs: f64) -> Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    let mut lat = Vec::with_capacity(1 << 20);
    let mut buf = [0u8; 2048];
    let start = std::time::Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let t = std::time::Instant::now();
        s.send(b"x")?;
        if s.recv(&mut buf).is_ok() {
            lat.push(t.elapsed().as_nanos() as u64);
        }
    }
    anyhow::ensure!(!lat.is_empty(), "no UDP reply from {to}");
    let total = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "{{\"transactions_per_sec\": {:.0}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"transactions\": {}}}",
        lat.len() as f64 / total,
        pct(0.50),
        pct(0.99),
        lat.len()
    );
    Ok(())
}
