//! `netns-agent run --demo-pod`: a pod of the agent's own, so that a newcomer
//! sees within seconds a pod appear, get meshed and its connections
//! captured. The agent creates the pod's namespace in the watched directory;
//! once it is meshed, a child process (`netns-agent demo-pod`, hidden) joins
//! the captured cgroup and the pod's namespace and plays the pod's sidecar
//! and app: the app dials a service address that exists nowhere, the sidecar
//! answers with what `SO_ORIGINAL_DST` told it. On exit the child is ended
//! (by its PID) and the namespace deleted.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;
use netns_core::NetNs;

/// The demo pod's file name in the watched directory.
pub(crate) const NAME: &str = "netns-demo-pod";
/// The service the demo app dials: routed nowhere, reachable only by capture.
const SERVICE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 96, 10)), 80);
const SIDECAR: &str = "127.0.0.1:15001";

/// The demo pod while the agent runs; dropping it ends the child and deletes
/// the namespace.
#[derive(Debug)]
pub(crate) struct DemoPod {
    path: PathBuf,
    child: Option<Child>,
}

impl DemoPod {
    /// Creates the pod's namespace at `dir/netns-demo-pod`.
    pub(crate) fn create(dir: &Path) -> anyhow::Result<DemoPod> {
        let path = dir.join(NAME);
        let ns = NetNs::create_at(&path)
            .with_context(|| format!("create the demo pod {}", path.display()))?;
        ns.set_loopback_up()?;
        Ok(DemoPod { path, child: None })
    }

    /// Once the agent answers on `socket` with the pod meshed, starts the
    /// pod's processes in `cgroup`.
    pub(crate) fn play(&mut self, socket: &Path, cgroup: &Path) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = runtime.block_on(netns_agent::control::ask_status(socket));
            if status.is_ok_and(|s| s.ready && s.pods.iter().any(|p| p.name == NAME && p.meshed)) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the agent did not mesh the demo pod within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = Command::new(std::env::current_exe()?)
            .arg("demo-pod")
            .arg("--netns")
            .arg(&self.path)
            .arg("--cgroup")
            .arg(cgroup)
            .spawn()
            .context("start the demo pod's processes")?;
        tracing::info!(pod = %self.path.display(), pid = child.id(), "demo pod meshed: its app and sidecar started");
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for DemoPod {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = NetNs::delete_at(&self.path) {
            tracing::warn!(pod = %self.path.display(), error = %e, "cannot delete the demo pod");
        }
    }
}

/// The hidden `demo-pod` command: join `cgroup`, enter the pod, then run its
/// sidecar and, every second, its app.
pub(crate) fn run_pod(netns: &Path, cgroup: &Path) -> anyhow::Result<()> {
    // Never outlive the agent that started us, however it ends.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("PR_SET_PDEATHSIG")?;
    // A socket belongs to the cgroup its creator is in: join first.
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("join {}", cgroup.display()))?;
    // Single-threaded so far: the whole process moves.
    NetNs::open(netns)?.set()?;
    let listener = TcpListener::bind(SIDECAR).context("the demo sidecar's listener")?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let answer = netns_core::original_dst(&conn).map_or_else(
                |e| format!("no original destination ({e})"),
                |orig| orig.to_string(),
            );
            let _ = writeln!(conn, "{answer}");
        }
    });
    // Until the agent ends this process.
    let mut request = 0u64;
    loop {
        request += 1;
        let line = TcpStream::connect_timeout(&SERVICE, Duration::from_secs(2))
            .map_err(anyhow::Error::from)
            .and_then(|conn| {
                let peer = conn.peer_addr()?;
                let mut line = String::new();
                BufReader::new(conn).read_line(&mut line)?;
                Ok(format!(
                    "captured: the sidecar on {SIDECAR} was told SO_ORIGINAL_DST = {}; the app's getpeername() = {peer}",
                    line.trim()
                ))
            })
            .unwrap_or_else(|e| format!("NOT captured: {e:#}"));
        println!("demo pod {NAME}: app request {request} dials {SERVICE}: {line}");
        std::thread::sleep(Duration::from_secs(1));
    }
}
