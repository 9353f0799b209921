//! `./x bench-datapath`, `./x bench-agent` and `./x bench-cni`. The data path benchmark (tests/benches/datapath.rs):
//! direct, iptables REDIRECT (Istio's default capture), our default eBPF
//! programs, and the opt-in sockmap mode on the sidecar-to-sidecar leg.

use crate::{apt, cmd, ebpf};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Interleaved rounds (plus one discarded warm-up); figures are medians.
    #[arg(long, default_value_t = 21)]
    rounds: u32,
    /// Pin every process of the benchmark to one CPU (the default).
    #[arg(long, overrides_with = "no_pin")]
    pin: bool,
    /// Let the scheduler place the processes (noisier: loopback round trips
    /// vary ~3x with placement).
    #[arg(long, overrides_with = "pin")]
    no_pin: bool,
    /// The CPU to pin to (default: the last one).
    #[arg(long)]
    cpu: Option<u32>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    cmd::require_root("./x bench-datapath")?;
    apt::ensure(
        &["iptables", "iproute2"],
        "the benchmark compares against Istio's iptables REDIRECT and builds namespaces with ip",
    )?;
    ebpf::build()?;
    let mut cargo = cmd::cargo(&["bench", "--package", "netns-tests", "--bench", "datapath"]);
    cargo
        .env("NETNS_BENCH_ROUNDS", args.rounds.to_string())
        .env("NETNS_BENCH_PIN", if args.no_pin { "0" } else { "1" });
    if let Some(cpu) = args.cpu {
        cargo.env("NETNS_BENCH_CPU", cpu.to_string());
    }
    cmd::status(&mut cargo)
}

/// Builds netns-agent's binaries (the agent and netns-cni) in release mode;
/// returns their directory.
fn release_agent() -> anyhow::Result<std::path::PathBuf> {
    ebpf::build()?;
    eprintln!("xtask: building netns-agent and netns-cni (release)");
    cmd::status(&mut cmd::cargo(&[
        "build",
        "--quiet",
        "--release",
        "--package",
        "netns-agent",
        "--bins",
    ]))?;
    Ok(cmd::workspace_root().join("target/release"))
}

/// `./x bench-cni`: the CNI benchmark (tests/benches/cni.rs) against release
/// builds of netns-agent and netns-cni.
pub(crate) fn run_cni(pods: u32) -> anyhow::Result<()> {
    cmd::require_root("./x bench-cni")?;
    apt::ensure(
        &["iproute2", "containernetworking-plugins"],
        "the benchmark runs Debian's bridge, host-local and loopback CNI plugins before netns-cni",
    )?;
    let bin = release_agent()?;
    cmd::status(
        cmd::cargo(&["bench", "--package", "netns-tests", "--bench", "cni"])
            .env("NETNS_BENCH_AGENT", bin.join("netns-agent"))
            .env("NETNS_BENCH_CNI", bin.join("netns-cni"))
            .env("NETNS_BENCH_PODS", pods.to_string()),
    )
}

/// `./x bench-agent`: the agent benchmark (tests/benches/agent.rs) against a
/// release build of netns-agent.
pub(crate) fn run_agent(pods: u32) -> anyhow::Result<()> {
    cmd::require_root("./x bench-agent")?;
    apt::ensure(
        &["iproute2"],
        "the benchmark configures pod namespaces with ip",
    )?;
    let agent = release_agent()?.join("netns-agent");
    cmd::status(
        cmd::cargo(&["bench", "--package", "netns-tests", "--bench", "agent"])
            .env("NETNS_BENCH_AGENT", &agent)
            .env("NETNS_BENCH_PODS", pods.to_string()),
    )?;
    // The restart figure comes from the restart proof itself (it prints
    // restart_failed_connections before asserting it is zero).
    eprintln!("xtask: restarting the agent 10 times under a connection loop");
    cmd::status(&mut cmd::cargo(&[
        "test",
        "--quiet",
        "--package",
        "netns-agent",
        "--test",
        "root_agent_restart",
        "--",
        "--nocapture",
    ]))
}
