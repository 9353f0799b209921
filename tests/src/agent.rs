//! `netns-agent run` for tests and benchmarks: one agent on private paths
//! under a directory of the caller's (pins, watched namespace directory,
//! control socket), never the machine's defaults.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};

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
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, unused_port()));
    Private {
        dir,
        cgroup,
        metrics,
    }
}

/// A loopback port for an agent's HTTP listener that nobody holds now and
/// nobody is handed meanwhile. A port the kernel picks for `bind(0)` comes
/// from the ephemeral range, where any outgoing connection of the machine
/// may take it before the agent binds it; this one is below that range
/// (`ip_local_port_range`), so only an explicit bind could take it, and
/// each call of this process gets another (a counter, offset by the PID so
/// that test processes running side by side do not start at the same one).
#[must_use]
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let (low, span) = (10_000, ephemeral_low.saturating_sub(10_000).max(1_000));
    let start = std::process::id().wrapping_mul(97);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 100_000, "no unused port below {ephemeral_low}");
        let port = u16::try_from(low + start.wrapping_add(n) % span).unwrap();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// A started agent: its process (only this one is ever signalled, by its
/// PID) and the file its log is appended to. Killed on drop if still running.
#[derive(Debug)]
pub struct Running {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Running {
    /// Starts `cmd` (stdout as the caller set it, stderr appended to `log`)
    /// and waits until the agent answers `/readyz` with 200 on `metrics`;
    /// panics with the log if it has not within `within`.
    #[must_use]
    pub fn start(mut cmd: Command, log: &Path, metrics: SocketAddr, within: Duration) -> Running {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .expect("start netns-agent");
        let running = Running {
            child: Some(child),
            log: log.to_owned(),
        };
        let deadline = std::time::Instant::now() + within;
        while !ready(metrics) {
            assert!(
                std::time::Instant::now() < deadline,
                "agent not ready within {within:?}: {}",
                running.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        running
    }

    /// The log so far.
    #[must_use]
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's PID.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("the agent is running").id()
    }

    /// Sends `signal` and waits for the exit: its status and how long it took.
    /// An agent that has not exited 60 s later (a missed signal) is killed
    /// and the test fails, rather than hanging.
    pub fn signal(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> (std::process::ExitStatus, Duration) {
        const LIMIT: Duration = Duration::from_secs(60);
        let mut child = self.child.take().expect("the agent is running");
        let started = std::time::Instant::now();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the agent ignored {signal} for {LIMIT:?}: killed; its log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, and its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM).0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
