//! A throw-away mesh on the real kernel: three namespaces joined by veths, a
//! child cgroup with the data path attached, and helper processes (meshtest)
//! in the roles of app, sidecar and service. Everything is removed on drop,
//! also when the test fails.
//!
//! ```text
//!  svc (198.18.0.2, fd00:77::2) ──veth── pod A (198.18.0.1, fd00:77::1)
//!                                       pod A (198.18.1.1, fd00:77:1::1) ──veth── pod B (198.18.1.2, fd00:77:1::2)
//! ```
//! Pods A and B are in the mesh; svc is a service outside it. Traffic only
//! ever goes to loopback or to these addresses, inside these namespaces.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use netns_core::{NetNs, TempNetNs};
use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};
use netns_datapath::{DataPath, DataPathConfig};
use netns_ebpf::MeshSettings;

/// Pod A's address on the link to the service.
pub const POD_A: &str = "198.18.0.1";
/// The service's address.
pub const SVC: &str = "198.18.0.2";
/// Pod A's address on the link to pod B.
pub const POD_A_TO_B: &str = "198.18.1.1";
/// Pod B's address.
pub const POD_B: &str = "198.18.1.2";
/// The IPv6 addresses, in the same order.
pub const POD_A6: &str = "fd00:77::1";
/// The service's IPv6 address.
pub const SVC6: &str = "fd00:77::2";
/// Pod A's IPv6 address on the link to pod B.
pub const POD_A_TO_B6: &str = "fd00:77:1::1";
/// Pod B's IPv6 address.
pub const POD_B6: &str = "fd00:77:1::2";

/// Where a meshtest process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Pod A, inside the captured cgroup.
    PodA,
    /// Pod B, inside the captured cgroup.
    PodB,
    /// Pod A's namespace but outside the cgroup: never captured.
    PodAUncaptured,
    /// The service namespace, outside the cgroup.
    Svc,
}

/// The mesh. Fields drop in order: processes, data path, cgroup, namespaces.
#[derive(Debug)]
pub struct Mesh {
    meshtest: PathBuf,
    processes: Vec<Child>,
    /// The attached data path (`None` once a test detached it).
    pub datapath: Option<DataPath>,
    /// The captured cgroup.
    pub cgroup: ChildCgroup,
    /// Pod A.
    pub pod_a: TempNetNs,
    /// Pod B.
    pub pod_b: TempNetNs,
    /// The service outside the mesh.
    pub svc: TempNetNs,
    /// Pod A's netns cookie, as the data path's probe learned it.
    pub cookie_a: u64,
    /// Pod B's netns cookie.
    pub cookie_b: u64,
}

