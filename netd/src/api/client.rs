//! The CLI's side of the API: hyper's HTTP/1.1 client over the Unix
//! socket, one connection per call, behind a blocking interface.
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::ApiError;

/// A blocking client for the CLI.
#[derive(Clone, Debug)]
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    /// One request; a non-200 answer becomes an [`ApiError`] carrying the
    /// daemon's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?
            .block_on(self.call_async(method, path, body))
    }

    pub async fn call_async(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the netd daemon at {} ({e}); is `netd daemon` running? \
                     (set -H/--socket or NETD_SOCKET to point elsewhere)",
                    self.socket.display()
                )
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking to the daemon")?;
        let conn = tokio::spawn(conn);
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let target = if q.is_empty() {
            super::escape(p)
        } else {
            format!("{}?{q}", super::escape(p))
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, "netd")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("building the request")?;
        let resp = sender
            .send_request(req)
            .await
            .context("the daemon closed the connection")?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the daemon's answer")?
            .to_bytes();
        conn.abort();
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).context("malformed answer from the daemon")?
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
