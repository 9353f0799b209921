//! The pod worker's state and its work on one pod: take a pod on (open its
//! namespace, learn its cookie and addresses, equip its sidecar's open
//! listeners, write it into the data path), apply its new settings or
//! addresses, take it out again. Owned by the pod worker alone
//! ([`super::work`]): no lock guards the pod table, and what reports need
//! is published to [`Shared`] after each piece of work.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use netns_datapath::settings::PodSettings;
use netns_datapath::{DataPath, DataPathError};

use super::AgentConfig;
use super::shared::{PodRecord, Pods, Shared};
use crate::addr_watch::Watcher;
use crate::pod::{self, Pod, PodError};
use crate::source::DescribedPod;
use crate::status::NotMeshed;

/// The data path, shared by the pod worker, the kernel check and the
/// shutdown (which takes it out: work still in hand then fails cleanly).
pub(crate) type SharedDataPath = Arc<Mutex<Option<DataPath>>>;

/// Runs `f` on the data path, or fails with [`DataPathError::Stopping`]
/// once the agent took it out to detach it.
pub(crate) fn with_datapath<T>(
    datapath: &Mutex<Option<DataPath>>,
    f: impl FnOnce(&mut DataPath) -> Result<T, DataPathError>,
) -> Result<T, DataPathError> {
    let mut guard = datapath.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.as_mut().ok_or(DataPathError::Stopping)?)
}

/// What became of a namespace file the pod worker looked at. All but
/// [`Taken::NotYet`]: nothing more to do until its next event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Meshed (now or before).
    Done,
    /// An empty file that `ip netns add` has not bind-mounted yet.
    NotYet,
    /// Not a network namespace: skipped (logged once).
    NotNamespace(String),
    /// Setting the pod up failed; nothing of it is left (logged).
    Failed(String),
}

/// See the module's documentation.
pub(crate) struct PodTable {
    pub(super) pods: BTreeMap<PathBuf, Pod>,
    /// What reports see of each pod, kept in step with `pods` (made again
    /// only for the pod that changed: publishing copies pointers).
    records: BTreeMap<PathBuf, Arc<PodRecord>>,
    /// Something reports see changed since the last publication.
    dirty: bool,
    /// Whether `SO_NETNS_COOKIE` tells a pod's netns cookie on this kernel
    /// (5.14+), learned at the first pod; `None`: not known yet.
    cookie_by_sockopt: Option<bool>,
    /// Paths seen that are not pods, with why (logged once each).
    skipped: BTreeMap<PathBuf, String>,
    pub(super) datapath: SharedDataPath,
    /// Every meshed pod's address-change subscription, by cookie.
    watcher: Arc<Watcher>,
    /// Read-only handles on the maps (CNI CHECK reads them).
    pub(super) view: Arc<netns_datapath::DataPathView>,
    pub(super) shared: Arc<Shared>,
    pub(super) config: Arc<AgentConfig>,
    pub(super) source: &'static str,
}

impl PodTable {
    pub(crate) fn new(
        datapath: SharedDataPath,
        watcher: Arc<Watcher>,
        shared: Arc<Shared>,
        config: Arc<AgentConfig>,
        view: Arc<netns_datapath::DataPathView>,
        source: &'static str,
    ) -> PodTable {
        PodTable {
            pods: BTreeMap::new(),
            records: BTreeMap::new(),
            dirty: true,
            cookie_by_sockopt: None,
            skipped: BTreeMap::new(),
            datapath,
            watcher,
            view,
            shared,
            config,
            source,
        }
    }

    /// Publishes the pods as they are now, for reports, if anything changed.
    pub(crate) fn publish(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        self.shared.publish_pods(Pods {
            meshed: self.records.values().cloned().collect(),
            not_meshed: self
                .skipped
                .iter()
                .map(|(path, reason)| NotMeshed {
                    path: path.display().to_string(),
                    reason: reason.clone(),
                })
                .collect(),
        });
    }

    /// The pod at `path` changed (or went): its record follows.
    fn changed(&mut self, path: &Path) {
        self.dirty = true;
        match self.pods.get(path) {
            None => {
                self.records.remove(path);
            }
            Some(p) => {
                let record = PodRecord {
                    name: p.name.clone(),
                    path: p.path.clone(),
                    ns: p.ns.clone(),
                    cookie: p.facts.cookie,
                    addrs: p.facts.addrs.clone(),
                    equipped: p.equipped.clone(),
                    settings: p.settings.clone(),
                    since: p.since,
                    inbound: self.config.inbound_pass_ports(&p.settings).is_some(),
                };
                self.records.insert(path.to_owned(), Arc::new(record));
            }
        }
    }

