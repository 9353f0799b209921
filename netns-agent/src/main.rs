//! netns-agent: the node agent. Today its command is `demo`, the data path end
//! to end on a throw-away pod; the long-running agent (pod sources, metrics)
//! builds on the same library (`netns_agent::datapath`).

// Doc comments here are clap's --help text, where backticks would show literally.
#![allow(clippy::doc_markdown)]

mod demo;

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
    match cli.command {
        Command::Demo { requests } => demo::run(requests),
    }
}
