//! What `netns-agent status` shows: the agent's own view, serialised for the
//! control socket (`--json`) and rendered as a table for a person.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A snapshot of the running agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The agent's process id.
    pub pid: u32,
    /// Initial reconcile done, the pod source up, and the kernel holding the
    /// whole data path (see `problems`).
    pub ready: bool,
    /// What keeps the agent from being ready, as the last kernel check found
    /// it (a program not attached, a pod's inbound link gone, the control
    /// socket file removed), after repairing what it could.
    #[serde(default)]
    pub problems: Vec<String>,
    /// The cgroup v2 directory the programs are attached to.
    pub cgroup: String,
    /// The pin directory.
    pub bpffs: String,
    /// The pod source in use.
    pub source: String,
    /// Attached programs.
    pub programs: Vec<ProgramStatus>,
    /// Managed pods.
    pub pods: Vec<PodStatus>,
    /// Fill levels of the maps that grow with pods and connections.
    pub maps: Vec<MapStatus>,
    /// Data path counters, by name.
    pub counters: Vec<(String, u64)>,
    /// Errors since start, by kind.
    pub errors: Vec<(String, u64)>,
    /// Pieces of pod work done since start, by kind (`source`, `cni`,
    /// `addresses`, `inbound_check`).
    #[serde(default)]
    pub work: Vec<(String, u64)>,
    /// Paths the pod source named that are not in the mesh, and why (not a
    /// network namespace, the node's own, a symlink, or a setup that failed,
    /// such as a sidecar listener that could not be equipped).
    #[serde(default)]
    pub not_meshed: Vec<NotMeshed>,
    /// `netns-agent monitor`s attached, and whether the programs report
    /// decisions (the switch as the kernel's map holds it).
    #[serde(default)]
    pub monitor: MonitorStatus,
    /// Each verdict's name and what it does to a connection, with this
    /// agent's ports.
    #[serde(default)]
    pub meanings: Vec<(String, String)>,
}

/// The monitors, and the data path's reporting switch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MonitorStatus {
    /// Monitors attached to the control socket.
    pub attached: usize,
    /// The programs report decisions now (read from the kernel's map).
    pub reporting: bool,
    /// Decisions dropped for monitors that read too slowly, since start.
    pub dropped: u64,
}

impl PodStatus {
    /// The lines under a pod's row: its sidecar, equipped listeners,
    /// settings, and (`with_counts`) its decisions counted by verdict on one
    /// line (`status POD` has them as a table instead).
    fn render_details(&self, out: &mut String, with_counts: bool) {
        let pod = self;
        if !pod.sidecar.is_empty() {
            let _ = writeln!(out, "{:<24} sidecar: {}", "", pod.sidecar);
        }
        if !pod.equipped.is_empty() {
            let _ = writeln!(
                out,
                "{:<24} listeners open before the agent, equipped: {}",
                "",
                pod.equipped.join(", ")
            );
        }
        if pod.settings != netns_datapath::settings::PodSettings::default() {
            let _ = writeln!(out, "{:<24} settings: {}", "", pod.settings);
        }
        if with_counts && !pod.decisions.is_empty() {
            let counts: Vec<String> = pod
                .decisions
                .iter()
                .map(|(verdict, n)| format!("{verdict} {n}"))
                .collect();
            let _ = writeln!(out, "{:<24} decisions: {}", "", counts.join(", "));
        }
    }
}

impl PodStatus {
    /// A meshed pod with a few decisions counted, for tests.
    #[cfg(test)]
    pub(crate) fn example(name: &str, sidecar: &str) -> PodStatus {
        PodStatus {
            name: name.into(),
            path: format!("/run/netns/{name}"),
            netns_inode: 1,
            cookie: 2,
            addrs: vec![],
            meshed: true,
            equipped: vec![],
            sidecar: sidecar.into(),
            inbound: false,
            settings: netns_datapath::settings::PodSettings::default(),
            since_unix: 0,
            decisions: vec![("captured".into(), 5), ("sidecar_not_listening".into(), 1)],
            recent: vec![],
        }
    }
}

/// A path the pod source named that is not in the mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotMeshed {
    /// The path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// One attached program.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgramStatus {
    /// Its name in the object.
    pub name: String,
    /// The kernel's program id.
    pub id: u32,
}

