//! Reports on the agent: the [`Status`] that `netns-agent status` and
//! `/metrics` show, made from what the stages published ([`Shared`]) and
//! what the kernel says now (the maps through a [`DataPathView`], each
//! pod's sidecar from its socket table). Never takes the data path's lock
//! and never waits for pod work. Making one walks the connection map (one
//! system call per entry) and each pod's socket table, so concurrent asks
//! share one: a status request gets one made after it asked; a scrape takes
//! one at most a second old.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use netns_datapath::DataPathView;
use netns_ebpf::{MeshSettings, counter};

use super::shared::Shared;
use crate::status::{MapStatus, PodStatus, Status};

/// What a report says of the agent that never changes while it runs.
#[derive(Debug, Clone)]
pub(crate) struct Fixed {
    pub(crate) cgroup: String,
    pub(crate) bpffs: String,
    pub(crate) source: &'static str,
    pub(crate) settings: MeshSettings,
}

/// See the module's documentation.
#[derive(Debug)]
pub(crate) struct Reporter {
    shared: Arc<Shared>,
    view: Arc<DataPathView>,
    fixed: Fixed,
    /// The last status made, and when its making started.
    last: Mutex<Option<(Instant, Arc<Status>)>>,
}

impl Reporter {
    pub(crate) fn new(shared: Arc<Shared>, view: Arc<DataPathView>, fixed: Fixed) -> Reporter {
        Reporter {
            shared,
            view,
            fixed,
            last: Mutex::new(None),
        }
    }

    /// Whether the agent is ready (see [`Shared::ready`]).
    pub(crate) fn ready(&self) -> bool {
        self.shared.ready()
    }

    /// A status whose making started at most `max_age` before this call
    /// (zero: after it). Blocks while one is being made.
    pub(crate) fn status(&self, max_age: Duration) -> Arc<Status> {
        let asked = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((started, status)) = &*last
            && (*started >= asked || asked.duration_since(*started) <= max_age)
        {
            return Arc::clone(status);
        }
        let started = Instant::now();
        let status = Arc::new(self.make());
        *last = Some((started, Arc::clone(&status)));
        status
    }

    /// The Prometheus exposition of a status at most a second old.
    pub(crate) fn metrics(&self) -> String {
        crate::metrics::encode_status(&self.status(Duration::from_secs(1)), &self.shared.setup)
    }

    fn make(&self) -> Status {
        let pods = self.shared.pods();
        let outbound_port = self.fixed.settings.outbound_port;
        let mut decisions = self.view.pod_decisions();
        Status {
            pid: std::process::id(),
            ready: self.shared.ready(),
            problems: self.shared.problems(),
            cgroup: self.fixed.cgroup.clone(),
            bpffs: self.fixed.bpffs.clone(),
            source: self.fixed.source.to_owned(),
            programs: self.shared.programs().as_ref().clone(),
            pods: pods
                .meshed
                .iter()
                .map(|p| PodStatus {
                    name: p.name.clone(),
                    path: p.path.display().to_string(),
                    netns_inode: p.ns.id().ino,
                    cookie: p.cookie,
                    addrs: p.addrs.iter().map(ToString::to_string).collect(),
                    meshed: self.view.missing_pod_entries(p.cookie, &p.addrs).is_empty(),
                    equipped: p.equipped.clone(),
                    sidecar: self.sidecar_state(&p.ns, p.cookie, outbound_port),
                    inbound: self.view.inbound_in_place(&p.ns, p.cookie),
                    settings: p.settings.clone(),
                    since_unix: p
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    decisions: decisions
                        .remove(&p.cookie)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(v, n)| {
                            let name = netns_ebpf::verdict::NAMES
                                .get(usize::from(v))
                                .copied()
                                .unwrap_or("unknown");
                            (name.to_owned(), n)
                        })
                        .collect(),
                    recent: self.shared.monitors.recent(p.cookie),
                })
                .collect(),
            meanings: crate::monitor::meanings(&self.fixed.settings),
            maps: self
                .view
                .map_fill()
                .into_iter()
                .map(|(name, entries, capacity)| MapStatus {
                    name: name.to_owned(),
                    entries,
                    capacity,
                })
                .collect(),
            counters: self.view.counters().map_or_else(
                |_| Vec::new(),
                |values| {
                    counter::NAMES
                        .iter()
                        .zip(values)
                        .map(|(n, v)| ((*n).to_owned(), v))
                        .collect()
                },
            ),
            errors: self.shared.errors(),
            monitor: crate::status::MonitorStatus {
                attached: self.shared.monitors.attached(),
                reporting: self.view.reporting(),
                dropped: self
                    .shared
                    .monitors
                    .dropped_total
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
            work: self.shared.work(),
            not_meshed: pods.not_meshed.clone(),
        }
    }

    /// A pod's sidecar as the kernel says now: listening on the outbound
    /// port in the pod, or why not and what the pod's apps meet meanwhile
    /// (per `--sidecar-absent` and whether it was ever seen).
    fn sidecar_state(&self, ns: &netns_core::NetNs, cookie: u64, port: u16) -> String {
        match crate::sidecar::listeners(ns, &[port]) {
            Ok(found) if !found.is_empty() => "listening".to_owned(),
            Ok(_) => {
                absent_state(self.fixed.settings.flags, self.view.sidecar_seen(cookie)).to_owned()
            }
            Err(e) => format!("unknown: {}", crate::error_chain(&e)),
        }
    }
}

/// What a pod's apps meet while its sidecar does not listen, under the
/// fail policy of `flags`, the sidecar having been `seen` before or not.
fn absent_state(flags: u16, seen: bool) -> &'static str {
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
