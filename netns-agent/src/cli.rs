//! The flags of `run`, `status`, `monitor`, `cleanup` and `exec` (each with an
//! environment variable), and the agent they describe
//! ([`RunArgs::agent`]). What each command does is in `cmd/`.

// Doc comments here are clap's --help text, where backticks would show literally.
#![allow(clippy::doc_markdown)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use netns_agent::daemon::AgentConfig;
use netns_agent::source::cni::CniState;
use netns_agent::source::kubernetes::Directory;
use netns_agent::source::{Cni, Kubernetes, NetnsDir, PodSource};
use netns_datapath::DataPathConfig;
use netns_ebpf::{MeshSettings, defaults};

const DEFAULT_BPFFS: &str = "/run/netns-agent/bpf";
const DEFAULT_SOCKET: &str = "/run/netns-agent/agent.sock";
const DEFAULT_CNI_STATE: &str = "/run/netns-agent/cni";
/// The agent-owned cgroup under the cgroup v2 mount, used without --cgroup.
pub(crate) const OWN_CGROUP: &str = "netns-agent";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SourceKind {
    /// Every network namespace file in --netns-dir is a pod.
    NetnsDir,
    /// Pods come from the netns-cni chained plugin (ADD, DEL, CHECK, GC on
    /// the control socket); attachments are recorded in --cni-state-dir.
    Cni,
    /// Pods of --node-name from the API server (KUBECONFIG or in-cluster):
    /// those with --mesh-annotation are meshed with the settings of their
    /// traffic.sidecar.istio.io annotations. A pod's namespace comes from
    /// netns-cni's ADD when the plugin is in the chain, else is found by the
    /// pod's UID in the node's process cgroups.
    Kubernetes,
}

/// What an app's connection does while its pod's sidecar is not listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SidecarAbsent {
    /// Until the pod's sidecar first binds its outbound port, go to the
    /// destination uncaptured (an app that starts first is not broken);
    /// from then on, while it is not listening (a sidecar restart), fail
    /// with ECONNREFUSED: never around the sidecar (counted as
    /// sidecar_not_listening and sidecar_absent_refused).
    Auto,
    /// Always go to the destination uncaptured while the sidecar is not
    /// listening, also when it restarts (counted as sidecar_not_listening).
    Pass,
    /// Always go to the sidecar's port and fail with ECONNREFUSED, as behind
    /// Istio's iptables (pair it with holdApplicationUntilProxyStarts).
    Refuse,
}

/// Whether connections into meshed pods go through their sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum InboundMode {
    /// Hand them to the sidecar's inbound listener (refused while it has none).
    Capture,
    /// Leave them alone: they reach the app directly.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

