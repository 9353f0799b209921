//! `netns-agent run`: the long-running node agent. It attaches the data path,
//! takes pods from a [`PodSource`], does each pod's work inside its namespace
//! ([`crate::pod`]), keeps the maps true, answers on its control socket
//! ([`crate::control`]) and its HTTP port ([`crate::http`]), and on SIGTERM or
//! SIGINT detaches everything, or leaves it attached with `keep_state`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use netns_ebpf::counter;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

mod cni;
mod health;
mod pending;

use self::pending::Pending;
use crate::addr_watch::Watcher;
use crate::pod::{self, Pod, PodError};
use crate::source::cni::CniState;
use crate::source::{DescribedPod, PodEvent, PodSource};
use crate::status::{MapStatus, NotMeshed, PodStatus, ProgramStatus, Status};
use netns_datapath::settings::PodSettings;
use netns_datapath::{DataPath, DataPathConfig};

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

/// The agent's state, shared by the pod loop, the control socket and HTTP.
#[derive(Debug)]
pub struct Agent {
    datapath: Mutex<Option<DataPath>>,
    pods: Mutex<BTreeMap<PathBuf, Pod>>,
    /// Paths seen that are not namespaces, with why (logged once each).
    skipped: Mutex<BTreeMap<PathBuf, String>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    setup_seconds: Mutex<Vec<f64>>,
    /// Every meshed pod's address-change subscription, by cookie.
    watcher: Watcher,
    ready: std::sync::atomic::AtomicBool,
    /// Held while a pod is worked on: the pod worker and CNI requests take
    /// turns, so no pod is set up twice at once.
    pod_work: Mutex<()>,
    /// What the last kernel check found missing and could not repair; the
    /// agent is not ready while there is any.
    problems: Mutex<Vec<String>>,
    /// The pod source has listed what exists since it last (re)started.
    source_up: std::sync::atomic::AtomicBool,
    /// The control socket file the agent bound (device, inode).
    control_socket: Mutex<Option<(u64, u64)>>,
    config: AgentConfig,
    source: &'static str,
}

impl Agent {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_error(&self, kind: &'static str) {
        *Self::lock(&self.errors).entry(kind).or_default() += 1;
    }