/// One managed pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodStatus {
    /// File name in the watched directory.
    pub name: String,
    /// Namespace path.
    pub path: String,
    /// Namespace inode.
    pub netns_inode: u64,
    /// Namespace cookie.
    pub cookie: u64,
    /// Addresses in the data path.
    pub addrs: Vec<String>,
    /// In the mesh, as the kernel's maps say (its netns cookie in
    /// `MESHED_NETNS` and each of its addresses in the local-pod maps)?
    pub meshed: bool,
    /// Sidecar listeners that were open before the agent took the pod on,
    /// equipped then (`PORT/FAMILY (pid PID)`).
    #[serde(default)]
    pub equipped: Vec<String>,
    /// Whether its sidecar is served, as the kernel says now: `listening`,
    /// or why not and what its apps' connections do meanwhile.
    #[serde(default)]
    pub sidecar: String,
    /// Is its inbound capture attached (its link pinned)?
    #[serde(default)]
    pub inbound: bool,
    /// Its own settings (the defaults unless its source described it).
    #[serde(default)]
    pub settings: netns_datapath::settings::PodSettings,
    /// Seconds since the Unix epoch when the agent took it on.
    pub since_unix: u64,
    /// Its connections' decisions so far, by verdict, as the kernel counted
    /// them (`netns-agent monitor` shows them one by one; see
    /// docs/monitor.md for where the hooks know the pod).
    #[serde(default)]
    pub decisions: Vec<(String, u64)>,
    /// Its last decisions, oldest first, as the agent read them while a
    /// monitor was attached (the programs report each decision only then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<crate::monitor::RecentDecision>,
}

/// One map's fill level.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapStatus {
    /// Map name.
    pub name: String,
    /// Entries now.
    pub entries: u64,
    /// Capacity (`max_entries`).
    pub capacity: u64,
}

impl Status {
    /// `status POD`: the pod called `name` (its name or its path), or why
    /// there is none.
    pub fn pod(&self, name: &str) -> Result<&PodStatus, String> {
        if let Some(pod) = self.pods.iter().find(|p| p.name == name || p.path == name) {
            return Ok(pod);
        }
        if let Some(not) = self
            .not_meshed
            .iter()
            .find(|n| n.path == name || n.path.rsplit('/').next() == Some(name))
        {
            return Err(format!(
                "pod {name:?} is not meshed: {}: {}",
                not.path, not.reason
            ));
        }
        let names: Vec<&str> = self.pods.iter().map(|p| p.name.as_str()).collect();
        Err(format!(
            "no pod {name:?} in this agent's mesh (meshed: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ))
    }

    /// What `status POD` prints: the pod, its decisions by verdict with
    /// what each did to its connections (failures first), and its last
    /// decisions.
    pub fn render_pod(&self, name: &str) -> Result<String, String> {
        use crate::monitor::{Outcome, outcome, verdict_named};
        let pod = self.pod(name)?;
        let mut out = String::new();
        let yes = |b: bool| if b { "yes" } else { "NO" };
        let _ = writeln!(
            out,
            "pod {}: meshed {}, inbound capture {}",
            pod.name,
            yes(pod.meshed),
            yes(pod.inbound)
        );
        let _ = writeln!(
            out,
            "  netns {} (inode {}, cookie {}), addresses {}",
            pod.path,
            pod.netns_inode,
            pod.cookie,
            if pod.addrs.is_empty() {
                "none".to_owned()
            } else {
                pod.addrs.join(",")
            }
        );
        pod.render_details(&mut out, false);
        let meaning = |verdict: &str| {
            self.meanings
                .iter()
                .find(|(v, _)| v == verdict)
                .map_or("", |(_, m)| m.as_str())
        };
        let _ = writeln!(out, "\nits connections, as the kernel counted them:");
        if pod.decisions.is_empty() {
            let _ = writeln!(out, "  none yet");
        }
        for wanted in [Outcome::Failed, Outcome::LeftAlone, Outcome::Meshed] {
            for (verdict, n) in &pod.decisions {
                let found = verdict_named(verdict).map(outcome);
                if found.unwrap_or(Outcome::Failed) != wanted {
                    continue;
                }
                let label = match wanted {
                    Outcome::Failed => "NOT MESHED",
                    Outcome::LeftAlone => "left alone",
                    Outcome::Meshed => "meshed",
                };
                let _ = writeln!(
                    out,
                    "  {:<10} {verdict:<26} {n:>8}  {}",
                    label,
                    meaning(verdict)
                );
            }
        }
        let _ = writeln!(out, "\nits last decisions (oldest first):");
        if pod.recent.is_empty() {
            let _ = writeln!(
                out,
                "  none kept: the data path reports each decision only while a monitor is \
                 attached; `netns-agent monitor --pod {}` shows them as they come, and \
                 status keeps the last {} meanwhile",
                pod.name,
                crate::monitor::RECENT_KEPT
            );
        }
        for recent in &pod.recent {
            let _ = writeln!(
                out,
                "  {}  {}",
                clock(recent.at_unix_ms),
                recent.line.human()
            );
        }
        Ok(out)
    }

    /// The table a person reads.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "agent: pid {}, {}",
            self.pid,
            if self.ready { "ready" } else { "NOT READY" }
        );
        for problem in &self.problems {
            let _ = writeln!(out, "  not ready: {problem}");
        }
        let _ = writeln!(out, "cgroup: {}", self.cgroup);
        let _ = writeln!(out, "pins: {}", self.bpffs);
        let _ = writeln!(out, "pod source: {}", self.source);
        let programs: Vec<String> = self
            .programs
            .iter()
            .map(|p| format!("{}#{}", p.name, p.id))
            .collect();
        let _ = writeln!(out, "programs: {}", programs.join(" "));
        let _ = writeln!(
            out,
            "monitors: {} attached, decisions {} (the kernel's switch), {} dropped for slow monitors",
            self.monitor.attached,
            if self.monitor.reporting {
                "reported"
            } else {
                "not reported"
            },
            self.monitor.dropped
        );
        let _ = writeln!(
            out,
            "\n{:<24} {:>12} {:>10} {:<7} {:<8} addresses",
            "POD", "NETNS", "COOKIE", "MESHED", "INBOUND"
        );
        let _ = writeln!(out, "{:<24} (each pod's sidecar on the line below it)", "");
        let yes = |b: bool| if b { "yes" } else { "no" };
        for pod in &self.pods {
            let _ = writeln!(
                out,
                "{:<24} {:>12} {:>10} {:<7} {:<8} {}",
                pod.name,
                pod.netns_inode,
                pod.cookie,
                yes(pod.meshed),
                yes(pod.inbound),
                pod.addrs.join(",")
            );
            pod.render_details(&mut out, true);
        }
        for skipped in &self.not_meshed {
            let _ = writeln!(out, "not meshed: {}: {}", skipped.path, skipped.reason);
        }
        let _ = writeln!(out, "\n{:<20} {:>10} {:>10}", "MAP", "ENTRIES", "CAPACITY");
        for map in &self.maps {
            let _ = writeln!(
                out,
                "{:<20} {:>10} {:>10}",
                map.name, map.entries, map.capacity
            );
        }
        let counters: Vec<String> = self
            .counters
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let _ = writeln!(out, "\ncounters: {}", counters.join(" "));
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "errors: {}",
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(" ")
            }
        );
        out
    }
}

