//! The API server: hyper's HTTP/1.1 over a Unix socket.
//!
//! What a careless or hostile client cannot do to it: send headers over
//! 16 KiB (431) or bodies over 1 MiB (413), keep a connection that sends
//! nothing useful for more than [`Limits::header_timeout`] (closed), hold
//! more than [`Limits::max_connections`] connections (further ones wait
//! in the socket's backlog), or end the server with an `accept()` error
//! such as EMFILE (it backs off and goes on). Keep-alive and chunked
//! bodies work as HTTP/1.1 says.
//!
//! Every connection carries its peer's credentials (`SO_PEERCRED`, and a
//! pidfd from `SO_PEERPIDFD`): the daemon attaches the processes it
//! starts for `run` and `exec` to the caller's standard streams through
//! that pidfd, never through a pid number a client sent.
use std::{
    convert::Infallible,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{StatusCode, body::Incoming, header, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::{net::UnixListener, sync::Semaphore};

use super::{ApiError, Request, Response};

/// What a connection may cost the daemon.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// Headers (and an idle keep-alive connection's next request) must
    /// arrive within this.
    pub header_timeout: Duration,
    /// A request body must arrive within this.
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 16 << 10,
            max_body_bytes: 1 << 20,
        }
    }
}

/// The process at the other end of a connection.
#[derive(Debug, Default)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    /// A pidfd of the peer process (kernel >= 6.5), race-free unlike `pid`.
    pub pidfd: Option<OwnedFd>,
}

impl Peer {
    fn of(stream: &tokio::net::UnixStream) -> Peer {
        let cred = stream.peer_cred().ok();
        Peer {
            pid: cred.as_ref().and_then(|c| c.pid()),
            uid: cred.map(|c| c.uid()),
            pidfd: peer_pidfd(stream.as_raw_fd()),
        }
    }
}

/// `SO_PEERPIDFD`: a pidfd of the process that connected.
fn peer_pidfd(fd: i32) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `pidfd`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel handed us a new descriptor we own.
    (rc == 0 && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// How one protocol served by [`serve`] answers: its content type and
/// the shape of its error bodies. netd's API speaks Docker Engine API
/// errors (`{"message": ...}`), the Docker plugin protocol `{"Err": ...}`.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    pub content_type: &'static str,
    pub error_body: fn(&ApiError) -> Value,
}

fn engine_error(e: &ApiError) -> Value {
    json!({ "message": e.message })
}

/// netd's own API.
pub const ENGINE_API: Dialect = Dialect {
    content_type: "application/json",
    error_body: engine_error,
};

/// Binds a server socket: refuses when a live process serves `socket`
/// already, removes a stale socket file otherwise, creates the socket
/// under a restrictive umask, then makes it mode 0660 and, when a group
/// named `group` is given and exists, owned by it (Docker's `docker`
/// group pattern: members may use the daemon without being root).
pub fn bind(socket: &Path, group: Option<&str>) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!(
                "another process serves {} already (another netd daemon, or another plugin?): refusing to take it over",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(group) = group
        && let Ok(Some(g)) = nix::unistd::Group::from_name(group)
    {
        nix::unistd::chown(socket, None, Some(g.gid))
            .with_context(|| format!("giving {} to group {group}", socket.display()))?;
        tracing::info!("API socket {} is open to group {group}", socket.display());
    }
    Ok(listener)
}

/// Serves `handler` on `listener`, answering in `dialect`, until the task
/// is dropped.
pub async fn serve<H, F>(listener: UnixListener, limits: Limits, dialect: Dialect, handler: Arc<H>)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Response> + Send,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                // EMFILE and friends: wait for descriptors to come back.
                tracing::warn!("API accept: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let peer = Arc::new(Peer::of(&stream));
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let (peer, handler) = (peer.clone(), handler.clone());
                async move { Ok::<_, Infallible>(respond(req, peer, limits, dialect, &*handler).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192) * 4)
                .max_header_size(limits.max_header_bytes)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("API connection: {e}");
            }
        });
    }
}

type Body = Full<Bytes>;

fn reply(dialect: Dialect, status: u16, v: &Value) -> hyper::Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    hyper::Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, dialect.content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn error(dialect: Dialect, e: ApiError) -> hyper::Response<Body> {
    reply(dialect, e.status, &(dialect.error_body)(&e))
}

async fn respond<H, F>(
    req: hyper::Request<Incoming>,
    peer: Arc<Peer>,
    limits: Limits,
    dialect: Dialect,
    handler: &H,
) -> hyper::Response<Body>
where
    H: Fn(Request) -> F,
    F: std::future::Future<Output = Response>,
{
    let method = req.method().to_string();
    let path = super::unescape(req.uri().path());
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (super::unescape(k), super::unescape(v))
        })
        .collect();
    let too_large = || {
        error(
            dialect,
            ApiError::new(
                413,
                format!(
                    "request body too large: the limit is {} bytes",
                    limits.max_body_bytes
                ),
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large();
    }
    let body = Limited::new(req.into_body(), limits.max_body_bytes).collect();
    let bytes = match tokio::time::timeout(limits.body_timeout, body).await {
        Err(_) => {
            return error(
                dialect,
                ApiError::new(408, "timed out reading the request body"),
            );
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return error(
                dialect,
                ApiError::bad(format!("reading the request body: {e}")),
            );
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return error(dialect, ApiError::bad(format!("malformed JSON body: {e}"))),
        }
    };
    let r = handler(Request {
        method,
        path,
        query,
        body,
        peer,
    })
    .await;
    match r {
        Ok(v) => reply(dialect, 200, &v),
        Err(e) => error(dialect, e),
    }
}
