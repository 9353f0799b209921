//! The data path's decisions, fanned out to the monitors attached to the
//! control socket. A thread of its own reads the kernel's ring buffer while
//! at least one monitor is attached, and switches the programs' reporting
//! off when the last one goes (and at start and stop: a switch left on by an
//! agent that was killed costs every connection a ring buffer write).
//!
//! A monitor that does not read fills its own queue; what does not fit is
//! dropped and counted for it, never waited for: neither the data path nor
//! the agent slows down for it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use netns_datapath::{DataPathView, DecisionStream};
use netns_ebpf::{MeshSettings, counter};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::shared::Shared;
use crate::control::MonitorStream;
use crate::monitor::{DecisionLine, MonitorFilter, MonitorLine, RecentDecision};

/// The most monitors attached at once.
pub(crate) const MAX_MONITORS: usize = 16;
/// Lines a monitor's queue holds before its decisions are dropped.
pub(crate) const QUEUE: usize = 4096;
/// How often the thread looks at its monitors when no decision comes.
const TICK: Duration = Duration::from_millis(100);

struct Subscriber {
    id: u64,
    filter: MonitorFilter,
    tx: mpsc::Sender<Arc<str>>,
    dropped: u64,
    told_dropped: u64,
    /// The kernel's lost count when it attached, and how much of it since
    /// it has been told.
    lost_base: Option<u64>,
    told_lost: u64,
}

/// The attached monitors.
#[derive(Default)]
pub(crate) struct Monitors {
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Decisions dropped for slow monitors, in all (for status and metrics).
    pub(crate) dropped_total: std::sync::atomic::AtomicU64,
    /// Each meshed pod's last decisions, by netns cookie, as read while
    /// monitors were attached (the programs report nothing otherwise).
    recent: Mutex<HashMap<u64, VecDeque<RecentDecision>>>,
}

impl std::fmt::Debug for Monitors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitors")
            .field("attached", &self.attached())
            .finish_non_exhaustive()
    }
}

struct Unsubscribe {
    monitors: Arc<Monitors>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.monitors.lock().retain(|s| s.id != self.id);
    }
}

impl Monitors {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many monitors are attached.
    pub(crate) fn attached(&self) -> usize {
        self.lock().len()
    }

