//! A CNI chain run by hand, the way a container runtime runs it: Debian's
//! reference plugins (`loopback`, then `bridge` with `host-local` IPAM) and
//! `netns-cni` after them, inside a throw-away "node" network namespace
//! (never the host's), for pods that are namespaces made for the test. An
//! agent with `--pod-source cni` on private paths answers the plugin.
//! Everything is removed on drop.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns_core::NetNs;
use netns_datapath::CookieProbe;
use netns_datapath::cgroup::ChildCgroup;
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const CNI_BIN: &str = "/usr/lib/cni";
/// The pods' IPv4 subnet (benchmarking range; room for the benchmark's 1,000 pods).
pub const SUBNET4: &str = "198.18.64.0/20";
/// The pods' IPv6 subnet.
pub const SUBNET6: &str = "fd00:64::/64";

/// One plugin run: exit status, stdout (parsed when it is JSON), stderr.
#[derive(Debug)]
pub struct Run {
    /// Exit status code.
    pub exit: i32,
    /// Standard output as JSON (`Value::Null` when empty).
    pub out: Value,
    /// Standard output as text.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// From spawn to exit, as the runtime sees it.
    pub elapsed: Duration,
}

impl Run {
    /// The CNI error code of a failed run.
    #[must_use]
    pub fn code(&self) -> Option<u64> {
        self.out.get("code")?.as_u64()
    }
}

/// The node, its agent and its pods.
#[derive(Debug)]
pub struct Chain {
    /// Private directory: pins, control socket, CNI state, IPAM data, pods.
    pub dir: PathBuf,
    /// The node namespace the plugins run in.
    pub node: NetNs,
    /// Learns pods' cookies on its own. Kept for the chain's whole life: a
    /// `cgroup/sock_create` program that stays attached means the agents'
    /// probes attaching and detaching never switch `inet_create`'s static
    /// branch (text patching that locked up QEMU's emulated guests under
    /// load). Dropped before the cgroup it lives under.
    probe: std::sync::Mutex<CookieProbe>,
    /// The captured cgroup of the agent.
    pub cgroup: ChildCgroup,
    agent_bin: PathBuf,
    plugin_bin: PathBuf,
    agent: Option<crate::agent::Running>,
    metrics: SocketAddr,
}

impl Chain {
    /// A node namespace and private paths; the agent is not started.
    #[must_use]
    pub fn new(agent_bin: &str, plugin_bin: &str, tag: &str) -> Chain {
        let crate::agent::Private {
            dir,
            cgroup,
            metrics,
        } = crate::agent::private(&format!("cni-{tag}"));
        std::fs::create_dir_all(dir.join("pods")).unwrap();
        let node = NetNs::create_at(&dir.join("node")).unwrap();
        node.set_loopback_up().unwrap();
        let probe = std::sync::Mutex::new(
            CookieProbe::start(netns_datapath::EBPF_OBJECT, cgroup.path()).unwrap(),
        );
        Chain {
            dir,
            node,
            probe,
            cgroup,
            agent_bin: agent_bin.into(),
            plugin_bin: plugin_bin.into(),
            agent: None,
            metrics,
        }
    }

    /// The agent's control socket.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// The agent's pin directory.
    #[must_use]
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// Starts the agent (`--pod-source cni`, `--keep-state` so a restart
    /// keeps the data path) and waits until it is ready.
    pub fn start_agent(&mut self) {
        self.start_agent_with(&["--pod-source", "cni"], &[]);
    }

    /// [`Chain::start_agent`] with other source flags and environment.
    pub fn start_agent_with(&mut self, source: &[&str], env: &[(&str, &Path)]) {
        let mut cmd = crate::agent::run_command(
            self.agent_bin.to_str().unwrap(),
            &self.dir,
            self.cgroup.path(),
            self.metrics,
        );
        cmd.args(source)
            .args(["--keep-state", "--cni-state-dir"])
            .arg(self.dir.join("cni"))
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        self.agent = Some(crate::agent::Running::start(
            cmd,
            &self.dir.join("agent.log"),
            self.metrics,
            Duration::from_secs(60),
        ));
    }

