//! Developer verbs for the netns workspace. Start them through `./x`, which
//! installs the pinned toolchain first: `./x test`, `./x run`, `./x bench`.

mod apt;
mod bench;
mod bench_datapath;
mod cmd;
mod ebpf;
mod test;
mod vm;

use clap::{Parser, Subcommand};

/// Developer verbs for the netns workspace (start them with ./x).
#[derive(Debug, Parser)]
#[command(name = "./x", bin_name = "./x", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Check formatting, clippy -D warnings and docs, run every test of the
    /// workspace on this kernel (root-only kernel tests included), then the
    /// kernel suite on every kernel of xtask/vm-kernels.txt under QEMU (needs
    /// root; the first run installs QEMU and downloads the kernels).
    Test {
        /// Skip the QEMU kernels: this kernel only (quicker, for development).
        #[arg(long)]
        no_vm: bool,
    },
    /// Build the eBPF programs into target/ebpf/netns-ebpf.o (installs the
    /// pinned nightly and builds bpf-linker against its LLVM when missing).
    BuildEbpf,
    /// Run the main job: netns-agent on its defaults with a demo pod
    /// (`run --demo-pod`) until Ctrl-C (needs root). Other arguments go to the
    /// agent, e.g. `./x run -- --help`, `./x run -- demo --requests 3`.
    Run {
        /// Arguments for netns-agent.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure a namespace switch: netns-core against two raw setns calls,
    /// the netns-rs crate and Go's ns.Do (installs Debian's Go packages; needs root).
    Bench {
        /// Calls per round.
        #[arg(long, default_value_t = 20_000)]
        iters: u32,
        /// Interleaved rounds; figures are medians over them.
        #[arg(long, default_value_t = 7)]
        rounds: u32,
    },
    /// Run the kernel test suite (tests/) on this kernel (`local`, root) or on
    /// each kernel of xtask/vm-kernels.txt booted under QEMU (`vm`).
    IntegrationTest(vm::Args),
    /// Measure the data path: connection rate, request/response latency and
    /// bulk throughput for direct, iptables REDIRECT, our eBPF programs and the
    /// sockmap mode (installs iptables; needs root).
    BenchDatapath(bench_datapath::Args),
    /// Measure netns-agent run at scale: 1,000 pods appearing (time to their
    /// map entries, p50/p99), memory with 1,000 pods, 1,000 add+delete churns
    /// and what they leak (needs root).
    BenchAgent {
        /// How many pods.
        #[arg(long, default_value_t = 1000)]
        pods: u32,
    },
    /// CNI ADD as a container runtime sees it: netns-cni alone and the whole
    /// chain (loopback, bridge + host-local, netns-cni), p50/p99 over 1,000
    /// pods (needs root; installs containernetworking-plugins).
    BenchCni {
        /// How many pods.
        #[arg(long, default_value_t = 1000)]
        pods: u32,
    },
}

/// `./x run [ARGS]`: builds the agent and runs it with `ARGS`; with none, or
/// with only options (`./x run --log-level debug`), as `run --demo-pod ARGS`:
/// the agent on its defaults with a demo pod, until Ctrl-C. Exits with the
/// agent's own exit code.
fn run_agent(args: &[String]) -> anyhow::Result<()> {
    const AGENT_FLAGS: [&str; 4] = ["-h", "--help", "-V", "--version"];
    cmd::require_root("./x run")?;
    ebpf::build()?;
    eprintln!("xtask: building netns-agent");
    cmd::status(&mut cmd::cargo(&[
        "build",
        "--quiet",
        "--package",
        "netns-agent",
    ]))?;
    let mut agent =
        std::process::Command::new(cmd::workspace_root().join("target/debug/netns-agent"));
    let options_only = args
        .first()
        .is_none_or(|a| a.starts_with('-') && !AGENT_FLAGS.contains(&a.as_str()));
    if options_only {
        agent.args(["run", "--demo-pod"]);
    }
    agent.args(args);
    // Become the agent: Ctrl-C and the exit code are its own.
    let err = std::os::unix::process::CommandExt::exec(&mut agent);
    Err(anyhow::anyhow!("cannot start netns-agent: {err}"))
}

/// Prints an error with its chain of causes, one per line, and no backtrace
/// (these machines set `RUST_BACKTRACE=1`, which anyhow would honour).
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.verb {
        Verb::Test { no_vm } => test::run(!no_vm),
        Verb::BuildEbpf => ebpf::build().map(|object| eprintln!("xtask: {}", object.display())),
        Verb::Run { args } => run_agent(&args),
        Verb::Bench { iters, rounds } => bench::run(iters, rounds),
        Verb::IntegrationTest(args) => vm::run(&args),
        Verb::BenchDatapath(args) => bench_datapath::run(&args),
        Verb::BenchAgent { pods } => bench_datapath::run_agent(pods),
        Verb::BenchCni { pods } => bench_datapath::run_cni(pods),
    }
}
