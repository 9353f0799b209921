//! A real third-party transparent proxy as the pod's sidecar: Debian's squid
//! with `http_port 127.0.0.1:15001 intercept`, which asks `SO_ORIGINAL_DST`
//! exactly as it does behind an iptables REDIRECT, driven through the shipped
//! binaries (`netns-agent exec` starts it in the pod and the captured cgroup,
//! `netns-agent run` meshes the pod). The origin server, in a namespace of its
//! own, answers `via-proxy` when the request came through a proxy (squid adds
//! `Via`) and `direct` when it did not: a request that went around the sidecar
//! is seen as such by the server, not inferred.
//!
//! Scenarios: squid listening before the agent starts (late start), a
//! restart without `--keep-state`, and a squid restart under a request loop
//! with the default fail policy (none may go around it). Host only (the VM
//! guests carry no squid); `./x test` installs squid. Needs root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netns_core::NetNs;
use netns_tests::agent::{Running, run_command};
use netns_tests::pod_traffic::pod_and_outside;

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
const SQUID: &str = "/usr/sbin/squid";
/// The origin, reachable from the pod over a veth: also directly, which is
/// what a request that went around the sidecar would do.
const ORIGIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 98, 2)), 80);
const WAIT: Duration = Duration::from_secs(30);

/// What one request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    /// Through squid to the origin.
    ViaProxy,
    /// Straight to the origin, around the sidecar.
    Direct,
    /// Refused or failed (no answer from the origin).
    Failed,
}

/// One `GET http://198.18.98.2/` from the pod, as an app does it.
fn request(pod: &NetNs) -> Got {
    let Ok(mut conn) = pod.sockets().tcp_connect(ORIGIN) else {
        return Got::Failed;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        conn,
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        ORIGIN.ip()
    );
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    if !answer.starts_with("HTTP/1.1 200") {
        return Got::Failed;
    }
    if answer.ends_with("via-proxy") {
        Got::ViaProxy
    } else if answer.ends_with("direct") {
        Got::Direct
    } else {
        Got::Failed
    }
}

/// The origin server in `ns`: `via-proxy` when the request has a `Via`
/// header, `direct` otherwise.
fn origin(ns: &NetNs) {
    let listener = ns.sockets().tcp_listener(ORIGIN).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut via = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    via |= line.to_ascii_lowercase().starts_with("via:");
                }
                let body = if via { "via-proxy" } else { "direct" };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

struct Node {
    dir: PathBuf,
    cgroup: netns_datapath::cgroup::ChildCgroup,
    metrics: SocketAddr,
    pod: NetNs,
    squid: Option<Child>,
    /// How many times squid has been started and said it listens.
    squid_starts: usize,
}

