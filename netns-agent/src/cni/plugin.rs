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

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Attachment, CniReply, CniRequest, code};
use crate::protocol::{ReplyError, Request, parse_reply};

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

    fn arg(&self, key: &str) -> Option<String> {
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
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    cni_version: Option<String>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    agent_socket: Option<PathBuf>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    agent_unreachable: Option<String>,
    #[serde(default)]
    exclude_namespaces: Option<Vec<String>>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
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

/// The attachment of this invocation; `need_netns`: ADD and CHECK. The
/// interface name is required with it: an attachment is (container, interface).
fn attachment(env: &Env, addrs: Vec<IpAddr>, need_netns: bool) -> Result<Attachment, CniError> {
    Attachment::check_container_id(&env.container_id)
        .map_err(|e| CniError::new(code::INVALID_ENV, "invalid CNI_CONTAINERID", e))?;
    if need_netns && env.ifname.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_IFNAME is not set",
            "ADD and CHECK need the name of the pod's interface",
        ));
    }
    if need_netns && env.netns.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_NETNS is not set",
            "ADD and CHECK need the pod's network namespace path",
        ));
    }
    Ok(Attachment {
        container_id: env.container_id.clone(),
        netns: env.netns.clone().into(),
        ifname: env.ifname.clone(),
        addrs,
        pod_namespace: env.arg("K8S_POD_NAMESPACE"),
        pod_name: env.arg("K8S_POD_NAME"),
    })
}

/// Every address of `prevResult.ips` ("198.18.5.3/24" -> 198.18.5.3).
fn prev_addrs(prev: &Value) -> Result<Vec<IpAddr>, CniError> {
    let bad = |what: String| CniError::new(code::INVALID_CONFIG, "invalid prevResult", what);
    let mut addrs = Vec::new();
    let Some(ips) = prev.get("ips") else {
        return Ok(addrs);
    };
    let ips = ips
        .as_array()
        .ok_or_else(|| bad("prevResult.ips is not a list".into()))?;
    for ip in ips {
        let cidr = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("an entry of prevResult.ips has no address: {ip}")))?;
        let addr = cidr.split('/').next().unwrap_or_default();
        addrs.push(
            addr.parse()
                .map_err(|e| bad(format!("prevResult address {cidr:?}: {e}")))?,
        );
    }
    Ok(addrs)
}

fn prev_result(conf: &NetConf) -> Result<&Value, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "no prevResult: netns-cni is a chained plugin",
            "list it after the plugin that makes the pod's interface (bridge, ptp, ...)",
        )
    })?;
    // A Result is an object; anything else (a string, a list) would be
    // echoed back to the runtime as if it were one.
    if !prev.is_object() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid prevResult",
            format!("prevResult must be a Result object, not {prev}"),
        ));
    }
    Ok(prev)
}

fn add(
    env: &Env,
    conf: &NetConf,
    version: &str,
    agent: &Agent,
    stderr: &mut String,
) -> Result<String, CniError> {
    let prev = prev_result(conf)?;
    let pod = attachment(env, prev_addrs(prev)?, true)?;
    let excluded: Vec<&str> = conf.exclude_namespaces.as_ref().map_or_else(
        || DEFAULT_EXCLUDED_NAMESPACES.to_vec(),
        |v| v.iter().map(String::as_str).collect(),
    );
    let skip = pod
        .pod_namespace
        .as_deref()
        .is_some_and(|ns| excluded.contains(&ns));
    // The result is prevResult, unchanged (in the config's version, which
    // the runtime converted it to).
    let mut result = prev.clone();
    if let Some(obj) = result.as_object_mut() {
        obj.entry("cniVersion").or_insert_with(|| json!(version));
    }
    if skip {
        return Ok(result.to_string());
    }
    match agent.ask(&CniRequest::CniAdd(pod)) {
        Ok(reply) if reply.ok => Ok(result.to_string()),
        Ok(reply) => Err(refused(&reply, "the agent could not mesh the pod")),
        Err(e) if conf.agent_unreachable.as_deref() == Some("allow") => {
            let _ = writeln!(
                stderr,
                "netns-cni: warning: {e}; container {} starts unmeshed (agentUnreachable: allow)",
                env.container_id
            );
            Ok(result.to_string())
        }
        Err(e) => Err(e),
    }
}

