//! `netns-agent run` for tests and benchmarks: one agent on private paths
//! under a directory of the caller's (pins, watched namespace directory,
//! control socket), never the machine's defaults.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// The command line of an agent whose state lives under `dir` (`dir/bpf`,
/// `dir/netns`, `dir/agent.sock`), capturing `cgroup`, serving HTTP on
/// `metrics`. Not started; callers add flags and where its output goes.
#[must_use]
pub fn run_command(agent: &str, dir: &Path, cgroup: &Path, metrics: SocketAddr) -> Command {
    let mut cmd = Command::new(agent);
    cmd.arg("run")
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--bpffs")
        .arg(dir.join("bpf"))
        .arg("--netns-dir")
        .arg(dir.join("netns"))
        .arg("--control-socket")
        .arg(dir.join("agent.sock"))
        .arg("--metrics-addr")
        .arg(metrics.to_string());
    cmd
}
