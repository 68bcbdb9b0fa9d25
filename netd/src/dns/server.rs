//! The embedded DNS server's sockets: one UDP and one TCP listener on
//! port 53 of each user-defined network's gateway address (never on a
//! wildcard address, so another resolver on the host keeps its port), and
//! the forwarding of what is not ours to upstream resolvers.
//!
//! Every path is bounded: forwards have a deadline and a cap on how many
//! are in flight (past it: SERVFAIL at once), TCP connections have an idle
//! timeout and a cap, and a reply that cannot be sent at once is dropped
//! rather than waited for. A listener that cannot bind (port 53 taken)
//! fails that network's DNS only; the daemon retries it and reports it in
//! `network inspect`.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{FromRawFd, IntoRawFd},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, MessageType};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen, setsockopt,
    socket, sockopt,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
    time::timeout,
};

use super::{
    records::Snapshot,
    responder::{self, Forward, Outcome, Transport},
};

pub const PORT: u16 = 53;
/// How long a forwarded query may take, all upstreams together.
pub const FORWARD_DEADLINE: Duration = Duration::from_millis(2500);
/// Forwards in flight at once (each holds one socket).
const MAX_FORWARDS: usize = 1024;
/// TCP connections at once, and how long one may sit idle.
const MAX_TCP: usize = 256;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Receive buffer of a UDP listener: room for bursts (a few thousand
/// queries) while the responder catches up.
const UDP_RCVBUF: usize = 1 << 20;

/// One network's counters (`network inspect`, "DNS"."Stats").
#[derive(Default)]
pub struct Stats {
    /// Messages received: UDP datagrams, TCP frames.
    udp: AtomicU64,
    tcp: AtomicU64,
    /// Answered here (names, NXDOMAIN, FORMERR, REFUSED, ...).
    answered: AtomicU64,
    /// Sent upstream.
    forwarded: AtomicU64,
    /// Answered SERVFAIL: no upstream answered in time, or too many
    /// forwards in flight.
    servfail: AtomicU64,
    /// Dropped: unreadable headers and responses.
    dropped: AtomicU64,
}

impl Stats {
    fn json(&self) -> Value {
        json!({
            "Received": { "Udp": self.udp.load(Relaxed), "Tcp": self.tcp.load(Relaxed) },
            "Answered": self.answered.load(Relaxed),
            "Forwarded": self.forwarded.load(Relaxed),
            "ServFail": self.servfail.load(Relaxed),
            "Dropped": self.dropped.load(Relaxed),
        })
    }
}

pub type Shared = Arc<RwLock<Arc<Snapshot>>>;

struct Limits {
    forwards: Arc<Semaphore>,
    tcp: Arc<Semaphore>,
}

/// One network's listeners; their tasks end when it is dropped.
struct Listener {
    network: String,
    gw: IpAddr,
    stats: Arc<Stats>,
    udp: std::result::Result<JoinHandle<()>, String>,
    tcp: std::result::Result<JoinHandle<()>, String>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for h in [&self.udp, &self.tcp].into_iter().flatten() {
            h.abort();
        }
    }
}

impl Listener {
    /// Stops the listener and waits until its sockets are closed, so the
    /// address can be bound again at once.
    async fn stop(mut self) {
        let udp = std::mem::replace(&mut self.udp, Err(String::new()));
        let tcp = std::mem::replace(&mut self.tcp, Err(String::new()));
        for h in [udp, tcp].into_iter().flatten() {
            h.abort();
            let _ = h.await;
        }
    }

    fn status(&self) -> String {
        match (&self.udp, &self.tcp) {
            (Ok(_), Ok(_)) => "running".into(),
            (Err(u), Ok(_)) => format!("failed: {u}"),
            (Ok(_), Err(t)) => format!("degraded (UDP only): {t}"),
            (Err(u), Err(t)) => format!("failed: {u}; {t}"),
        }
    }
}

