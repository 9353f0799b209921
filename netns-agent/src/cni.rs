//! The CNI side of the agent: what the `netns-cni` chained plugin sends over
//! the control socket and what the agent answers, and the plugin itself
//! ([`plugin`]), kept in the library so its logic is tested without a runtime
//! (`netns-agent/tests/cni_plugin.rs` calls [`plugin::run`] directly).
//!
//! One request per connection, one JSON line each way. The plugin adds
//! `budget_ms`, how long the agent may take (its `timeoutMs` less a margin,
//! see [`crate::control::CNI_TIMEOUT`]); a failure carries a CNI error code
//! ([`code`]), which the plugin passes on to the runtime:
//!
//! ```text
//! -> {"op":"cni_add","container_id":"c1","netns":"/run/netns/cni-1","ifname":"eth0","addrs":["198.18.5.3"],"budget_ms":4500}
//! <- {"ok":true}
//! -> {"op":"cni_check","container_id":"c2","netns":"/run/netns/cni-2","ifname":"eth0","addrs":["198.18.5.4"],"budget_ms":4500}
//! <- {"ok":false,"code":101,"error":"no attachment on record for container c2"}
//! ```

mod client;
pub mod install;
pub mod plugin;
mod verbs;

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// CNI error codes (spec 1.0/1.1, "Error" section), and ours from 100 on.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables, like `CNI_COMMAND`, `CNI_CONTAINERID`.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the agent is unreachable or busy.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (the agent is not ready).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Ours: the agent could not mesh the pod (the message says why).
    pub const MESH_FAILED: u32 = 100;
    /// Ours: CHECK found the pod's data path entries missing.
    pub const NOT_MESHED: u32 = 101;
}

/// One pod attachment, as the plugin tells the agent about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on DEL).
    #[serde(default)]
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: String,
    /// Every address of `prevResult.ips` (IPv4 and IPv6).
    #[serde(default)]
    pub addrs: Vec<IpAddr>,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, when the runtime passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

impl Attachment {
    /// A container id is a file name in the agent's state directory: only
    /// letters, digits, `.`, `_` and `-` (what runtimes use), 1..=128 long,
    /// not `.` or `..`.
    pub fn check_container_id(id: &str) -> Result<(), String> {
        if id.is_empty() || !file_name_part(id, 128) {
            return Err(format!(
                "container id {id:?} is not 1 to 128 of [A-Za-z0-9._-]"
            ));
        }
        Ok(())
    }
}

/// Whether `text` can stand in a state file's name: at most `max` of
/// `[A-Za-z0-9._-]`, and not `.` or `..`.
pub(crate) fn file_name_part(text: &str, max: usize) -> bool {
    text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && text != "."
        && text != ".."
}

/// A CNI request to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CniRequest {
    /// Mesh the pod: per-pod work in `netns`, with these addresses.
    CniAdd(Attachment),
    /// Undo it. Always succeeds for an unknown or already removed pod.
    CniDel(Attachment),
    /// Verify the pod's entries are in the data path.
    CniCheck(Attachment),
    /// Remove every attachment whose container id is not listed.
    CniGc {
        /// The container ids the runtime still has.
        valid: Vec<String>,
    },
}

impl CniRequest {
    /// The request's op, as the wire names it.
    #[must_use]
    pub fn op(&self) -> &'static str {
        match self {
            CniRequest::CniAdd(_) => "cni_add",
            CniRequest::CniDel(_) => "cni_del",
            CniRequest::CniCheck(_) => "cni_check",
            CniRequest::CniGc { .. } => "cni_gc",
        }
    }
}

/// The agent's answer to a [`CniRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniReply {
    /// Whether it was done.
    pub ok: bool,
    /// A CNI error code when not ([`code`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CniReply {
    /// Done.
    #[must_use]
    pub fn done() -> CniReply {
        CniReply {
            ok: true,
            code: None,
            error: None,
        }
    }

    /// Not done, with a CNI error code.
    #[must_use]
    pub fn failed(code: u32, error: impl Into<String>) -> CniReply {
        CniReply {
            ok: false,
            code: Some(code),
            error: Some(error.into()),
        }
    }
}