    /// Initial reconcile done, the pod source up, and the last kernel check
    /// found the data path in place (programs attached to the cgroup, maps
    /// pinned, each pod's inbound link attached) and the control socket file
    /// the one the agent listens on.
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.ready.load(SeqCst)
            && self.source_up.load(SeqCst)
            && Self::lock(&self.problems).is_empty()
    }

    /// What keeps the agent from being ready, as the last kernel check saw it.
    pub fn problems(&self) -> Vec<String> {
        Self::lock(&self.problems).clone()
    }

    /// Pod setup latencies so far, in seconds.
    pub fn setup_seconds(&self) -> Vec<f64> {
        Self::lock(&self.setup_seconds).clone()
    }

    /// A snapshot for `status` and `/metrics`.
    pub fn status(&self) -> Status {
        let datapath = Self::lock(&self.datapath);
        let mut status = Status {
            pid: std::process::id(),
            ready: self.ready(),
            problems: self.problems(),
            cgroup: datapath.as_ref().map_or_else(
                || self.config.datapath.cgroup.display().to_string(),
                |dp| dp.cgroup().display().to_string(),
            ),
            bpffs: self.config.datapath.pin_dir.display().to_string(),
            source: self.source.to_owned(),
            ..Status::default()
        };
        if let Some(dp) = datapath.as_ref() {
            status.programs = dp
                .programs()
                .iter()
                .map(|p| ProgramStatus {
                    name: p.name.to_owned(),
                    id: p.id,
                })
                .collect();
            status.maps = dp
                .map_fill()
                .into_iter()
                .map(|(name, entries, capacity)| MapStatus {
                    name: name.to_owned(),
                    entries,
                    capacity,
                })
                .collect();
            if let Ok(values) = dp.counters() {
                status.counters = counter::NAMES
                    .iter()
                    .zip(values)
                    .map(|(n, v)| ((*n).to_owned(), v))
                    .collect();
            }
        }
        // Whether a pod's inbound link is pinned: what the kernel holds.
        let inbound_pins = datapath.as_ref().map(|dp| dp.inbound_pin(0));
        drop(datapath);
        // Whether each pod's entries are in the kernel's maps (pods first,
        // then the data path: the lock order of pod work).
        let facts: Vec<(u64, Vec<IpAddr>, netns_core::NetNs)> = Self::lock(&self.pods)
            .values()
            .map(|p| (p.facts.cookie, p.facts.addrs.clone(), p.ns.clone()))
            .collect();
        let sidecars = self.sidecar_states(&facts);
        let in_kernel: BTreeSet<u64> = {
            let mut datapath = Self::lock(&self.datapath);
            facts
                .iter()
                .filter(|(cookie, addrs, _)| {
                    datapath
                        .as_mut()
                        .and_then(|dp| dp.missing_pod_entries(*cookie, addrs).ok())
                        .is_some_and(|missing| missing.is_empty())
                })
                .map(|(cookie, _, _)| *cookie)
                .collect()
        };
        let inbound = |cookie: u64| {
            inbound_pins
                .as_ref()
                .and_then(|pin| pin.parent())
                .is_some_and(|dir| dir.join(cookie.to_string()).exists())
        };
        status.pods = Self::lock(&self.pods)
            .values()
            .map(|p| PodStatus {
                name: p.name.clone(),
                path: p.path.display().to_string(),
                netns_inode: p.id().ino,
                cookie: p.facts.cookie,
                addrs: p.facts.addrs.iter().map(ToString::to_string).collect(),
                meshed: in_kernel.contains(&p.facts.cookie),
                equipped: p.equipped.clone(),
                sidecar: sidecars.get(&p.facts.cookie).cloned().unwrap_or_default(),
                inbound: inbound(p.facts.cookie),
                settings: p.settings.clone(),
                since_unix: p
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })
            .collect();
        status.not_meshed = Self::lock(&self.skipped)
            .iter()
            .map(|(path, reason)| NotMeshed {
                path: path.display().to_string(),
                reason: reason.clone(),
            })
            .collect();
        status.errors = Self::lock(&self.errors)
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        status
    }

    fn with_datapath<T>(
        &self,
        f: impl FnOnce(&mut DataPath) -> Result<T, netns_datapath::DataPathError>,
    ) -> Result<T, netns_datapath::DataPathError> {
        let mut guard = Self::lock(&self.datapath);
        // Taken out at shutdown: pod work still in hand then fails cleanly.
        let dp = guard
            .as_mut()
            .ok_or(netns_datapath::DataPathError::Stopping)?;
        f(dp)
    }

    /// A namespace file appeared (or is present): take the pod on. A file
    /// that is not a namespace *yet* (first seen at `first_seen`, less than
    /// `settle` ago) is [`Taken::NotYet`]: the worker tries it again soon,
    /// serving other pods meanwhile.
    fn appeared(&self, path: &Path, first_seen: Instant, settle: Duration) -> Taken {
        // A symlink in the watched directory is never followed out of it
        // (to the host's /proc/1/ns/net, say). Other sources name
        // /proc/PID/ns/net links on purpose.
        if self.source == "netns-dir"
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        {
            return self.skip(
                path,
                "a symlink: not followed".to_owned(),
                "not_a_namespace",
            );
        }
        self.take_on(path, first_seen, settle, &[], None)
    }

    /// `path` is not a pod, for `reason`: logged and counted once per reason.
    fn skip(&self, path: &Path, reason: String, kind: &'static str) -> Taken {
        let mut skipped = Self::lock(&self.skipped);
        if skipped.get(path) != Some(&reason) {
            tracing::warn!(path = %path.display(), error = %reason, "not a pod: skipped");
            skipped.insert(path.to_owned(), reason.clone());
            self.count_error(kind);
        }
        Taken::NotNamespace(reason)
    }

    /// A source described a pod (name and settings): take it on, or apply
    /// its settings when they changed.
    fn described(&self, pod: &DescribedPod) -> Taken {
        self.take_on(
            &pod.path,
            Instant::now(),
            Duration::ZERO,
            &[],
            Some((&pod.name, &pod.settings)),
        )
    }

    /// [`Agent::appeared`], with addresses the pod is known to have besides
    /// those read inside it (a CNI request's `prevResult`), and the pod's
    /// name and settings when its source knows them (`None`: a pod already
    /// known keeps its own, a new one gets the defaults). A pod whose setup
    /// failed is listed in `status` with the reason until it is set up or
    /// goes.
    fn take_on(
        &self,
        path: &Path,
        first_seen: Instant,
        settle: Duration,
        given: &[IpAddr],
        described: Option<(&str, &PodSettings)>,
    ) -> Taken {
        let taken = self.set_up(path, first_seen, settle, given, described);
        if let Taken::Failed(reason) = &taken {
            Self::lock(&self.skipped).insert(path.to_owned(), format!("setup failed: {reason}"));
        }
        taken
    }

    /// [`Agent::take_on`]'s work.
    fn set_up(
        &self,
        path: &Path,
        first_seen: Instant,
        settle: Duration,
        given: &[IpAddr],
        described: Option<(&str, &PodSettings)>,
    ) -> Taken {
        let known = Self::lock(&self.pods).get(path).map(Pod::id);
        if let Some(id) = known {
            // Same file, same namespace (a stat, no open): nothing to do but
            // new settings. Replaced by another namespace: redo it.
            let now = std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
            if now.is_err() || now.is_ok_and(|(dev, ino)| dev == id.dev && ino == id.ino) {
                return match described {
                    Some((_, settings)) => self.settings_changed(path, settings),
                    None => Taken::Done,
                };
            }
            self.gone(path);
        }
        let ns = match pod::open(path) {
            Ok(ns) => ns,
            // Only a file on its way to becoming a namespace is waited for.
            Err(e) if first_seen.elapsed() < settle && about_to_be_mounted(&e) => {
                return Taken::NotYet;
            }
            Err(e) => {
                return self.skip(path, crate::error_chain(&e), "not_a_namespace");
            }
        };
        if let Some(whose) = node_netns(ns.id()) {
            return self.skip(path, format!("{whose}: never a pod"), "node_netns_refused");
        }
        Self::lock(&self.skipped).remove(path);
        if let Some(taken) = self.meshed_elsewhere(path, ns.id(), described) {
            return taken;
        }
        let name = described.map_or_else(
            || {
                path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            },
            |(name, _)| name.to_owned(),
        );
        let settings = described.map(|(_, s)| s.clone()).unwrap_or_default();
        let (watch, facts) = match self.learn(path, &ns, given) {
            Ok(done) => done,
            Err(e) => {
                self.pod_failed(path, &e);
                return Taken::Failed(crate::error_chain(&e));
            }
        };
        // A sidecar already listening is equipped before any connection of
        // the pod is redirected to it.
        let equipped = match self.equip_listeners(path, &ns) {
            Ok(equipped) => equipped,
            Err(taken) => return taken,
        };
        if let Err(taken) = self.write_pod(path, &ns, &facts, &settings, &equipped, &watch) {
            return taken;
        }
        let inode = ns.id().ino;
        let equipped: Vec<String> = equipped.iter().map(ToString::to_string).collect();
        if !equipped.is_empty() {
            tracing::info!(pod = %path.display(), listeners = ?equipped, "equipped sidecar listeners that predate the agent");
        }
        tracing::info!(
            pod = %path.display(), name, netns_inode = inode, cookie = facts.cookie,
            addrs = ?facts.addrs, %settings, "pod meshed"
        );
        Self::lock(&self.setup_seconds).push(first_seen.elapsed().as_secs_f64());
        Self::lock(&self.pods).insert(
            path.to_owned(),
            Pod {
                name,
                path: path.to_owned(),
                ns,
                facts,
                equipped,
                settings,
                addr_watch: watch,
                since: SystemTime::now(),
            },
        );
        Taken::Done
    }

    /// Writes a pod into the data path: its settings, its sidecar's
    /// equipped inbound listener, its entries, its inbound capture, then its
    /// address watch. On failure, undoes whatever part was written.
    fn write_pod(
        &self,
        path: &Path,
        ns: &netns_core::NetNs,
        facts: &pod::PodFacts,
        settings: &PodSettings,
        equipped: &[crate::sidecar::Equipped],
        watch: &crate::addr_watch::Subscription,
    ) -> Result<(), Taken> {
        let inbound = self.inbound_pass_ports(settings);
        let inbound_port = self.config.datapath.settings.inbound_port;
        let written = self
            .with_datapath(|dp| {
                // The pod's own settings first: connect reads them as soon
                // as the pod is in the mesh.
                dp.set_pod_settings(facts.cookie, &PodSettings::default(), settings)?;
                if inbound.is_some() {
                    for e in equipped.iter().filter(|e| e.listener.port == inbound_port) {
                        dp.file_inbound_listener(facts.cookie, e.listener.family, &e.socket)?;
                    }
                }
                if equipped.iter().any(|e| e.listener.port != inbound_port) {
                    dp.note_sidecar_seen(facts.cookie)?;
                }
                dp.add_pod(facts.cookie, &facts.addrs)?;
                if let Some(pass_ports) = &inbound {
                    dp.capture_inbound(ns, facts.cookie, pass_ports)?;
                }
                Ok(())
            })
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                self.watcher
                    .add(watch, facts.cookie)
                    .context("watch the pod's address changes (epoll)")
            });
        if let Err(e) = written {
            // Undo whatever part of it was written.
            let _ = self.with_datapath(|dp| {
                if let Some(pass_ports) = &inbound {
                    dp.release_inbound(facts.cookie, pass_ports)?;
                }
                dp.remove_pod(facts.cookie, &facts.addrs)?;
                dp.clear_pod_settings(facts.cookie, settings)
            });
            tracing::error!(pod = %path.display(), error = %format!("{e:#}"), "pod setup failed, rolled back");
            self.count_error("datapath");
            return Err(Taken::Failed(format!("{e:#}")));
        }
        Ok(())
    }

    /// What the data path needs of a pod, learned from inside its namespace:
    /// its cookie (from the probe) and addresses (plus `given` ones), and a
    /// subscription to its address changes made before they are read.
    fn learn(
        &self,
        path: &Path,
        ns: &netns_core::NetNs,
        given: &[IpAddr],
    ) -> Result<(crate::addr_watch::Subscription, pod::PodFacts), PodError> {
        // The cookie probe works while this thread subscribes to the pod's
        // address changes (before reading them: no change falls between) and
        // reads its addresses.
        let asked = self.with_datapath(|dp| dp.ask_netns_cookie(ns));
        let local = crate::addr_watch::subscribe(ns)
            .map_err(|source| PodError::Namespace {
                path: path.to_owned(),
                source,
            })
            .and_then(|watch| Ok((watch, pod::addresses(ns)?)));
        // A question asked is always answered, also when the local work failed.
        let cookie = asked
            .and_then(|()| self.with_datapath(|dp| dp.netns_cookie_answer(ns)))
            .map_err(|source| PodError::Cookie {
                path: path.to_owned(),
                source: Box::new(source),
            });
        let (watch, mut addrs) = local?;
        let cookie = cookie?;
        addrs.extend(given.iter().filter(|a| !a.is_loopback()));
        addrs.sort_unstable();
        addrs.dedup();
        Ok((watch, pod::PodFacts { cookie, addrs }))
    }

    /// Each pod's sidecar as the kernel says now, by netns cookie: listening
    /// on the outbound port in the pod, or why not and what the pod's apps
    /// meet meanwhile (per `--sidecar-absent` and whether it was ever seen).
    fn sidecar_states(
        &self,
        pods: &[(u64, Vec<IpAddr>, netns_core::NetNs)],
    ) -> BTreeMap<u64, String> {
        let s = self.config.datapath.settings;
        let mut states = BTreeMap::new();
        for (cookie, _, ns) in pods {
            let cookie = *cookie;
            let state = match crate::sidecar::listeners(ns, &[s.outbound_port]) {
                Ok(found) if !found.is_empty() => "listening".to_owned(),
                Ok(_) => {
                    let seen = self
                        .with_datapath(|dp| dp.sidecar_seen(cookie))
                        .unwrap_or(false);
                    absent_state(s.flags, seen).to_owned()
                }
                Err(e) => format!("unknown: {}", crate::error_chain(&e)),
            };
            states.insert(cookie, state);
        }
        states
    }

    /// The sidecar's listeners in `ns` that are already open (on its
    /// outbound and inbound ports), each taken and set to keep SYNs.
    /// One that cannot be equipped keeps the pod out of the mesh (never
    /// redirected to a sidecar that cannot learn where its connections were
    /// going): logged, counted, and [`Taken::Failed`].
    fn equip_listeners(
        &self,
        path: &Path,
        ns: &netns_core::NetNs,
    ) -> Result<Vec<crate::sidecar::Equipped>, Taken> {
        let s = &self.config.datapath.settings;
        let ports = [s.outbound_port, s.inbound_port];
        crate::sidecar::listeners(ns, &ports)
            .and_then(|found| {
                if found.is_empty() {
                    return Ok(Vec::new());
                }
                crate::sidecar::equip(ns.id(), &found)
            })
            .map_err(|e| {
                let reason = crate::error_chain(&e);
                tracing::error!(pod = %path.display(), error = %reason, "sidecar listener that predates the agent cannot be equipped: pod left out of the mesh");
                self.count_error("sidecar_unequipped");
                Taken::Failed(reason)
            })
    }

    /// The same namespace under another name (a runtime's `CNI_NETNS` and a
    /// process's `/proc/<pid>/ns/net`) is one pod, meshed once: when `id` is
    /// a known pod's, what became of it (its settings applied if described).
    fn meshed_elsewhere(
        &self,
        path: &Path,
        id: netns_core::NsId,
        described: Option<(&str, &PodSettings)>,
    ) -> Option<Taken> {
        let known = Self::lock(&self.pods)
            .iter()
            .find(|(_, pod)| pod.id() == id)
            .map(|(known, _)| known.clone())?;
        tracing::debug!(pod = %path.display(), known = %known.display(), "already meshed under another path");
        Some(match described {
            Some((_, settings)) => self.settings_changed(&known, settings),
            None => Taken::Done,
        })
    }

    /// The ports inbound capture leaves alone for a pod with `settings`;
    /// `None`: no inbound capture for it (off on the node, or for the pod).
    fn inbound_pass_ports(&self, settings: &PodSettings) -> Option<Vec<u16>> {
        let node = self.config.inbound_pass_ports.as_deref()?;
        settings.inbound.then(|| settings.inbound_pass_ports(node))
    }

    /// A known pod's settings changed: write the new ones and take out
    /// exactly what the old ones had and the new lack.
    fn settings_changed(&self, path: &Path, settings: &PodSettings) -> Taken {
        let mut pods = Self::lock(&self.pods);
        let Some(pod) = pods.get_mut(path) else {
            return Taken::Done;
        };
        if pod.settings == *settings {
            return Taken::Done;
        }
        let (before, after) = (
            self.inbound_pass_ports(&pod.settings),
            self.inbound_pass_ports(settings),
        );
        let cookie = pod.facts.cookie;
        let result = self.with_datapath(|dp| {
            dp.set_pod_settings(cookie, &pod.settings, settings)?;
            match (&before, &after) {
                (None, None) => {}
                (Some(old), None) => dp.release_inbound(cookie, old)?,
                (None, Some(new)) => {
                    dp.capture_inbound(&pod.ns, cookie, new)?;
                }
                (Some(old), Some(new)) => {
                    // Still attached: the link is kept, only ports change.
                    dp.capture_inbound(&pod.ns, cookie, new)?;
                    let gone: Vec<u16> = old.iter().filter(|p| !new.contains(p)).copied().collect();
                    dp.remove_pass_ports(cookie, &gone)?;
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                tracing::info!(pod = %path.display(), name = pod.name, before = %pod.settings, after = %settings, "pod settings changed");
                pod.settings = settings.clone();
                Taken::Done
            }
            Err(e) => {
                let reason = crate::error_chain(&e);
                tracing::error!(pod = %path.display(), error = %reason, "pod settings update failed");
                self.count_error("datapath");
                Taken::Failed(reason)
            }
        }
    }

    fn pod_failed(&self, path: &Path, e: &PodError) {
        tracing::warn!(pod = %path.display(), error = %crate::error_chain(e), "pod setup failed");
        self.count_error("pod_setup");
    }

    /// A namespace file went away: undo exactly what was written for it.
    fn gone(&self, path: &Path) {
        Self::lock(&self.skipped).remove(path);
        let Some(pod) = Self::lock(&self.pods).remove(path) else {
            return;
        };
        let inbound = self.inbound_pass_ports(&pod.settings);
        let removed = self.with_datapath(|dp| {
            // The pod's link first, then the entries it reads.
            if let Some(pass_ports) = &inbound {
                dp.release_inbound(pod.facts.cookie, pass_ports)?;
            }
            dp.remove_pod(pod.facts.cookie, &pod.facts.addrs)?;
            dp.clear_pod_settings(pod.facts.cookie, &pod.settings)
        });
        match removed {
            Ok(()) => {
                tracing::info!(pod = %path.display(), netns_inode = pod.id().ino, "pod removed");
            }
            Err(e) => {
                tracing::error!(pod = %path.display(), error = %crate::error_chain(&e), "pod removal failed");
                self.count_error("datapath");
            }
        }
    }

    /// After the first listing: entries in (adopted) maps that belong to no
    /// pod now are removed.
    fn drop_stale_entries(&self) {
        let pods: Vec<(u64, Vec<IpAddr>)> = Self::lock(&self.pods)
            .values()
            .map(|p| (p.facts.cookie, p.facts.addrs.clone()))
            .collect();
        match self.with_datapath(|dp| dp.retain_pods(&pods)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "removed entries of pods that are gone"),
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "removing stale entries failed");
                self.count_error("datapath");
            }
        }
    }

    /// The source listed what exists: add what is new, drop what is gone.
    /// Returns the files not yet namespaces (first seen now).
    fn present(&self, paths: &[PathBuf], settle: Duration) -> Vec<PathBuf> {
        let listed: BTreeSet<&PathBuf> = paths.iter().collect();
        let known: BTreeSet<PathBuf> = Self::lock(&self.pods).keys().cloned().collect();
        for path in known.iter().filter(|p| !listed.contains(p)) {
            self.gone(path);
        }
        let mut not_yet = Vec::new();
        for path in paths {
            let seen = known.contains(path) || Self::lock(&self.skipped).contains_key(path);
            let settle = if seen { Duration::ZERO } else { settle };
            if self.appeared(path, Instant::now(), settle) == Taken::NotYet {
                not_yet.push(path.clone());
            }
        }
        not_yet
    }

    /// The kernel announced an address change in the pod whose watch has
    /// `token` (its cookie): read its addresses again and update the maps.
    fn addresses_changed(&self, token: u64) {
        let found = Self::lock(&self.pods)
            .values()
            .find(|p| p.facts.cookie == token)
            .map(|p| {
                p.addr_watch.drain();
                (p.path.clone(), p.ns.clone(), p.facts.addrs.clone())
            });
        let Some((path, ns, before)) = found else {
            return;
        };
        let now = match pod::addresses(&ns) {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(pod = %path.display(), error = %crate::error_chain(&e), "cannot read the pod's addresses");
                return;
            }
        };
        if now == before {
            return;
        }
        let added: Vec<IpAddr> = now
            .iter()
            .filter(|a| !before.contains(a))
            .copied()
            .collect();
        let removed: Vec<IpAddr> = before
            .iter()
            .filter(|a| !now.contains(a))
            .copied()
            .collect();
        let mut pods = Self::lock(&self.pods);
        // Gone or replaced meanwhile: its own events take care of it.
        let Some(pod) = pods.get_mut(&path).filter(|p| p.facts.cookie == token) else {
            return;
        };
        let result = self.with_datapath(|dp| {
            dp.add_pod(token, &added)?;
            dp.remove_addrs(&removed)
        });
        match result {
            Ok(()) => {
                tracing::info!(pod = %path.display(), netns_inode = pod.id().ino, ?added, ?removed, "pod addresses changed");
                pod.facts.addrs = now;
            }
            Err(e) => {
                tracing::error!(pod = %path.display(), error = %crate::error_chain(&e), "address update failed");
                self.count_error("datapath");
            }
        }
    }
}

