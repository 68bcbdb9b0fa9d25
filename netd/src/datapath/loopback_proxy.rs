//! The userland proxy for `[::1]` on the netfilter datapaths, in the role
//! of Docker's docker-proxy.
//!
//! IPv6 has no `route_localnet`: a connection from `::1` DNATed to a
//! container gets its reply turned back into `::1` by br_netfilter's
//! bridge-level pass, and the bridge's IPv6 input drops a loopback
//! destination. So the iptables and nftables datapaths leave `::1` out of
//! their DNAT (`-d ::1/128 -j RETURN`, `ip6 daddr ::1 return`), and this
//! proxy serves it: for every published binding that covers `::1`
//! (host address `0.0.0.0`, `::` or `::1`) it listens on `[::1]:HOSTPORT`
//! inside the daemon and forwards to the container (its IPv6 address when
//! the endpoint has one, else its IPv4 address; one listener per port of
//! a range). The container sees the proxy's connection: from the host's
//! address on its bridge (the network's gateway), as with docker-proxy.
//!
//! - TCP: one upstream connection per accepted client, bytes copied both
//!   ways (`copy_bidirectional`: a half-close is passed on).
//! - UDP: one upstream socket per client address, connected to the
//!   container; replies go back from `[::1]:HOSTPORT`; a flow ends after
//!   [`UDP_IDLE`] without a datagram either way (at most
//!   [`UDP_MAX_FLOWS`] per port; more are dropped until one ends).
//!
//! [`LoopbackProxy::sync`] follows the state the rules are rendered from:
//! listeners start and stop with the bindings. A port that another
//! process of the host holds on `[::1]` refuses the change that would
//! publish it (an API 409, as Docker fails the container's start with
//! "address already in use"); at the daemon's start it is only logged,
//! and it is tried again every few seconds ([`LoopbackProxy::retry`]).
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    runtime::Handle,
    task::{JoinHandle, JoinSet},
};

use super::iptables::{Family, net_family};
use crate::{
    api::ApiError,
    model::Status,
    portspec::{PortBinding, Proto},
    state::State,
};

/// A UDP flow without a datagram either way for this long ends (Docker's
/// docker-proxy uses 90 s too).
pub const UDP_IDLE: Duration = Duration::from_secs(90);
/// UDP flows per proxied port.
pub const UDP_MAX_FLOWS: usize = 1024;
/// How long a stopped listener may take to close (its task is dropped on
/// a runtime worker).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A proxied port: `[::1]:port/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub proto: Proto,
    pub port: u16,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[::1]:{}/{}", self.port, self.proto.as_str())
    }
}

impl Key {
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), self.port)
    }
}

/// Whether a binding is published on `::1` (0.0.0.0 is both families,
/// `::` every IPv6 address; a routed network's bindings use no host port).
pub fn covers_loopback(b: &PortBinding) -> bool {
    b.host_port != 0 && crate::ports::covers(b.host_ip, IpAddr::V6(Ipv6Addr::LOCALHOST))
}

/// What should be proxied for `state`: every running container's bindings
/// that cover `::1`, to its first endpoint (where the rules publish its
/// ports): its IPv6 address if it has one and the network's IPv6 gateway
/// mode publishes host ports (`routed` does not: the host's IPv6
/// addresses do not reach it either), else, on a network without IPv6,
/// its IPv4 address when IPv4's mode publishes host ports. Internal
/// networks publish nothing (their rules let nothing in from outside the
/// bridge; the proxy's connections come from the host, which a FORWARD
/// rule would not see).
pub fn desired(state: &State) -> BTreeMap<Key, SocketAddr> {
    let mut out = BTreeMap::new();
    for c in state
        .containers
        .values()
        .filter(|c| c.status == Status::Running)
    {
        let Some(ep) = c.primary() else {
            continue;
        };
        let Some(net) = state
            .networks
            .get(&ep.network)
            .filter(|n| !n.options.internal)
        else {
            continue;
        };
        let ip = match (net_family(net, Family::V6, None), ep.ip6) {
            (Some((_, w)), Some(ip6)) => w.host_ports.then_some(IpAddr::V6(ip6)),
            (Some(_), None) | (None, _) => {
                match (net_family(net, Family::V4, state.cluster_cidr), ep.ip) {
                    (Some((_, w)), Some(ip)) => w.host_ports.then_some(IpAddr::V4(ip)),
                    _ => None,
                }
            }
        };
        let Some(ip) = ip else {
            continue;
        };
        for b in c.ports.iter().filter(|b| covers_loopback(b)) {
            out.insert(
                Key {
                    proto: b.proto,
                    port: b.host_port,
                },
                SocketAddr::new(ip, b.container_port),
            );
        }
    }
    out
}

