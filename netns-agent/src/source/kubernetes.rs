//! Pods from the Kubernetes API server: a watch on this node's pods only
//! (field selector `spec.nodeName=<node>`), through kube-rs's watcher, which
//! lists, then watches from the list's resourceVersion, relists when the
//! server answers 410 Gone (resourceVersion too old) and re-watches with
//! backoff when the stream drops.
//!
//! A pod is meshed when it carries the sidecar-injection annotation
//! (Istio's `sidecar.istio.io/status`, `--mesh-annotation` for other
//! meshes), is not on the host network and has not finished. Its settings
//! come from its annotations ([`PodSettings::from_annotations`]) and follow
//! them when they change. Its network namespace is found by its UID in the
//! cgroup paths of the node's processes ([`procscan`]), looked for again
//! every `rescan` while the pod has none yet (a pod is listed before its
//! sandbox runs).
//!
//! Reports: [`PodEvent::Described`] for each meshed pod found (again when
//! its settings change), [`PodEvent::Gone`] when it leaves the mesh or is
//! deleted, and [`PodEvent::Present`] after each complete listing (the
//! first one makes the agent ready; after a relist it drops the pods that
//! went while the watch was broken).

pub mod procscan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc::Sender;

use self::procscan::{Found, ProcRoot};
use super::{DescribedPod, PodEvent, PodSource, SourceTask};
use netns_datapath::settings::{PodSettings, annotation};

/// What the source knows of each pod of the node, shared with the agent's
/// CNI handler: with the `netns-cni` plugin in the chain, ADD asks here
/// whether the pod (by `namespace/name` from `CNI_ARGS`) is to be meshed and
/// with which settings, and records the namespace path the runtime made,
/// which the source then uses instead of scanning processes.
#[derive(Debug, Clone, Default)]
pub struct Directory(Arc<Mutex<DirectoryInner>>);

#[derive(Debug, Default)]
struct DirectoryInner {
    /// By `namespace/name`: `Some(settings)` when meshed, `None` when not.
    pods: BTreeMap<String, Option<PodSettings>>,
    /// Namespace paths from CNI ADD, by `namespace/name`.
    cni: BTreeMap<String, PathBuf>,
}

/// What the API server says of a pod a CNI request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Mesh it with these settings.
    Mesh(PodSettings),
    /// Leave it alone (no sidecar annotation, host network, finished, or
    /// annotations that do not parse).
    Leave,
    /// Not (yet) seen by the watch.
    Unknown,
}

impl Directory {
    fn lock(&self) -> std::sync::MutexGuard<'_, DirectoryInner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What to do with the pod `name` (`namespace/name`).
    #[must_use]
    pub fn verdict(&self, name: &str) -> Verdict {
        match self.lock().pods.get(name) {
            None => Verdict::Unknown,
            Some(None) => Verdict::Leave,
            Some(Some(settings)) => Verdict::Mesh(settings.clone()),
        }
    }

    /// CNI ADD made the pod's namespace at `path`.
    pub fn record_cni(&self, name: &str, path: &Path) {
        self.lock().cni.insert(name.to_owned(), path.to_owned());
    }

    /// CNI DEL: the path is going.
    pub fn forget_cni(&self, name: &str) {
        self.lock().cni.remove(name);
    }

    fn cni_path(&self, name: &str) -> Option<PathBuf> {
        self.lock().cni.get(name).cloned()
    }

    fn set(&self, name: &str, settings: Option<PodSettings>) {
        self.lock().pods.insert(name.to_owned(), settings);
    }

    fn remove(&self, name: &str) {
        self.lock().pods.remove(name);
    }
}

/// The Kubernetes pod source.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    /// This node's name, as the API server knows it (`spec.nodeName`).
    pub node: String,
    /// The annotation that marks a pod as having a sidecar.
    pub mesh_annotation: String,
    /// Where processes are listed.
    pub procs: ProcRoot,
    /// How often pods without a namespace yet are looked for again.
    pub rescan: Duration,
    /// The API server to use; `None`: found as kubectl finds it
    /// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
    pub api: Option<kube::Config>,
    /// Shared with the agent's CNI handler.
    pub directory: Directory,
}

