//! `netns-agent run` end to end, through the binary: pods appear and go in a
//! watched directory (namespaces the test makes, bind-mounted in a private
//! directory, never /run/netns), the agent writes and removes exactly their
//! map entries (read back from the pinned maps: the kernel's view), junk in
//! the directory is skipped while the agent keeps serving, the control
//! socket refuses bad requests, `status` agrees with `BPF_PROG_QUERY`, and
//! SIGTERM takes everything down (or, with `--keep-state`, leaves it for
//! `cleanup`). Needs root and iproute2.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns_agent::status::Status;
use netns_core::NetNs;
use netns_datapath::CookieProbe;
use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};
use netns_ebpf::names;

use netns_tests::agent::{Running, run_command};
use netns_tests::kernel::cgroup_program_ids;
use netns_tests::require_root;

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
const WAIT: Duration = Duration::from_secs(10);

/// One agent under test with its private directories; everything is removed
/// on drop, also when the test fails.
struct Fixture {
    /// Dropped before the cgroup it lives under.
    probe: Option<CookieProbe>,
    dir: PathBuf,
    cgroup: ChildCgroup,
    metrics: SocketAddr,
    agent: Option<Running>,
    /// Held for the test's whole run (dropped last).
    _turn: Turn,
}

/// The burst test runs alone: its 1,000 namespaces load an emulated guest
/// for minutes (namespace creation and teardown take kernel-wide locks
/// every agent's pod work needs), and it shrinks the inotify queue that an
/// agent started meanwhile would get. The others run side by side.
static TURNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