// Each flag is one bool: clap's natural shape for on/off switches.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The pods' parent cgroup v2 directory: every process in it (and below)
    /// is captured. Default: an agent-owned child cgroup, <cgroup v2
    /// mount>/netns-agent, created if missing (a workstation's choice). On a
    /// node: the pods' parent (e.g. /sys/fs/cgroup/kubepods.slice). Never the
    /// cgroup v2 root on a shared machine: that captures every process of it,
    /// your shell included (refused unless --allow-cgroup-root).
    #[arg(long, env = "NETNS_AGENT_CGROUP")]
    pub(crate) cgroup: Option<PathBuf>,
    /// Allow --cgroup to be the cgroup v2 root (a dedicated node only).
    #[arg(long, env = "NETNS_AGENT_ALLOW_CGROUP_ROOT")]
    pub(crate) allow_cgroup_root: bool,
    /// Directory for the pins (a bpffs is mounted there unless it lies on one).
    /// On a node: /sys/fs/bpf/netns-agent.
    #[arg(long, env = "NETNS_AGENT_BPFFS", default_value = DEFAULT_BPFFS)]
    pub(crate) bpffs: PathBuf,
    /// Where pods come from.
    #[arg(long, env = "NETNS_AGENT_POD_SOURCE", value_enum, default_value_t = SourceKind::NetnsDir)]
    pub(crate) pod_source: SourceKind,
    /// The directory of namespace files the netns-dir source watches.
    #[arg(long, env = "NETNS_AGENT_NETNS_DIR", default_value = netns_core::NETNS_RUN_DIR)]
    pub(crate) netns_dir: PathBuf,
    /// Where the cni source records its attachments (one file per
    /// container), so that DEL finds a pod after an agent restart.
    #[arg(long, env = "NETNS_AGENT_CNI_STATE_DIR", default_value = DEFAULT_CNI_STATE)]
    pub(crate) cni_state_dir: PathBuf,
    /// kubernetes source: this node's name (spec.nodeName of its pods; in a
    /// DaemonSet, from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub(crate) node_name: Option<String>,
    /// kubernetes source: the annotation that marks a pod as having a
    /// sidecar (Istio's injector writes sidecar.istio.io/status).
    #[arg(long, env = "NETNS_AGENT_MESH_ANNOTATION", default_value = netns_datapath::settings::annotation::SIDECAR_STATUS)]
    pub(crate) mesh_annotation: String,
    /// The root-only control socket (status, and the netns-cni plugin).
    #[arg(long, env = "NETNS_AGENT_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(crate) control_socket: PathBuf,
    /// Address of /healthz, /readyz and /metrics (keep it on loopback).
    #[arg(
        long,
        env = "NETNS_AGENT_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub(crate) metrics_addr: SocketAddr,
    /// Leave programs and maps attached and pinned at exit, so that traffic
    /// stays captured while the agent restarts or upgrades (a DaemonSet's
    /// choice). `netns-agent cleanup` removes them.
    #[arg(long, env = "NETNS_AGENT_KEEP_STATE")]
    pub(crate) keep_state: bool,
    /// Sidecar port for redirected outbound connections.
    #[arg(long, env = "NETNS_AGENT_OUTBOUND_PORT", default_value_t = defaults::OUTBOUND_PORT)]
    pub(crate) outbound_port: u16,
    /// Sidecar port for connections into a pod.
    #[arg(long, env = "NETNS_AGENT_INBOUND_PORT", default_value_t = defaults::INBOUND_PORT)]
    pub(crate) inbound_port: u16,
    /// The sidecar's uid: its own connections are never redirected.
    #[arg(long, env = "NETNS_AGENT_SIDECAR_UID", default_value_t = defaults::SIDECAR_UID)]
    pub(crate) sidecar_uid: u32,
    /// Sockets with this SO_MARK are left alone (0: none).
    #[arg(long, env = "NETNS_AGENT_BYPASS_MARK", default_value_t = defaults::BYPASS_MARK)]
    pub(crate) bypass_mark: u32,
    /// Destination port never redirected (repeat the flag for more).
    #[arg(
        long = "exclude-port",
        env = "NETNS_AGENT_EXCLUDE_PORTS",
        value_delimiter = ','
    )]
    pub(crate) exclude_ports: Vec<u16>,
    /// Destination CIDR never redirected, e.g. 192.0.2.0/24 (repeatable).
    #[arg(long = "exclude-cidr", env = "NETNS_AGENT_EXCLUDE_CIDRS", value_delimiter = ',', value_parser = netns_datapath::settings::parse_cidr)]
    pub(crate) exclude_cidrs: Vec<(IpAddr, u8)>,
    /// Redirect the pods' DNS (UDP port 53) to the sidecar's --dns-port.
    #[arg(long, env = "NETNS_AGENT_DNS_REDIRECT")]
    pub(crate) dns_redirect: bool,
    /// The sidecar's DNS port.
    #[arg(long, env = "NETNS_AGENT_DNS_PORT", default_value_t = defaults::DNS_PORT)]
    pub(crate) dns_port: u16,
    /// When no sidecar listens on the pod's loopback --outbound-port
    /// (checked at every connect, one socket lookup): auto lets the
    /// connection go to its destination uncaptured until the pod's sidecar
    /// first binds that port, and refuses it (ECONNREFUSED) afterwards, so a
    /// restarting sidecar is never bypassed; pass always lets it go
    /// uncaptured; refuse always sends it to the closed port. DNS (with
    /// --dns-redirect) goes uncaptured unless refuse.
    #[arg(long, env = "NETNS_AGENT_SIDECAR_ABSENT", value_enum, default_value_t = SidecarAbsent::Auto)]
    pub(crate) sidecar_absent: SidecarAbsent,
    /// Inbound capture: attach to every meshed pod's namespace a program
    /// that hands connections arriving at the pod's addresses to its
    /// sidecar's --inbound-port listener (Istio's inbound REDIRECT, without
    /// rewriting packets; Linux 5.9+). With no sidecar listening there, such
    /// connections are refused (reset), never delivered to the app around
    /// the sidecar. off: connections into pods go straight to the app.
    #[arg(long, env = "NETNS_AGENT_INBOUND", value_enum, default_value_t = InboundMode::Capture)]
    pub(crate) inbound: InboundMode,
    /// The sidecar's own ports besides --outbound-port and --inbound-port,
    /// never captured inbound (Istio: 15020 merged metrics, 15021 health,
    /// 15090 Envoy stats). Comma-separated or repeated.
    #[arg(
        long = "sidecar-port",
        env = "NETNS_AGENT_SIDECAR_PORTS",
        value_delimiter = ',',
        default_value = "15020,15021,15090"
    )]
    pub(crate) sidecar_ports: Vec<u16>,
    /// A pod port whose incoming connections go straight to the app, not
    /// to the sidecar (Istio: traffic.sidecar.istio.io/excludeInboundPorts).
    /// Comma-separated or repeated.
    #[arg(
        long = "exclude-inbound-port",
        env = "NETNS_AGENT_EXCLUDE_INBOUND_PORTS",
        value_delimiter = ','
    )]
    pub(crate) exclude_inbound_ports: Vec<u16>,
    /// Opt-in sockmap acceleration between the sidecars' own sockets. Off by
    /// default: a socket in a sockmap returns EAGAIN to blocking reads, has no
    /// flow control and can stall at close (docs/sockmap.md); only sidecar
    /// event loops tolerate it, and application sockets never join.
    #[arg(long, env = "NETNS_AGENT_SOCKMAP")]
    pub(crate) sockmap: bool,
    /// How long a new namespace file may take to become a namespace (`ip
    /// netns add` creates the file, then bind-mounts it), in milliseconds.
    #[arg(long, env = "NETNS_AGENT_SETTLE_MS", default_value_t = 2000)]
    pub(crate) settle_ms: u64,
    /// How often the directory is listed again behind inotify's back, in
    /// seconds (a safety net: inotify reports every change, and an overflow
    /// of its queue triggers a listing at once). Pod addresses are not
    /// polled: the kernel announces their changes over netlink.
    #[arg(long, env = "NETNS_AGENT_RESYNC_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) resync_secs: u64,
    /// Also run a demo pod: a namespace named netns-demo-pod in --netns-dir
    /// whose app dials a service address that exists nowhere every second and
    /// is answered by its sidecar through the data path (what `./x run` shows).
    /// Removed on exit.
    #[arg(long)]
    pub(crate) demo_pod: bool,
    /// Log format.
    #[arg(long, env = "NETNS_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Log filter (tracing's env-filter syntax), e.g. info or netns_agent=debug.
    #[arg(long, env = "NETNS_AGENT_LOG", default_value = "info")]
    pub(crate) log_level: String,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only this pod (its name, as status lists it, or its netns path): its
    /// connections counted by verdict, failures first with what each means,
    /// and its last decisions (kept while a monitor is attached).
    #[arg(value_name = "POD")]
    pub(crate) pod: Option<String>,
    /// The running agent's control socket.
    #[arg(long, env = "NETNS_AGENT_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(crate) control_socket: PathBuf,
    /// Where to look for pins when no agent answers.
    #[arg(long, env = "NETNS_AGENT_BPFFS", default_value = DEFAULT_BPFFS)]
    pub(crate) bpffs: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct MonitorArgs {
    /// The running agent's control socket.
    #[arg(long, env = "NETNS_AGENT_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(crate) control_socket: PathBuf,
    /// Only this pod's decisions (its name, as status shows it).
    #[arg(long)]
    pub(crate) pod: Option<String>,
    /// Only these verdicts (repeat, or comma-separated): captured,
    /// excluded_port, excluded_cidr, not_included, sidecar_uid, bypass_mark,
    /// sidecar_not_listening, refused_no_sidecar, loopback, to_local_pod,
    /// original_dst_received, no_saved_syn, no_option, option_not_believed,
    /// answered, not_answered, inbound_captured, inbound_pass_port,
    /// inbound_loop_guard, inbound_refused, dns_redirected,
    /// dns_sidecar_not_listening.
    #[arg(long = "verdict", value_delimiter = ',')]
    pub(crate) verdicts: Vec<String>,
    /// One JSON object per line (stable field names) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// The running agent's control socket.
    #[arg(long, env = "NETNS_AGENT_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(crate) control_socket: PathBuf,
    /// Only this pod's row.
    #[arg(long)]
    pub(crate) pod: Option<String>,
    /// Draw the screen once, after a second, and exit (for scripts).
    #[arg(long)]
    pub(crate) once: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// The pin directory of the run to clean up after.
    #[arg(long, env = "NETNS_AGENT_BPFFS", default_value = DEFAULT_BPFFS)]
    pub(crate) bpffs: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// The pod: a name in --netns-dir, or a namespace path.
    pub(crate) pod: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
    /// The captured cgroup to join (the agent's --cgroup; default: the
    /// agent-owned one).
    #[arg(long, env = "NETNS_AGENT_CGROUP")]
    pub(crate) cgroup: Option<PathBuf>,
    /// Where pod names are looked up.
    #[arg(long, env = "NETNS_AGENT_NETNS_DIR", default_value = netns_core::NETNS_RUN_DIR)]
    pub(crate) netns_dir: PathBuf,
}