/// What became of a namespace file the pod worker looked at. All but
/// [`Taken::NotYet`]: nothing more to do until its next event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Taken {
    /// Meshed (now or before).
    Done,
    /// An empty file that `ip netns add` has not bind-mounted yet.
    NotYet,
    /// Not a network namespace: skipped (logged once).
    NotNamespace(String),
    /// Setting the pod up failed; nothing of it is left (logged).
    Failed(String),
}

/// What a pod's apps meet while its sidecar does not listen, under the
/// fail policy of `flags`, the sidecar having been `seen` before or not.
fn absent_state(flags: u16, seen: bool) -> &'static str {
    use netns_ebpf::MeshSettings;
    if flags & MeshSettings::FLAG_REDIRECT_WITHOUT_LISTENER != 0 {
        "not listening: apps refused (--sidecar-absent refuse)"
    } else if flags & MeshSettings::FLAG_REFUSE_ONCE_LISTENED != 0 && seen {
        "not listening (it listened before: restarting?): apps refused"
    } else if flags & MeshSettings::FLAG_REFUSE_ONCE_LISTENED != 0 {
        "not listening yet (never seen): apps go uncaptured until it binds its port"
    } else {
        "not listening: apps go uncaptured (--sidecar-absent pass)"
    }
}

/// Whose namespace `id` is when it is the node's own: the agent's, or the
/// host's (PID 1's, which the agent sees with hostPID). Meshing either would
/// capture the node's own traffic, inbound TCP included.
fn node_netns(id: netns_core::NsId) -> Option<&'static str> {
    [
        ("/proc/self/ns/net", "the agent's own network namespace"),
        ("/proc/1/ns/net", "the host's network namespace (PID 1's)"),
    ]
    .into_iter()
    .find(|(path, _)| std::fs::metadata(path).is_ok_and(|m| m.dev() == id.dev && m.ino() == id.ino))
    .map(|(_, whose)| whose)
}