impl Kubernetes {
    /// The source for `node`, with Istio's annotation, `/proc`, 1 s rescans.
    #[must_use]
    pub fn new(node: String) -> Kubernetes {
        Kubernetes {
            node,
            mesh_annotation: annotation::SIDECAR_STATUS.to_owned(),
            procs: ProcRoot::default(),
            rescan: Duration::from_secs(1),
            api: None,
            directory: Directory::default(),
        }
    }
}

impl PodSource for Kubernetes {
    fn clone_box(&self) -> Box<dyn PodSource> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn run(self: Box<Self>, events: Sender<PodEvent>) -> SourceTask {
        Box::pin(async move {
            let config = match self.api.clone() {
                Some(config) => config,
                None => kube::Config::infer().await.context(
                    "find the API server: KUBECONFIG, ~/.kube/config, or the in-cluster \
                     service account (KUBERNETES_SERVICE_HOST and its token)",
                )?,
            };
            let server = config.cluster_url.to_string();
            let client = kube::Client::try_from(config)
                .with_context(|| format!("make a client for {server}"))?;
            let selector = format!("spec.nodeName={}", self.node);
            tracing::info!(%server, %selector, annotation = %self.mesh_annotation, "watching this node's pods");
            let api: kube::Api<Pod> = kube::Api::all(client);
            let mut stream = watcher::watcher(api, watcher::Config::default().fields(&selector))
                .default_backoff()
                .boxed();
            let mut pods = Pods::new(self.mesh_annotation.clone(), self.procs.clone());
            pods.directory = self.directory.clone();
            let mut tick = tokio::time::interval(self.rescan);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let out = tokio::select! {
                    event = stream.next() => match event {
                        None => anyhow::bail!("the pod watch on {server} ended"),
                        Some(Err(e)) => {
                            // The backoff retries: list again or watch again.
                            tracing::warn!(%server, error = %e, "pod watch failed; retrying");
                            continue;
                        }
                        Some(Ok(event)) => pods.event(event),
                    },
                    _ = tick.tick() => pods.rescan(),
                };
                for event in out {
                    if events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
            }
        })
    }
}

/// What the source knows of one pod.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// `Some` while the pod is to be meshed (with the settings reported).
    settings: Option<PodSettings>,
    found: Option<Found>,
}

/// The pods of this node and what was reported of them: turns watch events
/// into pod events. No I/O but the process scan.
#[derive(Debug)]
pub struct Pods {
    annotation: String,
    procs: ProcRoot,
    by_uid: BTreeMap<String, Entry>,
    /// The UIDs seen since the current listing began.
    listing: Option<BTreeSet<String>>,
    /// What the CNI handler reads, kept up to date here.
    pub directory: Directory,
}

impl Pods {
    /// No pods yet; `annotation` marks the meshed ones.
    #[must_use]
    pub fn new(annotation: String, procs: ProcRoot) -> Pods {
        Pods {
            annotation,
            procs,
            by_uid: BTreeMap::new(),
            listing: None,
            directory: Directory::default(),
        }
    }

