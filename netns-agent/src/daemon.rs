//! `netns-agent run`: the long-running node agent, a pipeline:
//!
//! ```text
//! source (netns-dir | cni | kubernetes) --events--\
//! CNI requests (control socket) --with deadline----> work queue -> pod worker -> data path
//! address changes (netlink), kernel check ---------/       (pods)      (netns-datapath)
//!                       reports: status, /metrics, /readyz  <- published state + the kernel's maps
//! ```
//!
//! The source is supervised (restarted with backoff, never taking the data
//! path down); every change to a pod goes through `work`'s one queue to
//! one thread that owns the pod table (`pods`); the kernel check
//! (`health`) repairs the data path and makes the agent unready while
//! it cannot; reports (`report`) read what the stages publish
//! (`shared`) and the kernel, never the data path's lock. On SIGTERM,
//! SIGINT or SIGHUP every thread is stopped and joined, then the data path
//! is detached, or left attached with `keep_state`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

mod cni;
mod decisions;
mod health;
mod pending;
mod pods;
mod report;
mod shared;
mod work;

use crate::addr_watch::Watcher;
use crate::cni::{CniReply, CniRequest};
use crate::source::cni::CniState;
use crate::source::{PodEvent, PodSource};
use crate::status::Status;
use netns_datapath::settings::PodSettings;
use netns_datapath::{DataPath, DataPathConfig, DataPathView};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where and how to attach the data path.
    pub datapath: DataPathConfig,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// The HTTP address for `/healthz`, `/readyz` and `/metrics`.
    pub metrics_addr: SocketAddr,
    /// Leave programs and maps attached and pinned at exit.
    pub keep_state: bool,
    /// How long a new namespace file may take to become a namespace (`ip
    /// netns add` creates the file, then bind-mounts it).
    pub settle: Duration,
    /// Destination ports never redirected.
    pub exclude_ports: Vec<u16>,
    /// Destination CIDRs never redirected.
    pub exclude_cidrs: Vec<(IpAddr, u8)>,
    /// Inbound capture on every meshed pod, leaving these pod ports alone
    /// (the sidecar's own ports and the excluded inbound ports); `None`: off.
    pub inbound_pass_ports: Option<Vec<u16>>,
    /// With the CNI pod source: where its attachments are recorded (CNI
    /// requests on the control socket are refused without it).
    pub cni_state: Option<CniState>,
    /// With the Kubernetes pod source: what it knows of each pod, so that
    /// a CNI ADD meshes exactly the pods with a sidecar, with their settings.
    pub kube_directory: Option<crate::source::kubernetes::Directory>,
}

impl AgentConfig {
    /// The ports inbound capture leaves alone for a pod with `settings`;
    /// `None`: no inbound capture for it (off on the node, or for the pod).
    fn inbound_pass_ports(&self, settings: &PodSettings) -> Option<Vec<u16>> {
        let node = self.inbound_pass_ports.as_deref()?;
        settings.inbound.then(|| settings.inbound_pass_ports(node))
    }
}

/// The handles the control socket and HTTP get: reports and the work queue,
/// nothing else of the agent.
#[derive(Debug)]
struct Handles {
    reporter: report::Reporter,
    queue: work::Queue,
    kube_directory: Option<crate::source::kubernetes::Directory>,
    monitors: Arc<decisions::Monitors>,
    shared: Arc<shared::Shared>,
}

impl crate::control::Handler for Handles {
    fn monitor(
        &self,
        filter: crate::monitor::MonitorFilter,
    ) -> Result<crate::control::MonitorStream, String> {
        let pods = self.shared.pods().meshed.len();
        self.monitors.subscribe(filter, pods)
    }

    fn status(&self) -> Arc<Status> {
        self.reporter.status(Duration::ZERO)
    }

    fn cni(
        &self,
        request: CniRequest,
        deadline: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = CniReply> + Send + '_>> {
        Box::pin(async move {
            let described = match &request {
                CniRequest::CniAdd(pod) => {
                    match cni::kube_verdict(self.kube_directory.as_ref(), pod).await {
                        Ok(described) => described,
                        Err(reply) => return reply,
                    }
                }
                _ => None,
            };
            self.queue.cni(request, described, deadline).await
        })
    }
}

impl crate::http::Health for Handles {
    fn ready(&self) -> bool {
        self.reporter.ready()
    }

    fn metrics(&self) -> String {
        self.reporter.metrics()
    }
}