impl RunArgs {
    /// The agent these flags describe, with its pod source, attached to
    /// `cgroup` (the flag's, or the agent's own cgroup when none was given).
    pub(crate) fn agent(&self, cgroup: &Path) -> anyhow::Result<(AgentConfig, Box<dyn PodSource>)> {
        let mut settings = MeshSettings::istio();
        settings.outbound_port = self.outbound_port;
        settings.inbound_port = self.inbound_port;
        settings.sidecar_uid = self.sidecar_uid;
        settings.bypass_mark = self.bypass_mark;
        settings.dns_port = self.dns_port;
        if self.dns_redirect {
            settings.flags |= MeshSettings::FLAG_DNS_REDIRECT;
        }
        if self.sockmap {
            settings.flags |= MeshSettings::FLAG_SOCKMAP;
        }
        match self.sidecar_absent {
            SidecarAbsent::Auto => settings.flags |= MeshSettings::FLAG_REFUSE_ONCE_LISTENED,
            SidecarAbsent::Pass => {}
            SidecarAbsent::Refuse => settings.flags |= MeshSettings::FLAG_REDIRECT_WITHOUT_LISTENER,
        }
        let directory = Directory::default();
        let config = AgentConfig {
            datapath: DataPathConfig {
                cgroup: cgroup.to_owned(),
                pin_dir: self.bpffs.clone(),
                settings,
            },
            control_socket: self.control_socket.clone(),
            metrics_addr: self.metrics_addr,
            keep_state: self.keep_state,
            settle: Duration::from_millis(self.settle_ms),
            exclude_ports: self.exclude_ports.clone(),
            exclude_cidrs: self.exclude_cidrs.clone(),
            inbound_pass_ports: (self.inbound == InboundMode::Capture).then(|| {
                let mut ports = self.sidecar_ports.clone();
                ports.extend(&self.exclude_inbound_ports);
                ports.sort_unstable();
                ports.dedup();
                ports
            }),
            // The kubernetes source takes netns-cni's requests too: ADD meshes a
            // pod before its containers start, with what the API server says.
            cni_state: matches!(self.pod_source, SourceKind::Cni | SourceKind::Kubernetes).then(
                || CniState {
                    dir: self.cni_state_dir.clone(),
                },
            ),
            kube_directory: (self.pod_source == SourceKind::Kubernetes).then(|| directory.clone()),
        };
        let source: Box<dyn PodSource> = match self.pod_source {
            SourceKind::NetnsDir => Box::new(NetnsDir::new(
                self.netns_dir.clone(),
                Duration::from_secs(self.resync_secs),
            )),
            SourceKind::Cni => Box::new(Cni::new(self.cni_state_dir.clone())),
            SourceKind::Kubernetes => {
                let node = self.node_name.clone().filter(|n| !n.is_empty()).context(
                    "--pod-source kubernetes needs --node-name (or NODE_NAME): the node whose pods to watch",
                )?;
                let mut source = Kubernetes::new(node);
                source.mesh_annotation.clone_from(&self.mesh_annotation);
                source.directory = directory;
                Box::new(source)
            }
        };
        Ok((config, source))
    }
}