    /// Attaches a monitor; its first line says how many pods are meshed.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        filter: MonitorFilter,
        pods: usize,
    ) -> Result<MonitorStream, String> {
        filter.check()?;
        let mut subscribers = self.lock();
        if subscribers.len() >= MAX_MONITORS {
            return Err(format!(
                "too many monitors: {MAX_MONITORS} are attached already"
            ));
        }
        let (tx, lines) = mpsc::channel(QUEUE);
        let hello = serde_json::to_string(&MonitorLine::Subscribed { pods }).unwrap_or_default();
        let _ = tx.try_send(hello.into());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        subscribers.push(Subscriber {
            id,
            filter,
            tx,
            dropped: 0,
            told_dropped: 0,
            lost_base: None,
            told_lost: 0,
        });
        Ok(MonitorStream {
            lines,
            guard: Box::new(Unsubscribe {
                monitors: Arc::clone(self),
                id,
            }),
        })
    }

    /// Hands `line` to every monitor whose filter it passes.
    fn fan_out(&self, line: &DecisionLine) {
        let mut json: Option<Arc<str>> = None;
        for sub in self.lock().iter_mut() {
            if !sub.filter.passes(line) {
                continue;
            }
            let json = json.get_or_insert_with(|| {
                serde_json::to_string(&MonitorLine::Decision(line.clone()))
                    .unwrap_or_default()
                    .into()
            });
            if let Err(TrySendError::Full(_)) = sub.tx.try_send(Arc::clone(json)) {
                sub.dropped += 1;
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Tells each monitor the decisions lost in the kernel and dropped for
    /// it, when they grew since it was last told.
    fn tell_counts(&self, lost: Option<u64>) {
        for sub in self.lock().iter_mut() {
            if let Some(lost) = lost {
                let base = *sub.lost_base.get_or_insert(lost);
                let since = lost.saturating_sub(base);
                if since > sub.told_lost {
                    let line = MonitorLine::Lost { count: since };
                    if sub.tx.try_send(encode(&line)).is_ok() {
                        sub.told_lost = since;
                    }
                }
            }
            if sub.dropped > sub.told_dropped {
                let line = MonitorLine::Dropped { count: sub.dropped };
                if sub.tx.try_send(encode(&line)).is_ok() {
                    sub.told_dropped = sub.dropped;
                }
            }
        }
    }

    /// Keeps `line` as its pod's latest decision.
    fn record(&self, line: &DecisionLine) {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = recent.entry(line.netns_cookie).or_default();
        if kept.len() == crate::monitor::RECENT_KEPT {
            kept.pop_front();
        }
        kept.push_back(RecentDecision {
            at_unix_ms,
            line: line.clone(),
        });
    }

    /// The last decisions kept for the pod of netns cookie `cookie`, oldest
    /// first.
    pub(crate) fn recent(&self, cookie: u64) -> Vec<RecentDecision> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent
            .get(&cookie)
            .map(|kept| kept.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets the decisions of pods no longer meshed.
    fn keep_recent(&self, meshed: &HashMap<u64, String>) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.retain(|cookie, _| meshed.contains_key(cookie));
    }

    /// Ends every monitor's stream (the agent stops).
    fn close_all(&self) {
        self.lock().clear();
    }
}

fn encode(line: &MonitorLine) -> Arc<str> {
    serde_json::to_string(line).unwrap_or_default().into()
}

/// The reader thread's parts.
pub(crate) struct Reader {
    pub(crate) stream: DecisionStream,
    pub(crate) monitors: Arc<Monitors>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) view: Arc<DataPathView>,
    pub(crate) settings: MeshSettings,
    pub(crate) stop: Arc<AtomicBool>,
}

impl Reader {
    /// Reads decisions until `stop`, reporting only while monitors attach.
    pub(crate) fn run(mut self) {
        let epoll = match epoll_on(&self.stream) {
            Ok(epoll) => epoll,
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for the data path's decisions: monitor unavailable");
                self.shared.count_error("monitor");
                return;
            }
        };
        let mut reporting = false;
        let mut names = PodNames::default();
        let mut counted = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let wanted = self.monitors.attached() > 0;
            if wanted != reporting {
                match self.stream.set_reporting(wanted) {
                    Ok(()) => reporting = wanted,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot switch the data path's decision reports");
                        self.shared.count_error("monitor");
                    }
                }
            }
            let mut events = [nix::sys::epoll::EpollEvent::empty(); 1];
            let timeout = u16::try_from(TICK.as_millis()).unwrap_or(u16::MAX);
            let _ = epoll.wait(&mut events, timeout);
            while let Some(decision) = self.stream.next_decision() {
                if names.refresh(&self.shared) {
                    self.monitors.keep_recent(&names.names);
                }
                let pod = names.of(decision.netns_cookie);
                let line = DecisionLine::explain(&decision, pod.as_deref(), &self.settings);
                if names.names.contains_key(&decision.netns_cookie) {
                    self.monitors.record(&line);
                }
                self.monitors.fan_out(&line);
            }
            if reporting && counted.elapsed() >= Duration::from_millis(500) {
                counted = Instant::now();
                let lost = self
                    .view
                    .counters()
                    .ok()
                    .map(|c| c[counter::DECISIONS_LOST as usize]);
                self.monitors.tell_counts(lost);
            }
        }
        if let Err(e) = self.stream.set_reporting(false) {
            tracing::warn!(error = %e, "cannot switch the data path's decision reports off");
        }
        self.monitors.close_all();
    }
}

fn epoll_on(stream: &DecisionStream) -> nix::Result<nix::sys::epoll::Epoll> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(stream, EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
    Ok(epoll)
}

/// Pod names by netns cookie, rebuilt when the pod worker publishes anew.
#[derive(Default)]
struct PodNames {
    published: Option<Arc<super::shared::Pods>>,
    names: HashMap<u64, String>,
}

impl PodNames {
    /// Rebuilds the names if the pod worker published anew since; says
    /// whether it did.
    fn refresh(&mut self, shared: &Shared) -> bool {
        let pods = shared.pods();
        if self
            .published
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &pods))
        {
            return false;
        }
        self.names = pods
            .meshed
            .iter()
            .map(|p| (p.cookie, p.name.clone()))
            .collect();
        self.published = Some(pods);
        true
    }

    /// The name of the pod of netns cookie `cookie` (`None`: the hook could
    /// not tell; `netns:COOKIE`: a namespace that is not a meshed pod's).
    fn of(&self, cookie: u64) -> Option<String> {
        if cookie == 0 {
            return None;
        }
        Some(
            self.names
                .get(&cookie)
                .cloned()
                .unwrap_or_else(|| format!("netns:{cookie}")),
        )
    }
}