    /// A namespace file appeared (or is present): take the pod on. A file
    /// that is not a namespace *yet* (first seen at `first_seen`, less than
    /// `settle` ago) is [`Taken::NotYet`]: the worker tries it again soon,
    /// serving other pods meanwhile.
    pub(super) fn appeared(&mut self, path: &Path, first_seen: Instant, settle: Duration) -> Taken {
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
    fn skip(&mut self, path: &Path, reason: String, kind: &'static str) -> Taken {
        let skipped = &mut self.skipped;
        if skipped.get(path) != Some(&reason) {
            tracing::warn!(path = %path.display(), error = %reason, "not a pod: skipped");
            skipped.insert(path.to_owned(), reason.clone());
            self.dirty = true;
            self.shared.count_error(kind);
        }
        Taken::NotNamespace(reason)
    }

    /// A source described a pod (name and settings): take it on, or apply
    /// its settings when they changed.
    pub(super) fn described(&mut self, pod: &DescribedPod) -> Taken {
        self.take_on(
            &pod.path,
            Instant::now(),
            Duration::ZERO,
            &[],
            Some((&pod.name, &pod.settings)),
        )
    }

    /// [`PodTable::appeared`], with addresses the pod is known to have besides
    /// those read inside it (a CNI request's `prevResult`), and the pod's
    /// name and settings when its source knows them (`None`: a pod already
    /// known keeps its own, a new one gets the defaults). A pod whose setup
    /// failed is listed in `status` with the reason until it is set up or
    /// goes.
    pub(super) fn take_on(
        &mut self,
        path: &Path,
        first_seen: Instant,
        settle: Duration,
        given: &[IpAddr],
        described: Option<(&str, &PodSettings)>,
    ) -> Taken {
        let _span = pod_span(path);
        let taken = self.set_up(path, first_seen, settle, given, described);
        if let Taken::Failed(reason) = &taken {
            self.skipped
                .insert(path.to_owned(), format!("setup failed: {reason}"));
            self.dirty = true;
        }
        taken
    }

    /// [`PodTable::take_on`]'s work.
    fn set_up(
        &mut self,
        path: &Path,
        first_seen: Instant,
        settle: Duration,
        given: &[IpAddr],
        described: Option<(&str, &PodSettings)>,
    ) -> Taken {
        let known = self.pods.get(path).map(Pod::id);
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
        let shared = Arc::clone(&self.shared);
        let mut phase = shared.setup.phase_timer();
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
        self.dirty |= self.skipped.remove(path).is_some();
        if let Some(taken) = self.meshed_elsewhere(ns.id(), described) {
            return taken;
        }
        phase.done("open");
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
                self.pod_failed(&e);
                return Taken::Failed(crate::error_chain(&e));
            }
        };
        phase.done("learn");
        // A sidecar already listening is equipped before any connection of
        // the pod is redirected to it.
        let equipped = match self.equip_listeners(&ns) {
            Ok(equipped) => equipped,
            Err(taken) => return taken,
        };
        phase.done("equip");
        if let Err(taken) = self.write_pod(&ns, &facts, &settings, &equipped, &watch) {
            return taken;
        }
        phase.done("write");
        let inode = ns.id().ino;
        let equipped: Vec<String> = equipped.iter().map(ToString::to_string).collect();
        if !equipped.is_empty() {
            tracing::info!(listeners = ?equipped, "equipped sidecar listeners that predate the agent");
        }
        tracing::info!(name, netns_inode = inode, cookie = facts.cookie,
            addrs = ?facts.addrs, %settings, "pod meshed"
        );
        self.shared
            .setup
            .total
            .observe(first_seen.elapsed().as_secs_f64());
        self.pods.insert(
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
        self.changed(path);
        Taken::Done
    }

