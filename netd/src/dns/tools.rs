//! DNS tools for tests, the demo and benchmarks (hidden `netd tool`
//! subcommands): a query client, a tiny upstream server with fixed
//! records, a one-client benchmark and a fuzzer. Blocking I/O: each runs
//! as its own short-lived process.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
};

use super::responder::{self, UDP_PLAIN};

/// xorshift64*: a small deterministic generator for the fuzzer.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

fn parse_type(t: &str) -> Result<RecordType> {
    t.to_ascii_uppercase()
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown record type {t:?}"))
}

/// Valid queries the fuzzer starts from (and mutates), plus a few
/// classic hostile shapes (compression loops, wrong counts).
pub fn seed_queries() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let names = [
        "web",
        "db.mynet",
        "example.com",
        "2.0.1.10.in-addr.arpa",
        "a.very.long.name.that.goes.on.and.on.example.org",
        "cache",
        ".",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::PTR,
        RecordType::ANY,
        RecordType::TXT,
        RecordType::MX,
    ];
    for (i, n) in names.iter().enumerate() {
        for (j, t) in types.iter().enumerate() {
            let name = Name::from_ascii(n).expect("valid seed name");
            let m = responder::query((i * 16 + j) as u16, &name, *t, (i + j) % 2 == 0);
            v.push(m.to_vec().expect("encodes"));
        }
    }
    // Compression pointer to itself; pointer forward past the end.
    v.push(vec![
        0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ]);
    v.push(vec![
        0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0, 1, 0, 1,
    ]);
    // Counts far larger than the message.
    v.push(vec![
        0, 3, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ]);
    v
}

/// The `i`-th fuzz input: random bytes, bit flips and byte overwrites of
/// a seed, truncations and extensions, and random header fields.
pub fn fuzz_case(rng: &mut Rng, seeds: &[Vec<u8>], i: u32) -> Vec<u8> {
    let seed = &seeds[rng.below(seeds.len())];
    match i % 5 {
        0 => {
            let len = rng.below(600);
            (0..len).map(|_| rng.byte()).collect()
        }
        1 => {
            let mut b = seed.clone();
            for _ in 0..1 + rng.below(8) {
                let k = rng.below(b.len());
                if rng.next_u64() & 1 == 0 {
                    b[k] ^= 1 << rng.below(8);
                } else {
                    b[k] = rng.byte();
                }
            }
            b
        }
        2 => {
            let mut b = seed.clone();
            if rng.next_u64() & 1 == 0 {
                b.truncate(rng.below(b.len() + 1));
            } else {
                for _ in 0..rng.below(64) {
                    b.push(rng.byte());
                }
            }
            b
        }
        3 => {
            let mut b = seed.clone();
            // Flags and the four counts.
            for k in 2..12.min(b.len()) {
                if rng.next_u64().is_multiple_of(3) {
                    b[k] = rng.byte();
                }
            }
            // Queries only: a response is dropped, which tests nothing.
            if b.len() > 2 {
                b[2] &= 0x7f;
            }
            b
        }
        _ => {
            // Splice two seeds.
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(seed.len().min(other.len()) + 1);
            let mut b = seed[..cut].to_vec();
            b.extend_from_slice(&other[cut..]);
            b
        }
    }
}