/// Runs the agent until SIGTERM, SIGINT or SIGHUP.
pub async fn run(config: AgentConfig, source: Box<dyn PodSource>) -> anyhow::Result<()> {
    // First: from here on a stop signal is ours to handle (detach or keep,
    // as configured), never the default action that would leave the data
    // path half set up.
    let mut signals = Signals::new().context("handle SIGTERM, SIGINT and SIGHUP")?;
    let (mut datapath, adopted) = DataPath::adopt(netns_datapath::EBPF_OBJECT, &config.datapath)
        .with_context(|| {
            format!(
                "attach the data path to {} (pins under {})",
                config.datapath.cgroup.display(),
                config.datapath.pin_dir.display()
            )
        })?;
    if adopted {
        tracing::info!(
            pins = %config.datapath.pin_dir.display(),
            "took over the pinned data path: programs replaced in place, maps and their entries kept"
        );
    }
    datapath
        .start_cookie_probe()
        .context("start the netns cookie probe (pods cannot be meshed without it)")?;
    for port in &config.exclude_ports {
        datapath.exclude_port(*port)?;
    }
    for (addr, len) in &config.exclude_cidrs {
        datapath.exclude_cidr(*addr, *len)?;
    }
    let names: Vec<String> = datapath
        .programs()
        .iter()
        .map(|p| format!("{}#{}", p.name, p.id))
        .collect();
    tracing::info!(cgroup = %config.datapath.cgroup.display(), programs = %names.join(" "), "data path attached");
    let view = Arc::new(datapath.view()?);
    let mut decisions = datapath.decisions()?;
    // Left on by an agent that was killed while monitored: off until a
    // monitor attaches.
    decisions.set_reporting(false)?;
    let shared = Arc::new(shared::Shared::new(health::programs(&datapath)));
    let datapath: pods::SharedDataPath = Arc::new(Mutex::new(Some(datapath)));
    let result = serve(
        &config,
        source,
        &mut signals,
        &datapath,
        &shared,
        view,
        decisions,
    )
    .await;
    let datapath = datapath
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(datapath) = datapath {
        if config.keep_state {
            tracing::info!(pins = %config.datapath.pin_dir.display(), "keeping programs and maps attached (--keep-state)");
            datapath.keep();
        } else {
            datapath.detach().context("detach the data path")?;
            tracing::info!("data path detached, pins removed");
        }
    }
    let _ = std::fs::remove_file(&config.control_socket);
    result
}

/// The stop signals, each stream made once: a signal that arrives while the
/// loop is busy elsewhere stays pending in it (one made per turn could miss it).
struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// The agent's threads (each joined at stop) and how to stop them.
struct Threads {
    queue: work::Queue,
    worker: std::thread::JoinHandle<()>,
    watcher: Arc<Watcher>,
    address_watch: std::thread::JoinHandle<()>,
    stop_check: std::sync::mpsc::Sender<()>,
    kernel_check: std::thread::JoinHandle<()>,
    monitors: Arc<decisions::Monitors>,
    stop_decisions: Arc<std::sync::atomic::AtomicBool>,
    decisions: std::thread::JoinHandle<()>,
}

