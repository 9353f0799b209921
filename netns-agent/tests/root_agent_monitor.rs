//! `netns-agent monitor` against the shipped agent: each decision the data
//! path makes about a meshed pod's connection is seen, with the pod's name
//! and the destination, by every attached monitor; a filtered monitor sees
//! only what it asked for; monitors end when the agent stops; the switch
//! the programs check is on exactly while a monitor is attached (read from
//! the kernel's map); `status POD` explains the pod's connections with the
//! kernel's counts and its last decisions. With `root_kubernetes.rs`
//! (`not_included`, which needs a pod's own settings), every verdict is
//! produced on purpose. Its own test binary: this process joins the captured
//! cgroup (the app and the sidecar are its threads). Needs root.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use netns_agent::monitor::{DecisionLine, MonitorLine};
use netns_ebpf::names;
use netns_tests::agent::{MonitorProcess, OnePod};
use netns_tests::pod_traffic::{connect_once, serve_sidecar_and_app};

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
/// Routed nowhere: reachable only through the sidecar.
const SERVICE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 96, 10)), 80);
/// The pod's app, as a client outside the pod dials it.
const POD_APP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 97, 1)), 8080);
const WAIT: Duration = Duration::from_secs(20);
/// The agent's flags: exclusions and DNS redirect, to decide on.
const FLAGS: [&str; 5] = [
    "--exclude-port",
    "9090",
    "--exclude-cidr",
    "198.19.0.0/16",
    "--dns-redirect",
];

/// A running `netns-agent monitor --json`, the lines it printed kept.
struct Monitor {
    process: MonitorProcess,
    seen: Vec<String>,
}

impl Monitor {
    fn start(dir: &Path, extra: &[&str]) -> Monitor {
        let mut monitor = Monitor {
            process: MonitorProcess::start(AGENT, &dir.join("agent.sock"), extra),
            seen: Vec::new(),
        };
        let first = monitor.next_line(WAIT).expect("the monitor's first line");
        assert!(
            matches!(
                serde_json::from_str::<MonitorLine>(&first),
                Ok(MonitorLine::Subscribed { pods: 1.. })
            ),
            "{first}"
        );
        monitor
    }

    fn next_line(&mut self, within: Duration) -> Option<String> {
        let line = self.process.next_line(within)?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits for a decision `want` accepts; returns it.
    fn expect(&mut self, what: &str, want: impl Fn(&DecisionLine) -> bool) -> DecisionLine {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.next_line(left) else {
                panic!(
                    "no {what} decision; the monitor saw:\n{}",
                    self.seen.join("\n")
                );
            };
            if let Ok(MonitorLine::Decision(d)) = serde_json::from_str(&line)
                && want(&d)
            {
                return d;
            }
        }
    }

    /// The decisions that arrive within `quiet`.
    fn drain(&mut self, quiet: Duration) -> Vec<DecisionLine> {
        let mut out = Vec::new();
        while let Some(line) = self.next_line(quiet) {
            if let Ok(MonitorLine::Decision(d)) = serde_json::from_str(&line) {
                out.push(d);
            }
        }
        out
    }
}

