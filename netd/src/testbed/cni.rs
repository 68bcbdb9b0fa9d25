//! Runs CNI plugins exactly as a container runtime does (CNI spec,
//! "Execution protocol"), so tests can drive the reference plugins, and
//! later netd's own, without a runtime in between:
//!
//! - the plugin is `<CNI_PATH dir>/<type>`, executed in the runtime's
//!   network namespace (the testbed's host, never the machine's own);
//! - a clean environment (`env -i` style): `CNI_COMMAND`, `CNI_CONTAINERID`,
//!   `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`, and `PATH` (runtimes
//!   pass theirs; the reference plugins look up `iptables` in it);
//! - the network configuration as JSON on stdin;
//! - the result (or a CNI error) as JSON on stdout.
//!
//! [`Chain`] runs a conflist as libcni does: ADD plugin by plugin in order,
//! each getting the previous result as `prevResult`, `name` and
//! `cniVersion` injected from the list, and `runtimeConfig` holding the
//! runtime's capability arguments that the plugin declares in its
//! `capabilities`; CHECK in order and DEL in reverse order, both with the
//! cached result of ADD as `prevResult`.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::netns::NetNs;

/// The PATH plugins get (they run `iptables`, `ip6tables`, `modprobe`...).
pub const PLUGIN_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Check,
    Del,
    Version,
    /// CNI 1.1.0: can the plugin serve ADD? (No attachment.)
    Status,
    /// CNI 1.1.0: release what the config's `cni.dev/valid-attachments`
    /// does not list. (No attachment.)
    Gc,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Check => "CHECK",
            CniCommand::Del => "DEL",
            CniCommand::Version => "VERSION",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }
}