/// A listener's socket and the signal that it closed: the fields drop in
/// order, so the sender (whose drop is the signal) goes after the socket.
struct Bound<S> {
    socket: S,
    _closed: mpsc::Sender<()>,
}

struct Running {
    target: SocketAddr,
    task: JoinHandle<()>,
    /// Disconnected when the listener's socket is closed (in a mutex:
    /// a datapath is shared between threads, a receiver is not `Sync`).
    closed: std::sync::Mutex<mpsc::Receiver<()>>,
}

/// The proxy's listeners (one per [`Key`]).
pub struct LoopbackProxy {
    /// Where listeners run: the daemon's runtime, found at the first sync
    /// (None outside a runtime: nothing is proxied).
    rt: Option<Handle>,
    running: BTreeMap<Key, Running>,
    /// Wanted but not listening (the port is another process's, or the
    /// bind failed otherwise): tried again by [`LoopbackProxy::retry`].
    waiting: BTreeMap<Key, SocketAddr>,
    /// A sync happened (the first one, at the daemon's start, only logs
    /// what it cannot bind).
    synced: bool,
    /// `--userland-proxy` (false: nothing is proxied).
    enabled: bool,
}

impl Default for LoopbackProxy {
    fn default() -> LoopbackProxy {
        LoopbackProxy::new(true)
    }
}

impl LoopbackProxy {
    pub fn new(enabled: bool) -> LoopbackProxy {
        LoopbackProxy {
            enabled,
            rt: None,
            running: BTreeMap::new(),
            waiting: BTreeMap::new(),
            synced: false,
        }
    }

