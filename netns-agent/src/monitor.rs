//! What `netns-agent monitor` receives: one JSON object per line, each a
//! [`MonitorLine`]. Field names are stable; new fields may be added.
//!
//! ```text
//! {"kind":"subscribed","pods":3}
//! {"kind":"decision","pod":"pod-a","netns_cookie":4099,"hook":"outbound","verdict":"captured","destination":"198.18.96.10:443","socket_cookie":81234,"detail":"sidecar 127.0.0.1:15001"}
//! {"kind":"lost","count":12}
//! {"kind":"dropped","count":3}
//! ```
//!
//! `lost`: decisions the kernel could not report because its ring buffer
//! was full (counted by the programs, for every monitor). `dropped`:
//! decisions this monitor did not read in time (its queue was full); both
//! are totals since the monitor started, sent when they grow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netns_ebpf::{AF_INET, Decision, MeshSettings, verdict};
use serde::{Deserialize, Serialize};

/// One line of a monitor's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MonitorLine {
    /// The agent took the monitor on; `pods` were meshed then.
    Subscribed {
        /// Meshed pods at that moment.
        pods: usize,
    },
    /// A decision of the data path.
    Decision(DecisionLine),
    /// Decisions lost in the kernel (ring buffer full), in all so far.
    Lost {
        /// How many.
        count: u64,
    },
    /// Decisions this monitor read too slowly to get, in all so far.
    Dropped {
        /// How many.
        count: u64,
    },
}

/// A decision, as the agent explains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionLine {
    /// The pod's name (its file name, CNI container or Kubernetes name);
    /// `"?"` when the hook could not tell the pod (see `docs/monitor.md`).
    pub pod: String,
    /// The pod's network namespace cookie (0: unknown).
    pub netns_cookie: u64,
    /// `outbound`, `sidecar`, `inbound` or `dns`.
    pub hook: String,
    /// One of [`verdict::NAMES`].
    pub verdict: String,
    /// The destination the decision is about.
    pub destination: String,
    /// The socket's cookie (`SO_COOKIE`; 0 where the hook has none).
    pub socket_cookie: u64,
    /// What the verdict means for the connection, in words.
    pub detail: String,
}

/// Which decisions a monitor wants: all of one pod, some verdicts, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorFilter {
    /// Only this pod's decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Only these verdicts (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<String>,
}