    /// Writes a pod into the data path: its settings, its sidecar's
    /// equipped inbound listener, its entries, its inbound capture, then its
    /// address watch. On failure, undoes whatever part was written.
    fn write_pod(
        &mut self,
        ns: &netns_core::NetNs,
        facts: &pod::PodFacts,
        settings: &PodSettings,
        equipped: &[crate::sidecar::Equipped],
        watch: &crate::addr_watch::Subscription,
    ) -> Result<(), Taken> {
        let inbound = self.config.inbound_pass_ports(settings);
        let inbound_port = self.config.datapath.settings.inbound_port;
        let written = with_datapath(&self.datapath, |dp| {
            // The pod's own settings first: connect reads them as soon
            // as the pod is in the mesh.
            dp.set_pod_settings(facts.cookie, &PodSettings::default(), settings)?;
            if inbound.is_some() {
                for e in equipped.iter().filter(|e| e.listener.port == inbound_port) {
                    dp.file_inbound_listener(facts.cookie, e.listener.family, &e.socket)?;
                }
            }
            for e in equipped.iter().filter(|e| e.listener.port != inbound_port) {
                dp.note_sidecar_seen(facts.cookie)?;
                dp.file_outbound_listener(facts.cookie, &e.socket)?;
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
            let _ = with_datapath(&self.datapath, |dp| {
                if let Some(pass_ports) = &inbound {
                    dp.release_inbound(facts.cookie, pass_ports)?;
                }
                dp.remove_pod(facts.cookie, &facts.addrs)?;
                dp.clear_pod_settings(facts.cookie, settings)
            });
            tracing::error!(error = %format!("{e:#}"), "pod setup failed, rolled back");
            self.shared.count_error("datapath");
            return Err(Taken::Failed(format!("{e:#}")));
        }
        Ok(())
    }

    /// What the data path needs of a pod, learned from inside its namespace:
    /// its cookie (from the probe) and addresses (plus `given` ones), and a
    /// subscription to its address changes made before they are read.
    fn learn(
        &mut self,
        path: &Path,
        ns: &netns_core::NetNs,
        given: &[IpAddr],
    ) -> Result<(crate::addr_watch::Subscription, pod::PodFacts), PodError> {
        // The netns cookie: from the address subscription's own socket on
        // 5.14+ (no trip to the probe), else from the cookie probe, which
        // works while this thread subscribes to the pod's address changes
        // (before reading them: no change falls between) and reads its
        // addresses. Which one works is learned at the first pod.
        let probe = self.cookie_by_sockopt != Some(true);
        let asked = probe.then(|| with_datapath(&self.datapath, |dp| dp.ask_netns_cookie(ns)));
        let local = crate::addr_watch::subscribe(ns)
            .map_err(|source| PodError::Namespace {
                path: path.to_owned(),
                source,
            })
            .and_then(|watch| Ok((watch, pod::addresses(ns)?)));
        let by_sockopt = match (&local, self.cookie_by_sockopt) {
            (Ok((watch, _)), None | Some(true)) => watch.netns_cookie().ok(),
            _ => None,
        };
        if local.is_ok() && self.cookie_by_sockopt.is_none() {
            self.cookie_by_sockopt = Some(by_sockopt.is_some());
        }
        // A question asked is always answered, also when the local work failed.
        let answered = asked.map(|asked| {
            asked.and_then(|()| with_datapath(&self.datapath, |dp| dp.netns_cookie_answer(ns)))
        });
        let cookie = match (by_sockopt, answered) {
            (Some(cookie), _) => Ok(cookie),
            (None, Some(answer)) => answer,
            (None, None) => with_datapath(&self.datapath, |dp| dp.netns_cookie(ns)),
        }
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

    /// The sidecar's listeners in `ns` that are already open (on its
    /// outbound and inbound ports), each taken and set to keep SYNs.
    /// One that cannot be equipped keeps the pod out of the mesh (never
    /// redirected to a sidecar that cannot learn where its connections were
    /// going): logged, counted, and [`Taken::Failed`].
    fn equip_listeners(
        &mut self,
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
                tracing::error!(error = %reason, "sidecar listener that predates the agent cannot be equipped: pod left out of the mesh");
                self.shared.count_error("sidecar_unequipped");
                Taken::Failed(reason)
            })
    }

    /// The same namespace under another name (a runtime's `CNI_NETNS` and a
    /// process's `/proc/<pid>/ns/net`) is one pod, meshed once: when `id` is
    /// a known pod's, what became of it (its settings applied if described).
    fn meshed_elsewhere(
        &mut self,
        id: netns_core::NsId,
        described: Option<(&str, &PodSettings)>,
    ) -> Option<Taken> {
        let known = self
            .pods
            .iter()
            .find(|(_, pod)| pod.id() == id)
            .map(|(known, _)| known.clone())?;
        tracing::debug!(known = %known.display(), "already meshed under another path");
        Some(match described {
            Some((_, settings)) => self.settings_changed(&known, settings),
            None => Taken::Done,
        })
    }

    /// A known pod's settings changed: write the new ones and take out
    /// exactly what the old ones had and the new lack.
    fn settings_changed(&mut self, path: &Path, settings: &PodSettings) -> Taken {
        let _span = pod_span(path);
        let Some(pod) = self.pods.get_mut(path) else {
            return Taken::Done;
        };
        if pod.settings == *settings {
            return Taken::Done;
        }
        let (before, after) = (
            self.config.inbound_pass_ports(&pod.settings),
            self.config.inbound_pass_ports(settings),
        );
        let cookie = pod.facts.cookie;
        let result = with_datapath(&self.datapath, |dp| {
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
                tracing::info!(name = pod.name, before = %pod.settings, after = %settings, "pod settings changed");
                pod.settings = settings.clone();
                self.changed(path);
                Taken::Done
            }
            Err(e) => {
                let reason = crate::error_chain(&e);
                tracing::error!(error = %reason, "pod settings update failed");
                self.shared.count_error("datapath");
                Taken::Failed(reason)
            }
        }
    }

    fn pod_failed(&mut self, e: &PodError) {
        tracing::warn!(error = %crate::error_chain(e), "pod setup failed");
        self.shared.count_error("pod_setup");
    }

    /// A namespace file went away: undo exactly what was written for it.
    pub(super) fn gone(&mut self, path: &Path) {
        let _span = pod_span(path);
        self.dirty |= self.skipped.remove(path).is_some();
        let Some(pod) = self.pods.remove(path) else {
            return;
        };
        self.changed(path);
        let inbound = self.config.inbound_pass_ports(&pod.settings);
        let removed = with_datapath(&self.datapath, |dp| {
            // The pod's link first, then the entries it reads.
            if let Some(pass_ports) = &inbound {
                dp.release_inbound(pod.facts.cookie, pass_ports)?;
            }
            dp.remove_pod(pod.facts.cookie, &pod.facts.addrs)?;
            dp.clear_pod_settings(pod.facts.cookie, &pod.settings)
        });
        match removed {
            Ok(()) => {
                tracing::info!(netns_inode = pod.id().ino, "pod removed");
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "pod removal failed");
                self.shared.count_error("datapath");
            }
        }
    }