/// The programs' reporting switch, as the kernel's map holds it.
fn reporting(dir: &Path) -> bool {
    let pin = dir.join("bpf/maps").join(names::MONITORING);
    let map = Map::Array(MapData::from_pin(&pin).expect("open the pinned switch"));
    let switch: Array<_, u32> = Array::try_from(map).unwrap();
    switch.get(&0, 0).unwrap() != 0
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(one: &OnePod) -> netns_agent::status::Status {
    let out = Command::new(AGENT)
        .args(["status", "--json", "--control-socket"])
        .arg(one.socket())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// What `netns-agent status --json` says of the monitors.
fn monitor_status(one: &OnePod) -> netns_agent::status::MonitorStatus {
    status(one).monitor
}

/// The pod's count of `verdict`, as status reports the kernel's.
fn pod_count(one: &OnePod, verdict: &str) -> u64 {
    let status = status(one);
    let pod = status
        .pods
        .iter()
        .find(|p| p.name == "pod")
        .expect("the pod");
    pod.decisions
        .iter()
        .find(|(v, _)| v == verdict)
        .map_or(0, |(_, n)| *n)
}

/// Dials `to` from inside `ns` with the bypass mark set on the socket.
/// A blocking connection from inside `ns` with the bypass mark (connect4
/// leaves it alone), kept open.
fn dial_marked(ns: &netns_core::NetNs, to: SocketAddr) -> std::net::TcpStream {
    ns.run(move |_| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_mark(netns_ebpf::defaults::BYPASS_MARK)?;
        socket.connect(&to.into())?;
        std::io::Result::Ok(std::net::TcpStream::from(socket))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("dial {to} with the bypass mark: {e}"))
}

fn connect_marked(ns: &netns_core::NetNs, to: SocketAddr, mark: u32) {
    let _ = ns.run(move |_| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_mark(mark)?;
        socket.set_nonblocking(true)?;
        let _ = socket.connect(&to.into());
        std::io::Result::Ok(())
    });
}

/// The decisions that leave a connection alone or unanswered, made on
/// purpose: a pass port, the loop guard and the question it leaves without
/// answer, a SYN to the sidecar without an option.
fn left_alone_and_unanswered(
    all: &mut Monitor,
    pod: &netns_core::NetNs,
    remote: &netns_core::NetNs,
) {
    // One of the sidecar's own ports (Istio's 15021) is left to whatever
    // listens there.
    let _ = remote
        .sockets()
        .tcp_connect("198.18.97.1:15021".parse().unwrap());
    let d = all.expect("inbound_pass_port", |d| d.verdict == "inbound_pass_port");
    assert_eq!(d.destination, "198.18.97.1:15021", "{d:?}");
    // From the pod to its own address: the loop guard leaves it to the app,
    // whose SO_ORIGINAL_DST question then has no answer.
    let app = pod
        .sockets()
        .tcp_listener("0.0.0.0:7070".parse().unwrap())
        .unwrap();
    let _dialed = dial_marked(pod, "198.18.97.1:7070".parse().unwrap());
    let (accepted, _) = app.accept().unwrap();
    all.expect("inbound_loop_guard", |d| {
        d.verdict == "inbound_loop_guard" && d.destination == "198.18.97.1:7070"
    });
    assert!(netns_core::original_dst(&accepted).is_err());
    let d = all.expect("not_answered", |d| d.verdict == "not_answered");
    assert_eq!(d.pod, "pod", "{d:?}");
    // A SYN to the sidecar's outbound port that connect4 did not send
    // there carries no destination option.
    let _direct = dial_marked(pod, "127.0.0.1:15001".parse().unwrap());
    let d = all.expect("no_option", |d| d.verdict == "no_option");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "127.0.0.1:15001")
    );
    // The node's exclusions: a port, a CIDR.
    let _ = pod
        .sockets()
        .tcp_connect("198.18.96.10:9090".parse().unwrap());
    let d = all.expect("excluded_port", |d| d.verdict == "excluded_port");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "198.18.96.10:9090")
    );
    let _ = pod.sockets().tcp_connect("198.19.0.1:80".parse().unwrap());
    let d = all.expect("excluded_cidr", |d| d.verdict == "excluded_cidr");
    assert_eq!(d.destination, "198.19.0.1:80", "{d:?}");
    // DNS (--dns-redirect): to the resolver asked while nothing listens on
    // the sidecar's DNS port, to the sidecar once something does.
    let resolver: SocketAddr = "198.18.96.53:53".parse().unwrap();
    let ask = || {
        let _ = pod.run(move |_| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            socket.send_to(b"q", resolver)
        });
    };
    ask();
    let d = all.expect("dns_sidecar_not_listening", |d| {
        d.verdict == "dns_sidecar_not_listening"
    });
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "198.18.96.53:53")
    );
    let _dns = pod
        .run(|_| std::net::UdpSocket::bind("127.0.0.1:15053"))
        .unwrap()
        .unwrap();
    ask();
    all.expect("dns_redirected", |d| d.verdict == "dns_redirected");
}

/// A socket made in `ns` (as root) that connects, without waiting, from a
/// thread of its own running as `uid`: the credentials connect4 sees. The
/// raw syscall changes this thread's uid alone (glibc's setresuid would
/// change every thread's), and the thread ends right after.
fn connect_as(ns: &netns_core::NetNs, uid: u32, to: SocketAddr) {
    let socket = ns
        .run(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        // SAFETY: setresuid on the calling thread only; no memory involved.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        assert_eq!(
            rc,
            0,
            "setresuid({uid}): {}",
            std::io::Error::last_os_error()
        );
        socket.set_nonblocking(true).unwrap();
        let _ = socket.connect(&to.into());
    })
    .join()
    .unwrap();
}