/// The per-attachment parameters a runtime passes in the environment.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    /// The container's network namespace file (`CNI_NETNS`).
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K=V;K=V`); libcni-style runtimes put
    /// `IgnoreUnknown=1` first.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, `ips`, `mac`,
    /// ...) that go into `runtimeConfig` for plugins declaring them.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    pub fn new(container_id: &str, netns: &Path, ifname: &str) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: Map::new(),
        }
    }

    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// What one plugin invocation gave back.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON (a result, a version answer or a CNI error
    /// `{"cniVersion", "code", "msg", "details"}`); None when empty.
    pub json: Option<Value>,
}

impl Outcome {
    /// The result JSON if the plugin succeeded; otherwise an error with
    /// the CNI error's code and message.
    pub fn ok(self) -> Result<Value> {
        if self.status.success() {
            return Ok(self.json.unwrap_or(Value::Null));
        }
        match &self.json {
            Some(e) => bail!(
                "plugin failed ({}): code {} {}{}",
                self.status,
                e["code"],
                e["msg"].as_str().unwrap_or_default(),
                e["details"]
                    .as_str()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            None => bail!(
                "plugin failed ({}): {}{}",
                self.status,
                self.stdout,
                self.stderr
            ),
        }
    }
}

/// Plugins from `plugin_dirs` (CNI_PATH), executed in `netns`.
#[derive(Clone, Debug)]
pub struct CniRunner {
    pub netns: NetNs,
    pub plugin_dirs: Vec<PathBuf>,
}

impl CniRunner {
    pub fn new(netns: &NetNs, plugin_dirs: &[&Path]) -> CniRunner {
        CniRunner {
            netns: netns.clone(),
            plugin_dirs: plugin_dirs.iter().map(|d| d.to_path_buf()).collect(),
        }
    }

    /// The executable for plugin `type` (first match in CNI_PATH order).
    pub fn find(&self, plugin_type: &str) -> Result<PathBuf> {
        if plugin_type.is_empty() || plugin_type.contains('/') {
            bail!("invalid plugin type {plugin_type:?}");
        }
        self.plugin_dirs
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "CNI plugin {plugin_type:?} not found in {:?}",
                    self.plugin_dirs
                )
            })
    }

    fn cni_path(&self) -> String {
        self.plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Executes one plugin with `config` on stdin. For VERSION, STATUS
    /// and GC the attachment is not used (and may be None).
    pub fn exec(
        &self,
        command: CniCommand,
        config: &Value,
        att: Option<&Attachment>,
    ) -> Result<Outcome> {
        let plugin_type = config["type"]
            .as_str()
            .context("network config without \"type\"")?;
        let plugin = self.find(plugin_type)?;
        let mut cmd: Command = self.netns.command(&plugin)?;
        cmd.env_clear()
            .env("PATH", PLUGIN_PATH_ENV)
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_PATH", self.cni_path());
        if let Some(a) = att {
            cmd.env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", a.cni_args());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", plugin.display()))?;
        let input = serde_json::to_vec(config)?;
        {
            let mut stdin = child.stdin.take().expect("piped");
            // A plugin may exit without reading everything: ignore EPIPE.
            let _ = stdin.write_all(&input);
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = if stdout.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&stdout).with_context(|| {
                format!(
                    "{} {} printed non-JSON: {stdout}",
                    plugin.display(),
                    command.as_str()
                )
            })?)
        };
        Ok(Outcome {
            status: out.status,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
        })
    }

    /// `VERSION` of plugin `plugin_type`: its `supportedVersions`.
    pub fn versions(&self, plugin_type: &str, cni_version: &str) -> Result<Vec<String>> {
        let v = self
            .exec(
                CniCommand::Version,
                &json!({"cniVersion": cni_version, "type": plugin_type}),
                None,
            )?
            .ok()?;
        Ok(v["supportedVersions"]
            .as_array()
            .context("VERSION answer without supportedVersions")?
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect())
    }
}

/// The configuration libcni hands plugin `index` of `list`: the plugin's
/// object, plus `name` and `cniVersion` of the list, `runtimeConfig` with
/// the capability arguments it declares, and `prevResult` when given.
/// Like libcni (1.1 and 1.3), `capabilities` is passed through, although
/// SPEC 1.1.0 says a runtime must not set it.
pub fn plugin_config(
    list: &Value,
    index: usize,
    att: &Attachment,
    prev_result: Option<&Value>,
) -> Result<Value> {
    let plugin = list["plugins"]
        .get(index)
        .with_context(|| format!("conflist has no plugin #{index}"))?;
    let mut conf = plugin
        .as_object()
        .with_context(|| format!("plugin #{index} is not an object"))?
        .clone();
    conf.insert("name".into(), list["name"].clone());
    conf.insert("cniVersion".into(), list["cniVersion"].clone());
    let mut rt = Map::new();
    if let Some(caps) = plugin["capabilities"].as_object() {
        for (cap, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = att.capability_args.get(cap)
            {
                rt.insert(cap.clone(), v.clone());
            }
        }
    }
    if !rt.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rt));
    }
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    Ok(Value::Object(conf))
}

/// The configuration libcni (1.2 and later) hands plugin `index` of
/// `list` for GC (and, without `valid`, STATUS): the plugin's object with
/// `name` and `cniVersion` of the list and the attachments still in use
/// as both `cni.dev/valid-attachments` and `cni.dev/attachments` (libcni
/// sends both: the specification's text named the second, cni#1101).
pub fn gc_config(list: &Value, index: usize, valid: &[(&str, &str)]) -> Result<Value> {
    let att = Attachment::new("-", Path::new("/"), "-");
    let mut conf = plugin_config(list, index, &att, None)?;
    let valid: Vec<Value> = valid
        .iter()
        .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
        .collect();
    conf["cni.dev/valid-attachments"] = json!(valid);
    conf["cni.dev/attachments"] = json!(valid);
    Ok(conf)
}

/// `version` (like "0.3.1", "1.0.0") >= `min`; unparsable parts count 0.
pub fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut p = version.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let v = (
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
    );
    v >= min
}

/// A conflist attached to one container: [`Chain::add`], [`Chain::check`],
/// [`Chain::del`] as libcni's AddNetworkList / CheckNetworkList /
/// DelNetworkList. The result of ADD is kept (libcni caches it on disk) for
/// CHECK and DEL. Dropping a chain that was added and not deleted runs DEL
/// (errors reported on stderr), so a failing test leaves no veth, rule or
/// address reservation behind.
pub struct Chain {
    pub runner: CniRunner,
    pub list: Value,
    pub att: Attachment,
    /// The final result of ADD.
    pub result: Option<Value>,
    added: bool,
}

impl Chain {
    pub fn new(runner: &CniRunner, list: Value, att: Attachment) -> Result<Chain> {
        if !list["plugins"].is_array() || list["name"].as_str().is_none() {
            bail!("a conflist needs \"name\" and \"plugins\": {list}");
        }
        Ok(Chain {
            runner: runner.clone(),
            list,
            att,
            result: None,
            added: false,
        })
    }

    fn plugins(&self) -> usize {
        self.list["plugins"].as_array().map_or(0, Vec::len)
    }

    fn plugin_type(&self, i: usize) -> String {
        self.list["plugins"][i]["type"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }

    /// ADD each plugin in order; returns the last plugin's result. On a
    /// failure the chain stays "added": the runtime is expected to call
    /// DEL (as podman and containerd do), which Drop does.
    pub fn add(&mut self) -> Result<Value> {
        self.added = true;
        let mut prev: Option<Value> = None;
        for i in 0..self.plugins() {
            let conf = plugin_config(&self.list, i, &self.att, prev.as_ref())?;
            let res = self
                .runner
                .exec(CniCommand::Add, &conf, Some(&self.att))?
                .ok()
                .with_context(|| format!("ADD {} (plugin #{i})", self.plugin_type(i)))?;
            prev = Some(res);
        }
        let res = prev.unwrap_or(Value::Null);
        self.result = Some(res.clone());
        Ok(res)
    }

    /// The conflist's `cniVersion` is at least 0.4.0 (CHECK, and
    /// `prevResult` on DEL, exist from 0.4.0 on).
    fn at_least_0_4(&self) -> bool {
        version_at_least(
            self.list["cniVersion"].as_str().unwrap_or("0.1.0"),
            (0, 4, 0),
        )
    }

    /// CHECK each plugin in order with the cached result. As libcni: a
    /// conflist with `disableCheck: true` passes without running anything,
    /// one older than 0.4.0 is an error.
    pub fn check(&self) -> Result<()> {
        if self.list["disableCheck"].as_bool() == Some(true) {
            return Ok(());
        }
        if !self.at_least_0_4() {
            bail!(
                "configuration version {} does not support CHECK",
                self.list["cniVersion"]
            );
        }
        let prev = self.result.as_ref().context("CHECK before ADD")?;
        for i in 0..self.plugins() {
            let conf = plugin_config(&self.list, i, &self.att, Some(prev))?;
            self.runner
                .exec(CniCommand::Check, &conf, Some(&self.att))?
                .ok()
                .with_context(|| format!("CHECK {} (plugin #{i})", self.plugin_type(i)))?;
        }
        Ok(())
    }

    /// DEL each plugin in reverse order with the cached result (none
    /// before 0.4.0); stops at the first failure, as libcni does.
    pub fn del(&mut self) -> Result<()> {
        let prev = if self.at_least_0_4() {
            self.result.clone()
        } else {
            None
        };
        for i in (0..self.plugins()).rev() {
            let conf = plugin_config(&self.list, i, &self.att, prev.as_ref())?;
            self.runner
                .exec(CniCommand::Del, &conf, Some(&self.att))?
                .ok()
                .with_context(|| format!("DEL {} (plugin #{i})", self.plugin_type(i)))?;
        }
        self.added = false;
        self.result = None;
        Ok(())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        if self.added
            && let Err(e) = self.del()
        {
            eprintln!("cni cleanup: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcni_injection() {
        let list = json!({
            "cniVersion": "1.0.0",
            "name": "n1",
            "plugins": [
                {"type": "bridge", "bridge": "b0"},
                {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}},
            ]
        });
        let mut att = Attachment::new("c1", Path::new("/run/netns/x"), "eth0");
        att.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 8080}]));
        att.capability_args.insert("bandwidth".into(), json!({}));
        let first = plugin_config(&list, 0, &att, None).unwrap();
        assert_eq!(
            first,
            json!({"type": "bridge", "bridge": "b0", "name": "n1", "cniVersion": "1.0.0"})
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let second = plugin_config(&list, 1, &att, Some(&prev)).unwrap();
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["name"], "n1");
        assert_eq!(att.cni_args(), "IgnoreUnknown=1");
    }

    #[test]
    fn versions() {
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
        assert!(version_at_least("1.1.0", (1, 1, 0)));
    }
}
