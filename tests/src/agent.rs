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

/// The whole answer (status line, headers, body) of the agent serving HTTP
/// on `metrics` to `GET path`.
#[must_use]
pub fn http_get(metrics: SocketAddr, path: &str) -> String {
    let mut conn = TcpStream::connect_timeout(&metrics, Duration::from_secs(5)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
    answer
}

/// `name`'s histogram in a Prometheus exposition, by the value of its
/// `label`: (label value, count, sum, p99 upper bound: the least bucket
/// bound holding 99 % of the samples).
#[must_use]
pub fn histograms(text: &str, name: &str, label: &str) -> Vec<(String, f64, f64, f64)> {
    let value_of = |line: &str, key: &str| -> Option<String> {
        let at = line.find(&format!("{key}=\""))? + key.len() + 2;
        Some(line[at..].split('"').next()?.to_owned())
    };
    let number = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let mut out: Vec<(String, f64, f64, f64)> = Vec::new();
    let mut buckets: Vec<(String, f64, f64)> = Vec::new();
    let mut sums: Vec<(String, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(name)) {
        let Some(which) = value_of(line, label) else {
            continue;
        };
        if line.starts_with(&format!("{name}_bucket")) {
            let le = value_of(line, "le")
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::INFINITY);
            buckets.push((which, le, number(line).unwrap_or(0.0)));
        } else if line.starts_with(&format!("{name}_count")) {
            out.push((which, number(line).unwrap_or(0.0), 0.0, 0.0));
        } else if line.starts_with(&format!("{name}_sum")) {
            sums.push((which, number(line).unwrap_or(0.0)));
        }
    }
    for entry in &mut out {
        entry.2 = sums
            .iter()
            .find(|(w, _)| *w == entry.0)
            .map_or(0.0, |(_, v)| *v);
        let want = entry.1 * 0.99;
        entry.3 = buckets
            .iter()
            .filter(|(w, _, n)| *w == entry.0 && *n >= want)
            .map(|(_, le, _)| *le)
            .fold(f64::INFINITY, f64::min);
    }
    out
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

impl Running {
    /// Kills the agent if it still runs (SIGKILL), and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An agent meshing one pod (`dir/netns/pod`, 198.18.97.1, with a client
/// namespace beside it at 198.18.97.2), with the calling process joined to
/// its captured cgroup (the pod's app and sidecar are the caller's threads).
/// Removes its private directory on drop.
#[derive(Debug)]
pub struct OnePod {
    /// The agent (dropped first: killed if still running).
    pub agent: Running,
    /// The pod's namespace.
    pub pod: netns_core::NetNs,
    /// A client's namespace outside the pod.
    pub remote: netns_core::NetNs,
    /// The private places.
    pub private: Private,
}

impl OnePod {
    /// Starts agent binary `agent` on private places tagged `tag` and waits
    /// until its status shows the pod meshed.
    #[must_use]
    pub fn start(agent: &str, tag: &str) -> OnePod {
        OnePod::start_with(agent, tag, &[])
    }

    /// [`OnePod::start`] with more flags for `netns-agent run`.
    #[must_use]
    pub fn start_with(agent: &str, tag: &str, flags: &[&str]) -> OnePod {
        let private = private(tag);
        let (pod, remote) = crate::pod_traffic::pod_and_outside_client(&private.dir);
        private
            .cgroup
            .add_process(std::process::id())
            .expect("join the captured cgroup");
        let mut cmd = run_command(agent, &private.dir, private.cgroup.path(), private.metrics);
        cmd.args(flags).stdout(std::process::Stdio::null());
        let running = Running::start(
            cmd,
            &private.dir.join("agent.log"),
            private.metrics,
            Duration::from_secs(20),
        );
        let socket = private.dir.join("agent.sock");
        let meshed = || {
            let out = Command::new(agent)
                .args(["status", "--json", "--control-socket"])
                .arg(&socket)
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|s| {
                s["pods"].as_array().is_some_and(|pods| {
                    pods.iter()
                        .any(|p| p["name"] == "pod" && p["meshed"] == true)
                })
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !meshed() {
            assert!(
                std::time::Instant::now() < deadline,
                "the pod was not meshed: {}",
                running.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OnePod {
            agent: running,
            pod,
            remote,
            private,
        }
    }

    /// The agent's control socket.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.private.dir.join("agent.sock")
    }
}

impl Drop for OnePod {
    fn drop(&mut self) {
        self.agent.kill();
        crate::pod_traffic::remove_private(&self.private.dir);
    }
}

/// The data path's programs (and a cookie probe's `cgroup/sock_create`)
/// attached for a whole test to an empty cgroup of their own. Agents under
/// test attach and detach everything as they start and stop; with these
/// kept, the kernel's per-attach-type static branches
/// (`cgroup_bpf_enabled_key`) never switch meanwhile. Switching them is text
/// patching, which under QEMU's multi-threaded TCG has crashed a 6.12 guest
/// (`Oops: int3` in `tcp_connect`) and hung a 6.1 one (a soft lockup, one
/// CPU stuck for good) while another thread was busy in the kernel: a hazard
/// of the emulator, not of the data path.
#[derive(Debug)]
pub struct Keeper {
    probe: Option<netns_datapath::CookieProbe>,
    datapath: Option<netns_datapath::DataPath>,
    _cgroup: ChildCgroup,
}

impl Keeper {
    /// Attaches them, pinned under `dir/keeper-bpf`.
    #[must_use]
    pub fn attach(dir: &Path) -> Keeper {
        let mount = cgroup2_mount().unwrap();
        let name = format!("netns-keeper-{}", std::process::id());
        let cgroup = ChildCgroup::create(&mount, &name).unwrap();
        let config = netns_datapath::DataPathConfig {
            cgroup: cgroup.path().to_owned(),
            pin_dir: dir.join("keeper-bpf"),
            settings: netns_ebpf::MeshSettings::istio(),
        };
        let datapath =
            netns_datapath::DataPath::attach(netns_datapath::EBPF_OBJECT, &config).unwrap();
        let probe =
            netns_datapath::CookieProbe::start(netns_datapath::EBPF_OBJECT, cgroup.path()).unwrap();
        Keeper {
            probe: Some(probe),
            datapath: Some(datapath),
            _cgroup: cgroup,
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Detached before their cgroup goes.
        drop(self.probe.take());
        drop(self.datapath.take());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn histograms_are_read_by_label_with_their_p99_bound() {
        let text = "\
# TYPE h histogram
h_sum{phase=\"learn\"} 0.003
h_count{phase=\"learn\"} 100
h_bucket{le=\"0.0001\",phase=\"learn\"} 50
h_bucket{le=\"0.001\",phase=\"learn\"} 98
h_bucket{le=\"0.01\",phase=\"learn\"} 100
h_bucket{le=\"+Inf\",phase=\"learn\"} 100
h_sum{phase=\"open\"} 0.001
h_count{phase=\"open\"} 10
h_bucket{le=\"0.0001\",phase=\"open\"} 10
h_bucket{le=\"+Inf\",phase=\"open\"} 10
";
        let got = super::histograms(text, "h", "phase");
        assert_eq!(
            got,
            vec![
                ("learn".to_owned(), 100.0, 0.003, 0.01),
                ("open".to_owned(), 10.0, 0.001, 0.0001),
            ]
        );
    }
}

/// A `netns-agent monitor --json` of the agent at `socket` (with `args`),
/// its lines on a channel as they come; killed (by its PID) on drop.
#[derive(Debug)]
pub struct MonitorProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl MonitorProcess {
    /// Starts it; its first line (the agent's `subscribed`) is the
    /// caller's to read.
    #[must_use]
    pub fn start(agent: &str, socket: &Path, args: &[&str]) -> MonitorProcess {
        let mut child = Command::new(agent)
            .args(["monitor", "--json", "--control-socket"])
            .arg(socket)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start netns-agent monitor");
        let lines = crate::lines_of(child.stdout.take().expect("piped stdout"));
        MonitorProcess { child, lines }
    }

    /// Its next line, if one comes `within`.
    #[must_use]
    pub fn next_line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Its exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for netns-agent monitor")
    }
}

impl Drop for MonitorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