/// The sidecar's own connections (its uid): left alone, except to a meshed
/// pod on this node, whose inbound port they are sent to.
fn sidecar_uid_and_local_pod(all: &mut Monitor, dir: &Path, pod: &netns_core::NetNs) {
    let sidecar_uid = netns_ebpf::MeshSettings::istio().sidecar_uid;
    connect_as(pod, sidecar_uid, SERVICE);
    let d = all.expect("sidecar_uid", |d| d.verdict == "sidecar_uid");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "198.18.96.10:80")
    );
    // A second pod on this node (198.18.98.1, on a veth pair of its own).
    let other = netns_core::NetNs::create_at(&dir.join("netns/pod-b")).unwrap();
    netns_tests::pod_traffic::ip_in(
        &other,
        &["link", "add", "vb", "type", "veth", "peer", "name", "vb2"],
    );
    netns_tests::pod_traffic::ip_in(&other, &["addr", "add", "198.18.98.1/24", "dev", "vb"]);
    netns_tests::pod_traffic::ip_in(&other, &["link", "set", "vb", "up"]);
    netns_tests::pod_traffic::ip_in(&other, &["link", "set", "vb2", "up"]);
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new(AGENT)
            .args(["status", "pod-b", "--json", "--control-socket"])
            .arg(dir.join("agent.sock"))
            .output()
            .unwrap();
        if serde_json::from_slice::<netns_agent::status::PodStatus>(&out.stdout)
            .is_ok_and(|p| p.meshed && p.addrs.iter().any(|a| a == "198.18.98.1"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod-b not meshed with 198.18.98.1: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    connect_as(pod, sidecar_uid, "198.18.98.1:8080".parse().unwrap());
    let d = all.expect("to_local_pod", |d| d.verdict == "to_local_pod");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "198.18.98.1:8080")
    );
    std::fs::remove_file(dir.join("netns/pod-b")).ok();
    drop(other);
}

/// `status POD`: the pod's connections by verdict, failures first with what
/// they did, and its last decisions (kept while this test's monitor is
/// attached); a pod that is not there is named with those that are.
fn status_explains_the_pod(dir: &Path) {
    let status_of = |pod: &str| {
        Command::new(AGENT)
            .args(["status", pod, "--control-socket"])
            .arg(dir.join("agent.sock"))
            .output()
            .unwrap()
    };
    let out = status_of("pod");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("NOT MESHED sidecar_not_listening"))
        .unwrap_or_else(|| panic!("no failure line: {text}"));
    assert!(
        line.contains("nothing listens on 15001 in the pod"),
        "{line}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("left alone excluded_port")
                && l.contains("excluded destination port")),
        "{text}"
    );
    let recent = text.split("its last decisions").nth(1).unwrap_or_default();
    assert!(
        recent.contains("outbound 198.18.96.10:9090 -> excluded_port"),
        "{text}"
    );
    let out = status_of("no-such-pod");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no pod \"no-such-pod\" in this agent's mesh (meshed: pod"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sidecar side's refusals to believe: an accepted connection on the
/// outbound port that did not come over the pod's loopback, and one whose
/// listener kept no SYN. Run once the sidecar has stopped (its port free).
fn sidecar_side_unbelieved_and_unsaved(all: &mut Monitor, pod: &netns_core::NetNs) {
    // On the pod's own address, the outbound port: the loop guard lets the
    // pod reach it, and the option of such a SYN is never believed.
    let beside = pod
        .sockets()
        .tcp_listener("198.18.97.1:15001".parse().unwrap())
        .unwrap();
    let _dialed = dial_marked(pod, "198.18.97.1:15001".parse().unwrap());
    let _accepted = beside.accept().unwrap();
    let d = all.expect("option_not_believed", |d| {
        d.verdict == "option_not_believed"
    });
    assert_eq!(
        (d.pod.as_str(), d.hook.as_str(), d.destination.as_str()),
        ("pod", "sidecar", "198.18.97.1:15001")
    );
    // A sidecar listener that keeps no SYN (TCP_SAVE_SYN cleared after
    // listen, as on a listener that predates the agent and was not
    // equipped): nothing to read the option from.
    let bare = pod
        .sockets()
        .tcp_listener("127.0.0.1:15001".parse().unwrap())
        .unwrap();
    let off: libc::c_int = 0;
    // SAFETY: a valid socket and an int option of the given size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&bare),
            libc::IPPROTO_TCP,
            libc::TCP_SAVE_SYN,
            (&raw const off).cast(),
            libc::socklen_t::try_from(std::mem::size_of_val(&off)).unwrap(),
        )
    };
    assert_eq!(rc, 0, "TCP_SAVE_SYN 0: {}", std::io::Error::last_os_error());
    let _dialed = dial_marked(pod, "127.0.0.1:15001".parse().unwrap());
    let _accepted = bare.accept().unwrap();
    let d = all.expect("no_saved_syn", |d| d.verdict == "no_saved_syn");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "127.0.0.1:15001")
    );
}