/// A running meshtest process with its output lines.
#[derive(Debug)]
pub struct Proc {
    pid: u32,
    lines: mpsc::Receiver<String>,
    stdin: Option<std::process::ChildStdin>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Proc {
    /// Waits up to `timeout` for a line that starts with `prefix`.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Writes one line to the process's standard input.
    pub fn send(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("stdin piped");
        writeln!(stdin, "{line}").expect("write to meshtest");
        stdin.flush().expect("flush meshtest stdin");
    }

    /// Collects the lines that arrived until now.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Mesh {
    /// Builds the mesh and attaches the data path with `settings`.
    /// `meshtest` is the helper binary (`env!("CARGO_BIN_EXE_meshtest")`).
    #[must_use]
    pub fn new(meshtest: &str, settings: MeshSettings) -> Mesh {
        Mesh::new_under(
            meshtest,
            settings,
            &cgroup2_mount().expect("cgroup v2 mounted"),
        )
    }

    /// [`Mesh::new`] with the captured cgroup made under `parent` (a cgroup v2
    /// directory): the benchmark keeps all its processes under one cgroup
    /// to read their CPU time.
    #[must_use]
    pub fn new_under(meshtest: &str, settings: MeshSettings, parent: &Path) -> Mesh {
        crate::require_root();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let pod_a = TempNetNs::new("mesh-a").expect("create pod A");
        let pod_b = TempNetNs::new("mesh-b").expect("create pod B");
        let svc = TempNetNs::new("mesh-svc").expect("create svc");
        let cgroup =
            ChildCgroup::create(parent, &format!("netns-mesh-{tag}")).expect("create test cgroup");
        let mut mesh = Mesh {
            meshtest: meshtest.into(),
            processes: Vec::new(),
            datapath: None,
            cgroup,
            pod_a,
            pod_b,
            svc,
            cookie_a: 0,
            cookie_b: 0,
        };
        mesh.wire();
        let config = DataPathConfig {
            cgroup: mesh.cgroup.path().to_owned(),
            pin_dir: PathBuf::from(format!("/tmp/netns-mesh-bpf-{tag}")),
            settings,
        };
        let mut datapath = DataPath::attach(netns_datapath::EBPF_OBJECT, &config)
            .unwrap_or_else(|e| panic!("attach the data path: {}", error_chain(&e)));
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        // Learned the way the agent learns them: on every kernel.
        let cookie = |datapath: &mut DataPath, ns: &NetNs| {
            datapath
                .netns_cookie(ns)
                .unwrap_or_else(|e| panic!("learn a pod's netns cookie: {}", error_chain(&e)))
        };
        mesh.cookie_a = cookie(&mut datapath, &mesh.pod_a);
        mesh.cookie_b = cookie(&mut datapath, &mesh.pod_b);
        datapath
            .add_pod(
                mesh.cookie_a,
                &ips(&[POD_A, POD_A_TO_B, POD_A6, POD_A_TO_B6]),
            )
            .unwrap();
        datapath
            .add_pod(mesh.cookie_b, &ips(&[POD_B, POD_B6]))
            .unwrap();
        mesh.datapath = Some(datapath);
        mesh
    }

    /// The attached data path.
    pub fn datapath(&mut self) -> &mut DataPath {
        self.datapath.as_mut().expect("data path attached")
    }

    fn wire(&self) {
        let (a, b, s) = (self.pod_a.name(), self.pod_b.name(), self.svc.name());
        for ns in [&self.pod_a, &self.pod_b, &self.svc] {
            ns.set_loopback_up().unwrap();
        }
        let script = [
            format!("-n {a} link add va-svc type veth peer name vsvc netns {s}"),
            format!("-n {a} link add va-b type veth peer name vb netns {b}"),
            format!("-n {a} addr add {POD_A}/24 dev va-svc"),
            format!("-n {a} addr add {POD_A6}/64 dev va-svc nodad"),
            format!("-n {a} addr add {POD_A_TO_B}/24 dev va-b"),
            format!("-n {a} addr add {POD_A_TO_B6}/64 dev va-b nodad"),
            format!("-n {s} addr add {SVC}/24 dev vsvc"),
            format!("-n {s} addr add {SVC6}/64 dev vsvc nodad"),
            format!("-n {b} addr add {POD_B}/24 dev vb"),
            format!("-n {b} addr add {POD_B6}/64 dev vb nodad"),
            format!("-n {a} link set va-svc up"),
            format!("-n {a} link set va-b up"),
            format!("-n {s} link set vsvc up"),
            format!("-n {b} link set vb up"),
        ];
        for line in script {
            let status = Command::new("ip")
                .args(line.split_whitespace())
                .status()
                .expect("run ip (iproute2, installed by ./x test)");
            assert!(status.success(), "ip {line} failed");
        }
    }

    fn place_args(&self, place: Place) -> Vec<String> {
        let (ns, captured): (&NetNs, bool) = match place {
            Place::PodA => (&self.pod_a, true),
            Place::PodB => (&self.pod_b, true),
            Place::PodAUncaptured => (&self.pod_a, false),
            Place::Svc => (&self.svc, false),
        };
        let mut args = vec!["--netns".to_owned(), ns.path().display().to_string()];
        if captured {
            args.push("--cgroup".into());
            args.push(self.cgroup.path().display().to_string());
        }
        args
    }

    /// The meshtest command line for `role` in `place`, as `uid` (not started).
    #[must_use]
    pub fn command(&self, place: Place, uid: Option<u32>, role: &[&str]) -> Command {
        let mut cmd = Command::new(&self.meshtest);
        cmd.args(self.place_args(place));
        if let Some(uid) = uid {
            cmd.args(["--uid", &uid.to_string()]);
        }
        cmd.args(role);
        cmd
    }

    /// Starts a long-running role (sidecar, serve) and waits for its "ready".
    pub fn start(&mut self, place: Place, uid: Option<u32>, role: &[&str]) -> Proc {
        self.start_until(place, uid, role, "ready")
    }

    /// Starts a role and waits for its first line starting with `first`.
    pub fn start_until(
        &mut self,
        place: Place,
        uid: Option<u32>,
        role: &[&str],
        first: &str,
    ) -> Proc {
        let mut child = self
            .command(place, uid, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start meshtest");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let pid = child.id();
        self.processes.push(child);
        let mut proc = Proc {
            pid,
            lines: crate::lines_of(stdout),
            stdin,
            seen: Vec::new(),
        };
        assert!(
            proc.wait_for(first, Duration::from_secs(10)).is_some(),
            "meshtest {role:?} did not become ready: {:?}",
            proc.seen
        );
        proc
    }

    /// Ends a process this mesh started (by its PID) and waits for it.
    pub fn stop(&mut self, proc: Proc) {
        if let Some(i) = self.processes.iter().position(|c| c.id() == proc.pid) {
            let mut child = self.processes.swap_remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(proc);
    }

    /// The usual pair: a service on `SVC:8080` and pod A's sidecar (uid 1337)
    /// on `127.0.0.1:15001`. Returns them and the service address.
    pub fn start_service_and_sidecar(&mut self) -> (Proc, Proc, String) {
        let target = format!("{SVC}:8080");
        let service = self.start(Place::Svc, None, &["serve", "--listen", &target]);
        let sidecar = self.start(
            Place::PodA,
            Some(1337),
            &["sidecar", "--listen", "127.0.0.1:15001"],
        );
        (service, sidecar, target)
    }

    /// Runs one blocking `client` in pod A (captured) to `target` with
    /// `args` (e.g. `--size`), and checks what every dial must show: bytes
    /// intact, and `getpeername` equal to `target`. Returns the client's result
    /// line and the sidecar's next `accepted` line, if one comes within `wait`.
    pub fn dial(
        &self,
        sidecar: &mut Proc,
        target: &str,
        args: &[&str],
        wait: Duration,
    ) -> (String, Option<String>) {
        self.dial_as(Place::PodA, None, sidecar, target, args, wait)
    }

    /// [`Mesh::dial`] from `place`, as `uid` (`None`: root).
    pub fn dial_as(
        &self,
        place: Place,
        uid: Option<u32>,
        sidecar: &mut Proc,
        target: &str,
        args: &[&str],
        wait: Duration,
    ) -> (String, Option<String>) {
        let mut role = vec!["client", "--connect", target];
        role.extend_from_slice(args);
        let out = self.run(place, uid, &role);
        let done = out
            .into_iter()
            .find(|l| l.starts_with("done"))
            .expect("client result");
        assert_eq!(
            field(&done, "ok"),
            Some("true"),
            "{target} {args:?}: {done}"
        );
        assert_eq!(field(&done, "peer"), Some(target), "getpeername: {done}");
        let accepted = sidecar.wait_for("accepted", wait);
        (done, accepted)
    }

    /// Runs a role to completion and returns its stdout lines; panics with its
    /// output if it fails.
    pub fn run(&self, place: Place, uid: Option<u32>, role: &[&str]) -> Vec<String> {
        let out = self
            .command(place, uid, role)
            .output()
            .expect("run meshtest");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "meshtest {role:?} failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().map(str::to_owned).collect()
    }

    /// The pin path of a map of the attached data path.
    #[must_use]
    pub fn map_pin(&self, map: &str) -> PathBuf {
        self.datapath.as_ref().expect("attached").map_pin(map)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for child in &mut self.processes {
            // Only processes this mesh started, by their PID.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `key=value` from a meshtest line.
#[must_use]
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Did a meshtest line's `SO_ORIGINAL_DST` learn nothing? The call fails:
/// ENOENT where conntrack is loaded (it finds no NAT entry), ENOPROTOOPT
/// where it is not.
#[must_use]
pub fn learned_nothing(line: &str) -> bool {
    field(line, "orig").is_none() && matches!(field(line, "orig_error"), Some("2" | "92"))
}

/// An error with its chain of causes, one per line.
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(text, "\n  caused by: {cause}");
        source = cause.source();
    }
    text
}

/// Is `path` gone?
#[must_use]
pub fn gone(path: &Path) -> bool {
    !path.exists()
}