    /// What a watch event means for the agent.
    pub fn event(&mut self, event: Event<Pod>) -> Vec<PodEvent> {
        let mut out = Vec::new();
        match event {
            Event::Init => self.listing = Some(BTreeSet::new()),
            Event::InitApply(pod) => {
                if let (Some(listing), Some(uid)) = (&mut self.listing, &pod.metadata.uid) {
                    listing.insert(uid.clone());
                }
                self.apply(&pod, &mut out);
            }
            Event::Apply(pod) => self.apply(&pod, &mut out),
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.forget(uid, &mut out);
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .by_uid
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.forget(&uid, &mut out);
                }
                out.push(PodEvent::Present(self.present()));
            }
        }
        out
    }

    /// Pods meshed but without a namespace are looked for again; a pod whose
    /// process went (its namespace path is gone) is looked for anew.
    pub fn rescan(&mut self) -> Vec<PodEvent> {
        let mut out = Vec::new();
        for (uid, entry) in &mut self.by_uid {
            let Some(settings) = &entry.settings else {
                continue;
            };
            if entry.found.as_ref().is_some_and(ProcRoot::still) {
                continue;
            }
            if let Some(old) = entry.found.take() {
                out.push(PodEvent::Gone(old.path));
            }
            entry.found = find(&self.directory, &self.procs, uid, &entry.name);
            if let Some(found) = &entry.found {
                out.push(described(found, &entry.name, settings));
            }
        }
        out
    }

    /// The namespaces of the meshed pods found.
    fn present(&self) -> Vec<PathBuf> {
        self.by_uid
            .values()
            .filter(|e| e.settings.is_some())
            .filter_map(|e| Some(e.found.as_ref()?.path.clone()))
            .collect()
    }

    fn forget(&mut self, uid: &str, out: &mut Vec<PodEvent>) {
        let Some(entry) = self.by_uid.remove(uid) else {
            return;
        };
        self.directory.remove(&entry.name);
        if let (Some(found), Some(_)) = (entry.found, entry.settings) {
            out.push(PodEvent::Gone(found.path));
        }
    }

    fn apply(&mut self, pod: &Pod, out: &mut Vec<PodEvent>) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let entry = self.by_uid.entry(uid.clone()).or_insert_with(|| Entry {
            name: name.clone(),
            settings: None,
            found: None,
        });
        let wanted = match meshed(pod, &self.annotation) {
            Err(why) => {
                tracing::debug!(pod = %name, why, "not meshed");
                None
            }
            Ok(annotations) => match PodSettings::from_annotations(annotations) {
                Ok(settings) => Some(settings),
                Err(e) if entry.settings.is_some() => {
                    tracing::warn!(pod = %name, error = %e, "pod annotation unusable: its settings stay as they were");
                    entry.settings.clone()
                }
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "pod annotation unusable: not meshed");
                    None
                }
            },
        };
        match (wanted, entry.settings.take()) {
            (None, before) => {
                if let (Some(found), Some(_)) = (entry.found.take(), before) {
                    out.push(PodEvent::Gone(found.path));
                }
            }
            (Some(settings), before) => {
                if let Some(found) = &entry.found {
                    if before.as_ref() != Some(&settings) {
                        out.push(described(found, &name, &settings));
                    }
                } else {
                    entry.found = find(&self.directory, &self.procs, &uid, &name);
                    if let Some(found) = &entry.found {
                        out.push(described(found, &name, &settings));
                    }
                }
                entry.settings = Some(settings);
            }
        }
        self.directory.set(&name, entry.settings.clone());
        entry.name = name;
    }
}

/// The pod's namespace: the one CNI ADD named, else found by its UID.
fn find(directory: &Directory, procs: &ProcRoot, uid: &str, name: &str) -> Option<Found> {
    directory
        .cni_path(name)
        .and_then(|path| Found::at(&path))
        .or_else(|| procs.find(uid))
}

fn described(found: &Found, name: &str, settings: &PodSettings) -> PodEvent {
    PodEvent::Described(DescribedPod {
        path: found.path.clone(),
        name: name.to_owned(),
        settings: settings.clone(),
    })
}

/// The pod's annotations when it is to be meshed; why not otherwise.
fn meshed<'p>(
    pod: &'p Pod,
    annotation: &str,
) -> Result<&'p BTreeMap<String, String>, &'static str> {
    let annotations = pod
        .metadata
        .annotations
        .as_ref()
        .filter(|a| a.contains_key(annotation))
        .ok_or("no sidecar annotation")?;
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Err("on the host network");
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Err("finished");
    }
    Ok(annotations)
}