/// A monitor that does not read while 10,000 connections are made: every
/// connection is captured as ever; what its queue cannot hold is dropped
/// and counted for it, and it is told once it reads again.
fn stalled_monitor_is_told_what_it_missed(dir: &Path, pod: &netns_core::NetNs) {
    let mut stalled = Command::new(AGENT)
        .args(["monitor", "--json", "--control-socket"])
        .arg(dir.join("agent.sock"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    for i in 0..10_000 {
        connect_once(pod, SERVICE).unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    println!(
        "10000 connections with a stalled monitor: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Read only now: until here nothing drained its output.
    let told = {
        let lines = netns_tests::lines_of(stalled.stdout.take().unwrap());
        let deadline = Instant::now() + WAIT;
        std::iter::from_fn(|| {
            lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok()
        })
        .find_map(|line| match serde_json::from_str(&line) {
            Ok(MonitorLine::Dropped { count }) => Some(count),
            _ => None,
        })
    };
    let _ = stalled.kill();
    let _ = stalled.wait();
    let dropped = told.expect("the stalled monitor is told what it missed");
    println!("the stalled monitor was told: {dropped} decisions dropped");
    assert!(dropped > 0);
}

/// Unknown verdicts and anyone but root are refused.
fn refuses_unknown_verdicts_and_non_root(dir: &Path) {
    // A monitor asking for a verdict that does not exist is refused.
    let out = Command::new(AGENT)
        .args(["monitor", "--verdict", "capturd", "--control-socket"])
        .arg(dir.join("agent.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown verdict \"capturd\""),
        "{out:?}"
    );
    // Nor may anyone but root attach: the CLI says so, and the socket is
    // root's alone (0600).
    // (Where uid 65534 may not even execute the binary, that is a refusal too.)
    if let Ok(out) = Command::new(AGENT)
        .args(["monitor", "--control-socket"])
        .arg(dir.join("agent.sock"))
        .uid(65534)
        .gid(65534)
        .output()
    {
        assert!(!out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.is_empty() || said.contains("needs root"), "{out:?}");
    }
    let mode = std::fs::metadata(dir.join("agent.sock"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
}

/// The kernel counted every capture for the pod, read or not: status and
/// /metrics show the counts by verdict.
fn kernel_counted_every_capture(one: &OnePod) {
    let captured = pod_count(one, "captured");
    assert!(captured >= 10_002, "captured {captured}");
    assert!(pod_count(one, "sidecar_not_listening") >= 1);
    assert!(pod_count(one, "inbound_captured") >= 1);
    let metrics = netns_tests::agent::http_get(one.private.metrics, "/metrics");
    assert!(
        metrics.contains("netns_agent_pod_decisions_total{pod=\"pod\",verdict=\"captured\"}"),
        "{metrics}"
    );
}

/// The sidecar listens: captured, the SYN's option filed for the sidecar's
/// socket, `SO_ORIGINAL_DST` answered, each with the pod.
fn captured_and_answered(all: &mut Monitor, pod: &netns_core::NetNs) {
    connect_once(pod, SERVICE).expect("captured");
    let d = all.expect("captured", |d| d.verdict == "captured");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "198.18.96.10:80")
    );
    assert_eq!(d.detail, "sidecar 127.0.0.1:15001");
    assert_ne!(d.socket_cookie, 0);
    let d = all.expect("original_dst_received", |d| {
        d.verdict == "original_dst_received"
    });
    // The sidecar's socket is on the pod's loopback: its pod comes from the
    // listener that accepted it.
    assert_eq!(
        (d.pod.as_str(), d.hook.as_str(), d.destination.as_str()),
        ("pod", "sidecar", "198.18.96.10:80")
    );
    let d = all.expect("answered", |d| d.verdict == "answered");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "198.18.96.10:80")
    );
}

#[test]
fn root_monitor_shows_each_decision_with_its_pod_and_destination() {
    let mut one = OnePod::start_with(AGENT, "monitor", &FLAGS);
    let dir = one.private.dir.clone();
    let (pod, remote) = (one.pod.clone(), one.remote.clone());
    assert!(!reporting(&dir), "reporting with no monitor attached");

    let mut all = Monitor::start(&dir, &[]);
    wait_until("reporting switched on", || reporting(&dir));
    let status = monitor_status(&one);
    assert_eq!((status.attached, status.reporting), (1, true), "{status:?}");
    let metrics = netns_tests::agent::http_get(one.private.metrics, "/metrics");
    assert!(
        metrics.contains("netns_agent_monitors_attached 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("netns_agent_decisions_reporting 1"),
        "{metrics}"
    );

    // Nothing listens on the sidecar's port yet: left uncaptured.
    let _ = connect_once(&pod, SERVICE);
    let d = all.expect("sidecar_not_listening", |d| {
        d.verdict == "sidecar_not_listening"
    });
    assert_eq!(
        (d.pod.as_str(), d.hook.as_str()),
        ("pod", "outbound"),
        "{d:?}"
    );
    assert_eq!(d.destination, SERVICE.to_string(), "{d:?}");

    let sidecar = serve_sidecar_and_app(&pod);
    captured_and_answered(&mut all, &pod);

    // Left alone: a loopback destination, a socket with the bypass mark.
    let _ = pod.sockets().tcp_connect("127.0.0.1:9".parse().unwrap());
    let d = all.expect("loopback", |d| d.verdict == "loopback");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "127.0.0.1:9")
    );
    connect_marked(&pod, SERVICE, netns_ebpf::defaults::BYPASS_MARK);
    let d = all.expect("bypass_mark", |d| d.verdict == "bypass_mark");
    assert_eq!(d.pod, "pod", "{d:?}");

    // Inbound: a client outside dials the pod's app; the sidecar gets it.
    connect_once(&remote, POD_APP).expect("inbound captured");
    let d = all.expect("inbound_captured", |d| d.verdict == "inbound_captured");
    assert_eq!(
        (d.pod.as_str(), d.destination.as_str()),
        ("pod", "198.18.97.1:8080")
    );
    left_alone_and_unanswered(&mut all, &pod, &remote);
    sidecar_uid_and_local_pod(&mut all, &dir, &pod);
    status_explains_the_pod(&dir);

    // A second, filtered monitor beside the first: both see the next
    // capture; the second sees nothing else.
    let mut captured_only = Monitor::start(&dir, &["--pod", "pod", "--verdict", "captured"]);
    connect_once(&pod, SERVICE).expect("captured again");
    all.expect("captured (first monitor)", |d| d.verdict == "captured");
    captured_only.expect("captured (second monitor)", |d| d.verdict == "captured");
    let _ = pod.sockets().tcp_connect("127.0.0.1:9".parse().unwrap());
    all.expect("loopback (first monitor)", |d| d.verdict == "loopback");
    let other = captured_only.drain(Duration::from_millis(300));
    assert!(
        other
            .iter()
            .all(|d| d.verdict == "captured" && d.pod == "pod"),
        "{other:?}"
    );
    drop(captured_only);

    stalled_monitor_is_told_what_it_missed(&dir, &pod);
    assert!(monitor_status(&one).dropped > 0);
    kernel_counted_every_capture(&one);

    // The sidecar stops after it has listened: refused both ways, never
    // around it.
    sidecar.stop();
    assert!(connect_once(&pod, SERVICE).is_err());
    let d = all.expect("refused_no_sidecar", |d| d.verdict == "refused_no_sidecar");
    assert_eq!(d.destination, SERVICE.to_string(), "{d:?}");
    assert!(connect_once(&remote, POD_APP).is_err());
    all.expect("inbound_refused", |d| d.verdict == "inbound_refused");
    sidecar_side_unbelieved_and_unsaved(&mut all, &pod);

    refuses_unknown_verdicts_and_non_root(&dir);

    // The agent stops: the monitor's stream ends and it exits cleanly.
    let (status, _) = one.agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "SIGTERM: {status:?}");
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(exit) = all.process.try_wait() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the monitor outlived the agent");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "the monitor's exit: {exit:?}");
}