/// The daemon's handle on its DNS server.
pub struct Server {
    shared: Shared,
    limits: Arc<Limits>,
    /// By network id.
    listeners: HashMap<String, Listener>,
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    pub fn new() -> Server {
        Server {
            shared: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
            limits: Arc::new(Limits {
                forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
                tcp: Arc::new(Semaphore::new(MAX_TCP)),
            }),
            listeners: HashMap::new(),
        }
    }

    /// Publishes `snap` (queries see it from now on) and makes the
    /// listeners match its zones: new networks get listeners, removed ones
    /// lose them, failed binds are tried again. Must run inside the
    /// daemon's tokio runtime and network namespace.
    pub async fn update(&mut self, snap: Snapshot) {
        let wanted: HashMap<String, (IpAddr, String)> = snap
            .zones
            .iter()
            .map(|(gw, z)| (z.network_id.clone(), (*gw, z.name.clone())))
            .collect();
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        let stale: Vec<String> = self
            .listeners
            .iter()
            .filter(|(id, l)| wanted.get(*id).is_none_or(|(gw, _)| *gw != l.gw))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(l) = self.listeners.remove(&id) {
                l.stop().await;
            }
        }
        for (id, (gw, name)) in wanted {
            let before = self.listeners.get(&id).map(Listener::status);
            let l = self.listeners.remove(&id);
            let l = self.start(id.clone(), gw, l);
            let now = l.status();
            if before.as_deref() != Some(now.as_str()) {
                if l.udp.is_ok() && l.tcp.is_ok() {
                    tracing::info!("network {name}: embedded DNS listening on {gw}:{PORT}");
                } else {
                    tracing::error!(
                        "network {name}: embedded DNS on {gw}:{PORT} {now}; containers on it \
                         cannot resolve names until the port is free (netd retries)"
                    );
                }
            }
            self.listeners.insert(id, l);
        }
    }

    /// Binds what is not bound yet.
    fn start(&self, network: String, gw: IpAddr, old: Option<Listener>) -> Listener {
        let mut l = old.unwrap_or(Listener {
            network,
            gw,
            stats: Arc::default(),
            udp: Err("not started".into()),
            tcp: Err("not started".into()),
        });
        let ctx = || Ctx {
            gw,
            shared: self.shared.clone(),
            limits: self.limits.clone(),
            stats: l.stats.clone(),
        };
        if l.udp.is_err() {
            l.udp = bind_udp(gw)
                .map(|s| tokio::spawn(serve_udp(s, ctx())))
                .map_err(|e| format!("UDP {gw}:{PORT}: {e}"));
        }
        if l.tcp.is_err() {
            l.tcp = bind_tcp(gw)
                .map(|s| tokio::spawn(serve_tcp(s, ctx())))
                .map_err(|e| format!("TCP {gw}:{PORT}: {e}"));
        }
        l
    }

    /// True when some network's DNS could not bind (worth a retry).
    pub fn has_failures(&self) -> bool {
        self.listeners
            .values()
            .any(|l| l.udp.is_err() || l.tcp.is_err())
    }

    /// The `DNS` object of `network inspect`.
    pub fn status(&self, network_id: &str) -> Value {
        match self.listeners.get(network_id) {
            Some(l) => json!({
                "Enabled": true,
                "Address": SocketAddr::new(l.gw, PORT).to_string(),
                "Status": l.status(),
                "Stats": l.stats.json(),
            }),
            None => json!({ "Enabled": false }),
        }
    }

    /// The current snapshot (for tests and stats).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn networks(&self) -> Vec<String> {
        self.listeners.values().map(|l| l.network.clone()).collect()
    }
}

fn freebind_socket(gw: IpAddr, ty: SockType) -> std::io::Result<std::os::fd::OwnedFd> {
    let family = match gw {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // The gateway address may not be configured yet (or is being
    // re-added): bind to it regardless (IP_FREEBIND holds for IPv6
    // sockets too).
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    if gw.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    Ok(fd)
}

/// Binds `fd` to port 53 of `gw`.
fn bind_to(fd: &std::os::fd::OwnedFd, gw: IpAddr) -> std::io::Result<()> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
    match gw {
        IpAddr::V4(a) => bind(raw, &SockaddrIn::from(SocketAddrV4::new(a, PORT)))?,
        IpAddr::V6(a) => bind(raw, &SockaddrIn6::from(SocketAddrV6::new(a, PORT, 0, 0)))?,
    }
    Ok(())
}