impl Threads {
    fn start(
        config: &Arc<AgentConfig>,
        source: &'static str,
        datapath: &pods::SharedDataPath,
        shared: &Arc<shared::Shared>,
        view: &Arc<DataPathView>,
        stream: netns_datapath::DecisionStream,
    ) -> anyhow::Result<Threads> {
        let (queue, work) = work::Queue::new();
        let watcher = Arc::new(Watcher::new().context("create the address-change epoll set")?);
        let mut table = pods::PodTable::new(
            Arc::clone(datapath),
            Arc::clone(&watcher),
            Arc::clone(shared),
            Arc::clone(config),
            Arc::clone(view),
            source,
        );
        // Pod work runs in order on one thread of its own, so that signals and
        // the sockets are served while a pod is being set up.
        let worker = {
            let (queue, settle) = (queue.clone(), config.settle);
            spawn("pod-worker", move || {
                work::run(&mut table, &queue, &work, settle);
            })?
        };
        let address_watch = {
            let (watcher, queue, shared) =
                (Arc::clone(&watcher), queue.clone(), Arc::clone(shared));
            spawn("address-watch", move || {
                loop {
                    match watcher.wait() {
                        Ok(None) => return,
                        Ok(Some(tokens)) => {
                            for token in tokens {
                                if !queue.send(work::Work::Addresses(token)) {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "waiting for address changes failed");
                            shared.count_error("address_watch");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            })?
        };
        let (stop_check, stop) = std::sync::mpsc::channel::<()>();
        let check = health::KernelCheck {
            datapath: Arc::clone(datapath),
            view: Arc::clone(view),
            shared: Arc::clone(shared),
            queue: queue.clone(),
            control_socket: (
                config.control_socket.clone(),
                health::file_id(&config.control_socket),
            ),
        };
        let kernel_check = spawn("kernel-check", move || check.run(&stop))?;
        let monitors = Arc::clone(&shared.monitors);
        let stop_decisions = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = decisions::Reader {
            stream,
            monitors: Arc::clone(&monitors),
            shared: Arc::clone(shared),
            view: Arc::clone(view),
            settings: config.datapath.settings,
            stop: Arc::clone(&stop_decisions),
        };
        let decisions = spawn("decisions", move || reader.run())?;
        Ok(Threads {
            queue,
            worker,
            watcher,
            address_watch,
            stop_check,
            kernel_check,
            monitors,
            stop_decisions,
            decisions,
        })
    }

    /// Stops every thread and waits for it: the pod worker after the pod
    /// in hand (queued CNI requests are answered "try again later").
    fn stop(self) {
        self.queue.stop();
        self.watcher.stop();
        drop(self.stop_check);
        self.stop_decisions
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (name, thread) in [
            ("decisions", self.decisions),
            ("kernel-check", self.kernel_check),
            ("address-watch", self.address_watch),
            ("pod-worker", self.worker),
        ] {
            if thread.join().is_err() {
                tracing::error!(thread = name, "the thread panicked");
            }
        }
    }
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("start the {name} thread"))
}

async fn serve(
    config: &AgentConfig,
    source: Box<dyn PodSource>,
    signals: &mut Signals,
    datapath: &pods::SharedDataPath,
    shared: &Arc<shared::Shared>,
    view: Arc<DataPathView>,
    decisions: netns_datapath::DecisionStream,
) -> anyhow::Result<()> {
    let control = crate::control::listen(&config.control_socket)?;
    let http = crate::http::listen(config.metrics_addr, config.datapath.settings.bypass_mark)?;
    let config = Arc::new(config.clone());
    let threads = Threads::start(&config, source.name(), datapath, shared, &view, decisions)?;
    let handles = Arc::new(Handles {
        reporter: report::Reporter::new(
            Arc::clone(shared),
            view,
            report::Fixed {
                cgroup: config.datapath.cgroup.display().to_string(),
                bpffs: config.datapath.pin_dir.display().to_string(),
                source: source.name(),
                settings: config.datapath.settings,
            },
        ),
        queue: threads.queue.clone(),
        kube_directory: config.kube_directory.clone(),
        monitors: Arc::clone(&threads.monitors),
        shared: Arc::clone(shared),
    });
    let (tx, mut rx) = mpsc::channel(1024);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(supervise(source, tx, Arc::clone(shared)));
    tasks.spawn(crate::control::serve(control, Arc::clone(&handles) as _));
    tasks.spawn(crate::http::serve(http, Arc::clone(&handles) as _));
    let result = loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break Err(anyhow::anyhow!("the pod source stopped")) };
                if !threads.queue.send(work::Work::Source(event)) {
                    break Err(anyhow::anyhow!("the pod worker stopped"));
                }
            }
            done = tasks.join_next() => {
                if let Some(done) = done {
                    break match done {
                        Ok(Ok(())) => Err(anyhow::anyhow!("a task of the agent ended")),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(e.into()),
                    };
                }
            }
            _ = signals.interrupt.recv() => { tracing::info!("SIGINT: stopping"); break Ok(()); }
            _ = signals.term.recv() => { tracing::info!("SIGTERM: stopping"); break Ok(()); }
            // Nothing is reloaded: flags are read once. A hangup (the
            // terminal closed) stops the agent like SIGTERM, never like SIGKILL.
            _ = signals.hangup.recv() => { tracing::info!("SIGHUP: stopping"); break Ok(()); }
        }
    };
    tasks.abort_all();
    // The worker's join waits for the pod in hand: off the async workers.
    let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
    result
}

/// Runs the pod source, and again after it fails or ends (logged with its
/// cause; 100 ms, doubling to 5 s, back to 100 ms after a minute of running):
/// a source that stops never takes the data path down. Until the new one has
/// listed what exists, the agent is not ready.
async fn supervise(
    source: Box<dyn PodSource>,
    events: mpsc::Sender<PodEvent>,
    shared: Arc<shared::Shared>,
) -> anyhow::Result<()> {
    const FIRST: Duration = Duration::from_millis(100);
    const LAST: Duration = Duration::from_secs(5);
    let mut backoff = FIRST;
    loop {
        let started = Instant::now();
        let ended = source.clone_box().run(events.clone()).await;
        if events.is_closed() {
            return Ok(());
        }
        shared.set_source_up(false);
        shared.count_error("pod_source");
        if started.elapsed() > Duration::from_secs(60) {
            backoff = FIRST;
        }
        match ended {
            Ok(()) => {
                tracing::warn!(source = source.name(), retry_in = ?backoff, "the pod source ended: starting it again");
            }
            Err(e) => {
                tracing::error!(source = source.name(), error = %format!("{e:#}"), retry_in = ?backoff, "the pod source failed: starting it again");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LAST);
    }
}