    /// Starts and stops listeners to match `state`. Errors (409) when a
    /// port this change publishes is held on `[::1]` by another process;
    /// the listeners of the rest are left running (the daemon's abort
    /// syncs the previous state next, which stops them).
    pub fn sync(&mut self, state: &State) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        self.apply(desired(state))
    }

    /// Binds what is wanted but not listening yet (a port another process
    /// held may have been freed). Logs; never fails.
    pub fn retry(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (k, target) in waiting {
            match self.start(k, target) {
                Ok(()) => tracing::info!("userland proxy: {k} is free now: listening, to {target}"),
                Err(_) => {
                    self.waiting.insert(k, target);
                }
            }
        }
    }

    /// Stops every listener (cleanup, a datapath switch).
    pub fn stop_all(&mut self) {
        let keys: Vec<Key> = self.running.keys().copied().collect();
        for k in keys {
            self.stop(k);
        }
        self.waiting.clear();
    }

    /// The ports being proxied now.
    pub fn listening(&self) -> Vec<Key> {
        self.running.keys().copied().collect()
    }

    fn apply(&mut self, want: BTreeMap<Key, SocketAddr>) -> Result<()> {
        if self.rt.is_none() {
            match Handle::try_current() {
                Ok(h) => {
                    raise_nofile_limit();
                    self.rt = Some(h);
                }
                Err(_) => {
                    if !want.is_empty() && !self.synced {
                        tracing::warn!(
                            "userland proxy: no async runtime here: [::1] is not proxied"
                        );
                    }
                    self.synced = true;
                    return Ok(());
                }
            }
        }
        let stale: Vec<Key> = self
            .running
            .iter()
            .filter(|(k, r)| want.get(*k) != Some(&r.target))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.stop(k);
        }
        let first = !self.synced;
        self.synced = true;
        let before = std::mem::take(&mut self.waiting);
        let mut refused = Vec::new();
        for (k, target) in want {
            if self.running.contains_key(&k) {
                continue;
            }
            match self.start(k, target) {
                Ok(()) => {
                    if before.contains_key(&k) {
                        tracing::info!("userland proxy: {k} is free now: listening, to {target}");
                    }
                }
                Err(e) => {
                    // Already reported for this target: keep waiting.
                    if before.get(&k) != Some(&target) {
                        if e.kind() == std::io::ErrorKind::AddrInUse && !first {
                            refused.push(format!("{k}: {e}"));
                        } else {
                            tracing::warn!(
                                "userland proxy: cannot listen on {k} ({e}): connections to it are not forwarded to {target}; tried again every few seconds"
                            );
                        }
                    }
                    self.waiting.insert(k, target);
                }
            }
        }
        if !refused.is_empty() {
            return Err(ApiError::conflict(format!(
                "another process of the host listens on the published port (the userland proxy for [::1] cannot bind it): {}",
                refused.join(", ")
            ))
            .into());
        }
        Ok(())
    }

    fn start(&mut self, k: Key, target: SocketAddr) -> std::io::Result<()> {
        let Some(rt) = &self.rt else {
            return Ok(());
        };
        let (tx, closed) = mpsc::channel();
        let _entered = rt.enter();
        let task = match k.proto {
            Proto::Tcp => {
                let l = std::net::TcpListener::bind(k.addr())?;
                l.set_nonblocking(true)?;
                let socket = TcpListener::from_std(l)?;
                rt.spawn(serve_tcp(
                    k,
                    Bound {
                        socket,
                        _closed: tx,
                    },
                    target,
                ))
            }
            Proto::Udp => {
                let s = std::net::UdpSocket::bind(k.addr())?;
                s.set_nonblocking(true)?;
                let socket = UdpSocket::from_std(s)?;
                rt.spawn(serve_udp(
                    Bound {
                        socket,
                        _closed: tx,
                    },
                    target,
                    UDP_IDLE,
                ))
            }
        };
        tracing::debug!("userland proxy: {k} -> {target}");
        self.running.insert(
            k,
            Running {
                target,
                task,
                closed: std::sync::Mutex::new(closed),
            },
        );
        Ok(())
    }

    /// Stops a listener and its connections, and waits until its socket
    /// is closed (the port is free for whoever binds it next).
    fn stop(&mut self, k: Key) {
        let Some(r) = self.running.remove(&k) else {
            return;
        };
        r.task.abort();
        let closed = r.closed.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Err(mpsc::RecvTimeoutError::Timeout) = closed.recv_timeout(CLOSE_WAIT) {
            tracing::warn!("userland proxy: {k} did not close within {CLOSE_WAIT:?}");
        }
        tracing::debug!("userland proxy: {k} stopped");
    }
}

impl Drop for LoopbackProxy {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

/// Accepts clients and copies each connection both ways to `target`. The
/// connections are this task's: they end with it.
async fn serve_tcp(k: Key, l: Bound<TcpListener>, target: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = l.socket.accept() => match r {
                Ok((client, peer)) => {
                    conns.spawn(async move {
                        if let Err(e) = forward_tcp(client, target).await {
                            tracing::debug!("userland proxy: {peer} -> {target}: {e}");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and the like: let the moment pass.
                    tracing::warn!("userland proxy: accept on {k}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next() => {}
        }
    }
}

async fn forward_tcp(mut client: TcpStream, target: SocketAddr) -> std::io::Result<()> {
    let mut up = TcpStream::connect(target).await?;
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut up).await?;
    Ok(())
}

/// One client's UDP flow: its socket to the container and when it last
/// carried a datagram (milliseconds since the listener's start).
struct Flow {
    up: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
}

/// Relays datagrams: each client address gets a socket of its own,
/// connected to `target`, whose replies go back to the client from the
/// listener's address. Only this task uses the listener's socket, so it
/// closes when the task is dropped.
async fn serve_udp(l: Bound<UdpSocket>, target: SocketAddr, idle: Duration) {
    let epoch = Instant::now();
    let (tx, mut replies) = tokio::sync::mpsc::channel::<(SocketAddr, Vec<u8>)>(256);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut relays = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = l.socket.recv_from(&mut buf) => {
                let Ok((n, client)) = r else { continue };
                if !flows.contains_key(&client) {
                    if flows.len() >= UDP_MAX_FLOWS {
                        tracing::debug!("userland proxy: {UDP_MAX_FLOWS} UDP flows to {target}: dropped a datagram from {client}");
                        continue;
                    }
                    let up = match upstream_udp(target).await {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            tracing::debug!("userland proxy: {client} -> {target}: {e}");
                            continue;
                        }
                    };
                    let last = Arc::new(AtomicU64::new(millis(epoch)));
                    relays.spawn(relay_replies(client, up.clone(), last.clone(), epoch, idle, tx.clone()));
                    flows.insert(client, Flow { up, last });
                }
                let f = &flows[&client];
                f.last.store(millis(epoch), Ordering::Relaxed);
                let _ = f.up.send(&buf[..n]).await;
            }
            Some((client, data)) = replies.recv() => {
                let _ = l.socket.send_to(&data, client).await;
            }
            Some(done) = relays.join_next() => {
                if let Ok(client) = done {
                    flows.remove(&client);
                }
            }
        }
    }
}

async fn upstream_udp(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any).await?;
    s.connect(target).await?;
    Ok(s)
}

