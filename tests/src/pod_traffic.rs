//! Traffic through a pod for lifecycle tests: a pod with an address and a
//! client namespace outside it, a sidecar that answers each connection with
//! its original destination, an app that answers "app" (what a connection
//! that went around the sidecar gets), and clients connecting in a loop that
//! count what worked and what failed. Every answer is what the kernel gave
//! the sidecar (`SO_ORIGINAL_DST`), never what the agent believes.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns_core::NetNs;

/// A client in a loop: the pod's app connecting to a service (outbound),
/// or a client outside the pod connecting to the pod's app (inbound); each
/// time the sidecar must answer with the destination dialed.
#[derive(Debug)]
pub struct App {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    thread: std::thread::JoinHandle<()>,
}

/// What an [`App`] counted so far.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Failures after the first connection that worked.
    failed_after_ok: AtomicU64,
    /// Connections answered by something other than the sidecar (the app,
    /// a service): they went around it.
    around: AtomicU64,
    first_ok: Mutex<Option<Instant>>,
    first_failure: Mutex<String>,
    /// The first failure after a connection had worked.
    first_failure_after_ok: Mutex<String>,
    /// The latest failure.
    last_failure: Mutex<String>,
}

impl App {
    /// Starts connecting with `connect_once` in a loop (1 ms apart).
    pub fn start(connect_once: impl Fn() -> Result<(), String> + Send + 'static) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let thread = {
            let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connect_once() {
                        Ok(()) => {
                            tally
                                .first_ok
                                .lock()
                                .unwrap()
                                .get_or_insert_with(Instant::now);
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if e.contains("the answer was \"app")
                                || e.contains("the answer was \"service")
                            {
                                tally.around.fetch_add(1, Ordering::Relaxed);
                            }
                            if tally.first_ok.lock().unwrap().is_some() {
                                tally.failed_after_ok.fetch_add(1, Ordering::Relaxed);
                                let mut first = tally.first_failure_after_ok.lock().unwrap();
                                if first.is_empty() {
                                    first.clone_from(&e);
                                }
                            }
                            tally.last_failure.lock().unwrap().clone_from(&e);
                            let mut first = tally.first_failure.lock().unwrap();
                            if first.is_empty() {
                                *first = e;
                            }
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        App {
            stop,
            tally,
            thread,
        }
    }

    /// (connections that worked, that failed) so far.
    #[must_use]
    pub fn counts(&self) -> (u64, u64) {
        (
            self.tally.ok.load(Ordering::Relaxed),
            self.tally.failed.load(Ordering::Relaxed),
        )
    }

    /// Connections so far that went around the sidecar (answered by the
    /// app or a service).
    #[must_use]
    pub fn around(&self) -> u64 {
        self.tally.around.load(Ordering::Relaxed)
    }

    /// When the first connection worked, if one has.
    #[must_use]
    pub fn first_ok(&self) -> Option<Instant> {
        *self.tally.first_ok.lock().unwrap()
    }

    /// The latest failure, if any.
    #[must_use]
    pub fn last_failure(&self) -> String {
        self.tally.last_failure.lock().unwrap().clone()
    }

    /// Failures after the first connection that worked, and the first of them.
    #[must_use]
    pub fn failed_after_ok(&self) -> (u64, String) {
        (
            self.tally.failed_after_ok.load(Ordering::Relaxed),
            self.tally.first_failure_after_ok.lock().unwrap().clone(),
        )
    }

    /// Stops the loop: (connections that worked, failed, the first failure).
    #[must_use = "the counts are the test's result"]
    pub fn stop(self) -> (u64, u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let (ok, failed) = (
            self.tally.ok.load(Ordering::Relaxed),
            self.tally.failed.load(Ordering::Relaxed),
        );
        (ok, failed, self.tally.first_failure.lock().unwrap().clone())
    }
}

/// One connection from namespace `from` to `to`, answered by a sidecar
/// with the original destination (the app would answer "app").
pub fn connect_once(from: &NetNs, to: SocketAddr) -> Result<(), String> {
    let conn = from.sockets().tcp_connect(to).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() == to.to_string() {
        Ok(())
    } else {
        Err(format!("{to}: the answer was {line:?}"))
    }
}

/// Answers each connection `listener` accepts with `answer(conn)`.
pub fn answer_each(listener: TcpListener, answer: fn(&TcpStream) -> String) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = writeln!(conn, "{}", answer(&conn));
        }
    });
}

#[must_use]
pub fn sidecar_answer(conn: &TcpStream) -> String {
    netns_core::original_dst(conn).map_or_else(|e| format!("error {e}"), |orig| orig.to_string())
}