fn del(env: &Env, agent: &Agent, stderr: &mut String) {
    let pod = match attachment(env, Vec::new(), false) {
        Ok(pod) => pod,
        Err(e) => {
            let _ = writeln!(stderr, "netns-cni: DEL: {}: {}", e.msg, e.details);
            return;
        }
    };
    match agent.ask(&CniRequest::CniDel(pod)) {
        Ok(reply) if reply.ok => {}
        Ok(reply) => {
            let _ = writeln!(
                stderr,
                "netns-cni: DEL: the agent said: {}",
                reply.error.unwrap_or_default()
            );
        }
        Err(e) => {
            let _ = writeln!(
                stderr,
                "netns-cni: DEL: {} ({}); the agent's reconcile removes what is left",
                e.msg, e.details
            );
        }
    }
}

fn check(env: &Env, conf: &NetConf, agent: &Agent) -> Result<(), CniError> {
    let prev = prev_result(conf)?;
    let pod = attachment(env, prev_addrs(prev)?, true)?;
    let reply = agent.ask(&CniRequest::CniCheck(pod))?;
    if reply.ok {
        Ok(())
    } else {
        Err(refused(&reply, "the pod is not meshed as it should be"))
    }
}

fn gc(conf: &NetConf, agent: &Agent) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .as_ref()
        .map(|v| v.iter().map(|a| a.container_id.clone()).collect())
        .unwrap_or_default();
    let reply = agent.ask(&CniRequest::CniGc { valid })?;
    if reply.ok {
        Ok(())
    } else {
        Err(refused(&reply, "garbage collection failed"))
    }
}

fn status(agent: &Agent) -> Result<(), CniError> {
    let line = agent
        .exchange(&Request::Status.to_line(None))
        .map_err(|e| {
            CniError::new(
                code::NOT_AVAILABLE,
                "the netns agent is not available",
                e.details,
            )
        })?;
    let ready = parse_reply::<crate::status::Status>(&line).is_ok_and(|s| s.ready);
    if ready {
        Ok(())
    } else {
        Err(CniError::new(
            code::NOT_AVAILABLE,
            "the netns agent is not ready",
            line,
        ))
    }
}

fn refused(reply: &CniReply, msg: &str) -> CniError {
    CniError::new(
        reply.code.unwrap_or(code::MESH_FAILED),
        msg,
        reply.error.clone().unwrap_or_default(),
    )
}

/// The agent's control socket.
struct Agent {
    socket: PathBuf,
    timeout: Duration,
}

impl Agent {
    fn ask(&self, request: &CniRequest) -> Result<CniReply, CniError> {
        // The agent must answer before we stop waiting: it gets our time less
        // a margin for the exchange itself, and never starts work it cannot
        // finish in it.
        let margin = (self.timeout / 10).min(Duration::from_millis(500));
        let budget = self.timeout.saturating_sub(margin);
        let line = self.exchange(&Request::Cni(request.clone()).to_line(Some(budget)))?;
        parse_reply(&line).map_err(|e| match e {
            // Refused as a request (too large, malformed): trying again
            // would not help.
            ReplyError::Refused(error) => CniError::new(
                code::INVALID_CONFIG,
                "the netns agent refused the request",
                error,
            ),
            ReplyError::Unreadable(what) => CniError::new(
                code::TRY_AGAIN_LATER,
                "unreadable answer from the netns agent",
                what,
            ),
        })
    }

    /// Sends one line, reads one line back.
    fn exchange(&self, line: &[u8]) -> Result<String, CniError> {
        let unreachable = |e: std::io::Error| {
            let msg = if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                "the netns agent did not answer in time"
            } else {
                "the netns agent is unreachable"
            };
            CniError::new(
                code::TRY_AGAIN_LATER,
                msg,
                format!("{} ({:?}): {e}", self.socket.display(), self.timeout),
            )
        };
        let mut conn = UnixStream::connect(&self.socket).map_err(unreachable)?;
        conn.set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        conn.set_write_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        conn.write_all(line).map_err(unreachable)?;
        let mut line = String::new();
        BufReader::new(conn)
            .read_line(&mut line)
            .map_err(unreachable)?;
        if line.is_empty() {
            return Err(unreachable(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(line)
    }
}