/// Passes the container's datagrams for `client` to the listener's task
/// until the flow is idle for `idle` (either way); returns the client.
async fn relay_replies(
    client: SocketAddr,
    up: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    epoch: Instant,
    idle: Duration,
    tx: tokio::sync::mpsc::Sender<(SocketAddr, Vec<u8>)>,
) -> SocketAddr {
    let mut buf = vec![0u8; 65536];
    loop {
        let quiet =
            Duration::from_millis(millis(epoch).saturating_sub(last.load(Ordering::Relaxed)));
        if quiet >= idle {
            return client;
        }
        match tokio::time::timeout(idle - quiet, up.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                last.store(millis(epoch), Ordering::Relaxed);
                if tx.send((client, buf[..n].to_vec())).await.is_err() {
                    return client;
                }
            }
            // An ICMP error from the container (nothing listens there):
            // the client hears nothing, as from a port that drops it.
            Ok(Err(_)) => {}
            Err(_) => {}
        }
    }
}

fn millis(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// One listener per proxied port (a range publishes many): the daemon
/// takes the file descriptors its hard limit allows.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!(
                    "raising the open files limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::nftables::tests::dual_state;

    fn key(proto: Proto, port: u16) -> Key {
        Key { proto, port }
    }

    #[test]
    fn bindings_that_cover_loopback_go_to_the_container() {
        let mut s = dual_state();
        // `o` (IPv4-only network) publishes a UDP port on [::] and a TCP
        // port on an IPv6 host address.
        let o = s.containers.get_mut("o").unwrap();
        for (ip, hp, cp, proto) in [
            ("::", 5353, 53, Proto::Udp),
            ("2001:db8::2", 9000, 90, Proto::Tcp),
        ] {
            o.ports.push(PortBinding {
                host_ip: ip.parse().unwrap(),
                host_port: hp,
                container_port: cp,
                proto,
            });
        }
        let want = desired(&s);
        let got: Vec<(String, String)> = want
            .iter()
            .map(|(k, t)| (k.to_string(), t.to_string()))
            .collect();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        // web (dual stack): 0.0.0.0, :: and ::1 to its IPv6 address;
        // 127.0.0.1 not. r (IPv6 routed): nothing. o (IPv4 only): [::] to
        // its IPv4 address, another IPv6 host address not.
        assert_eq!(
            got,
            pairs(&[
                ("[::1]:8080/tcp", "[fd00:17::2]:80"),
                ("[::1]:8081/tcp", "[fd00:17::2]:81"),
                ("[::1]:8082/tcp", "[fd00:17::2]:82"),
                ("[::1]:5353/udp", "10.40.0.2:53"),
            ]),
        );
        assert!(want.contains_key(&key(Proto::Udp, 5353)));
        // An internal network publishes nothing, a stopped container has
        // none.
        let mut internal = s.clone();
        internal.networks.get_mut("def").unwrap().options.internal = true;
        assert_eq!(desired(&internal).len(), 1);
        s.containers.get_mut("web").unwrap().status = Status::Exited;
        assert_eq!(desired(&s).len(), 1);
    }

    #[test]
    fn nothing_without_a_runtime() {
        // Outside a runtime (a datapath used by a tool), sync is a no-op.
        let mut p = LoopbackProxy::default();
        p.sync(&dual_state()).unwrap();
        assert!(p.listening().is_empty());
    }
}
