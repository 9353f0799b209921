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
    /// settings and decisions.
    fn render_details(&self, out: &mut String) {
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
        if !pod.decisions.is_empty() {
            let counts: Vec<String> = pod
                .decisions
                .iter()
                .map(|(verdict, n)| format!("{verdict} {n}"))
                .collect();
            let _ = writeln!(out, "{:<24} decisions: {}", "", counts.join(", "));
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
    /// them (`netns-agent monitor` shows them one by one; the sidecar side
    /// of outbound connections is not a pod's, see docs/monitor.md).
    #[serde(default)]
    pub decisions: Vec<(String, u64)>,
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
            pod.render_details(&mut out);
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