    /// Stops the agent (SIGTERM; with `--keep-state` its data path stays).
    pub fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
    }

    /// The running agent, handed over (to be signalled while other threads
    /// use the chain).
    pub fn take_agent(&mut self) -> crate::agent::Running {
        self.agent.take().expect("the agent is running")
    }

    /// `pod`'s netns cookie, as the kernel's programs see it (learned
    /// independently of the agent under test).
    #[must_use]
    pub fn cookie(&self, pod: &NetNs) -> u64 {
        self.probe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cookie(pod)
            .unwrap()
    }

    /// The agent's `/metrics` answer now.
    #[must_use]
    pub fn metrics(&self) -> String {
        crate::agent::http_get(self.metrics, "/metrics")
    }

    /// The agent's log so far.
    #[must_use]
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// A new pod namespace (not yet attached).
    #[must_use]
    pub fn pod(&self, name: &str) -> NetNs {
        NetNs::create_at(&self.dir.join("pods").join(name)).unwrap()
    }

    /// `netns-cni`'s network config (with `prevResult`, if any).
    #[must_use]
    pub fn plugin_config(&self, prev: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "meshnet",
            "type": "netns-cni",
            "agentSocket": self.socket(),
            "timeoutMs": 5000,
        });
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn bridge_config(&self, prev: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "meshnet",
            "type": "bridge",
            "bridge": "cnitest0",
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": SUBNET4}], [{"subnet": SUBNET6}]],
                "dataDir": self.dir.join("ipam"),
            },
        });
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// Runs `binary` with `command` for `container` in `netns`, inside the
    /// node namespace, `config` on stdin (raw bytes).
    #[must_use]
    pub fn exec(
        &self,
        binary: &Path,
        command: &str,
        container: &str,
        netns: &str,
        stdin: &[u8],
    ) -> Run {
        self.exec_on(binary, command, container, "eth0", netns, stdin)
    }

    /// [`Chain::exec`] for the pod's interface `ifname`.
    #[must_use]
    pub fn exec_on(
        &self,
        binary: &Path,
        command: &str,
        container: &str,
        ifname: &str,
        netns: &str,
        stdin: &[u8],
    ) -> Run {
        let output = self
            .node
            .run(|_| {
                let started = Instant::now();
                let mut child = Command::new(binary)
                    .env_clear()
                    .env("CNI_COMMAND", command)
                    .env("CNI_CONTAINERID", container)
                    .env("CNI_NETNS", netns)
                    .env("CNI_IFNAME", ifname)
                    .env("CNI_PATH", CNI_BIN)
                    .env(
                        "CNI_ARGS",
                        format!(
                            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"
                        ),
                    )
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
                child.stdin.take().unwrap().write_all(stdin).unwrap();
                let output = child.wait_with_output().unwrap();
                (output, started.elapsed())
            })
            .unwrap();
        let (output, elapsed) = output;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        Run {
            exit: output.status.code().unwrap_or(-1),
            out: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed,
        }
    }

    /// `netns-cni` alone.
    #[must_use]
    pub fn plugin(&self, command: &str, container: &str, netns: &str, config: &Value) -> Run {
        self.exec(
            &self.plugin_bin,
            command,
            container,
            netns,
            config.to_string().as_bytes(),
        )
    }

    /// `netns-cni` alone, for the pod's interface `ifname`.
    #[must_use]
    pub fn plugin_on(
        &self,
        command: &str,
        container: &str,
        ifname: &str,
        netns: &str,
        config: &Value,
    ) -> Run {
        self.exec_on(
            &self.plugin_bin,
            command,
            container,
            ifname,
            netns,
            config.to_string().as_bytes(),
        )
    }

    fn reference(
        &self,
        name: &str,
        command: &str,
        container: &str,
        netns: &str,
        conf: &Value,
    ) -> Run {
        let run = self.exec(
            &Path::new(CNI_BIN).join(name),
            command,
            container,
            netns,
            conf.to_string().as_bytes(),
        );
        assert_eq!(run.exit, 0, "{name} {command}: {run:?}");
        run
    }

    /// The whole chain's ADD for `pod`: loopback, bridge, netns-cni. Returns
    /// bridge's result and netns-cni's run (which must pass it through).
    #[must_use]
    pub fn add(&self, container: &str, pod: &NetNs) -> (Value, Run) {
        let (prev, run, _) = self.add_timed(container, pod);
        (prev, run)
    }

    /// [`Chain::add`], with the whole chain's time (its plugins one after
    /// another, as a runtime runs them; netns-cni's own is in its [`Run`]).
    #[must_use]
    pub fn add_timed(&self, container: &str, pod: &NetNs) -> (Value, Run, Duration) {
        self.add_timed_with(container, pod, || {})
    }

    /// [`Chain::add_timed`], running `between` after `bridge` and before
    /// netns-cni (not counted in the chain's time).
    #[must_use]
    pub fn add_timed_with(
        &self,
        container: &str,
        pod: &NetNs,
        between: impl FnOnce(),
    ) -> (Value, Run, Duration) {
        let (prev, before) = self.add_before_mesh(container, pod);
        between();
        let netns = pod.path().to_str().unwrap();
        let run = self.plugin("ADD", container, netns, &self.plugin_config(Some(&prev)));
        let chain = before + run.elapsed;
        (prev, run, chain)
    }

    /// The chain's ADD up to netns-cni (loopback, then bridge): bridge's
    /// result, and the time they took.
    #[must_use]
    pub fn add_before_mesh(&self, container: &str, pod: &NetNs) -> (Value, Duration) {
        let netns = pod.path().to_str().unwrap();
        let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
        let lo = self.reference("loopback", "ADD", container, netns, &lo);
        let bridge = self.reference("bridge", "ADD", container, netns, &self.bridge_config(None));
        (bridge.out, lo.elapsed + bridge.elapsed)
    }

    /// The chain's DEL, in reverse order (netns-cni first); `netns` may be
    /// gone or empty.
    #[must_use]
    pub fn del(&self, container: &str, netns: &str, prev: &Value) -> Run {
        let run = self.plugin("DEL", container, netns, &self.plugin_config(Some(prev)));
        self.reference(
            "bridge",
            "DEL",
            container,
            netns,
            &self.bridge_config(Some(prev)),
        );
        run
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        // Killed first (its drop), then its pins go.
        drop(self.agent.take());
        let _ = netns_datapath::cleanup(&self.bpffs());
        for dir in [self.dir.join("pods"), self.dir.clone()] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
