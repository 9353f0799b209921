//! netns-agent: the node agent. `run` is the long-running agent; `status`
//! asks it (or reads the pins), `cleanup` removes what a run left pinned, and
//! `demo` shows the data path end to end on a throw-away pod. This file only
//! parses flags (`cli`) and runs the commands (`cmd/`) on the library's
//! stages (`netns_agent::daemon`).

// Doc comments here are clap's --help text, where backticks would show literally.
#![allow(clippy::doc_markdown)]

mod cli;
mod cmd;
mod demo;
mod demo_pod;

use clap::{Parser, Subcommand};

/// Merbridge-style node agent for the netns eBPF data path.
///
/// Every command needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF): it
/// loads eBPF programs, attaches them to a cgroup and enters network namespaces.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent until SIGTERM, SIGINT or SIGHUP: attach the data
    /// path to --cgroup, take pods from --netns-dir (every network namespace
    /// file there is a pod; `ip netns add NAME` makes one), equip sidecar
    /// listeners that were open before it, do each pod's work inside its
    /// namespace (netns cookie, addresses, map entries), serve status on
    /// --control-socket and /healthz, /readyz, /metrics on --metrics-addr.
    /// Only one agent may own a --bpffs, --cgroup or --control-socket: a
    /// second is refused before it touches anything. Every second the kernel
    /// is asked whether the data path is in place; what is missing is
    /// repaired, and /readyz is 200 only when nothing is. On exit everything
    /// is detached and unpinned, unless --keep-state.
    ///
    /// Example: netns-agent run --netns-dir /run/netns --exclude-port 22
    Run(Box<cli::RunArgs>),
    /// Show the running agent's view (programs, pods, maps, counters), asked
    /// over its control socket; with no agent running, list what is pinned.
    /// With a POD: that pod alone, its connections counted by verdict
    /// (failures first, each with what it did to the connection) and its
    /// last decisions.
    ///
    /// Examples: netns-agent status --json;
    /// netns-agent status pod-a
    Status(cli::StatusArgs),
    /// Watch the data path decide, live: one line per decision of a meshed
    /// pod's connection (captured, or left alone and why; what its sidecar
    /// was told; inbound captured or refused), until Ctrl-C or the agent
    /// stops. Decisions the kernel or this monitor could not keep up with
    /// are counted and shown, never silently dropped. Costs the data path
    /// nothing while no monitor is attached. Root only.
    ///
    /// Example: netns-agent monitor --pod pod-a --verdict sidecar_not_listening,captured
    Monitor(cli::MonitorArgs),
    /// A live picture of the pods' traffic, refreshed each second: one row
    /// per pod with connections captured and not captured per second (and
    /// why not, in all), SO_ORIGINAL_DST answered against asked, inbound
    /// captured and refused. Built from the same decisions as `monitor`; q
    /// then Enter, or Ctrl-C, quits. Root only.
    ///
    /// Example: netns-agent top
    Top(cli::TopArgs),
    /// Detach and unpin everything a previous run left under --bpffs, from the
    /// pins alone. Safe to repeat; says what it removed.
    ///
    /// Example: netns-agent cleanup --bpffs /run/netns-agent/bpf
    Cleanup(cli::CleanupArgs),
    /// Run a command inside a pod, captured: join the agent's cgroup, enter
    /// the pod's network namespace, exec the command.
    ///
    /// Example: netns-agent exec pod-a -- curl http://198.18.0.10/
    Exec(cli::ExecArgs),
    /// The demo pod's processes (started by `run --demo-pod`).
    #[command(hide = true)]
    DemoPod {
        #[arg(long)]
        netns: std::path::PathBuf,
        #[arg(long)]
        cgroup: std::path::PathBuf,
    },
    /// Run the data path end to end on a throw-away pod, in one process:
    /// attach the eBPF programs to a new child cgroup (never the root), create
    /// a pod namespace, and play its app, sidecar and backend. The app dials a
    /// service address that exists nowhere; the data path hands the connection
    /// to the sidecar, which reads SO_ORIGINAL_DST and forwards it. Then
    /// everything is detached and removed.
    ///
    /// Example: netns-agent demo --requests 3
    Demo {
        /// How many requests the app makes.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=100))]
        requests: u8,
    },
}

/// Prints an error with its whole chain of causes, one per line (no
/// backtrace: an operator needs the causes, the verifier log among them).
fn main() -> std::process::ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netns-agent: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let euid = nix::unistd::Uid::effective();
    if !euid.is_root() {
        anyhow::bail!(
            "needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF): it loads eBPF \
             programs, attaches them to a cgroup and enters network namespaces; running as uid {euid}"
        );
    }
    match &cli.command {
        Command::Demo { requests } => demo::run(*requests),
        Command::Run(args) => cmd::run::run(args),
        Command::Status(args) => cmd::status::status(args),
        Command::Monitor(args) => cmd::monitor::monitor(args),
        Command::Top(args) => cmd::top::top(args),
        Command::Cleanup(args) => cmd::cleanup::cleanup(args),
        Command::Exec(args) => cmd::exec::exec(args),
        Command::DemoPod { netns, cgroup } => demo_pod::run_pod(netns, cgroup),
    }
}
