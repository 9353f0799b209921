//! Restart without a gap: while an app in a meshed pod opens connections in a
//! loop, the agent (`--keep-state`) is restarted 10 times, half of them with
//! SIGKILL, some while a second pod comes and goes. No connection may fail or
//! go around the sidecar; afterwards each hook has exactly one program
//! (`BPF_PROG_QUERY`) and the maps hold exactly the live pod's entries.
//! Its own test binary: this process joins the captured cgroup (the app and
//! the sidecar are its threads). Needs root.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use netns_agent::cgroup::{ChildCgroup, cgroup2_mount};
use netns_agent::datapath::{CookieProbe, attached_program_ids};
use netns_core::NetNs;
use netns_ebpf::{PodFlags, names};
use netns_tests::agent::run_command;

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
/// Routed nowhere: reachable only through the sidecar.
const SERVICE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 96, 10)), 80);

struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    cgroup: PathBuf,
    metrics: SocketAddr,
}

impl Agent {
    fn start(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = run_command(AGENT, &self.dir, &self.cgroup, self.metrics)
            .args(["--keep-state", "--resync-secs", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ready() {
            assert!(
                Instant::now() < deadline,
                "agent not ready: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ready(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect_timeout(&self.metrics, Duration::from_millis(100))
        else {
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

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Stops the agent with `signal` (only the process this test started).
    fn stop(&mut self, signal: nix::sys::signal::Signal) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = netns_agent::datapath::cleanup(&self.dir.join("bpf"));
        if let Ok(entries) = std::fs::read_dir(self.dir.join("netns")) {
            for entry in entries.flatten() {
                let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pod's app: connects to [`SERVICE`] in a loop, each time checking that
/// the sidecar answered with the destination it dialed.
struct App {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_failure: Arc<std::sync::Mutex<String>>,
    thread: std::thread::JoinHandle<()>,
}

impl App {
    fn start(pod: &NetNs) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let first_failure = Arc::new(std::sync::Mutex::new(String::new()));
        let thread = {
            let (stop, ok, failed, first_failure, pod) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&first_failure),
                pod.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connect_once(&pod) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let mut first = first_failure.lock().unwrap();
                            if first.is_empty() {
                                *first = e;
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        App {
            stop,
            ok,
            failed,
            first_failure,
            thread,
        }
    }

    /// Stops the loop: (connections that worked, failed, the first failure).
    fn stop(self) -> (u64, u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let first = self.first_failure.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            first,
        )
    }
}

fn connect_once(pod: &NetNs) -> Result<(), String> {
    let conn = pod
        .sockets()
        .tcp_connect(SERVICE)
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() == SERVICE.to_string() {
        Ok(())
    } else {
        Err(format!("the sidecar said {line:?}"))
    }
}

fn meshed_cookies(dir: &Path) -> Vec<u64> {
    let pin = dir.join("bpf/maps").join(names::MESHED_NETNS);
    let map: HashMap<_, u64, PodFlags> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&pin).unwrap())).unwrap();
    let mut keys: Vec<u64> = map.keys().map(Result::unwrap).collect();
    keys.sort_unstable();
    keys
}

#[test]
fn root_agent_restarts_ten_times_without_a_connection_failing_or_going_around_the_sidecar() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run ./x test"
    );
    let dir = PathBuf::from(format!("/tmp/netns-agent-restart-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("netns")).unwrap();
    let cgroup = ChildCgroup::create(
        &cgroup2_mount().unwrap(),
        &format!("netns-agent-restart-{}", std::process::id()),
    )
    .unwrap();
    let metrics = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let mut agent = Agent {
        child: None,
        dir: dir.clone(),
        cgroup: cgroup.path().to_owned(),
        metrics,
    };
    let pod = NetNs::create_at(&dir.join("netns/pod")).unwrap();
    pod.set_loopback_up().unwrap();
    agent.start();

    // From here on this process (the pod's app and sidecar threads) is captured.
    cgroup.add_process(std::process::id()).unwrap();
    let listener = pod
        .sockets()
        .tcp_listener("127.0.0.1:15001".parse().unwrap())
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let answer = netns_core::original_dst(&conn)
                .map_or_else(|e| format!("error {e}"), |orig| orig.to_string());
            let _ = writeln!(conn, "{answer}");
        }
    });
    let app = App::start(&pod);

    let mut probe = CookieProbe::start(netns_agent::EBPF_OBJECT, cgroup.path()).unwrap();
    let pod_cookie = probe.cookie(&pod).expect("learn the pod's netns cookie");
    drop(probe);
    for round in 0..10 {
        // Some restarts happen while a second pod comes and goes.
        let churn = (round % 3 == 0)
            .then(|| NetNs::create_at(&dir.join(format!("netns/churn-{round}"))).unwrap());
        std::thread::sleep(Duration::from_millis(150));
        let signal = if round % 2 == 0 {
            nix::sys::signal::Signal::SIGTERM
        } else {
            nix::sys::signal::Signal::SIGKILL
        };
        agent.stop(signal);
        if churn.is_some() {
            // Gone while no agent runs: the next one must drop its entries.
            NetNs::delete_at(&dir.join(format!("netns/churn-{round}"))).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        agent.start();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, first_failure) = app.stop();
    // What `./x bench-agent` prints as its restart figure.
    println!("restart_connections: {ok} (10 restarts, 5 of them SIGKILL, 4 during pod churn)");
    println!("restart_failed_connections: {failed}");
    assert_eq!(
        failed,
        0,
        "first failure: {first_failure}; logs:\n{}",
        agent.logs()
    );
    assert!(ok > 100, "the app kept connecting: {ok}");

    let mut ids = attached_program_ids(cgroup.path()).unwrap();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        6,
        "each of the 6 default hooks attached exactly once: {ids:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while meshed_cookies(&dir) != [pod_cookie] {
        assert!(
            Instant::now() < deadline,
            "maps hold only the live pod: {:?}",
            meshed_cookies(&dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.stop(nix::sys::signal::Signal::SIGTERM);
}
