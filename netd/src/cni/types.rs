//! The plugin's inputs and errors, as the CNI specification (1.1.0,
//! SPEC.md "Execution protocol") defines them: the environment
//! (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`), the network configuration on stdin, and the
//! error object a failing plugin prints.
use std::{path::PathBuf, str::FromStr};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::cni::{PortMapping, ValidAttachment};

/// The CNI versions netd speaks. The result shapes of 0.3.x and 0.4.0
/// are the same (`ips[].version`); 1.0.0 dropped `version`; 1.1.0 added
/// interface `mtu`, STATUS and GC.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version of answers that have no request version to follow.
pub const LATEST: &str = "1.1.0";
/// The daemon's API socket unless the config's `socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/netd/netd.sock";

/// Error codes: the specification's well-known ones (0-99) and netd's
/// own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// netd: the daemon failed the operation (kernel or internal error).
    pub const DAEMON_ERROR: u32 = 100;
    /// netd: something the attachment needs is taken (its address, a host
    /// port, the interface name, the attachment itself).
    pub const CONFLICT: u32 = 101;
    /// netd: CHECK found the attachment broken.
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error: printed on stdout, the plugin exits non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl FromStr for Command {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
                ));
            }
        })
    }
}

impl Command {
    /// Whether the command is about one attachment (and needs its
    /// `CNI_CONTAINERID` and `CNI_IFNAME`).
    fn per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The runtime's parameters (environment variables).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    /// Empty for DEL when the namespace is gone.
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`: `K=V` pairs separated by `;`.
    pub args: Vec<(String, String)>,
}

impl Env {
    /// Reads and checks the variables `command` needs (code 4 names the
    /// variable that is missing or wrong).
    pub fn read(command: Command, get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let mut env = Env::default();
        if !command.per_attachment() {
            return Ok(env);
        }
        let required = |name: &str| -> Result<String, CniError> {
            get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("{name} is missing"),
                    format!("CNI_COMMAND {command:?} needs {name}"),
                )
            })
        };
        let invalid = |e: anyhow::Error| {
            CniError::new(code::INVALID_ENVIRONMENT, format!("{e:#}"), String::new())
        };
        env.container_id = required("CNI_CONTAINERID")?;
        crate::api::cni::container_id(&env.container_id).map_err(invalid)?;
        env.ifname = required("CNI_IFNAME")?;
        crate::validate::ifname("CNI_IFNAME", &env.ifname).map_err(invalid)?;
        env.netns = match command {
            // DEL may come after the namespace is gone.
            Command::Del => get("CNI_NETNS").unwrap_or_default(),
            _ => required("CNI_NETNS")?,
        };
        if !env.netns.is_empty() {
            crate::api::cni::netns_path(&env.netns).map_err(invalid)?;
        }
        if command != Command::Del && !crate::netns::NetNs::at(&env.netns).exists() {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_NETNS {} is not a network namespace", env.netns),
                "the file does not exist or is no namespace",
            ));
        }
        env.args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(env)
    }

    /// A `CNI_ARGS` value.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `CNI_ARGS`: `K=V;K=V` (empty is fine).
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CniError::new(
                        code::INVALID_ENVIRONMENT,
                        format!("invalid CNI_ARGS entry {p:?}: expected KEY=VALUE"),
                        format!("CNI_ARGS={s}"),
                    )
                })
        })
        .collect()
}

/// `runtimeConfig`: the runtime's capability arguments.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(default, rename_all = "camelCase")]
pub struct RuntimeConfig {
    pub ips: Vec<String>,
    pub mac: Option<String>,
    pub port_mappings: Vec<PortMapping>,
}

/// The network configuration on stdin (the standard keys and netd's).
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(default, rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    // `type` names this executable, `args` and `capabilities` (which
    // libcni passes on) say nothing netd uses; other keys are ignored.
    socket: Option<String>,
    network: Option<String>,
    subnet: Option<String>,
    gateway: Option<String>,
    /// Dual stack: `"ipv6": true` (a /64 of the daemon's IPv6 pool), or
    /// `subnet6` (and `gateway6`).
    ipv6: Option<bool>,
    subnet6: Option<String>,
    gateway6: Option<String>,
    /// `"ipv4": false`: an IPv6-only network (needs `ipv6` or `subnet6`).
    ipv4: Option<bool>,
    ipam: Option<Value>,
    runtime_config: RuntimeConfig,
    prev_result: Option<Value>,
    /// GC (1.1.0): the attachments the runtime still uses. libcni sends
    /// both keys (the specification's text named the second one).
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<ValidAttachment>>,
}

/// A checked network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub socket: PathBuf,
    /// The netd network: `network`, else `name`.
    pub network: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    /// `ipv6` (or a `subnet6`): the network has IPv6 too.
    pub ipv6: bool,
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    /// `ipv4` as given (absent: true).
    pub ipv4: Option<bool>,
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<Value>,
    pub valid_attachments: Vec<ValidAttachment>,
}

/// The `cniVersion` of a config, when one can be read (for the answer's
/// own `cniVersion`).
pub fn version_of(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    SUPPORTED_VERSIONS.contains(&s).then(|| s.to_string())
}

/// `a` >= `b` for versions like "0.4.0".
pub fn version_ge(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    parse(a) >= parse(b)
}

/// A CNI network name (SPEC: alphanumeric, then alphanumerics, `_`, `.`,
/// `-`).
fn valid_network_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl NetConf {
    /// Parses and checks the configuration `command` was given.
    pub fn parse(command: Command, stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network configuration",
                format!("stdin is not JSON: {e}"),
            )
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network configuration",
                "stdin is not a JSON object",
            ));
        }
        let raw: RawConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid network configuration: {e}"),
                String::new(),
            )
        })?;
        let cni_version = raw.cni_version.unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI versions",
                format!(
                    "config is {:?}, netd supports {}",
                    cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let needs = |min: &str, what: &str| -> Result<(), CniError> {
            if version_ge(&cni_version, min) {
                Ok(())
            } else {
                Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("config version {cni_version} does not allow {what}"),
                    format!("{what} needs cniVersion {min} or later"),
                ))
            }
        };
        match command {
            Command::Check => needs("0.4.0", "CHECK")?,
            Command::Status => needs("1.1.0", "STATUS")?,
            Command::Gc => needs("1.1.0", "GC")?,
            _ => {}
        }
        let name = raw.name.unwrap_or_default();
        if !valid_network_name(&name) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("invalid network name {name:?} in the network configuration"),
                "\"name\" must start with a letter or digit, then letters, digits, '_', '.' or '-'",
            ));
        }
        if raw.ipam.is_some() {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "unsupported field \"ipam\"",
                format!(
                    "ipam = {}: the netd daemon allocates addresses itself (use \"subnet\", \"gateway\" and runtimeConfig.ips)",
                    raw.ipam.unwrap_or_default()
                ),
            ));
        }
        let socket = PathBuf::from(raw.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()));
        if !socket.is_absolute() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("invalid socket {:?}: an absolute path", socket.display()),
                String::new(),
            ));
        }
        let mut valid = raw.valid_attachments.unwrap_or_default();
        valid.extend(raw.attachments.unwrap_or_default());
        valid.sort();
        valid.dedup();
        Ok(NetConf {
            network: raw.network.unwrap_or_else(|| name.clone()),
            cni_version,
            name,
            socket,
            subnet: raw.subnet,
            gateway: raw.gateway,
            ipv6: raw.ipv6.unwrap_or(false) || raw.subnet6.is_some(),
            subnet6: raw.subnet6,
            gateway6: raw.gateway6,
            ipv4: raw.ipv4,
            runtime_config: raw.runtime_config,
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
            valid_attachments: valid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cmd: Command, v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(cmd, &serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn config() {
        let c = parse(
            Command::Add,
            json!({
                "cniVersion": "1.0.0", "name": "n1", "type": "netd",
                "capabilities": {"portMappings": true},
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
                "unknownKey": 1,
            }),
        )
        .unwrap();
        assert_eq!(c.network, "n1");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.runtime_config.port_mappings[0].host_port, 8080);
        let c = parse(
            Command::Gc,
            json!({"cniVersion": "1.1.0", "name": "n1", "network": "other",
                   "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
                   "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]}),
        )
        .unwrap();
        assert_eq!(c.network, "other");
        assert_eq!(c.valid_attachments.len(), 1);
    }

    #[test]
    fn config_errors() {
        let code = |cmd, v: Value| parse(cmd, v).unwrap_err().code;
        assert_eq!(
            NetConf::parse(Command::Add, b"{not json").unwrap_err().code,
            code::DECODE_FAILURE
        );
        assert_eq!(
            code(Command::Add, json!({"cniVersion": "0.2.0", "name": "n"})),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code(Command::Add, json!({"name": "n"})),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code(Command::Check, json!({"cniVersion": "0.3.1", "name": "n"})),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code(Command::Status, json!({"cniVersion": "1.0.0", "name": "n"})),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code(Command::Add, json!({"cniVersion": "1.0.0", "name": "-n"})),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code(
                Command::Add,
                json!({"cniVersion": "1.0.0", "name": "n", "subnet": 5})
            ),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code(
                Command::Add,
                json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local"}})
            ),
            code::UNSUPPORTED_FIELD
        );
    }

    #[test]
    fn environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        // DEL needs no namespace.
        let e = Env::read(
            Command::Del,
            env(&[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-0"),
            ]),
        )
        .unwrap();
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web-0"));
        for vars in [
            &[("CNI_IFNAME", "eth0")][..],
            &[("CNI_CONTAINERID", "c1")][..],
            &[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "a b")][..],
            &[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "novalue"),
            ][..],
        ] {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let get = |k: &str| -> Option<String> {
                vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            };
            assert_eq!(
                Env::read(Command::Del, get).unwrap_err().code,
                code::INVALID_ENVIRONMENT
            );
        }
        // ADD needs an existing namespace.
        let e = Env::read(
            Command::Add,
            env(&[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/nonexistent/netns"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("/nonexistent/netns"), "{e}");
        assert_eq!(
            "FROB".parse::<Command>().unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn versions() {
        assert!(version_ge("1.1.0", "1.0.0"));
        assert!(version_ge("0.4.0", "0.4.0"));
        assert!(!version_ge("0.3.1", "0.4.0"));
        assert_eq!(
            version_of(br#"{"cniVersion": "0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(version_of(br#"{"cniVersion": "9.9.9"}"#), None);
    }
}
