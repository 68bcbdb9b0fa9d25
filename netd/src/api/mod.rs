//! The daemon's API: HTTP/1.1 + JSON on a Unix socket, on Docker Engine
//! API paths where a counterpart exists. [`server`] serves it with hyper
//! (limits, timeouts, keep-alive, chunked bodies); [`client`] is the CLI's
//! side of it; [`types`] holds the request bodies and their validation;
//! [`router`] maps paths to the daemon's operations.
pub mod client;
pub mod cni;
pub mod router;
pub mod server;
pub mod types;

pub use client::Client;

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

/// `Err(ApiError::bad(..))` as an `anyhow::Result`.
pub fn bad<T>(m: impl std::fmt::Display) -> anyhow::Result<T> {
    Err(ApiError::bad(m).into())
}
pub fn not_found<T>(m: impl std::fmt::Display) -> anyhow::Result<T> {
    Err(ApiError::not_found(m).into())
}
pub fn conflict<T>(m: impl std::fmt::Display) -> anyhow::Result<T> {
    Err(ApiError::conflict(m).into())
}

/// A request as the router sees it.
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: serde_json::Value,
    /// Who is calling (from the socket's peer credentials).
    pub peer: std::sync::Arc<server::Peer>,
}

impl Request {
    pub fn query_flag(&self, key: &str) -> bool {
        self.query
            .iter()
            .any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | ""))
    }
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub type Response = std::result::Result<serde_json::Value, ApiError>;

/// Percent-decoding of a path or query component.
pub fn unescape(s: &str) -> String {
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

/// Percent-encoding of a path (slashes kept).
pub fn escape(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}
