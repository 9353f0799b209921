//! netns-agent: the node agent. Today it runs the per-pod namespace work on
//! throw-away pods (`demo`); loading the eBPF data path and watching real pods
//! arrive with the data-path issue.

// Doc comments here are clap's --help text, where backticks would show literally.
#![allow(clippy::doc_markdown)]

mod demo;

use netns_agent as _;

use clap::{Parser, Subcommand};

/// Merbridge-style node agent for the netns eBPF data path.
///
/// Every command needs root: it creates and enters network namespaces.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create throw-away pod namespaces, do the per-pod work in each through
    /// netns-core (a listener marked with the bypass mark, a connection made
    /// inside, bytes echoed), print what the kernel reports, and remove them.
    ///
    /// Example: netns-agent demo --pods 3
    Demo {
        /// How many throw-away pods to create.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=32))]
        pods: u8,
        /// SO_MARK for the pods' listeners (the mark that tells the data path
        /// to leave a socket alone).
        #[arg(long, default_value_t = netns_ebpf::defaults::BYPASS_MARK)]
        mark: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo { pods, mark } => demo::run(pods, mark),
    }
}