/// Sends one query and returns the answer (UDP, or TCP with `tcp`).
pub fn exchange(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    tcp: bool,
    timeout: Duration,
) -> Result<Message> {
    let name = Name::from_ascii(name).with_context(|| format!("invalid name {name:?}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let id = (nanos ^ (nanos >> 16) ^ std::process::id()) as u16;
    let q = responder::query(id, &name, qtype, true);
    let wire = q.to_vec()?;
    let deadline = Instant::now() + timeout;
    if tcp {
        let mut s = TcpStream::connect_timeout(&server, timeout)
            .with_context(|| format!("connecting to {server}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(&(wire.len() as u16).to_be_bytes())?;
        s.write_all(&wire)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).context("no answer over TCP")?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf)?;
        return Ok(Message::from_vec(&buf)?);
    }
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(server)?;
    s.send(&wire)?;
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer from {server} within {timeout:?}");
        }
        s.set_read_timeout(Some(left))?;
        match s.recv(&mut buf) {
            Ok(n) => {
                if let Ok(m) = Message::from_vec(&buf[..n])
                    && m.metadata.id == id
                {
                    return Ok(m);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                bail!("{server}: connection refused")
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("no answer from {server} within {timeout:?}")
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `netd tool dns-query SERVER NAME [TYPE]`: prints the status line and
/// the answers, dig-like. Fails only when no answer comes.
pub fn dns_query(server: SocketAddr, name: &str, qtype: &str, tcp: bool, ms: u64) -> Result<()> {
    let t = Instant::now();
    let m = exchange(
        server,
        name,
        parse_type(qtype)?,
        tcp,
        Duration::from_millis(ms),
    )?;
    let mut flags = vec!["qr"];
    for (on, f) in [
        (m.metadata.authoritative, "aa"),
        (m.metadata.truncation, "tc"),
        (m.metadata.recursion_desired, "rd"),
        (m.metadata.recursion_available, "ra"),
    ] {
        if on {
            flags.push(f);
        }
    }
    println!(
        ";; status: {}, flags: {}, answers: {}, time: {} ms",
        rcode_name(m.metadata.response_code),
        flags.join(" "),
        m.answers.len(),
        t.elapsed().as_millis()
    );
    for r in &m.answers {
        println!("{r}");
    }
    Ok(())
}

pub fn rcode_name(c: ResponseCode) -> String {
    match c {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        c => format!("{c:?}").to_uppercase(),
    }
}

/// `netd tool dns-serve LISTEN --record NAME=IP...`: an upstream resolver
/// for tests (UDP and TCP): A records for the given names, NOERROR with
/// nothing for their other types, NXDOMAIN for every other name.
pub fn dns_serve(listen: SocketAddr, records: &[String]) -> Result<()> {
    let mut table: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
    for r in records {
        let (n, ip) = r
            .split_once('=')
            .with_context(|| format!("invalid --record {r:?}: expected NAME=IP"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .with_context(|| format!("invalid --record {r:?}"))?;
        table
            .entry(n.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .push(ip);
    }
    let answer = move |buf: &[u8], max: u16| -> Option<Vec<u8>> {
        let q = Message::from_vec(buf).ok()?;
        if q.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut r = Message::response(q.metadata.id, OpCode::Query);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.metadata.authoritative = true;
        r.add_queries(q.queries.iter().cloned());
        if let Some(e) = q.edns {
            r.set_edns(e);
        }
        match q.queries.first() {
            Some(qq) => {
                let key = responder::name_key(&qq.name).unwrap_or_default();
                match table.get(&key) {
                    Some(ips) => {
                        if matches!(qq.query_type, RecordType::A | RecordType::ANY) {
                            for ip in ips {
                                r.add_answer(Record::from_rdata(
                                    qq.name.clone(),
                                    60,
                                    RData::A(A(*ip)),
                                ));
                            }
                        }
                    }
                    None => r.metadata.response_code = ResponseCode::NXDomain,
                }
            }
            None => r.metadata.response_code = ResponseCode::FormErr,
        }
        responder::encode(&r, max)
    };
    let udp = UdpSocket::bind(listen).with_context(|| format!("binding {listen}/udp"))?;
    let tcp = TcpListener::bind(listen).with_context(|| format!("binding {listen}/tcp"))?;
    let a2 = answer.clone();
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let Ok(mut s) = conn else { continue };
            let a = a2.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut buf).is_err() {
                        return;
                    }
                    let Some(out) = a(&buf, u16::MAX) else { return };
                    let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&out);
                    if s.write_all(&framed).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut buf = [0u8; 65536];
    loop {
        let (n, from) = udp.recv_from(&mut buf)?;
        if let Some(out) = answer(&buf[..n], UDP_PLAIN.max(1232)) {
            let _ = udp.send_to(&out, from);
        }
    }
}

/// `netd tool dns-bench SERVER NAME --secs N`: one client, one query in
/// flight, back to back; prints queries/s and latency p50/p99 (µs).
pub fn dns_bench(server: SocketAddr, name: &str, qtype: &str, secs: f64) -> Result<()> {
    let name = Name::from_ascii(name)?;
    let qtype = parse_type(qtype)?;
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(server)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut lat = Vec::with_capacity(1 << 20);
    let mut buf = [0u8; 4096];
    let (mut timeouts, mut bad) = (0u64, 0u64);
    let start = Instant::now();
    let mut id: u16 = 0;
    while start.elapsed().as_secs_f64() < secs {
        id = id.wrapping_add(1);
        let wire = responder::query(id, &name, qtype, false).to_vec()?;
        let t = Instant::now();
        s.send(&wire)?;
        loop {
            match s.recv(&mut buf) {
                Ok(n) => {
                    let Ok(m) = Message::from_vec(&buf[..n]) else {
                        bad += 1;
                        break;
                    };
                    if m.metadata.id != id {
                        continue;
                    }
                    if m.metadata.response_code != ResponseCode::NoError || m.answers.is_empty() {
                        bad += 1;
                    }
                    lat.push(t.elapsed().as_nanos() as u64);
                    break;
                }
                Err(_) => {
                    timeouts += 1;
                    break;
                }
            }
        }
    }
    let total = start.elapsed().as_secs_f64();
    if lat.is_empty() {
        bail!("no answers from {server}");
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "{{\"queries_per_sec\": {:.0}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"queries\": {}, \"timeouts\": {timeouts}, \"bad_answers\": {bad}}}",
        lat.len() as f64 / total,
        pct(0.50),
        pct(0.99),
        lat.len()
    );
    Ok(())
}

/// Whether the server owes an answer to `b`: its header can be read
/// and it is a query (netd drops everything else).
fn expects_answer(b: &[u8]) -> bool {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    hickory_proto::op::Header::read(&mut BinDecoder::new(b))
        .is_ok_and(|h| h.metadata.message_type == MessageType::Query)
}

/// `netd tool dns-fuzz SERVER --count N`: sends N random and mutated
/// messages over UDP, paced so the server sees them rather than a full
/// socket buffer (at most 64 owed answers in flight), then hostile TCP
/// conversations: random frames, huge lengths, garbage, and connections
/// left idle while another one must still be answered. Prints what it
/// sent and what came back.
pub fn dns_fuzz(server: SocketAddr, count: u32, seed: u64, tcp_conns: u32) -> Result<()> {
    const WINDOW: u32 = 64;
    let mut rng = Rng::new(seed);
    let seeds = seed_queries();
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(server)?;
    let mut buf = [0u8; 65536];
    let (mut replies, mut short, mut owed, mut stalls) = (0u64, 0u64, 0u32, 0u32);
    let start = Instant::now();
    for i in 0..count {
        let b = fuzz_case(&mut rng, &seeds, i);
        match s.send(&b) {
            Ok(_) if expects_answer(&b) => owed += 1,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                bail!("{server}: connection refused after {i} messages: the server is gone")
            }
            Err(_) => {}
        }
        // Take what has come back; wait when too much is owed.
        loop {
            let block = owed >= WINDOW;
            s.set_nonblocking(!block)?;
            if block {
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
            }
            match s.recv(&mut buf) {
                Ok(n) => {
                    replies += 1;
                    owed = owed.saturating_sub(1);
                    if n < 12 {
                        short += 1;
                    }
                }
                Err(_) if block => {
                    // Answers that did not come (slow forwards): move on.
                    stalls += 1;
                    owed = 0;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    while let Ok(n) = s.recv(&mut buf) {
        replies += 1;
        if n < 12 {
            short += 1;
        }
    }
    let udp_secs = start.elapsed().as_secs_f64();
    // TCP.
    let mut idle = Vec::new();
    let mut tcp_ok = 0u32;
    for c in 0..tcp_conns {
        let Ok(mut t) = TcpStream::connect_timeout(&server, Duration::from_secs(2)) else {
            continue;
        };
        tcp_ok += 1;
        let _ = t.set_write_timeout(Some(Duration::from_millis(500)));
        match c % 4 {
            0 => {
                // Several framed fuzz messages.
                for k in 0..8 {
                    let b = fuzz_case(&mut rng, &seeds, c * 8 + k);
                    let mut f = (b.len() as u16).to_be_bytes().to_vec();
                    f.extend_from_slice(&b);
                    if t.write_all(&f).is_err() {
                        break;
                    }
                }
            }
            1 => {
                // A length larger than what follows, then close.
                let _ = t.write_all(&[0xff, 0xff, 1, 2, 3]);
            }
            2 => {
                // Raw garbage.
                let g: Vec<u8> = (0..rng.below(300)).map(|_| rng.byte()).collect();
                let _ = t.write_all(&g);
            }
            _ => {
                // Half a length prefix, then nothing: kept open, idle.
                let _ = t.write_all(&[0]);
                idle.push(t);
            }
        }
    }
    // With the idle connections still open, a well-formed query over a
    // new connection must be answered.
    let tcp_answered = exchange(
        server,
        "fuzz-check",
        RecordType::A,
        true,
        Duration::from_secs(5),
    )
    .is_ok();
    drop(idle);
    println!(
        "{{\"udp_sent\": {count}, \"udp_replies\": {replies}, \"udp_short_replies\": {short}, \"udp_stalls\": {stalls}, \"udp_secs\": {udp_secs:.2}, \"tcp_connections\": {tcp_ok}, \"tcp_answered_while_idle_connections\": {tcp_answered}}}"
    );
    Ok(())
}
