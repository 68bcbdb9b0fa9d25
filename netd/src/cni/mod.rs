//! netd as a CNI plugin (CNI specification 1.1.0). A container runtime
//! (containerd, CRI-O, Podman, a kubelet through them) runs the `netd`
//! executable with `CNI_COMMAND` set, the network configuration on stdin;
//! `main.rs` hands over to [`main`] before parsing any argument.
//!
//! The plugin is a thin client of the node's netd daemon, as Cilium's and
//! Calico's are: the daemon owns IPAM, the bridges, the datapath and the
//! state (daemon::cni); the plugin checks the runtime's parameters, passes
//! them to the daemon's API (`/cni/*` on the `socket` of the config), and
//! turns the answer into a result of the config's `cniVersion`, or a CNI
//! error with the specification's codes.
pub mod result;
pub mod types;

use std::{io::Read, time::Duration};

use serde_json::{Value, json};

use crate::api::{
    ApiError, Client,
    cni::{CniAdd, CniCheck, CniDel, CniGc},
};
use types::{CniError, Command, Env, LATEST, NetConf, SUPPORTED_VERSIONS, code};

/// How long an operation may take before the plugin gives up (the
/// runtime retries): generous, a datapath sync with many published ports
/// takes a second or more.
const CALL_TIMEOUT: Duration = Duration::from_secs(100);
/// STATUS is a health probe: a daemon that does not answer quickly is
/// not available.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the plugin with the process's stdin, environment and stdout;
/// returns the exit code (0 only on success).
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    let r = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&stdin, |k| std::env::var(k).ok()),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            "cannot read the network configuration from stdin",
            e.to_string(),
        )),
    };
    match r {
        Ok(Some(v)) => {
            println!("{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let version = types::version_of(&stdin).unwrap_or_else(|| LATEST.into());
            println!("{}", e.to_json(&version));
            eprintln!("netd CNI plugin: {e}");
            1
        }
    }
}

/// One plugin invocation: `stdin` is the network configuration, `get`
/// reads the environment. Returns what to print on success (ADD's result,
/// VERSION's answer; nothing for the others).
pub fn run(stdin: &[u8], get: impl Fn(&str) -> Option<String>) -> Result<Option<Value>, CniError> {
    let command: Command = get("CNI_COMMAND").unwrap_or_default().parse()?;
    if command == Command::Version {
        return version(stdin).map(Some);
    }
    let env = Env::read(command, &get)?;
    let conf = NetConf::parse(command, stdin)?;
    let daemon = Daemon {
        client: Client::new(conf.socket.clone()),
        conf: &conf,
    };
    match command {
        Command::Add => add(&daemon, &env).map(Some),
        Command::Del => {
            let body = CniDel {
                container_id: env.container_id.clone(),
                if_name: env.ifname.clone(),
            };
            daemon.call("POST", "/cni/del", Some(&json!(body)), CALL_TIMEOUT)?;
            Ok(None)
        }
        Command::Check => check(&daemon, &env).map(|_| None),
        Command::Status => status(&daemon).map(|_| None),
        Command::Gc => {
            let body = CniGc {
                network: conf.network.clone(),
                valid_attachments: conf.valid_attachments.clone(),
            };
            daemon.call("POST", "/cni/gc", Some(&json!(body)), CALL_TIMEOUT)?;
            Ok(None)
        }
        Command::Version => unreachable!("answered above"),
    }
}

/// VERSION: the versions netd speaks, in the request's version (any
/// config, even an empty one, gets an answer).
fn version(stdin: &[u8]) -> Result<Value, CniError> {
    let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network configuration",
                format!("stdin is not JSON: {e}"),
            )
        })?;
        v["cniVersion"].as_str().map(str::to_string)
    };
    let version = asked
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.into());
    Ok(json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS }))
}

/// The daemon behind the config's `socket`.
struct Daemon<'a> {
    client: Client,
    conf: &'a NetConf,
}