/// `ip netns add` creates an empty regular file, then bind-mounts the new
/// namespace on it: a path that is not a namespace *yet* may still become
/// one. A namespace of another type, a missing path or a symlink will not.
fn about_to_be_mounted(e: &PodError) -> bool {
    match e {
        PodError::Namespace {
            path,
            source: netns_core::NsError::NotNamespace { .. },
        } => std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0),
        _ => false,
    }
}

/// Runs the agent until SIGTERM or SIGINT.
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
    let agent = Arc::new(Agent {
        datapath: Mutex::new(Some(datapath)),
        pods: Mutex::new(BTreeMap::new()),
        skipped: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(BTreeMap::new()),
        setup_seconds: Mutex::new(Vec::new()),
        watcher: Watcher::new().context("create the address-change epoll set")?,
        ready: std::sync::atomic::AtomicBool::new(false),
        pod_work: Mutex::new(()),
        problems: Mutex::new(Vec::new()),
        source_up: std::sync::atomic::AtomicBool::new(false),
        control_socket: Mutex::new(None),
        source: source.name(),
        config: config.clone(),
    });
    let result = serve(&agent, &config, source, &mut signals).await;
    let datapath = Agent::lock(&agent.datapath).take();
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

async fn serve(
    agent: &Arc<Agent>,
    config: &AgentConfig,
    source: Box<dyn PodSource>,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let control = crate::control::listen(&config.control_socket)?;
    agent.note_control_socket(&config.control_socket);
    let http = crate::http::listen(config.metrics_addr, config.datapath.settings.bypass_mark)?;
    let (tx, mut rx) = mpsc::channel(1024);
    // Pod work runs in order on one thread of its own, so that signals and
    // the sockets are served while a pod is being set up.
    let (work, queue) = std::sync::mpsc::channel::<PodEvent>();
    let worker = {
        let (agent, settle) = (Arc::clone(agent), config.settle);
        std::thread::Builder::new()
            .name("pod-worker".into())
            .spawn(move || pod_worker(&agent, &queue, settle))
            .context("start the pod worker thread")?
    };
    let address_watcher = {
        let agent = Arc::clone(agent);
        std::thread::Builder::new()
            .name("address-watch".into())
            .spawn(move || {
                // Ends when the agent's last other holder lets go.
                while Arc::strong_count(&agent) > 1 {
                    match agent.watcher.wait(Duration::from_millis(250)) {
                        Ok(tokens) => {
                            for token in tokens {
                                agent.addresses_changed(token);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "waiting for address changes failed");
                            agent.count_error("address_watch");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            })
            .context("start the address watch thread")?
    };
    let (stop_health, health_stop) = std::sync::mpsc::channel::<()>();
    let health = {
        let agent = Arc::clone(agent);
        std::thread::Builder::new()
            .name("kernel-check".into())
            .spawn(move || health::run(&agent, &health_stop))
            .context("start the kernel check thread")?
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(supervise(source, tx, Arc::clone(agent)));
    tasks.spawn(crate::control::serve(control, Arc::clone(agent)));
    tasks.spawn(crate::http::serve(http, Arc::clone(agent)));
    let result = loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break Err(anyhow::anyhow!("the pod source stopped")) };
                if work.send(event).is_err() {
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
    // The worker finishes the pod in hand and ends with the queue; it is not
    // waited for (a pod setup must not delay the exit).
    drop(work);
    drop(worker);
    drop(address_watcher);
    drop(stop_health);
    let _ = health.join();
    result
}

/// Runs the pod source, and again after it fails or ends (logged with its
/// cause; 100 ms, doubling to 5 s, back to 100 ms after a minute of running):
/// a source that stops never takes the data path down. Until the new one has
/// listed what exists, the agent is not ready.
async fn supervise(
    source: Box<dyn PodSource>,
    events: mpsc::Sender<PodEvent>,
    agent: Arc<Agent>,
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
        agent
            .source_up
            .store(false, std::sync::atomic::Ordering::SeqCst);
        agent.count_error("pod_source");
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

/// The pod worker: pod events in order, and files waiting to become
/// namespaces tried again between them. Ends when the queue closes.
fn pod_worker(agent: &Agent, queue: &std::sync::mpsc::Receiver<PodEvent>, settle: Duration) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut pending = Pending::default();
    let mut first_listing = true;
    loop {
        let event = match pending.next_due() {
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => queue.recv_timeout(due),
        };
        match event {
            Ok(PodEvent::Appeared(path)) => {
                let first_seen = pending.first_seen(&path);
                let _turn = Agent::lock(&agent.pod_work);
                match agent.appeared(&path, first_seen, settle) {
                    Taken::NotYet => pending.wait(path, first_seen),
                    _ => pending.done(&path),
                }
            }
            Ok(PodEvent::Described(pod)) => {
                pending.done(&pod.path);
                let _turn = Agent::lock(&agent.pod_work);
                agent.described(&pod);
            }
            Ok(PodEvent::Gone(path)) => {
                pending.done(&path);
                let _turn = Agent::lock(&agent.pod_work);
                agent.gone(&path);
            }
            Ok(PodEvent::Present(paths)) => {
                let _turn = Agent::lock(&agent.pod_work);
                agent
                    .source_up
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                for path in agent.present(&paths, settle) {
                    let first_seen = pending.first_seen(&path);
                    pending.wait(path, first_seen);
                }
                if first_listing {
                    first_listing = false;
                    agent.drop_stale_entries();
                    agent.ready.store(true, std::sync::atomic::Ordering::SeqCst);
                    let pods = Agent::lock(&agent.pods).len();
                    tracing::info!(pods, "initial reconcile done: ready");
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        for (path, first_seen) in pending.due() {
            let _turn = Agent::lock(&agent.pod_work);
            match agent.appeared(&path, first_seen, settle) {
                Taken::NotYet => pending.wait(path, first_seen),
                _ => pending.done(&path),
            }
        }
    }
}
