//! What each CNI verb does (ADD, DEL, CHECK, GC, STATUS), apart from the
//! plugin's skeleton (environment, config, version negotiation, error
//! objects: [`super::plugin`]) and from the agent client ([`super::client`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::client::Agent;
use super::plugin::{CniError, DEFAULT_EXCLUDED_NAMESPACES, Env, NetConf};
use super::{Attachment, CniReply, CniRequest, code};
use crate::protocol::{Request, parse_reply};

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

pub(super) fn add(
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

pub(super) fn del(env: &Env, agent: &Agent, stderr: &mut String) {
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

pub(super) fn check(env: &Env, conf: &NetConf, agent: &Agent) -> Result<(), CniError> {
    let prev = prev_result(conf)?;
    let pod = attachment(env, prev_addrs(prev)?, true)?;
    let reply = agent.ask(&CniRequest::CniCheck(pod))?;
    if reply.ok {
        Ok(())
    } else {
        Err(refused(&reply, "the pod is not meshed as it should be"))
    }
}

pub(super) fn gc(conf: &NetConf, agent: &Agent) -> Result<(), CniError> {
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

pub(super) fn status(agent: &Agent) -> Result<(), CniError> {
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