/// Runs iproute2's `ip args` inside `ns`: spawned from a thread inside the
/// namespace, so it starts there (no `nsenter`: busybox's runs its own `ip`
/// in the guests, which knows no `netns PATH`).
pub fn ip_in(ns: &NetNs, args: &[&str]) {
    let status = ns
        .run(|_| std::process::Command::new("ip").args(args).status())
        .unwrap()
        .unwrap();
    assert!(status.success(), "ip {args:?} in {}", ns.path().display());
}

/// In `pod`: a sidecar (see [`Sidecar`]), and the app on 0.0.0.0:8080
/// answering `app` (what a connection that went around the sidecar gets).
#[must_use]
pub fn serve_sidecar_and_app(pod: &NetNs) -> Sidecar {
    let app = pod
        .sockets()
        .tcp_listener("0.0.0.0:8080".parse().unwrap())
        .unwrap();
    answer_each(app, |_| "app".to_owned());
    Sidecar::start(pod)
}

/// A sidecar in a pod, on 127.0.0.1:15001 and 0.0.0.0:15006, answering each
/// connection with its original destination; it can stop (its listeners
/// closed) and start again, as a restarting proxy does.
#[derive(Debug)]
pub struct Sidecar {
    listeners: Vec<(TcpListener, std::thread::JoinHandle<()>)>,
}

impl Sidecar {
    /// Listens and serves.
    #[must_use]
    pub fn start(pod: &NetNs) -> Sidecar {
        let listeners = ["127.0.0.1:15001", "0.0.0.0:15006"]
            .iter()
            .map(|addr| {
                let listener = pod.sockets().tcp_listener(addr.parse().unwrap()).unwrap();
                let serving = listener.try_clone().unwrap();
                let thread = std::thread::spawn(move || {
                    for conn in serving.incoming() {
                        match conn {
                            Ok(mut conn) => {
                                let _ = writeln!(conn, "{}", sidecar_answer(&conn));
                            }
                            // Shut down by `stop`.
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                            Err(_) => {}
                        }
                    }
                });
                (listener, thread)
            })
            .collect();
        Sidecar { listeners }
    }

    /// Closes both listeners (a blocked accept returns once the socket is
    /// shut down) and waits for the serving threads.
    pub fn stop(self) {
        for (listener, thread) in self.listeners {
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                nix::sys::socket::Shutdown::Both,
            );
            thread.join().unwrap();
        }
    }
}

/// Two loops: the pod's app dialing `service` (outbound), and `remote`
/// dialing the pod's app at `pod_app` (inbound).
#[must_use]
pub fn both_ways(
    pod: &NetNs,
    service: SocketAddr,
    remote: &NetNs,
    pod_app: SocketAddr,
) -> (App, App) {
    let outbound = {
        let pod = pod.clone();
        App::start(move || connect_once(&pod, service))
    };
    let inbound = {
        let remote = remote.clone();
        App::start(move || connect_once(&remote, pod_app))
    };
    (outbound, inbound)
}

/// The pod (198.18.97.1) and a client namespace outside it over a veth
/// (198.18.97.2): it stands in for another node.
#[must_use]
pub fn pod_and_outside_client(dir: &Path) -> (NetNs, NetNs) {
    pod_and_outside(dir, "remote", "198.18.97")
}

/// The pod `dir/netns/pod` (`NET.1/24`) and a namespace `dir/outside/NAME`
/// (`NET.2/24`) joined by a veth, both up.
#[must_use]
pub fn pod_and_outside(dir: &Path, name: &str, net: &str) -> (NetNs, NetNs) {
    let pod = NetNs::create_at(&dir.join("netns/pod")).unwrap();
    pod.set_loopback_up().unwrap();
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    let outside = NetNs::create_at(&dir.join("outside").join(name)).unwrap();
    let outside_path = outside.path().display().to_string();
    let peer = format!("v{name}");
    ip_in(
        &pod,
        &[
            "link",
            "add",
            "vpod",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &outside_path,
        ],
    );
    ip_in(
        &pod,
        &["addr", "add", &format!("{net}.1/24"), "dev", "vpod"],
    );
    ip_in(&pod, &["link", "set", "vpod", "up"]);
    ip_in(
        &outside,
        &["addr", "add", &format!("{net}.2/24"), "dev", &peer],
    );
    ip_in(&outside, &["link", "set", &peer, "up"]);
    (pod, outside)
}

/// Undoes what an agent test left under its private `dir`: the pins (from
/// the pins alone), the namespaces bind-mounted in `dir/netns` and
/// `dir/outside` (lazily, as `ip netns delete` does), and `dir` itself.
pub fn remove_private(dir: &Path) {
    let _ = netns_datapath::cleanup(&dir.join("bpf"));
    for sub in ["netns", "outside"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for entry in entries.flatten() {
                let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