/// A UDP socket on `gw:53`.
pub fn bind_udp(gw: IpAddr) -> std::io::Result<UdpSocket> {
    let fd = freebind_socket(gw, SockType::Datagram)?;
    // Past net.core.rmem_max when the daemon may (it runs as root).
    if setsockopt(&fd, sockopt::RcvBufForce, &UDP_RCVBUF).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &UDP_RCVBUF);
    }
    bind_to(&fd, gw)?;
    // SAFETY: a bound UDP socket we own, handed over once.
    let std = unsafe { std::net::UdpSocket::from_raw_fd(fd.into_raw_fd()) };
    UdpSocket::from_std(std)
}

/// A TCP listener on `gw:53`.
pub fn bind_tcp(gw: IpAddr) -> std::io::Result<TcpListener> {
    let fd = freebind_socket(gw, SockType::Stream)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind_to(&fd, gw)?;
    listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    // SAFETY: a listening TCP socket we own, handed over once.
    let std = unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
    TcpListener::from_std(std)
}

/// What a listener task works with.
#[derive(Clone)]
struct Ctx {
    gw: IpAddr,
    shared: Shared,
    limits: Arc<Limits>,
    stats: Arc<Stats>,
}

impl Ctx {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers one message; counts what happened.
    fn respond(&self, from: IpAddr, msg: &[u8], t: Transport) -> Outcome {
        match t {
            Transport::Udp => &self.stats.udp,
            Transport::Tcp => &self.stats.tcp,
        }
        .fetch_add(1, Relaxed);
        let o = responder::respond(&self.snapshot(), self.gw, from, msg, t);
        let c = match &o {
            Outcome::Reply(_) => &self.stats.answered,
            Outcome::Forward(_) => &self.stats.forwarded,
            Outcome::Drop => &self.stats.dropped,
        };
        c.fetch_add(1, Relaxed);
        o
    }

    /// Forwards within the limits: SERVFAIL at once when too many are in
    /// flight, or when no upstream answers in time.
    async fn forward(&self, f: &Forward, t: Transport) -> Vec<u8> {
        let answer = match self.limits.forwards.clone().try_acquire_owned() {
            Ok(_permit) => forward(f, t).await,
            Err(_) => None,
        };
        answer.unwrap_or_else(|| {
            self.stats.servfail.fetch_add(1, Relaxed);
            f.servfail.clone()
        })
    }
}

/// The UDP listener. Forwarded queries are answered through a channel,
/// so only this task holds the socket (stopping it frees the port).
async fn serve_udp(sock: UdpSocket, ctx: Ctx) {
    let mut buf = vec![0u8; 65536];
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u8>, SocketAddr)>(MAX_FORWARDS);
    loop {
        let r = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            Some((answer, to)) = rx.recv() => {
                let _ = sock.try_send_to(&answer, to);
                continue;
            }
        };
        let (n, from) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("dns {}: recv: {e}", ctx.gw);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        match ctx.respond(from.ip(), &buf[..n], Transport::Udp) {
            Outcome::Reply(r) => {
                let _ = sock.try_send_to(&r, from);
            }
            Outcome::Forward(f) => {
                let (tx, ctx) = (tx.clone(), ctx.clone());
                tokio::spawn(async move {
                    let r = ctx.forward(&f, Transport::Udp).await;
                    let _ = tx.try_send((r, from));
                });
            }
            Outcome::Drop => {}
        }
    }
}

