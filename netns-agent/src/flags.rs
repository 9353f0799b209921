//! The flags of `run`, `status` and `cleanup` (each with an environment
//! variable), and what each command does with them.

// Doc comments here are clap's --help text, where backticks would show literally.
#![allow(clippy::doc_markdown)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use netns_agent::daemon::AgentConfig;
use netns_agent::instance::{InstanceLock, LOCK_DIR, Resource};
use netns_agent::source::cni::CniState;
use netns_agent::source::kubernetes::Directory;
use netns_agent::source::{Cni, Kubernetes, NetnsDir, PodSource};
use netns_datapath::DataPathConfig;
use netns_datapath::cgroup::cgroup2_mount;
use netns_ebpf::{MeshSettings, defaults};

const DEFAULT_BPFFS: &str = "/run/netns-agent/bpf";
const DEFAULT_SOCKET: &str = "/run/netns-agent/agent.sock";
const DEFAULT_CNI_STATE: &str = "/run/netns-agent/cni";
/// The agent-owned cgroup under the cgroup v2 mount, used without --cgroup.
const OWN_CGROUP: &str = "netns-agent";

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
    cgroup: Option<PathBuf>,
    /// Allow --cgroup to be the cgroup v2 root (a dedicated node only).
    #[arg(long, env = "NETNS_AGENT_ALLOW_CGROUP_ROOT")]
    allow_cgroup_root: bool,
    /// Directory for the pins (a bpffs is mounted there unless it lies on one).
    /// On a node: /sys/fs/bpf/netns-agent.
    #[arg(long, env = "NETNS_AGENT_BPFFS", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Where pods come from.
    #[arg(long, env = "NETNS_AGENT_POD_SOURCE", value_enum, default_value_t = SourceKind::NetnsDir)]
    pod_source: SourceKind,
    /// The directory of namespace files the netns-dir source watches.
    #[arg(long, env = "NETNS_AGENT_NETNS_DIR", default_value = netns_core::NETNS_RUN_DIR)]
    netns_dir: PathBuf,
    /// Where the cni source records its attachments (one file per
    /// container), so that DEL finds a pod after an agent restart.
    #[arg(long, env = "NETNS_AGENT_CNI_STATE_DIR", default_value = DEFAULT_CNI_STATE)]
    cni_state_dir: PathBuf,
    /// kubernetes source: this node's name (spec.nodeName of its pods; in a
    /// DaemonSet, from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// kubernetes source: the annotation that marks a pod as having a
    /// sidecar (Istio's injector writes sidecar.istio.io/status).
    #[arg(long, env = "NETNS_AGENT_MESH_ANNOTATION", default_value = netns_datapath::settings::annotation::SIDECAR_STATUS)]
    mesh_annotation: String,
    /// The root-only control socket (status, and the netns-cni plugin).
    #[arg(long, env = "NETNS_AGENT_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    control_socket: PathBuf,
    /// Address of /healthz, /readyz and /metrics (keep it on loopback).
    #[arg(
        long,
        env = "NETNS_AGENT_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    metrics_addr: SocketAddr,
    /// Leave programs and maps attached and pinned at exit, so that traffic
    /// stays captured while the agent restarts or upgrades (a DaemonSet's
    /// choice). `netns-agent cleanup` removes them.
    #[arg(long, env = "NETNS_AGENT_KEEP_STATE")]
    keep_state: bool,
    /// Sidecar port for redirected outbound connections.
    #[arg(long, env = "NETNS_AGENT_OUTBOUND_PORT", default_value_t = defaults::OUTBOUND_PORT)]
    outbound_port: u16,
    /// Sidecar port for connections into a pod.
    #[arg(long, env = "NETNS_AGENT_INBOUND_PORT", default_value_t = defaults::INBOUND_PORT)]
    inbound_port: u16,
    /// The sidecar's uid: its own connections are never redirected.
    #[arg(long, env = "NETNS_AGENT_SIDECAR_UID", default_value_t = defaults::SIDECAR_UID)]
    sidecar_uid: u32,
    /// Sockets with this SO_MARK are left alone (0: none).
    #[arg(long, env = "NETNS_AGENT_BYPASS_MARK", default_value_t = defaults::BYPASS_MARK)]
    bypass_mark: u32,
    /// Destination port never redirected (repeat the flag for more).
    #[arg(
        long = "exclude-port",
        env = "NETNS_AGENT_EXCLUDE_PORTS",
        value_delimiter = ','
    )]
    exclude_ports: Vec<u16>,
    /// Destination CIDR never redirected, e.g. 192.0.2.0/24 (repeatable).
    #[arg(long = "exclude-cidr", env = "NETNS_AGENT_EXCLUDE_CIDRS", value_delimiter = ',', value_parser = netns_datapath::settings::parse_cidr)]
    exclude_cidrs: Vec<(IpAddr, u8)>,
    /// Redirect the pods' DNS (UDP port 53) to the sidecar's --dns-port.
    #[arg(long, env = "NETNS_AGENT_DNS_REDIRECT")]
    dns_redirect: bool,
    /// The sidecar's DNS port.
    #[arg(long, env = "NETNS_AGENT_DNS_PORT", default_value_t = defaults::DNS_PORT)]
    dns_port: u16,
    /// When no sidecar listens on the pod's loopback --outbound-port
    /// (checked at every connect, one socket lookup): auto lets the
    /// connection go to its destination uncaptured until the pod's sidecar
    /// first binds that port, and refuses it (ECONNREFUSED) afterwards, so a
    /// restarting sidecar is never bypassed; pass always lets it go
    /// uncaptured; refuse always sends it to the closed port. DNS (with
    /// --dns-redirect) goes uncaptured unless refuse.
    #[arg(long, env = "NETNS_AGENT_SIDECAR_ABSENT", value_enum, default_value_t = SidecarAbsent::Auto)]
    sidecar_absent: SidecarAbsent,
    /// Inbound capture: attach to every meshed pod's namespace a program
    /// that hands connections arriving at the pod's addresses to its
    /// sidecar's --inbound-port listener (Istio's inbound REDIRECT, without
    /// rewriting packets; Linux 5.9+). With no sidecar listening there, such
    /// connections are refused (reset), never delivered to the app around
    /// the sidecar. off: connections into pods go straight to the app.
    #[arg(long, env = "NETNS_AGENT_INBOUND", value_enum, default_value_t = InboundMode::Capture)]
    inbound: InboundMode,
    /// The sidecar's own ports besides --outbound-port and --inbound-port,
    /// never captured inbound (Istio: 15020 merged metrics, 15021 health,
    /// 15090 Envoy stats). Comma-separated or repeated.
    #[arg(
        long = "sidecar-port",
        env = "NETNS_AGENT_SIDECAR_PORTS",
        value_delimiter = ',',
        default_value = "15020,15021,15090"
    )]
    sidecar_ports: Vec<u16>,
    /// A pod port whose incoming connections go straight to the app, not
    /// to the sidecar (Istio: traffic.sidecar.istio.io/excludeInboundPorts).
    /// Comma-separated or repeated.
    #[arg(
        long = "exclude-inbound-port",
        env = "NETNS_AGENT_EXCLUDE_INBOUND_PORTS",
        value_delimiter = ','
    )]
    exclude_inbound_ports: Vec<u16>,
    /// Opt-in sockmap acceleration between the sidecars' own sockets. Off by
    /// default: a socket in a sockmap returns EAGAIN to blocking reads, has no
    /// flow control and can stall at close (docs/sockmap.md); only sidecar
    /// event loops tolerate it, and application sockets never join.
    #[arg(long, env = "NETNS_AGENT_SOCKMAP")]
    sockmap: bool,
    /// How long a new namespace file may take to become a namespace (`ip
    /// netns add` creates the file, then bind-mounts it), in milliseconds.
    #[arg(long, env = "NETNS_AGENT_SETTLE_MS", default_value_t = 2000)]
    settle_ms: u64,
    /// How often the directory is listed again behind inotify's back, in
    /// seconds (a safety net: inotify reports every change, and an overflow
    /// of its queue triggers a listing at once). Pod addresses are not
    /// polled: the kernel announces their changes over netlink.
    #[arg(long, env = "NETNS_AGENT_RESYNC_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    resync_secs: u64,
    /// Also run a demo pod: a namespace named netns-demo-pod in --netns-dir
    /// whose app dials a service address that exists nowhere every second and
    /// is answered by its sidecar through the data path (what `./x run` shows).
    /// Removed on exit.
    #[arg(long)]
    demo_pod: bool,
    /// Log format.
    #[arg(long, env = "NETNS_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing's env-filter syntax), e.g. info or netns_agent=debug.
    #[arg(long, env = "NETNS_AGENT_LOG", default_value = "info")]
    log_level: String,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The running agent's control socket.
    #[arg(long, env = "NETNS_AGENT_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    control_socket: PathBuf,
    /// Where to look for pins when no agent answers.
    #[arg(long, env = "NETNS_AGENT_BPFFS", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// The pin directory of the run to clean up after.
    #[arg(long, env = "NETNS_AGENT_BPFFS", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// The pod: a name in --netns-dir, or a namespace path.
    pod: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// The captured cgroup to join (the agent's --cgroup; default: the
    /// agent-owned one).
    #[arg(long, env = "NETNS_AGENT_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Where pod names are looked up.
    #[arg(long, env = "NETNS_AGENT_NETNS_DIR", default_value = netns_core::NETNS_RUN_DIR)]
    netns_dir: PathBuf,
}