impl MonitorFilter {
    /// Refuses verdict names the data path does not have.
    pub fn check(&self) -> Result<(), String> {
        for v in &self.verdicts {
            if !verdict::NAMES[1..].contains(&v.as_str()) {
                return Err(format!(
                    "unknown verdict {v:?} (known: {})",
                    verdict::NAMES[1..].join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Does `line` pass?
    #[must_use]
    pub fn passes(&self, line: &DecisionLine) -> bool {
        self.pod.as_ref().is_none_or(|p| *p == line.pod)
            && (self.verdicts.is_empty() || self.verdicts.contains(&line.verdict))
    }
}

/// The address of a decision.
#[must_use]
pub fn destination(d: &Decision) -> SocketAddr {
    let ip = if d.family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(d.addr[0].to_ne_bytes()))
    } else {
        let mut bytes = [0u8; 16];
        for (i, word) in d.addr.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    SocketAddr::new(ip, d.port)
}

impl DecisionLine {
    /// Explains `d`; `pod` is its pod's name when the agent knows it.
    #[must_use]
    pub fn explain(d: &Decision, pod: Option<&str>, settings: &MeshSettings) -> DecisionLine {
        let name = verdict::NAMES
            .get(usize::from(d.verdict))
            .copied()
            .unwrap_or("unknown");
        DecisionLine {
            pod: pod.unwrap_or("?").to_owned(),
            netns_cookie: d.netns_cookie,
            hook: verdict::hook(d.verdict).to_owned(),
            verdict: name.to_owned(),
            destination: destination(d).to_string(),
            socket_cookie: d.socket_cookie,
            detail: detail(d.verdict, settings),
        }
    }

    /// The line a person reads: `pod  hook  destination -> verdict (detail)`.
    #[must_use]
    pub fn human(&self) -> String {
        format!(
            "{:<16} {:<8} {} -> {} ({})",
            self.pod, self.hook, self.destination, self.verdict, self.detail
        )
    }
}

/// Decisions the agent keeps per pod for `status POD`.
pub const RECENT_KEPT: usize = 16;

/// A decision the agent kept for `status POD`, with when it read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentDecision {
    /// When the agent read it off the ring buffer (milliseconds since the
    /// Unix epoch; the kernel made it at most a tick earlier).
    pub at_unix_ms: u64,
    /// The decision.
    #[serde(flatten)]
    pub line: DecisionLine,
}

/// What a verdict does to the connection it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the sidecar, or answered: the mesh works.
    Meshed,
    /// Left alone because the settings say so (an exclusion, the bypass
    /// mark, loopback, a pass port, the sidecar's own traffic).
    LeftAlone,
    /// Not captured, refused or not answered although the pod is meshed:
    /// what an operator looks for.
    Failed,
}

/// The outcome of verdict `v`.
#[must_use]
pub const fn outcome(v: u8) -> Outcome {
    match v {
        verdict::CAPTURED
        | verdict::TO_LOCAL_POD
        | verdict::ORIGINAL_DST_RECEIVED
        | verdict::ANSWERED
        | verdict::INBOUND_CAPTURED
        | verdict::DNS_REDIRECTED => Outcome::Meshed,
        verdict::EXCLUDED_PORT
        | verdict::EXCLUDED_CIDR
        | verdict::NOT_INCLUDED
        | verdict::SIDECAR_UID
        | verdict::BYPASS_MARK
        | verdict::LOOPBACK
        | verdict::INBOUND_PASS_PORT
        | verdict::INBOUND_LOOP_GUARD => Outcome::LeftAlone,
        _ => Outcome::Failed,
    }
}

/// Each verdict's name and what it means, in words (for `status`).
#[must_use]
pub fn meanings(settings: &MeshSettings) -> Vec<(String, String)> {
    (1..verdict::COUNT)
        .map(|v| {
            (
                verdict::NAMES[usize::from(v)].to_owned(),
                detail(v, settings),
            )
        })
        .collect()
}

/// The verdict called `name`.
#[must_use]
pub fn verdict_named(name: &str) -> Option<u8> {
    verdict::NAMES[1..]
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u8::try_from(i + 1).ok())
}

/// What a verdict means, in words.
fn detail(v: u8, s: &MeshSettings) -> String {
    let (out, inb, dns) = (s.outbound_port, s.inbound_port, s.dns_port);
    match v {
        verdict::CAPTURED => format!("sidecar 127.0.0.1:{out}"),
        verdict::EXCLUDED_PORT => "an excluded destination port: direct".into(),
        verdict::EXCLUDED_CIDR => "an excluded destination CIDR: direct".into(),
        verdict::NOT_INCLUDED => "outside the pod's included CIDRs: direct".into(),
        verdict::SIDECAR_UID => "the sidecar's own connection: direct".into(),
        verdict::BYPASS_MARK => format!(
            "the socket has the bypass mark {:#x}: direct",
            s.bypass_mark
        ),
        verdict::SIDECAR_NOT_LISTENING => {
            format!("nothing listens on {out} in the pod: direct, uncaptured")
        }
        verdict::REFUSED_NO_SIDECAR => {
            "the sidecar listened before and does not now: refused (ECONNREFUSED)".into()
        }
        verdict::LOOPBACK => "a loopback destination: direct".into(),
        verdict::TO_LOCAL_POD => format!("a meshed pod on this node: its sidecar's port {inb}"),
        verdict::ORIGINAL_DST_RECEIVED => {
            "the sidecar's socket will answer SO_ORIGINAL_DST with it".into()
        }
        verdict::NO_SAVED_SYN => {
            "the listener kept no SYN (it predates the agent, or a SYN cookie): no answer".into()
        }
        verdict::NO_OPTION => "the SYN carried no destination option: no answer".into(),
        verdict::OPTION_NOT_BELIEVED => {
            "a destination option from where it could mislead: ignored, no answer".into()
        }
        verdict::ANSWERED => "SO_ORIGINAL_DST answered".into(),
        verdict::NOT_ANSWERED => "SO_ORIGINAL_DST asked, nothing to answer (ENOENT)".into(),
        verdict::INBOUND_CAPTURED => format!("the sidecar's inbound listener ({inb})"),
        verdict::INBOUND_PASS_PORT => "a port the pod leaves alone: the app".into(),
        verdict::INBOUND_LOOP_GUARD => "from the pod itself: the app".into(),
        verdict::INBOUND_REFUSED => "the sidecar has no inbound listener: refused (reset)".into(),
        verdict::DNS_REDIRECTED => format!("the sidecar's DNS port {dns}"),
        verdict::DNS_SIDECAR_NOT_LISTENING => {
            format!("nothing listens on {dns} in the pod: the resolver asked")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_stable_field_names() {
        let d = Decision {
            netns_cookie: 4099,
            socket_cookie: 7,
            addr: [u32::from_ne_bytes([198, 18, 96, 10]), 0, 0, 0],
            port: 443,
            family: AF_INET,
            verdict: verdict::CAPTURED,
            pad: [0; 11],
        };
        let line = MonitorLine::Decision(DecisionLine::explain(
            &d,
            Some("pod-a"),
            &MeshSettings::istio(),
        ));
        let json = serde_json::to_string(&line).unwrap();
        assert_eq!(
            json,
            "{\"kind\":\"decision\",\"pod\":\"pod-a\",\"netns_cookie\":4099,\"hook\":\"outbound\",\
             \"verdict\":\"captured\",\"destination\":\"198.18.96.10:443\",\"socket_cookie\":7,\
             \"detail\":\"sidecar 127.0.0.1:15001\"}"
        );
        let MonitorLine::Decision(back) = serde_json::from_str(&json).unwrap() else {
            panic!("not a decision");
        };
        assert_eq!(
            back.human(),
            "pod-a            outbound 198.18.96.10:443 -> captured (sidecar 127.0.0.1:15001)"
        );
        assert_eq!(
            serde_json::to_string(&MonitorLine::Lost { count: 3 }).unwrap(),
            "{\"kind\":\"lost\",\"count\":3}"
        );
    }

    #[test]
    fn every_verdict_has_words_and_a_hook() {
        for v in 1..verdict::COUNT {
            assert!(!detail(v, &MeshSettings::istio()).is_empty(), "{v}");
            assert_ne!(verdict::hook(v), "none", "{v}");
            assert_eq!(verdict_named(verdict::NAMES[usize::from(v)]), Some(v));
        }
    }

    #[test]
    fn filters_refuse_unknown_verdicts_and_pass_by_pod_and_verdict() {
        let f = MonitorFilter {
            pod: None,
            verdicts: vec!["capturd".into()],
        };
        assert!(f.check().unwrap_err().contains("unknown verdict"));
        let f = MonitorFilter {
            pod: Some("a".into()),
            verdicts: vec!["captured".into()],
        };
        f.check().unwrap();
        let mut line = DecisionLine {
            pod: "a".into(),
            netns_cookie: 1,
            hook: "outbound".into(),
            verdict: "captured".into(),
            destination: String::new(),
            socket_cookie: 0,
            detail: String::new(),
        };
        assert!(f.passes(&line));
        line.verdict = "loopback".into();
        assert!(!f.passes(&line));
        line.verdict = "captured".into();
        line.pod = "b".into();
        assert!(!f.passes(&line));
    }
}