async fn serve_tcp(l: TcpListener, ctx: Ctx) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off a little.
                tracing::debug!("dns {}: accept: {e}", ctx.gw);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.limits.tcp.clone().try_acquire_owned() else {
            continue; // dropped: closed
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tcp_conn(stream, peer.ip(), &ctx).await;
            drop(permit);
        });
    }
}

/// Length-prefixed messages, answered in order, until the client closes,
/// idles past [`TCP_IDLE`] or sends something netd drops.
async fn tcp_conn(mut s: TcpStream, peer: IpAddr, ctx: &Ctx) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    loop {
        let mut len = [0u8; 2];
        timeout(TCP_IDLE, s.read_exact(&mut len)).await??;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        timeout(TCP_IDLE, s.read_exact(&mut msg)).await??;
        let out = match ctx.respond(peer, &msg, Transport::Tcp) {
            Outcome::Reply(r) => r,
            Outcome::Forward(f) => ctx.forward(&f, Transport::Tcp).await,
            Outcome::Drop => return Ok(()),
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        timeout(TCP_IDLE, s.write_all(&framed)).await??;
    }
}

/// A random 16-bit query id for upstream queries.
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom(2) into a 2-byte buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        // No entropy source: mix the clock (ids only guard against
        // mismatched answers here, the socket is per query).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        return (t ^ (t >> 16)) as u16;
    }
    u16::from_ne_bytes(b)
}

/// Forwards `f` to its upstreams in order, within [`FORWARD_DEADLINE`]
/// (shared among the servers still to try); the first answer wins. None
/// when no upstream answers.
pub async fn forward(f: &Forward, transport: Transport) -> Option<Vec<u8>> {
    let deadline = Instant::now() + FORWARD_DEADLINE;
    let n = f.upstreams.len();
    for (i, up) in f.upstreams.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let slice = left / (n - i) as u32;
        let id = random_id();
        let mut q = f.query.clone();
        q.metadata.id = id;
        let Ok(wire) = q.to_vec() else {
            break;
        };
        let r = match transport {
            Transport::Udp => timeout(slice, ask_udp(*up, &wire, id, &f.query)).await,
            Transport::Tcp => timeout(slice, ask_tcp(*up, &wire, id, &f.query)).await,
        };
        match r {
            Ok(Ok(mut m)) => {
                m.metadata.id = f.query.metadata.id;
                let max = match transport {
                    Transport::Udp => f.max_size,
                    Transport::Tcp => u16::MAX,
                };
                if let Some(b) = responder::encode(&m, max) {
                    return Some(b);
                }
            }
            Ok(Err(e)) => tracing::debug!("dns forward to {up}: {e}"),
            Err(_) => tracing::debug!("dns forward to {up}: timed out"),
        }
    }
    None
}

/// Whether `m` answers `q` (sent with id `id`).
fn answers(m: &Message, id: u16, q: &Message) -> bool {
    m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == q.queries.len()
        && m.queries.iter().zip(&q.queries).all(|(a, b)| {
            a.query_type == b.query_type && a.query_class == b.query_class && a.name == b.name
        })
}

async fn ask_udp(up: SocketAddr, wire: &[u8], id: u16, q: &Message) -> std::io::Result<Message> {
    let local: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(up).await?;
    s.send(wire).await?;
    let mut buf = vec![0u8; 65536];
    loop {
        // A refused port comes back as an error here: next upstream.
        let n = s.recv(&mut buf).await?;
        if let Ok(m) = Message::from_vec(&buf[..n])
            && answers(&m, id, q)
        {
            return Ok(m);
        }
    }
}

async fn ask_tcp(up: SocketAddr, wire: &[u8], id: u16, q: &Message) -> std::io::Result<Message> {
    let mut s = TcpStream::connect(up).await?;
    let _ = s.set_nodelay(true);
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&(wire.len() as u16).to_be_bytes());
    framed.extend_from_slice(wire);
    s.write_all(&framed).await?;
    loop {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await?;
        if let Ok(m) = Message::from_vec(&buf)
            && answers(&m, id, q)
        {
            return Ok(m);
        }
    }
}
