//! The control socket's protocol, one definition for all three sides: the
//! agent ([`crate::control`]), `netns-agent status` and the `netns-cni`
//! plugin. One request per connection, one JSON line each way:
//!
//! ```text
//! -> {"op":"status"}
//! <- {"pid":...,"ready":true,...}
//! -> {"op":"cni_add","container_id":"c1","netns":"/run/netns/cni-1","ifname":"eth0","addrs":["198.18.5.3"],"budget_ms":4500}
//! <- {"ok":true}
//! -> {"op":"monitor","pod":"pod-a","verdicts":["captured"]}
//! <- {"kind":"subscribed","pods":3}
//! <- {"kind":"decision",...}          (one line per decision, until either side closes)
//! -> {"op":"nonsense"}
//! <- {"error":"unknown op \"nonsense\" (known: status, monitor, cni_add, cni_del, cni_check, cni_gc)"}
//! ```
//!
//! A request the agent refuses as a request (malformed, too large, not
//! root, unknown op) is answered with a [`Refusal`]; a status request with a
//! [`crate::status::Status`]; a CNI request with a [`crate::cni::CniReply`];
//! a monitor request with [`crate::monitor::MonitorLine`]s, a line each.
//!
//! ```
//! use netns_agent::protocol::Request;
//! use std::time::Duration;
//!
//! let line = Request::Status.to_line(None);
//! assert_eq!(line, b"{\"op\":\"status\"}\n");
//! let (request, budget) = Request::parse(&line).unwrap();
//! assert_eq!((request, budget), (Request::Status, None));
//! let gc = Request::Cni(netns_agent::cni::CniRequest::CniGc { valid: vec![] });
//! let (_, budget) = Request::parse(&gc.to_line(Some(Duration::from_millis(4500)))).unwrap();
//! assert_eq!(budget, Some(Duration::from_millis(4500)));
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::CniRequest;

/// Every op the agent knows, as the wire names it.
pub const OPS: [&str; 6] = [
    "status",
    "monitor",
    "cni_add",
    "cni_del",
    "cni_check",
    "cni_gc",
];

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The agent's status ([`crate::status::Status`]).
    Status,
    /// The data path's decisions, streamed ([`crate::monitor`]).
    Monitor(crate::monitor::MonitorFilter),
    /// A CNI request from the plugin.
    Cni(CniRequest),
}

/// An answer refusing the request itself (not a CNI failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What was wrong with it.
    pub error: String,
}

impl Request {
    /// The request's line, with how long the client waits for a CNI
    /// request (`budget_ms`) when given.
    #[must_use]
    pub fn to_line(&self, budget: Option<Duration>) -> Vec<u8> {
        let mut body = match self {
            Request::Status => serde_json::json!({"op": "status"}),
            Request::Monitor(filter) => {
                let mut body = serde_json::to_value(filter).unwrap_or(Value::Null);
                body["op"] = "monitor".into();
                body
            }
            Request::Cni(request) => serde_json::to_value(request).unwrap_or(Value::Null),
        };
        if let Some(budget) = budget {
            body["budget_ms"] = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX).into();
        }
        let mut line = serde_json::to_vec(&body).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Reads a request line: the request and its `budget_ms`, or what is
    /// wrong with it, ready to send back as a [`Refusal`].
    pub fn parse(line: &[u8]) -> Result<(Request, Option<Duration>), String> {
        let body: Value =
            serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
        let op = body
            .get("op")
            .and_then(Value::as_str)
            .ok_or("malformed request: no \"op\"")?
            .to_owned();
        let budget = body
            .get("budget_ms")
            .and_then(Value::as_u64)
            .map(Duration::from_millis);
        let request = match op.as_str() {
            "status" => Request::Status,
            "monitor" => Request::Monitor(
                serde_json::from_value(body)
                    .map_err(|e| format!("malformed monitor request: {e}"))?,
            ),
            op if OPS.contains(&op) => Request::Cni(
                serde_json::from_value(body).map_err(|e| format!("malformed {op} request: {e}"))?,
            ),
            op => return Err(format!("unknown op {op:?} (known: {})", OPS.join(", "))),
        };
        Ok((request, budget))
    }
}

/// Reads an answer line as `T`, or as the [`Refusal`] it is instead (an
/// answer that is not a `T` and carries an `error`: a request refused,
/// or a busy agent's CNI-shaped "try again later" to a status request).
pub fn parse_reply<T: DeserializeOwned>(line: &str) -> Result<T, ReplyError> {
    serde_json::from_str(line).map_err(|e| match serde_json::from_str::<Refusal>(line) {
        Ok(refusal) => ReplyError::Refused(refusal.error),
        Err(_) => ReplyError::Unreadable(format!("{e}: {}", line.trim_end())),
    })
}

/// An answer that is not the one asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The agent refused the request, saying why.
    #[error("the agent refused: {0}")]
    Refused(String),
    /// The answer cannot be read (an agent of another version?).
    #[error("unreadable answer from the agent: {0}")]
    Unreadable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::{Attachment, CniReply};

    fn attachment() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            netns: "/run/netns/cni-1".into(),
            ifname: "eth0".into(),
            addrs: vec!["198.18.5.3".parse().unwrap()],
            pod_namespace: None,
            pod_name: None,
        }
    }

    #[test]
    fn every_request_round_trips_with_its_budget() {
        let budget = Some(Duration::from_millis(4500));
        for request in [
            Request::Status,
            Request::Monitor(crate::monitor::MonitorFilter::default()),
            Request::Monitor(crate::monitor::MonitorFilter {
                pod: Some("pod-a".into()),
                verdicts: vec!["captured".into()],
            }),
            Request::Cni(CniRequest::CniAdd(attachment())),
            Request::Cni(CniRequest::CniDel(attachment())),
            Request::Cni(CniRequest::CniCheck(attachment())),
            Request::Cni(CniRequest::CniGc {
                valid: vec!["c1".into()],
            }),
        ] {
            for b in [None, budget] {
                let line = request.to_line(b);
                assert_eq!(line.last(), Some(&b'\n'));
                assert_eq!(Request::parse(&line), Ok((request.clone(), b)), "{line:?}");
            }
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = |line: &[u8]| Request::parse(line).unwrap_err();
        assert!(err(b"not json").starts_with("malformed request"));
        assert!(err(b"{}").contains("no \"op\""));
        assert_eq!(
            err(b"{\"op\":\"reboot\"}"),
            "unknown op \"reboot\" (known: status, monitor, cni_add, cni_del, cni_check, cni_gc)"
        );
        assert!(err(b"{\"op\":\"cni_add\"}").starts_with("malformed cni_add request"));
    }

    #[test]
    fn a_refusal_is_told_apart_from_an_answer() {
        let refused = serde_json::to_string(&Refusal {
            error: "busy".into(),
        })
        .unwrap();
        assert_eq!(
            parse_reply::<CniReply>(&refused),
            Err(ReplyError::Refused("busy".into()))
        );
        let failed = serde_json::to_string(&CniReply::failed(11, "later")).unwrap();
        assert_eq!(
            parse_reply::<CniReply>(&failed),
            Ok(CniReply::failed(11, "later"))
        );
        assert!(matches!(
            parse_reply::<CniReply>("{\"what\":1}"),
            Err(ReplyError::Unreadable(_))
        ));
    }
}