#[allow(dead_code)] // held, never read
enum Turn {
    Shared(std::sync::RwLockReadGuard<'static, ()>),
    Alone(std::sync::RwLockWriteGuard<'static, ()>),
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let turn = Turn::Shared(
            TURNS
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Fixture::with_turn(tag, turn)
    }

    /// A fixture whose test runs with no other test of this file.
    fn alone(tag: &str) -> Fixture {
        let turn = Turn::Alone(
            TURNS
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Fixture::with_turn(tag, turn)
    }

    fn with_turn(tag: &str, turn: Turn) -> Fixture {
        let netns_tests::agent::Private {
            dir,
            cgroup,
            metrics,
        } = netns_tests::agent::private(&format!("agent-test-{tag}"));
        Fixture {
            probe: None,
            dir,
            cgroup,
            metrics,
            agent: None,
            _turn: turn,
        }
    }

    /// `ns`'s cookie as the kernel's programs see it, learned the way the
    /// agent learns it but independently of the agent under test.
    fn cookie(&mut self, ns: &NetNs) -> u64 {
        let parent = self.cgroup.path().to_owned();
        self.probe
            .get_or_insert_with(|| {
                CookieProbe::start(netns_datapath::EBPF_OBJECT, &parent)
                    .expect("start a cookie probe")
            })
            .cookie(ns)
            .expect("learn a netns cookie")
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    fn bpffs(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn start(&mut self, extra: &[&str]) {
        // A fast resync unless the test sets its own.
        let resync: &[&str] = if extra.contains(&"--resync-secs") {
            &[]
        } else {
            &["--resync-secs", "1"]
        };
        let mut cmd = run_command(AGENT, &self.dir, self.cgroup.path(), self.metrics);
        cmd.args(resync)
            .args(extra)
            // A file, not a pipe: a full pipe would stall the agent's logging.
            .stdout(Stdio::from(
                std::fs::File::create(self.dir.join("agent.out")).unwrap(),
            ));
        // Each start's log on its own.
        let log = self.dir.join("agent.log");
        let _ = std::fs::remove_file(&log);
        self.agent = Some(Running::start(cmd, &log, self.metrics, WAIT));
    }

    /// A GET on the agent's HTTP port: the whole response, or "" if none.
    fn http(&self, path: &str) -> String {
        let Ok(mut conn) = TcpStream::connect_timeout(&self.metrics, Duration::from_millis(200))
        else {
            return String::new();
        };
        let _ = write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let mut response = String::new();
        let _ = conn.read_to_string(&mut response);
        response
    }

    /// What the control socket answers to one raw request line.
    fn ask(&self, request: &[u8]) -> String {
        let mut conn = UnixStream::connect(self.socket()).expect("connect to the control socket");
        conn.set_read_timeout(Some(WAIT)).unwrap();
        // A busy agent may answer and close before the request is written.
        let _ = conn.write_all(request);
        let mut reply = String::new();
        let _ = conn.read_to_string(&mut reply);
        reply
    }

    fn status(&self) -> Status {
        let out = Command::new(AGENT)
            .args(["status", "--json", "--control-socket"])
            .arg(self.socket())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Adds a pod namespace named `name`, with `addr` on an interface of its own.
    fn add_pod(&self, name: &str, addr: Option<&str>) -> NetNs {
        let ns = NetNs::create_at(&self.netns_dir().join(name)).unwrap();
        if let Some(addr) = addr {
            add_address(&ns, addr);
        }
        ns
    }

    /// SIGTERM, then the agent's exit status and how long it took.
    fn stop(&mut self) -> (std::process::ExitStatus, Duration, String) {
        self.signal(nix::sys::signal::Signal::SIGTERM)
    }

    /// `signal` to the agent, then its exit status and how long it took.
    fn signal(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> (std::process::ExitStatus, Duration, String) {
        let (status, took) = self.agent.take().expect("agent running").signal(signal);
        let logs = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        (status, took, logs)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Only the process this fixture started, by its PID.
        drop(self.agent.take());
        if std::thread::panicking() {
            // What the agent said, for a failure seen only in a guest.
            let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "agent log (last {} lines):\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        let _ = netns_datapath::cleanup(&self.bpffs());
        if let Ok(entries) = std::fs::read_dir(self.netns_dir()) {
            for entry in entries.flatten() {
                let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn add_address(ns: &NetNs, addr: &str) {
    let path = ns.path().display().to_string();
    // A veth pair inside the pod (the kernel here has no dummy driver).
    let dev = format!("v{}", addr.rsplit('.').next().unwrap());
    let peer = format!("{dev}p");
    for args in [
        vec!["link", "add", &dev, "type", "veth", "peer", "name", &peer],
        vec!["addr", "add", &format!("{addr}/32"), "dev", &dev],
        vec!["link", "set", &dev, "up"],
    ] {
        let status = Command::new("nsenter")
            .arg(format!("--net={path}"))
            .arg("ip")
            .args(&args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?} in {path}");
    }
}

/// No pod of `status` has a sidecar: each says so (from the kernel's socket
/// table), and `/metrics` has its 0 series. The junk is listed as not
/// meshed, each with its reason.
fn assert_no_sidecar_reported(status: &Status, metrics: &str) {
    for junk in ["a-regular-file", "dangling", "uts-namespace"] {
        assert!(
            status
                .not_meshed
                .iter()
                .any(|n| n.path.ends_with(junk) && !n.reason.is_empty()),
            "{junk} listed with its reason: {:?}",
            status.not_meshed
        );
    }
    assert!(
        status.pods.iter().all(|p| p.sidecar.contains("never seen")),
        "{:?}",
        status.pods
    );
    for pod in &status.pods {
        let series = format!(
            "netns_agent_pod_sidecar_listening{{pod=\"{}\"}} 0",
            pod.name
        );
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }
}

fn wait_for(what: &str, done: impl FnMut() -> bool) {
    netns_tests::wait_until(what, WAIT, done);
}

/// The netns cookies in `MESHED_NETNS`, as the kernel has them.
fn meshed_cookies(fixture: &Fixture) -> Vec<u64> {
    netns_tests::pins::meshed_cookies(&fixture.bpffs())
}

/// IPv4 pod addresses in `LOCAL_POD_IPS4` with their cookies.
fn local_pods(fixture: &Fixture) -> Vec<(Ipv4Addr, u64)> {
    netns_tests::pins::local_pods(&fixture.bpffs())
        .into_iter()
        .filter_map(|(addr, cookie)| match addr {
            std::net::IpAddr::V4(v4) => Some((v4, cookie)),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

/// Binds the namespace of pod `name` to a second file, `<name>-alias`, and
/// waits until the agent (logging at debug) has seen it.
/// Each address change is one piece of pod work (or a few: one per netlink
/// message), never a flood: the watch reports news once, not again and
/// again until the worker reads it (level-triggered, two changes made
/// 2,599 re-reads on the host and kept an emulated guest's worker busy for
/// over a minute).
fn assert_address_work_is_not_a_flood(f: &Fixture) {
    std::thread::sleep(Duration::from_millis(500));
    let work = f.status().work;
    let addresses = work
        .iter()
        .find(|(k, _)| k == "addresses")
        .map_or(0, |(_, n)| *n);
    assert!(
        (1..=8).contains(&addresses),
        "two address changes took {addresses} re-reads: {work:?}"
    );
}

fn bind_alias(f: &Fixture, name: &str) -> PathBuf {
    let alias = f.netns_dir().join(format!("{name}-alias"));
    std::fs::write(&alias, b"").unwrap();
    nix::mount::mount(
        Some(&f.netns_dir().join(name)),
        &alias,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind a pod's namespace to a second name");
    wait_for("the alias to be seen", || {
        std::fs::read_to_string(f.dir.join("agent.log"))
            .is_ok_and(|l| l.contains("already meshed under another path"))
    });
    alias
}

#[test]
fn root_agent_meshes_pods_from_a_directory_and_undoes_exactly_their_entries() {
    let mut f = Fixture::new("pods");
    // Present before the agent starts: a pod too.
    let early = f.add_pod("early", Some("198.18.7.1"));
    // Debug: the alias below is told in a debug line.
    f.start(&["--log-level", "netns_agent=debug"]);
    let early_cookie = f.cookie(&early);
    wait_for("the early pod", || meshed_cookies(&f) == [early_cookie]);
    assert_eq!(
        local_pods(&f),
        [(Ipv4Addr::new(198, 18, 7, 1), early_cookie)]
    );

    // Junk in the directory: skipped, and the agent keeps serving.
    std::fs::write(f.netns_dir().join("a-regular-file"), b"not a namespace").unwrap();
    std::os::unix::fs::symlink("/nonexistent/netns", f.netns_dir().join("dangling")).unwrap();
    let uts = f.netns_dir().join("uts-namespace");
    std::fs::write(&uts, b"").unwrap();
    nix::mount::mount(
        Some("/proc/self/ns/uts"),
        &uts,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind a UTS namespace file (a namespace of another type)");

    // A pod added while it runs, with an address.
    let late = f.add_pod("late", Some("198.18.7.2"));
    let late_cookie = f.cookie(&late);
    let mut both = vec![early_cookie, late_cookie];
    both.sort_unstable();
    wait_for("the late pod", || meshed_cookies(&f) == both);
    // An address that arrives after the pod (a CNI plugin's, later).
    add_address(&early, "198.18.7.3");
    wait_for("the early pod's new address", || local_pods(&f).len() == 3);
    assert_address_work_is_not_a_flood(&f);
    assert_eq!(
        local_pods(&f),
        [
            (Ipv4Addr::new(198, 18, 7, 1), early_cookie),
            (Ipv4Addr::new(198, 18, 7, 2), late_cookie),
            (Ipv4Addr::new(198, 18, 7, 3), early_cookie),
        ]
    );

    // A second name of the late pod's namespace: one pod, meshed once.
    let alias = bind_alias(&f, "late");

    // status agrees with the kernel.
    let status = f.status();
    assert!(status.ready);
    let mut ids: Vec<u32> = status.programs.iter().map(|p| p.id).collect();
    let mut attached = cgroup_program_ids(f.cgroup.path());
    ids.sort_unstable();
    attached.sort_unstable();
    assert_eq!(
        ids, attached,
        "status lists what BPF_PROG_QUERY says is attached"
    );
    assert!(
        status.pods.iter().all(|p| p.inbound),
        "every pod's inbound link pinned: {:?}",
        status.pods
    );
    let mut pods: Vec<(String, u64)> = status
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.cookie))
        .collect();
    pods.sort();
    assert_eq!(
        pods,
        [
            ("early".to_owned(), early_cookie),
            ("late".to_owned(), late_cookie)
        ]
    );
    let skipped = status
        .errors
        .iter()
        .find(|(k, _)| k == "not_a_namespace")
        .map_or(0, |(_, v)| *v);
    assert!(skipped >= 3, "junk counted: {:?}", status.errors);
    let metrics = f.http("/metrics");
    assert!(metrics.contains("netns_agent_pods_managed 2"), "{metrics}");
    assert_no_sidecar_reported(&status, &metrics);

    // The late pod goes (both names): exactly its entries go with it.
    // Waited for as a whole: the agent removes them one map at a time.
    nix::mount::umount2(&alias, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&alias).unwrap();
    NetNs::delete_at(&f.netns_dir().join("late")).unwrap();
    let early_only = [
        (Ipv4Addr::new(198, 18, 7, 1), early_cookie),
        (Ipv4Addr::new(198, 18, 7, 3), early_cookie),
    ];
    wait_for("the late pod's removal", || {
        meshed_cookies(&f) == [early_cookie] && local_pods(&f) == early_only
    });

    let (exit, took, logs) = f.stop();
    assert!(exit.success(), "{exit}: {logs}");
    // How long it took is printed, not asserted (a loaded emulated guest is
    // slow); an agent that ignores the signal fails in `stop` itself.
    println!("stopped in {took:?}");
    assert!(
        cgroup_program_ids(f.cgroup.path()).is_empty(),
        "nothing attached after SIGTERM"
    );
    assert!(!f.bpffs().join("maps").exists(), "pins removed");
    assert!(!f.socket().exists(), "control socket removed");
    assert!(logs.contains("not a network namespace"), "{logs}");
}

#[test]
fn root_agent_control_socket_refuses_bad_requests_and_keeps_serving() {
    let mut f = Fixture::new("control");
    f.start(&[]);
    let reply = f.ask(b"this is not json\n");
    assert!(reply.contains("\"error\":\"malformed request"), "{reply}");
    let reply = f.ask(b"{\"op\":\"reboot\"}\n");
    assert!(reply.contains("unknown op"), "{reply}");
    let mut huge = vec![b'x'; netns_agent::control::MAX_REQUEST + 10];
    huge.push(b'\n');
    let reply = f.ask(&huge);
    assert!(
        reply.contains(&format!(
            "larger than {} bytes",
            netns_agent::control::MAX_REQUEST
        )),
        "{reply}"
    );
    // At most MAX_IN_FLIGHT requests at once: idle clients fill the slots,
    // the next one is told "busy" at once; when they go, service resumes.
    let idle: Vec<UnixStream> = (0..netns_agent::control::MAX_IN_FLIGHT)
        .map(|_| UnixStream::connect(f.socket()).unwrap())
        .collect();
    wait_for("a busy answer", || {
        f.ask(b"{\"op\":\"status\"}\n").contains("busy")
    });
    drop(idle);
    wait_for("service after the idle clients left", || {
        f.ask(b"{\"op\":\"status\"}\n").contains("\"ready\"")
    });
    // CNI requests to an agent of another pod source are refused, and say why.
    let reply = f.ask(b"{\"op\":\"cni_add\",\"container_id\":\"c1\",\"netns\":\"/x\"}\n");
    assert!(reply.contains("--pod-source cni"), "{reply}");
    // A client that connects and goes away mid-request.
    let mut conn = UnixStream::connect(f.socket()).unwrap();
    conn.write_all(b"{\"op\":").unwrap();
    drop(conn);
    // Not root: the socket's mode (0600) refuses the connection itself.
    let mode = std::fs::metadata(f.socket())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
    let out = {
        use std::os::unix::process::CommandExt as _;
        Command::new(AGENT)
            .args(["status", "--control-socket"])
            .arg(f.socket())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs root"),
        "{out:?}"
    );
    // Still serving.
    assert!(f.status().ready);
    // A reader that wants one line: status exits quietly, no broken-pipe panic.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{AGENT} status --json --control-socket {} | head -1",
            f.socket().display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&piped.stdout).trim(), "{");
    assert_eq!(String::from_utf8_lossy(&piped.stderr), "", "{piped:?}");
    // A reader gone before status writes at all: its stdout is a pipe whose
    // read end is already closed, so the write meets EPIPE.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(read_end);
    let gone = Command::new(AGENT)
        .args(["status", "--json", "--control-socket"])
        .arg(f.socket())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(gone.status.success(), "{gone:?}");
    assert_eq!(String::from_utf8_lossy(&gone.stderr), "", "{gone:?}");
    // The socket file removed under the agent: nobody can reach it, so it is
    // not ready, and says why.
    std::fs::remove_file(f.socket()).unwrap();
    wait_for("not ready without its socket", || {
        f.http("/readyz").starts_with("HTTP/1.1 503")
    });
    let (exit, _, logs) = f.stop();
    assert!(exit.success(), "{logs}");
    assert!(
        logs.contains("control socket"),
        "the reason is logged: {logs}"
    );
}

#[test]
fn root_agent_keep_state_leaves_the_data_path_and_cleanup_removes_it() {
    let mut f = Fixture::new("keep");
    f.start(&["--keep-state"]);
    let ids: Vec<u32> = f.status().programs.iter().map(|p| p.id).collect();
    let (exit, _, logs) = f.stop();
    assert!(exit.success(), "{logs}");
    let attached = cgroup_program_ids(f.cgroup.path());
    assert!(
        ids.iter().all(|id| attached.contains(id)),
        "still attached: {attached:?} of {ids:?}"
    );
    // With no agent running, status lists the pins.
    let out = Command::new(AGENT)
        .args(["status", "--control-socket"])
        .arg(f.socket())
        .arg("--bpffs")
        .arg(f.bpffs())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no agent running") && text.contains("links/connect4"),
        "{text}"
    );

    let out = Command::new(AGENT)
        .args(["cleanup", "--bpffs"])
        .arg(f.bpffs())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("detached and unpinned link"), "{text}");
    assert!(
        cgroup_program_ids(f.cgroup.path()).is_empty(),
        "cleanup detached everything"
    );
    let again = Command::new(AGENT)
        .args(["cleanup", "--bpffs"])
        .arg(f.bpffs())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to clean up"));
}

#[test]
fn root_agent_bad_flags_get_one_line_errors_naming_the_flag() {
    require_root();
    let root = cgroup2_mount().unwrap().display().to_string();
    let cases: [(&[&str], &str); 3] = [
        (
            &["run", "--exclude-cidr", "198.18.0.0/99"],
            "--exclude-cidr",
        ),
        (&["run", "--metrics-addr", "nowhere"], "--metrics-addr"),
        (
            &["run", "--cgroup", &root, "--bpffs", "/tmp/never"],
            "cgroup v2 root",
        ),
    ];
    for (args, named) in cases {
        let out = Command::new(AGENT).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(!Path::new("/tmp/never/maps").exists());
    }
}

/// `exec` runs a command in the pod's namespace and the captured cgroup, as
/// the kernel reports them to the command itself.
#[test]
fn root_agent_exec_runs_a_command_inside_the_pod_and_the_captured_cgroup() {
    let mut f = Fixture::new("exec");
    let pod = f.add_pod("app", None);
    f.start(&[]);
    let out = Command::new(AGENT)
        .arg("exec")
        .arg("--cgroup")
        .arg(f.cgroup.path())
        .arg("--netns-dir")
        .arg(f.netns_dir())
        .args([
            "app",
            "--",
            "sh",
            "-c",
            "readlink /proc/self/ns/net; cat /proc/self/cgroup",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("net:[{}]", pod.id().ino)),
        "{stdout}"
    );
    let cgroup_name = f
        .cgroup
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(stdout.contains(&cgroup_name), "{stdout}");
    let out = Command::new(AGENT)
        .args(["exec", "--netns-dir"])
        .arg(f.netns_dir())
        .args(["no-such-pod", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-pod"),
        "{out:?}"
    );
    let (exit, _, logs) = f.stop();
    assert!(exit.success(), "{logs}");
}

fn map_id(fixture: &Fixture, map: &str) -> u32 {
    netns_tests::pins::map(&fixture.bpffs(), map)
        .info()
        .unwrap()
        .id()
}

/// Maps pinned by a build with another layout are not reused: the restarted
/// agent recreates them and rebuilds their entries from the pods that exist;
/// maps of this layout are reused, entries and all.
#[test]
fn root_agent_reuses_maps_of_its_layout_and_recreates_others() {
    let mut f = Fixture::new("layout");
    let pod = f.add_pod("p", Some("198.18.7.9"));
    f.start(&["--keep-state"]);
    let cookie = f.cookie(&pod);
    wait_for("the pod", || meshed_cookies(&f) == [cookie]);
    let first = map_id(&f, names::MESHED_NETNS);
    f.stop();

    f.start(&["--keep-state"]);
    assert_eq!(
        map_id(&f, names::MESHED_NETNS),
        first,
        "same layout: the map is reused"
    );
    assert_eq!(meshed_cookies(&f), [cookie]);
    f.stop();

    // As if pinned by an older build: its layout marker is another one.
    let markers: Vec<PathBuf> = std::fs::read_dir(f.bpffs())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("layout-v"))
        })
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    std::fs::remove_dir(&markers[0]).unwrap();
    std::fs::create_dir(f.bpffs().join("layout-v0")).unwrap();
    f.start(&["--keep-state"]);
    assert_ne!(
        map_id(&f, names::MESHED_NETNS),
        first,
        "another layout: the map is recreated"
    );
    wait_for("the rebuilt entries", || meshed_cookies(&f) == [cookie]);
    assert_eq!(local_pods(&f), [(Ipv4Addr::new(198, 18, 7, 9), cookie)]);
    f.stop();
    // cleanup removes every layout marker, an older build's too.
    let out = Command::new(AGENT)
        .args(["cleanup", "--bpffs"])
        .arg(f.bpffs())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("layout-v0"),
        "{out:?}"
    );
    assert!(!f.bpffs().exists(), "pin directory gone");
}

/// The main job (`./x run` is `netns-agent run --demo-pod`): within seconds
/// the demo pod is meshed and its app's connections are captured; Ctrl-C
/// (SIGINT) leaves nothing behind.
#[test]
fn root_agent_demo_pod_is_captured_and_ctrl_c_leaves_nothing_behind() {
    let mut f = Fixture::new("demo");
    f.start(&["--demo-pod"]);
    let out = f.dir.join("agent.out");
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&out).is_ok_and(|o| o.contains("captured: the sidecar")) {
        assert!(
            Instant::now() < deadline,
            "no captured request of the demo pod:\n{}\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(f.dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let printed = std::fs::read_to_string(&out).unwrap();
    assert!(
        printed.contains("SO_ORIGINAL_DST = 198.18.96.10:80"),
        "{printed}"
    );
    assert!(!printed.contains("NOT captured"), "{printed}");
    assert!(f.netns_dir().join("netns-demo-pod").exists());
    let (exit, took, logs) = f.signal(nix::sys::signal::Signal::SIGINT);
    assert!(exit.success(), "{exit}: {logs}");
    println!("stopped in {took:?}");
    assert!(
        cgroup_program_ids(f.cgroup.path()).is_empty(),
        "nothing attached"
    );
    assert!(!f.bpffs().join("links").exists(), "pins removed");
    assert!(
        !f.netns_dir().join("netns-demo-pod").exists(),
        "demo pod deleted"
    );
    // The demo pod's processes ended with the agent: the cgroup is empty.
    let procs = std::fs::read_to_string(f.cgroup.path().join("cgroup.procs")).unwrap();
    assert!(procs.trim().is_empty(), "left in the cgroup: {procs}");
}

/// The agent's own IP sockets carry the configured bypass mark (read back
/// with `ss`, the kernel's view), also after the agent's process has joined
/// the captured cgroup, where the data path leaves it alone: it keeps
/// serving, and nothing of its is redirected. `--log-format json` writes one
/// JSON object per line, naming the pod (path and namespace inode).
#[test]
fn root_agent_sockets_carry_the_bypass_mark_and_json_logs_name_the_pod() {
    const MARK: u32 = 0x1092;
    let mut f = Fixture::new("bypass");
    f.start(&["--log-format", "json", "--bypass-mark", &MARK.to_string()]);
    let pid = f.agent.as_ref().unwrap().id();
    f.cgroup.add_process(pid).unwrap();

    let pod = f.add_pod("marked", Some("198.18.7.9"));
    let cookie = f.cookie(&pod);
    wait_for("the pod", || meshed_cookies(&f) == [cookie]);
    for _ in 0..3 {
        assert!(f.http("/metrics").starts_with("HTTP/1.1 200"));
        assert!(f.status().ready);
    }
    // Every IP socket of the agent's process, its mark asked of the kernel
    // on a duplicate of the agent's own descriptor (pidfd_getfd).
    let marks = ip_socket_marks(pid);
    assert!(!marks.is_empty(), "the agent's metrics listener");
    for (fd, mark) in &marks {
        assert_eq!(*mark, MARK, "agent socket fd {fd} is not marked: {marks:?}");
    }
    let counters = f.status().counters;
    let count = |name: &str| counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(count("redirected_outbound"), Some(0), "{counters:?}");
    assert_eq!(count("sidecar_not_listening"), Some(0), "{counters:?}");

    let (exit, _, logs) = f.stop();
    assert!(exit.success(), "{logs}");
    let path = f.netns_dir().join("marked").display().to_string();
    let inode = pod.id().ino;
    let mut meshed_line = false;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let fields = &value["fields"];
        if fields["message"] == "pod meshed" {
            // The pod is named once, by the span its work logs under.
            assert_eq!(value["span"]["name"], "pod", "{line}");
            assert_eq!(value["span"]["pod"], path.as_str(), "{line}");
            assert_eq!(fields["netns_inode"], inode, "{line}");
            meshed_line = true;
        }
    }
    assert!(meshed_line, "a JSON 'pod meshed' line: {logs}");
}

/// The `SO_MARK` of every IPv4/IPv6 socket process `pid` holds, by its
/// descriptor number, read on duplicates taken with `pidfd_getfd` (5.6+).
fn ip_socket_marks(pid: u32) -> Vec<(i32, u32)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let pid = i32::try_from(pid).unwrap();
    // SAFETY: plain syscalls; a returned descriptor is owned at once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: pidfd_open returned a new descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(pidfd).unwrap()) };
    let mut marks = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: as above.
        let dup = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                fd,
                0,
            )
        };
        if dup < 0 {
            continue; // closed meanwhile
        }
        // SAFETY: pidfd_getfd returned a new descriptor.
        let dup = unsafe { OwnedFd::from_raw_fd(i32::try_from(dup).unwrap()) };
        let socket = socket2::SockRef::from(&dup);
        let ip = socket
            .domain()
            .is_ok_and(|d| d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6);
        if ip {
            marks.push((fd, netns_core::mark(&dup).unwrap()));
        }
    }
    marks
}

/// A burst of 1,000 namespaces created `ip netns add`-style (file, then bind
/// mount) while the agent is stopped (SIGSTOP; it cannot read its events):
/// after SIGCONT every one is meshed, none lost. In a VM guest (a throw-away
/// kernel) the inotify queue is first shrunk to 64 events, so the burst
/// overflows it and the agent must list the directory again (its log says
/// so); on the host the machine's setting is left alone.
#[test]
fn root_agent_meshes_every_pod_of_a_burst_of_1000() {
    const PODS: usize = 1000;
    const QUEUE: &str = "/proc/sys/fs/inotify/max_queued_events";
    // No periodic listing during the test: only inotify (and the listing an
    // overflow triggers) can deliver the pods.
    const NO_RESYNC: &[&str] = &["--resync-secs", "3600"];
    let mut f = Fixture::alone("burst");
    let overflow = netns_tests::in_vm();
    if overflow {
        // Read when an inotify instance is made: only the agent's gets it.
        let usual = std::fs::read_to_string(QUEUE).unwrap();
        std::fs::write(QUEUE, "64").expect("shrink the guest's inotify queue");
        f.start(NO_RESYNC);
        std::fs::write(QUEUE, usual.trim()).unwrap();
    } else {
        f.start(NO_RESYNC);
    }
    // The agent is stopped while the burst lands, so that every event waits
    // in its queue (and, in a guest, overflows it). The handles are not kept
    // (the bind mounts keep the namespaces), only their cookies.
    let agent = nix::unistd::Pid::from_raw(i32::try_from(f.agent.as_ref().unwrap().id()).unwrap());
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let dir = f.netns_dir();
    let mut expected: Vec<u64> = (0..PODS)
        .map(|i| {
            let ns = NetNs::create_at(&dir.join(format!("burst-{i}"))).unwrap();
            f.cookie(&ns)
        })
        .collect();
    expected.sort_unstable();
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while meshed_cookies(&f) != expected {
        assert!(
            Instant::now() < deadline,
            "{} of {PODS} pods meshed",
            meshed_cookies(&f).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = f.status();
    assert_eq!(status.pods.len(), PODS);
    let (exit, _, logs) = f.stop();
    assert!(exit.success(), "{logs}");
    if overflow {
        assert!(
            logs.contains("inotify queue overflowed"),
            "the burst overflowed the queue: {logs}"
        );
    }
}

/// Every file under `dir`, by name, sorted.
fn pin_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The `--bpffs` directories emptied under a running agent: the kernel drops
/// the programs only the pins held (7 of the 8 cgroup programs, the pod's
/// inbound link). Within a second the agent sees it in what the kernel says,
/// attaches them again, pins everything again, counts it, and is ready.
#[test]
fn root_agent_repairs_what_the_kernel_lost_when_its_pins_are_removed() {
    let mut f = Fixture::new("repair");
    let pod = f.add_pod("pod", Some("198.18.7.9"));
    f.start(&[]);
    let cookie = f.cookie(&pod);
    wait_for("the pod", || meshed_cookies(&f) == [cookie]);
    let distinct = |mut ids: Vec<u32>| {
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    assert_eq!(distinct(cgroup_program_ids(f.cgroup.path())), 8);
    let before: Vec<Vec<String>> = ["links", "inbound", "maps"]
        .iter()
        .map(|sub| pin_names(&f.bpffs().join(sub)))
        .collect();
    for sub in ["links", "inbound", "maps"] {
        for name in pin_names(&f.bpffs().join(sub)) {
            std::fs::remove_file(f.bpffs().join(sub).join(name)).unwrap();
        }
    }
    wait_for("the programs attached again (BPF_PROG_QUERY)", || {
        distinct(cgroup_program_ids(f.cgroup.path())) == 8
            && netns_datapath::attached_inbound_ids(&pod).is_ok_and(|ids| ids.len() == 1)
    });
    wait_for("every pin back", || {
        ["links", "inbound", "maps"]
            .iter()
            .map(|sub| pin_names(&f.bpffs().join(sub)))
            .collect::<Vec<_>>()
            == before
    });
    wait_for("ready again", || {
        f.http("/readyz").starts_with("HTTP/1.1 200")
    });
    let status = f.status();
    assert!(status.problems.is_empty(), "{:?}", status.problems);
    assert!(
        status
            .errors
            .iter()
            .any(|(kind, n)| kind == "kernel_gap" && *n > 0),
        "the repair is counted: {:?}",
        status.errors
    );
    assert_eq!(meshed_cookies(&f), [cookie], "the maps kept their entries");
}

/// `--netns-dir` removed and replaced by a regular file while the agent
/// runs: it stays up (healthy, not ready, the cause logged), and once the
/// file goes it makes the directory again, watches it, and meshes a pod
/// that appears there.
#[test]
fn root_agent_waits_out_a_removed_netns_dir_and_watches_the_new_one() {
    let mut f = Fixture::new("netns-dir");
    f.start(&[]);
    let file = f.dir.join("not-a-directory");
    std::fs::write(&file, b"a regular file where the netns dir was").unwrap();
    std::fs::remove_dir(f.netns_dir()).unwrap();
    std::fs::rename(&file, f.netns_dir()).unwrap();
    wait_for("not ready", || {
        f.http("/readyz").starts_with("HTTP/1.1 503")
    });
    assert!(f.http("/healthz").starts_with("HTTP/1.1 200"), "still up");
    wait_for("the failure logged with its cause", || {
        std::fs::read_to_string(f.dir.join("agent.log")).is_ok_and(|logs| {
            logs.contains("the pod source failed") && logs.contains("File exists")
        })
    });
    std::fs::remove_file(f.netns_dir()).unwrap();
    wait_for("ready again", || {
        f.http("/readyz").starts_with("HTTP/1.1 200")
    });
    let pod = f.add_pod("after", None);
    // A symlink out of the directory to the host's namespace: never followed.
    std::os::unix::fs::symlink("/proc/1/ns/net", f.netns_dir().join("host")).unwrap();
    let cookie = f.cookie(&pod);
    wait_for("the pod in the new directory", || {
        meshed_cookies(&f) == [cookie]
    });
    wait_for("the symlink skipped", || {
        std::fs::read_to_string(f.dir.join("agent.log"))
            .is_ok_and(|logs| logs.contains("a symlink: not followed"))
    });
    assert_eq!(meshed_cookies(&f), [cookie], "only the pod is meshed");
}

/// SIGINT (20 times) while pods come and go in the watched directory: each
/// time the agent stops with exit 0, no panic, its programs detached; the
/// slowest exit is printed.
#[test]
fn root_agent_sigint_under_pod_churn_always_stops_cleanly() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut f = Fixture::new("sigint");
    // 20 agents attach and detach while a thread churns namespaces in the
    // kernel: keep the static branches from switching (see Keeper).
    let _keeper = netns_tests::agent::Keeper::attach(&f.dir);
    let mut slowest = Duration::ZERO;
    for trial in 0..20 {
        f.start(&[]);
        let stop = AtomicBool::new(false);
        let (status, took, logs) = std::thread::scope(|s| {
            let dir = f.netns_dir();
            let stop = &stop;
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let path = dir.join(format!("churn-{trial}-{i}"));
                    if NetNs::create_at(&path).is_ok() {
                        let _ = NetNs::delete_at(&path);
                    }
                    i += 1;
                }
            });
            let _stop = netns_tests::StopOnDrop(stop);
            std::thread::sleep(Duration::from_millis(100));
            f.signal(nix::sys::signal::Signal::SIGINT)
        });
        slowest = slowest.max(took);
        assert_eq!(
            status.code(),
            Some(0),
            "trial {trial}: {status:?}; logs:\n{logs}"
        );
        assert!(!logs.contains("panicked"), "trial {trial}: {logs}");
        assert_eq!(
            cgroup_program_ids(f.cgroup.path()),
            Vec::<u32>::new(),
            "trial {trial}: detached"
        );
    }
    eprintln!("SIGINT under pod churn: 20 of 20 clean, slowest exit {slowest:?}");
    assert!(slowest < Duration::from_secs(5), "an exit took {slowest:?}");
}