impl Node {
    fn new() -> Node {
        let netns_tests::agent::Private {
            dir,
            cgroup,
            metrics,
        } = netns_tests::agent::private("squid");
        let (pod, server) = pod_and_outside(&dir, "origin", "198.18.98");
        origin(&server);
        let squid_dir = dir.join("squid");
        std::fs::create_dir_all(&squid_dir).unwrap();
        // squid's workers run as `proxy` and write their logs here.
        std::fs::set_permissions(
            &squid_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let conf = format!(
            "http_port 3128\n\
             http_port 127.0.0.1:15001 intercept\n\
             http_access allow all\n\
             cache deny all\n\
             via on\n\
             pid_filename none\n\
             cache_effective_user proxy\n\
             access_log stdio:{d}/access.log\n\
             cache_log {d}/cache.log\n\
             coredump_dir {d}\n\
             shutdown_lifetime 0 seconds\n",
            d = squid_dir.display()
        );
        std::fs::write(squid_dir.join("squid.conf"), conf).unwrap();
        Node {
            dir,
            cgroup,
            metrics,
            pod,
            squid: None,
            squid_starts: 0,
        }
    }

    /// squid in the pod and the captured cgroup, through `netns-agent
    /// exec`, once it listens on 15001.
    fn start_squid(&mut self) {
        let child = Command::new(AGENT)
            .arg("exec")
            .arg("--cgroup")
            .arg(self.cgroup.path())
            .arg(self.pod.path())
            .arg("--")
            .args([SQUID, "-N", "-f"])
            .arg(self.dir.join("squid/squid.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("squid/stderr.log"))
                    .unwrap(),
            ))
            .spawn()
            .expect("start squid through netns-agent exec");
        self.squid = Some(child);
        let deadline = Instant::now() + WAIT;
        while !self.squid_listens() {
            assert!(
                Instant::now() < deadline,
                "squid did not listen: {}",
                self.squid_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// squid says it accepts on the intercept port. (Never probed with a
    /// connection: one that carries no original destination makes squid 5.7
    /// log the failed lookup and stop accepting on that port.)
    fn squid_listens(&self) -> bool {
        let log = std::fs::read_to_string(self.dir.join("squid/cache.log")).unwrap_or_default();
        log.matches("Accepting NAT intercepted HTTP Socket connections")
            .count()
            > self.squid_starts
    }

    /// SIGTERM to squid (the process this test started) and wait for it.
    fn stop_squid(&mut self) {
        if let Some(mut child) = self.squid.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    fn squid_logs(&self) -> String {
        let read =
            |f: &str| std::fs::read_to_string(self.dir.join("squid").join(f)).unwrap_or_default();
        format!(
            "cache.log:\n{}\nstderr:\n{}",
            read("cache.log"),
            read("stderr.log")
        )
    }

    fn start_agent(&self) -> Running {
        let mut cmd = run_command(AGENT, &self.dir, self.cgroup.path(), self.metrics);
        // squid's own connections (as `proxy`) leave uncaptured.
        let proxy_uid = nix::unistd::User::from_name("proxy")
            .unwrap()
            .expect("user proxy")
            .uid;
        cmd.args([
            "--sidecar-uid",
            &proxy_uid.to_string(),
            "--resync-secs",
            "1",
        ])
        .stdout(Stdio::null());
        Running::start(cmd, &self.dir.join("agent.log"), self.metrics, WAIT)
    }

    fn logs(&self) -> String {
        let status = Command::new(AGENT)
            .args(["status", "--control-socket"])
            .arg(self.dir.join("agent.sock"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "agent:\n{}\nstatus:\n{status}\n{}",
            std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default(),
            self.squid_logs()
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_squid();
        netns_tests::pod_traffic::remove_private(&self.dir);
    }
}

/// `n` requests, all answered through squid.
fn all_via_proxy(node: &Node, n: usize, what: &str) {
    let got: Vec<Got> = (0..n).map(|_| request(&node.pod)).collect();
    assert!(
        got.iter().all(|g| *g == Got::ViaProxy),
        "{what}: {got:?}; logs:\n{}",
        node.logs()
    );
}

#[test]
fn root_squid_as_sidecar_through_late_start_restart_and_its_own_restart() {
    if netns_tests::skip_in_vm("squid is not in the VM guests") {
        return;
    }
    assert!(
        Path::new(SQUID).exists(),
        "squid is missing: ./x test installs it"
    );
    let mut node = Node::new();
    // The app is this process's threads: in the captured cgroup from here on.
    node.cgroup.add_process(std::process::id()).unwrap();
    assert_eq!(
        request(&node.pod),
        Got::Direct,
        "no agent yet: straight to the origin"
    );

    // 1. squid listened before the agent started.
    node.start_squid();
    let mut agent = node.start_agent();
    all_via_proxy(&node, 4, "late start");
    let access = std::fs::read_to_string(node.dir.join("squid/access.log")).unwrap_or_default();
    assert!(
        access.contains("ORIGINAL_DST/198.18.98.2"),
        "squid went to the original destination it was told: {access}"
    );

    // 2. A restart without --keep-state, squid running on.
    agent.stop();
    let mut agent = node.start_agent();
    all_via_proxy(&node, 4, "after an agent restart");

    // 3. squid restarts while the app keeps requesting: with the default
    // fail policy nothing goes around it.
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let looping = {
        let (stop, counts, pod) = (Arc::clone(&stop), Arc::clone(&counts), node.pod.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let slot = match request(&pod) {
                    Got::ViaProxy => 0,
                    Got::Direct => 1,
                    Got::Failed => 2,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    node.stop_squid();
    std::thread::sleep(Duration::from_millis(500));
    node.start_squid();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    looping.join().unwrap();
    let [via, direct, failed] = [0, 1, 2].map(|i| counts[i].load(Ordering::Relaxed));
    println!(
        "squid_restart: via_proxy={via} around_the_sidecar={direct} refused_or_failed={failed}"
    );
    assert_eq!(
        direct,
        0,
        "requests went around the restarting sidecar; logs:\n{}",
        node.logs()
    );
    assert!(
        failed > 0,
        "the restart was seen: {via} via, {failed} failed"
    );
    assert!(via > 0);
    all_via_proxy(&node, 4, "after squid's restart");
    agent.stop();
}
