//! The daemon's API: HTTP/1.1 + JSON on a Unix socket, Docker Engine API
//! paths where a counterpart exists. One request per connection
//! (`Connection: close`); the requests are small JSON documents, so netd
//! carries a deliberately small HTTP implementation instead of a full
//! HTTP stack (a lean dependency tree on 2-core build machines).
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixListener,
};

/// An API error: HTTP status + Docker-style `{"message": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad(m: impl std::fmt::Display) -> ApiError {
        ApiError::new(400, m.to_string())
    }
    pub fn not_found(m: impl std::fmt::Display) -> ApiError {
        ApiError::new(404, m.to_string())
    }
    pub fn conflict(m: impl std::fmt::Display) -> ApiError {
        ApiError::new(409, m.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        // Validation errors are created as ApiError and travel through
        // anyhow; anything else is an internal error.
        match e.downcast::<ApiError>() {
            Ok(api) => api,
            Err(e) => ApiError::new(500, format!("{e:#}")),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for ApiError {}

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Value,
}

impl Request {
    pub fn query_flag(&self, key: &str) -> bool {
        self.query
            .iter()
            .any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | ""))
    }
}

pub type Response = std::result::Result<Value, ApiError>;

const MAX_REQUEST: usize = 16 << 20;

/// Serves `handler` on `socket` (mode 0660) until the task is dropped.
pub async fn serve<H, F>(socket: &Path, handler: Arc<H>) -> Result<()>
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Response> + Send,
{
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let resp = match read_request(&mut stream).await {
                Ok(req) => handler(req).await,
                Err(e) => Err(ApiError::bad(format!("bad request: {e:#}"))),
            };
            let (status, body) = match resp {
                Ok(v) => (200, v),
                Err(e) => (e.status, serde_json::json!({ "message": e.message })),
            };
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let head = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                reason(status),
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Internal Server Error",
    }
}

async fn read_request(stream: &mut tokio::net::UnixStream) -> Result<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the end of the headers");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            bail!("headers too large");
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().context("no request target")?;
    let mut len = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().context("bad content-length")?;
        }
    }
    if len > MAX_REQUEST {
        bail!("body too large");
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed in the body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)?
    };
    Ok(Request {
        method,
        path: unescape(path),
        query,
        body,
    })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// A blocking client for the CLI.
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| {
            anyhow!(
                "cannot reach the netd daemon at {} ({e}); is `netd daemon` running? \
                 (set -H/--socket or NETD_SOCKET to point elsewhere)",
                self.socket.display()
            )
        })?;
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let target = if q.is_empty() {
            escape(p)
        } else {
            format!("{}?{q}", escape(p))
        };
        let head = format!(
            "{method} {target} HTTP/1.1\r\nhost: netd\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(&body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("malformed response from the daemon")?;
        let status: u16 = std::str::from_utf8(&resp[..end])?
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("malformed status line from the daemon")?;
        let v: Value = if resp.len() > end + 4 {
            serde_json::from_slice(&resp[end + 4..])?
        } else {
            Value::Null
        };
        if status != 200 {
            let msg = v["message"].as_str().unwrap_or("unknown error").to_string();
            return Err(ApiError::new(status, msg).into());
        }
        Ok(v)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)
    }
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, Some(body))
    }
    pub fn delete(&self, path: &str) -> Result<Value> {
        self.call("DELETE", path, None)
    }
}
