//! What the daemon's stages publish for each other and for reports: the
//! pod worker's pods, the kernel check's problems, readiness, error counts
//! and setup times. Each field has one writer; readers (status, `/metrics`,
//! `/readyz`) take a short lock to copy an `Arc` or a number, never the data
//! path's lock, never a lock held during pod work.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use netns_datapath::settings::PodSettings;

use crate::metrics::SetupTimes;
use crate::status::{NotMeshed, ProgramStatus};

/// A meshed pod as the pod worker last published it.
#[derive(Debug, Clone)]
pub(crate) struct PodRecord {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) ns: netns_core::NetNs,
    pub(crate) cookie: u64,
    pub(crate) addrs: Vec<IpAddr>,
    pub(crate) equipped: Vec<String>,
    pub(crate) settings: PodSettings,
    pub(crate) since: SystemTime,
    /// Whether it has inbound capture (on for the node and for the pod).
    pub(crate) inbound: bool,
}

/// The pod worker's view of its pods, published after each piece of work.
#[derive(Debug, Default)]
pub(crate) struct Pods {
    pub(crate) meshed: Vec<Arc<PodRecord>>,
    pub(crate) not_meshed: Vec<NotMeshed>,
}

/// Who finds a problem: the agent is ready only while none has any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Area {
    /// The data path's programs and pins (the kernel check).
    DataPath,
    /// The pods' inbound links (the pod worker, asked by the kernel check).
    Inbound,
    /// The control socket file (the kernel check).
    ControlSocket,
}

/// See the module's documentation.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The first listing of the pod source is done (set once).
    listed: AtomicBool,
    /// The pod source has listed what exists since it last (re)started.
    source_up: AtomicBool,
    problems: Mutex<BTreeMap<Area, Vec<String>>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    work: Mutex<BTreeMap<&'static str, u64>>,
    pods: Mutex<Arc<Pods>>,
    programs: Mutex<Arc<Vec<ProgramStatus>>>,
    /// How long pods took to set up, in all and by phase.
    pub(crate) setup: SetupTimes,
    /// The attached `netns-agent monitor`s.
    pub(crate) monitors: Arc<super::decisions::Monitors>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(programs: Vec<ProgramStatus>) -> Shared {
        Shared {
            listed: AtomicBool::new(false),
            source_up: AtomicBool::new(false),
            problems: Mutex::default(),
            errors: Mutex::default(),
            work: Mutex::default(),
            pods: Mutex::default(),
            monitors: Arc::default(),
            programs: Mutex::new(Arc::new(programs)),
            setup: SetupTimes::default(),
        }
    }

    /// Initial reconcile done, the pod source up, and the last kernel check
    /// found the data path in place (programs attached to the cgroup, maps
    /// pinned, each pod's inbound link attached) and the control socket file
    /// the one the agent listens on.
    pub(crate) fn ready(&self) -> bool {
        self.listed.load(SeqCst)
            && self.source_up.load(SeqCst)
            && lock(&self.problems).values().all(Vec::is_empty)
    }

    pub(crate) fn set_listed(&self) {
        self.listed.store(true, SeqCst);
    }

    pub(crate) fn set_source_up(&self, up: bool) {
        self.source_up.store(up, SeqCst);
    }

    /// What keeps the agent from being ready, as the last checks saw it.
    pub(crate) fn problems(&self) -> Vec<String> {
        lock(&self.problems).values().flatten().cloned().collect()
    }

    /// Replaces what `area` found wrong; logs a change.
    pub(crate) fn set_problems(&self, area: Area, problems: Vec<String>) {
        let mut held = lock(&self.problems);
        let before = held.get(&area).cloned().unwrap_or_default();
        if before == problems {
            return;
        }
        if problems.is_empty() {
            tracing::info!(?area, "the kernel holds this part of the data path again");
        } else {
            tracing::error!(?area, problems = ?problems, "not ready");
        }
        held.insert(area, problems);
    }

    pub(crate) fn count_error(&self, kind: &'static str) {
        *lock(&self.errors).entry(kind).or_default() += 1;
    }

    pub(crate) fn errors(&self) -> Vec<(String, u64)> {
        lock(&self.errors)
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }

    /// The pod worker took a piece of work of `kind`.
    pub(crate) fn count_work(&self, kind: &'static str) {
        *lock(&self.work).entry(kind).or_default() += 1;
    }

    pub(crate) fn work(&self) -> Vec<(String, u64)> {
        lock(&self.work)
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }

    pub(crate) fn publish_pods(&self, pods: Pods) {
        *lock(&self.pods) = Arc::new(pods);
    }

    pub(crate) fn pods(&self) -> Arc<Pods> {
        Arc::clone(&lock(&self.pods))
    }

    pub(crate) fn publish_programs(&self, programs: Vec<ProgramStatus>) {
        *lock(&self.programs) = Arc::new(programs);
    }

    pub(crate) fn programs(&self) -> Arc<Vec<ProgramStatus>> {
        Arc::clone(&lock(&self.programs))
    }
}