/// `HH:MM:SS.mmm` (UTC) of a time in milliseconds since the Unix epoch.
fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{DecisionLine, RecentDecision};

    fn status() -> Status {
        let mut pod = PodStatus::example("pod-a", "listening");
        pod.decisions.push(("excluded_port".into(), 2));
        Status {
            pods: vec![pod],
            not_meshed: vec![NotMeshed {
                path: "/run/netns/host-like".into(),
                reason: "the node's own network namespace".into(),
            }],
            meanings: crate::monitor::meanings(&netns_ebpf::MeshSettings::istio()),
            ..Status::default()
        }
    }

    #[test]
    fn a_pod_shows_failures_first_with_their_meaning_and_its_last_decisions() {
        let mut status = status();
        let text = status.render_pod("pod-a").unwrap();
        let failed = text.find("NOT MESHED sidecar_not_listening").unwrap();
        let left = text.find("left alone excluded_port").unwrap();
        let meshed = text.find("meshed     captured").unwrap();
        assert!(failed < left && left < meshed, "{text}");
        assert!(
            text.contains("nothing listens on 15001 in the pod: direct, uncaptured"),
            "{text}"
        );
        assert!(text.contains("none kept"), "{text}");
        assert!(
            !text.contains("decisions: captured"),
            "counted twice: {text}"
        );
        status.pods[0].recent.push(RecentDecision {
            at_unix_ms: 3_723_004,
            line: DecisionLine {
                pod: "pod-a".into(),
                netns_cookie: 2,
                hook: "outbound".into(),
                verdict: "sidecar_not_listening".into(),
                destination: "198.18.96.10:80".into(),
                socket_cookie: 9,
                detail: "nothing listens on 15001 in the pod: direct, uncaptured".into(),
            },
        });
        let text = status.render_pod("/run/netns/pod-a").unwrap();
        assert!(
            text.contains(
                "01:02:03.004Z  pod-a            outbound 198.18.96.10:80 -> sidecar_not_listening"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_pod_that_is_not_there_is_named_with_what_is() {
        let status = status();
        let e = status.render_pod("pod-b").unwrap_err();
        assert_eq!(e, "no pod \"pod-b\" in this agent's mesh (meshed: pod-a)");
        let e = status.render_pod("host-like").unwrap_err();
        assert!(
            e.contains("is not meshed: /run/netns/host-like: the node's own"),
            "{e}"
        );
    }
}