/// `netns-agent exec`: join the captured cgroup first (a socket belongs to
/// the cgroup its creator was in), then the pod's network namespace, then
/// become the command.
pub(crate) fn exec(args: &ExecArgs) -> anyhow::Result<()> {
    let path = if args.pod.contains('/') {
        PathBuf::from(&args.pod)
    } else {
        args.netns_dir.join(&args.pod)
    };
    let ns = netns_agent::pod::open(&path)?;
    let cgroup = match &args.cgroup {
        Some(cgroup) => cgroup.clone(),
        None => cgroup2_mount()
            .context("find the cgroup v2 mount")?
            .join(OWN_CGROUP),
    };
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).with_context(
        || {
            format!(
                "join the captured cgroup {} (is the agent running?)",
                cgroup.display()
            )
        },
    )?;
    // Single-threaded here: the whole process moves.
    ns.set()
        .with_context(|| format!("enter {}", path.display()))?;
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&args.command[0]).args(&args.command[1..]),
    );
    Err(anyhow::anyhow!("exec {:?}: {err}", args.command))
}

fn init_logs(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log-level {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// `netns-agent run`.
pub(crate) fn run(args: &RunArgs) -> anyhow::Result<()> {
    init_logs(args.log_format, &args.log_level)?;
    raise_fd_limit();
    reserve_fd_table();
    let v2 = cgroup2_mount().context("find the cgroup v2 mount")?;
    let (cgroup, own_cgroup) = match &args.cgroup {
        Some(path) => (path.clone(), false),
        None => (v2.join(OWN_CGROUP), true),
    };
    let _instance = lock_instance(args, &cgroup)?;
    if own_cgroup {
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("create the agent's cgroup {}", cgroup.display()))?;
    }
    if cgroup.canonicalize().ok() == v2.canonicalize().ok() && !args.allow_cgroup_root {
        anyhow::bail!(
            "--cgroup {} is the cgroup v2 root: that captures every process of this machine; \
             pass the pods' parent cgroup, or --allow-cgroup-root on a dedicated node",
            cgroup.display()
        );
    }
    let mut settings = MeshSettings::istio();
    settings.outbound_port = args.outbound_port;
    settings.inbound_port = args.inbound_port;
    settings.sidecar_uid = args.sidecar_uid;
    settings.bypass_mark = args.bypass_mark;
    settings.dns_port = args.dns_port;
    if args.dns_redirect {
        settings.flags |= MeshSettings::FLAG_DNS_REDIRECT;
    }
    if args.sockmap {
        settings.flags |= MeshSettings::FLAG_SOCKMAP;
    }
    match args.sidecar_absent {
        SidecarAbsent::Auto => settings.flags |= MeshSettings::FLAG_REFUSE_ONCE_LISTENED,
        SidecarAbsent::Pass => {}
        SidecarAbsent::Refuse => settings.flags |= MeshSettings::FLAG_REDIRECT_WITHOUT_LISTENER,
    }
    let directory = Directory::default();
    let config = AgentConfig {
        datapath: DataPathConfig {
            cgroup: cgroup.clone(),
            pin_dir: args.bpffs.clone(),
            settings,
        },
        control_socket: args.control_socket.clone(),
        metrics_addr: args.metrics_addr,
        keep_state: args.keep_state,
        settle: Duration::from_millis(args.settle_ms),
        exclude_ports: args.exclude_ports.clone(),
        exclude_cidrs: args.exclude_cidrs.clone(),
        inbound_pass_ports: (args.inbound == InboundMode::Capture).then(|| {
            let mut ports = args.sidecar_ports.clone();
            ports.extend(&args.exclude_inbound_ports);
            ports.sort_unstable();
            ports.dedup();
            ports
        }),
        // The kubernetes source takes netns-cni's requests too: ADD meshes a
        // pod before its containers start, with what the API server says.
        cni_state: matches!(args.pod_source, SourceKind::Cni | SourceKind::Kubernetes).then(|| {
            CniState {
                dir: args.cni_state_dir.clone(),
            }
        }),
        kube_directory: (args.pod_source == SourceKind::Kubernetes).then(|| directory.clone()),
    };
    let source: Box<dyn PodSource> = match args.pod_source {
        SourceKind::NetnsDir => Box::new(NetnsDir::new(
            args.netns_dir.clone(),
            Duration::from_secs(args.resync_secs),
        )),
        SourceKind::Cni => Box::new(Cni::new(args.cni_state_dir.clone())),
        SourceKind::Kubernetes => {
            let node = args.node_name.clone().filter(|n| !n.is_empty()).context(
                "--pod-source kubernetes needs --node-name (or NODE_NAME): the node whose pods to watch",
            )?;
            let mut source = Kubernetes::new(node);
            source.mesh_annotation.clone_from(&args.mesh_annotation);
            source.directory = directory;
            Box::new(source)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let demo = args
        .demo_pod
        .then(|| start_demo_pod(&args.netns_dir, &args.control_socket, &cgroup))
        .transpose()?;
    let result = runtime.block_on(netns_agent::daemon::run(config, source));
    if let Some((stop, thread)) = demo {
        drop(stop);
        let _ = thread.join();
    }
    if own_cgroup && !args.keep_state {
        remove_own_cgroup(&cgroup);
    }
    result
}

/// Before anything is touched: a second agent on the same pins, cgroup or
/// socket stops here, and the first one never notices.
fn lock_instance(args: &RunArgs, cgroup: &Path) -> anyhow::Result<InstanceLock> {
    InstanceLock::acquire(
        Path::new(LOCK_DIR),
        &[
            Resource {
                flag: "--bpffs",
                path: &args.bpffs,
            },
            Resource {
                flag: "--cgroup",
                path: cgroup,
            },
            Resource {
                flag: "--control-socket",
                path: &args.control_socket,
            },
        ],
    )
}

/// Each pod holds two descriptors (its namespace, its address watch): raise
/// the soft limit to the hard one, as a service manager's default soft limit
/// (1024) would stop the agent near 500 pods.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Descriptor slots made room for at start: two per pod, for thousands.
const FD_TABLE_SLOTS: i32 = 16_384;

/// Grows the descriptor table once, now, while the process has one thread.
/// The kernel grows it by doubling when a new descriptor does not fit, and in
/// a multi-threaded process each growth waits for an RCU grace period
/// (`expand_fdtable` in fs/file.c calls `synchronize_rcu`): measured here,
/// a pod that needed descriptor 256, 512 or 1024 waited 7-19 ms for its
/// socket. Costs 16,384 pointers (128 KiB). Skipped when the limit is lower.
fn reserve_fd_table() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let stdin = std::io::stdin();
    // SAFETY: F_DUPFD_CLOEXEC duplicates stdin to the lowest free slot at or
    // above the given one; the duplicate is owned and closed at once.
    let fd = unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FD_TABLE_SLOTS - 1) };
    if fd >= 0 {
        // SAFETY: fcntl returned a new descriptor we own.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// The demo pod, on a thread that starts its processes once the agent has
/// meshed it and takes it down when `stop` is dropped.
fn start_demo_pod(
    netns_dir: &Path,
    socket: &Path,
    cgroup: &Path,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let mut pod = crate::demo_pod::DemoPod::create(netns_dir)?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (socket, cgroup) = (socket.to_owned(), cgroup.to_owned());
    let thread = std::thread::spawn(move || {
        if let Err(e) = pod.play(&socket, &cgroup) {
            tracing::error!(error = %format!("{e:#}"), "demo pod");
        }
        let _ = stopped.recv();
        drop(pod);
    });
    Ok((stop, thread))
}

/// Removes the agent-owned cgroup if nothing lives in it any more.
fn remove_own_cgroup(cgroup: &Path) {
    if let Err(e) = std::fs::remove_dir(cgroup) {
        tracing::info!(cgroup = %cgroup.display(), error = %e, "agent cgroup left in place");
    }
}

/// `netns-agent status`.
pub(crate) fn status(args: &StatusArgs) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = String::new();
    match runtime.block_on(netns_agent::control::ask_status(&args.control_socket)) {
        Ok(status) if args.json => writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?,
        Ok(status) => out.push_str(&status.render()),
        Err(e) => {
            let pins = netns_datapath::pins(&args.bpffs);
            if args.json {
                let report =
                    serde_json::json!({"running": false, "error": format!("{e:#}"), "pins": pins});
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                writeln!(out, "no agent running: {e:#}")?;
                if pins.is_empty() {
                    writeln!(out, "nothing pinned under {}", args.bpffs.display())?;
                } else {
                    writeln!(
                        out,
                        "pinned under {} (`netns-agent cleanup` removes them):",
                        args.bpffs.display()
                    )?;
                    for pin in &pins {
                        writeln!(out, "  {pin}")?;
                    }
                }
            }
        }
    }
    print_all(&out)
}

/// Writes `text` to stdout; a reader that went away (`status | head -1`) is
/// not an error: what it wanted it has.
fn print_all(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("write to stdout"))
        }
        _ => Ok(()),
    }
}

/// `netns-agent cleanup`.
pub(crate) fn cleanup(args: &CleanupArgs) -> anyhow::Result<()> {
    let done = netns_datapath::cleanup(&args.bpffs)
        .with_context(|| format!("clean up {}", args.bpffs.display()))?;
    let mut out = String::new();
    if done.is_empty() {
        out = format!("nothing to clean up under {}\n", args.bpffs.display());
    }
    for line in done {
        out.push_str(&line);
        out.push('\n');
    }
    print_all(&out)
}