impl Daemon<'_> {
    /// One API call. A daemon that cannot be reached (not running,
    /// restarting, too slow) is "try again later" (11): the runtime
    /// retries, nothing changed; its refusals become CNI errors whose
    /// message is the daemon's.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, CniError> {
        self.call_or(method, path, body, timeout, code::TRY_AGAIN_LATER)
    }

    fn call_or(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
        unreachable: u32,
    ) -> Result<Value, CniError> {
        let socket = self.client.socket.display().to_string();
        let down = |why: String| {
            CniError::new(
                unreachable,
                format!("the netd daemon is not available at {socket}"),
                why,
            )
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                CniError::new(code::DAEMON_ERROR, "cannot start a runtime", e.to_string())
            })?;
        let r = rt.block_on(async {
            tokio::time::timeout(timeout, self.client.call_async(method, path, body)).await
        });
        match r {
            Err(_) => Err(down(format!(
                "no answer to {method} {path} within {} s",
                timeout.as_secs()
            ))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => match e.downcast::<ApiError>() {
                Ok(api) => Err(self.refused(api)),
                Err(e) => Err(down(format!("{e:#}"))),
            },
        }
    }

    /// The daemon's refusal as a CNI error.
    fn refused(&self, api: ApiError) -> CniError {
        let details = format!(
            "netd daemon at {}, network {}",
            self.client.socket.display(),
            self.conf.network
        );
        let code = match api.status {
            400 => code::INVALID_CONFIG,
            404 if api.message.starts_with("no such endpoint") => {
                return CniError::new(
                    code::DAEMON_ERROR,
                    "the netd daemon does not serve CNI (is it older than this plugin?)",
                    format!("{}: {}", details, api.message),
                );
            }
            404 => code::INVALID_CONFIG,
            409 => code::CONFLICT,
            _ => code::DAEMON_ERROR,
        };
        CniError::new(code, api.message, details)
    }
}

fn add(d: &Daemon, env: &Env) -> Result<Value, CniError> {
    let conf = d.conf;
    let rc = &conf.runtime_config;
    let body = CniAdd {
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        if_name: env.ifname.clone(),
        network: conf.network.clone(),
        config: conf.name.clone(),
        subnet: conf.subnet.clone(),
        gateway: conf.gateway.clone(),
        ipv6: conf.ipv6,
        subnet6: conf.subnet6.clone(),
        gateway6: conf.gateway6.clone(),
        ipv4: conf.ipv4,
        ips: rc.ips.clone(),
        mac: rc.mac.clone(),
        port_mappings: rc.port_mappings.clone(),
        hostname: env.arg("K8S_POD_NAME").map(str::to_string),
    };
    let answer = d.call("POST", "/cni/add", Some(&json!(body)), CALL_TIMEOUT)?;
    Ok(result::add_result(
        &conf.cni_version,
        &answer,
        conf.prev_result.as_ref(),
    ))
}

fn check(d: &Daemon, env: &Env) -> Result<(), CniError> {
    let want = result::expected(d.conf.prev_result.as_ref(), &env.ifname)?;
    let body = CniCheck {
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        if_name: env.ifname.clone(),
        network: d.conf.network.clone(),
        mac: want.mac,
        addresses: want.addresses,
        routes: want.routes,
        host_interfaces: want.host_interfaces,
    };
    let answer = d.call("POST", "/cni/check", Some(&json!(body)), CALL_TIMEOUT)?;
    let problems: Vec<&str> = answer["Problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match problems.first() {
        None => Ok(()),
        Some(first) => Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "CHECK failed for {} interface {}: {first}",
                env.container_id, env.ifname
            ),
            problems.join("; "),
        )),
    }
}

fn status(d: &Daemon) -> Result<(), CniError> {
    let v = d.call_or(
        "GET",
        "/cni/status",
        None,
        STATUS_TIMEOUT,
        code::NOT_AVAILABLE,
    )?;
    if v["Ready"].as_bool() != Some(true) {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            "the netd daemon cannot take attachments",
            format!("its status: {v}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> Result<Option<Value>, CniError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(stdin.as_bytes(), |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn version_answers() {
        let v = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion": "1.0.0"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        let list: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for want in ["0.4.0", "1.0.0", "1.1.0"] {
            assert!(list.contains(&want));
        }
        let v = run_with(&[("CNI_COMMAND", "VERSION")], "")
            .unwrap()
            .unwrap();
        assert_eq!(v["cniVersion"], LATEST);
        assert_eq!(
            run_with(&[("CNI_COMMAND", "VERSION")], "{{")
                .unwrap_err()
                .code,
            code::DECODE_FAILURE
        );
        assert_eq!(
            run_with(&[], "{}").unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn daemon_down_is_try_again_or_not_available() {
        let conf = r#"{"cniVersion": "1.1.0", "name": "n", "type": "netd", "socket": "/nonexistent/netd.sock"}"#;
        let e = run_with(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ],
            conf,
        )
        .unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
        assert!(e.msg.contains("/nonexistent/netd.sock"), "{e}");
        let e = run_with(&[("CNI_COMMAND", "STATUS")], conf).unwrap_err();
        assert_eq!(e.code, code::NOT_AVAILABLE, "{e}");
        let e = run_with(&[("CNI_COMMAND", "GC")], conf).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
    }
}