    /// After the first listing: entries in (adopted) maps that belong to no
    /// pod now are removed.
    pub(super) fn drop_stale_entries(&mut self) {
        let pods: Vec<(u64, Vec<IpAddr>)> = self
            .pods
            .values()
            .map(|p| (p.facts.cookie, p.facts.addrs.clone()))
            .collect();
        match with_datapath(&self.datapath, |dp| dp.retain_pods(&pods)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "removed entries of pods that are gone"),
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "removing stale entries failed");
                self.shared.count_error("datapath");
            }
        }
    }

    /// The source listed what exists: add what is new, drop what is gone.
    /// Returns the files not yet namespaces (first seen now).
    pub(super) fn present(&mut self, paths: &[PathBuf], settle: Duration) -> Vec<PathBuf> {
        let listed: BTreeSet<&PathBuf> = paths.iter().collect();
        let known: BTreeSet<PathBuf> = self.pods.keys().cloned().collect();
        for path in known.iter().filter(|p| !listed.contains(p)) {
            self.gone(path);
        }
        let mut not_yet = Vec::new();
        for path in paths {
            let seen = known.contains(path) || self.skipped.contains_key(path);
            let settle = if seen { Duration::ZERO } else { settle };
            if self.appeared(path, Instant::now(), settle) == Taken::NotYet {
                not_yet.push(path.clone());
            }
        }
        not_yet
    }

    /// The kernel announced an address change in the pod whose watch has
    /// `token` (its cookie): read its addresses again and update the maps.
    pub(super) fn addresses_changed(&mut self, token: u64) {
        let found = self
            .pods
            .values()
            .find(|p| p.facts.cookie == token)
            .map(|p| {
                p.addr_watch.drain();
                (p.path.clone(), p.ns.clone(), p.facts.addrs.clone())
            });
        let Some((path, ns, before)) = found else {
            return;
        };
        let _span = pod_span(&path);
        let now = match pod::addresses(&ns) {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot read the pod's addresses");
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
        let pods = &mut self.pods;
        // Gone or replaced meanwhile: its own events take care of it.
        let Some(pod) = pods.get_mut(&path).filter(|p| p.facts.cookie == token) else {
            return;
        };
        let result = with_datapath(&self.datapath, |dp| {
            dp.add_pod(token, &added)?;
            dp.remove_addrs(&removed)
        });
        match result {
            Ok(()) => {
                tracing::info!(
                    netns_inode = pod.id().ino,
                    ?added,
                    ?removed,
                    "pod addresses changed"
                );
                pod.facts.addrs = now;
                self.changed(&path);
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "address update failed");
                self.shared.count_error("datapath");
            }
        }
    }
}

/// A span naming the pod `path` that log lines inside it carry, entered
/// now (unless one for a pod is entered already: work on a pod that
/// touches it again logs under the one span).
pub(crate) fn pod_span(path: &Path) -> Option<tracing::span::EnteredSpan> {
    let inside = tracing::Span::current()
        .metadata()
        .is_some_and(|m| m.name() == "pod");
    (!inside).then(|| tracing::info_span!("pod", pod = %path.display()).entered())
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
