//! Paths to operations. Most run under the daemon's lock from start to
//! end; those that wait for a process (`exec`, an attached `start`,
//! `wait`) hold it only to start or look up the process and wait without
//! it, so a long `exec` never blocks the API.
use serde_json::{Value, json};

use super::{
    ApiError, Request, Response,
    cni::{CniAdd, CniCheck, CniDel, CniGc},
    types::{Connect, ContainerCreate, Exec, NetworkCreate, NodeAdd, Start, parse_body},
};
use crate::{
    daemon::Shared,
    datapath::Datapath,
    process::{self, caller_stdio},
};

pub async fn route(d: &Shared, req: Request) -> Response {
    let path = req.path.clone();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("POST", ["containers", id, "exec"]) => exec(d, id, req).await,
        ("POST", ["containers", id, "start"]) => start(d, id, req).await,
        ("POST", ["containers", id, "wait"]) => wait(d, id).await,
        _ => {
            let mut g = d.lock().await;
            let changes = req.method != "GET";
            let r = locked(&mut g, &parts, req).await;
            if changes {
                // Names follow containers at once: start, stop, connect,
                // disconnect, create and rm all land here.
                g.sync_dns().await;
            }
            r
        }
    }
}

/// The operations that run under the lock from start to end.
async fn locked(d: &mut crate::daemon::Daemon, parts: &[&str], req: Request) -> Response {
    let r = match (req.method.as_str(), parts) {
        ("GET", ["_ping"]) => Ok(json!("OK")),
        ("GET", ["info"]) => Ok(json!({
            "Datapath": d.dp.name(),
            "LastSyncMicros": d.dp.last_sync.as_micros() as u64,
            "Instance": d.state.instance,
        })),
        ("GET", ["stats"]) => d.stats(),
        ("GET", ["networks"]) => Ok(d.network_list()),
        ("POST", ["networks", "create"]) => {
            let spec = parse_body::<NetworkCreate>(req.body)?.validate(d.cfg.mtu)?;
            d.network_create(spec).await
        }
        ("GET", ["networks", id]) => d.network_inspect(id),
        ("DELETE", ["networks", id]) => d.network_rm(id).await,
        ("POST", ["networks", id, "connect"]) => {
            let spec = parse_body::<Connect>(req.body)?.validate()?;
            d.network_connect(id, spec).await
        }
        ("POST", ["networks", id, "disconnect"]) => {
            let c = parse_body::<Connect>(req.body)?;
            d.network_disconnect(id, &c.container).await
        }
        ("GET", ["nodes"]) => Ok(d.node_list()),
        ("POST", ["nodes"]) => {
            let spec = parse_body::<NodeAdd>(req.body)?.validate()?;
            d.node_add(spec).await
        }
        ("DELETE", ["nodes", name]) => d.node_rm(name).await,
        ("GET", ["containers", "json"]) => Ok(d.container_list(req.query_flag("all"))),
        ("POST", ["containers", "create"]) => {
            let spec = parse_body::<ContainerCreate>(req.body)?.validate()?;
            d.container_create(spec).await
        }
        ("GET", ["containers", id, "json"]) => d.container_inspect(id),
        ("POST", ["containers", id, "stop"]) => d.container_stop(id).await,
        ("GET", ["containers", id, "logs"]) => d.container_logs(id),
        ("POST", ["containers", id, "kill"]) => {
            d.container_kill(id, req.query("signal").unwrap_or("KILL"))
        }
        ("DELETE", ["containers", id]) => d.container_rm(id, req.query_flag("force")).await,
        // The CNI plugin's calls (see crate::cni and daemon::cni).
        ("GET", ["cni", "status"]) => Ok(d.cni_status()),
        ("POST", ["cni", "add"]) => {
            let spec = parse_body::<CniAdd>(req.body)?.validate()?;
            d.cni_add(spec).await
        }
        ("POST", ["cni", "del"]) => {
            let del = parse_body::<CniDel>(req.body)?;
            del.validate()?;
            d.cni_del(&del.container_id, &del.if_name).await
        }
        ("POST", ["cni", "check"]) => {
            let chk = parse_body::<CniCheck>(req.body)?;
            chk.validate()?;
            d.cni_check(chk).await
        }
        ("POST", ["cni", "gc"]) => {
            let gc = parse_body::<CniGc>(req.body)?;
            gc.validate()?;
            d.cni_gc(gc).await
        }
        _ => {
            return Err(ApiError::not_found(format!(
                "no such endpoint: {} {}",
                req.method, req.path
            )));
        }
    };
    r.map_err(ApiError::from)
}

/// `start`, detached or attached (`{"Attach": true}`: the main process
/// gets the caller's streams and the answer comes when it exits).
async fn start(d: &Shared, id: &str, req: Request) -> Response {
    let opts = parse_body::<Start>(req.body)?;
    let rx = {
        let mut g = d.lock().await;
        let stdio = if opts.attach {
            Some(caller_stdio(&req.peer)?)
        } else {
            None
        };
        let r = g.container_start(id, stdio).await;
        g.sync_dns().await;
        r?
    };
    match (opts.attach, rx) {
        (true, Some(mut rx)) => {
            let code = wait_code(&mut rx).await;
            Ok(json!({ "StatusCode": code }))
        }
        _ => Ok(json!(id)),
    }
}

/// `exec`: runs a command in a running container with the caller's
/// streams; answers with its exit code when it ends.
async fn exec(d: &Shared, id: &str, req: Request) -> Response {
    let e = parse_body::<Exec>(req.body)?;
    e.validate()?;
    let mut child = {
        let g = d.lock().await;
        let stdio = caller_stdio(&req.peer)?;
        g.exec_spawn(id, e, stdio)?
    };
    let status = child
        .wait()
        .await
        .map_err(|e| ApiError::new(500, format!("waiting for the process: {e}")))?;
    Ok(json!({ "ExitCode": process::exit_code(status) }))
}

/// `wait`: answers with the main process's exit code once the container
/// is not running.
async fn wait(d: &Shared, id: &str) -> Response {
    let mut rx = d.lock().await.container_wait(id)?;
    let code = wait_code(&mut rx).await;
    Ok(json!({ "StatusCode": code }))
}

async fn wait_code(rx: &mut tokio::sync::watch::Receiver<Option<i32>>) -> Value {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => json!(v.unwrap_or(0)),
        // The container went away without a code (removed meanwhile).
        Err(_) => json!(crate::daemon::containers::EXIT_UNKNOWN),
    }
}
