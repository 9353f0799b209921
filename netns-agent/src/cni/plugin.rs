//! `netns-cni`, a chained CNI plugin (spec 0.3.0 to 1.1.0): it goes after
//! the plugins that make the pod's interface (`bridge`, ...), tells the agent
//! over its root-only control socket which namespace and addresses the pod
//! has, and passes `prevResult` through unchanged. The agent does the
//! per-pod work; the plugin stays small and quick.
//!
//! Network config fields of its own (all optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `agentSocket` | `/run/netns-agent/agent.sock` | the agent's control socket |
//! | `timeoutMs` | 5000 | how long to wait for the agent (error 11 after it) |
//! | `excludeNamespaces` | `["kube-system"]` | Kubernetes namespaces (`K8S_POD_NAMESPACE` in `CNI_ARGS`) whose pods are never meshed: ADD passes `prevResult` through without asking the agent |
//! | `agentUnreachable` | `"fail"` | ADD while no agent answers: `fail` (error 11, "try again later": the runtime retries, the pod never runs uncaptured) or `allow` (the pod starts unmeshed; a warning on stderr) |
//!
//! DEL always succeeds: unknown pod, namespace gone, repeated, agent down
//! (the agent's reconcile removes what is left).
//!
//! This module is the plugin's skeleton: the environment, the network
//! config, version negotiation and the spec's error objects. What each verb
//! does is in `verbs.rs`, the exchange with the agent in `client.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::client::Agent;
use super::code;
use super::verbs::{add, check, del, gc, status};

/// The spec versions the plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Where the agent listens unless the config says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/netns-agent/agent.sock";
/// The largest network config read from stdin.
pub const MAX_CONFIG: usize = 1 << 20;
const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// Namespaces whose pods are never meshed unless the config says otherwise.
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &["kube-system"];

/// The environment a runtime gives a CNI plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` (`K1=V1;K2=V2`).
    pub args: String,
}

impl Env {
    /// From this process's environment.
    #[must_use]
    pub fn from_process() -> Env {
        let var = |name| std::env::var(name).unwrap_or_default();
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }

    pub(super) fn arg(&self, key: &str) -> Option<String> {
        self.args
            .split(';')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    }
}

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Standard output (a result, a version list, or an error object).
    pub stdout: String,
    /// Standard error (warnings).
    pub stderr: String,
    /// Exit status: 0 on success.
    pub exit: i32,
}

/// A CNI error: printed as the spec's error object, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec's code ([`code`]).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.msg, self.details)
    }
}

impl CniError {
    pub(super) fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NetConf {
    pub(super) cni_version: Option<String>,
    #[serde(default)]
    pub(super) prev_result: Option<Value>,
    #[serde(default)]
    pub(super) agent_socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) agent_unreachable: Option<String>,
    #[serde(default)]
    pub(super) exclude_namespaces: Option<Vec<String>>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub(super) valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub(super) container_id: String,
}

/// Runs one plugin invocation: `env` and the network config on `stdin`.
#[must_use]
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    let mut stderr = String::new();
    // The version to answer errors in, as well as it can be told.
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_owned());
    match invoke(env, stdin, &mut stderr) {
        Ok(stdout) => Outcome {
            stdout,
            stderr,
            exit: 0,
        },
        Err(e) => Outcome {
            stdout: json!({
                "cniVersion": version,
                "code": e.code,
                "msg": e.msg,
                "details": e.details,
            })
            .to_string(),
            stderr,
            exit: 1,
        },
    }
}

fn invoke(env: &Env, stdin: &[u8], stderr: &mut String) -> Result<String, CniError> {
    if stdin.len() > MAX_CONFIG {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "network config too large",
            format!("{} bytes; the limit is {MAX_CONFIG}", stdin.len()),
        ));
    }
    if env.command == "VERSION" {
        return Ok(json!({
            "cniVersion": "1.1.0",
            "supportedVersions": SUPPORTED_VERSIONS,
        })
        .to_string());
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "cannot decode the network config",
            e.to_string(),
        )
    })?;
    let version = conf.cni_version.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "the network config has no cniVersion",
            "",
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("unsupported cniVersion {version:?}"),
            format!("netns-cni speaks {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    check_verb_version(&env.command, &version)?;
    if conf.timeout_ms == Some(0) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "timeoutMs is 0",
            "give the agent at least 1 ms (the default is 5000)",
        ));
    }
    let agent = Agent {
        socket: conf
            .agent_socket
            .clone()
            .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into()),
        timeout: Duration::from_millis(conf.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
    };
    match env.command.as_str() {
        "ADD" => add(env, &conf, &version, &agent, stderr),
        "DEL" => {
            del(env, &agent, stderr);
            Ok(String::new())
        }
        "CHECK" => check(env, &conf, &agent).map(|()| String::new()),
        "GC" => gc(&conf, &agent).map(|()| String::new()),
        "STATUS" => status(&agent).map(|()| String::new()),
        "" => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "netns-cni is a CNI plugin: a container runtime runs it",
        )),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "ADD, DEL, CHECK, GC, STATUS or VERSION",
        )),
    }
}

/// The first spec version each verb exists in (CHECK came with 0.4.0, GC
/// and STATUS with 1.1.0): asked in an older version, the verb is refused
/// with code 1, as the spec says of a version a plugin cannot serve.
fn check_verb_version(verb: &str, version: &str) -> Result<(), CniError> {
    let since = match verb {
        "CHECK" => "0.4.0",
        "GC" | "STATUS" => "1.1.0",
        _ => return Ok(()),
    };
    let order = |v: &str| SUPPORTED_VERSIONS.iter().position(|s| *s == v);
    if order(version) < order(since) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{verb} does not exist in cniVersion {version}"),
            format!("{verb} needs cniVersion {since} or later"),
        ));
    }
    Ok(())
}
