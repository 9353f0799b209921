//! `netns-agent run` for tests and benchmarks: one agent on private paths
//! under a directory of the caller's (pins, watched namespace directory,
//! control socket), never the machine's defaults.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netns_agent::cgroup::{ChildCgroup, cgroup2_mount};

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

/// Does the agent serving HTTP on `metrics` answer `/readyz` with 200?
#[must_use]
pub fn ready(metrics: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&metrics, Duration::from_millis(100)) else {
        return false;
    };
    let _ = write!(
        conn,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut first = String::new();
    let _ = BufReader::new(conn).read_line(&mut first);
    first.starts_with("HTTP/1.1 200")
}

/// The private places of one agent under test.
#[derive(Debug)]
pub struct Private {
    /// `/tmp/netns-<tag>-<pid>`, with an empty `netns/` in it.
    pub dir: PathBuf,
    /// A child cgroup of the same name (removed on drop).
    pub cgroup: ChildCgroup,
    /// A free loopback port for the agent's HTTP listener.
    pub metrics: SocketAddr,
}

/// Makes [`Private`] places for `tag` (a leftover directory of the same name
/// is removed first).
#[must_use]
pub fn private(tag: &str) -> Private {
    crate::require_root();
    let name = format!("netns-{tag}-{}", std::process::id());
    let dir = PathBuf::from("/tmp").join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("netns")).unwrap();
    let cgroup = ChildCgroup::create(&cgroup2_mount().unwrap(), &name).unwrap();
    let metrics = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    Private {
        dir,
        cgroup,
        metrics,
    }
}
