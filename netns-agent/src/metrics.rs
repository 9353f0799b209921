//! `/metrics`: a [`Status`] in the OpenMetrics text format, through
//! `prometheus-client`. A registry is made per exposition from the status,
//! so a pod's series exist exactly while the pod is managed (the label set
//! is bounded by the pods of the node); the setup-time histogram lives as
//! long as the agent.

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::status::Status;

/// Pod setup latency buckets, in seconds.
const SETUP_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0];
/// Setup phase buckets, in seconds: 20 us to 100 ms.
const PHASE_BUCKETS: [f64; 12] = [
    0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
];

/// How long pods took to set up: in all (from the namespace appearing to
/// its entries written), and by phase of the agent's work: `queued` (a CNI
/// request waiting for its turn), `open` (the namespace opened and
/// checked), `learn` (its cookie from the probe, its address subscription
/// and addresses), `equip` (its sidecar's open listeners found and
/// equipped), `write` (map entries, inbound link, address watch), `record`
/// (a CNI attachment written to the state directory).
#[derive(Debug, Clone)]
pub struct SetupTimes {
    /// In all.
    pub total: Histogram,
    phases: Family<PhaseLabel, Histogram, fn() -> Histogram>,
}

impl Default for SetupTimes {
    fn default() -> SetupTimes {
        SetupTimes {
            total: Histogram::new(SETUP_BUCKETS),
            phases: Family::new_with_constructor(|| Histogram::new(PHASE_BUCKETS)),
        }
    }
}

impl SetupTimes {
    /// Notes that `phase` took `took`.
    pub fn observe(&self, phase: &'static str, took: std::time::Duration) {
        self.phases
            .get_or_create(&vec![("phase", phase)])
            .observe(took.as_secs_f64());
    }

    /// A timer of consecutive phases, from now.
    #[must_use]
    pub fn phase_timer(&self) -> PhaseTimer<'_> {
        PhaseTimer {
            times: self,
            since: std::time::Instant::now(),
        }
    }
}

/// See [`SetupTimes::phase_timer`].
#[derive(Debug)]
pub struct PhaseTimer<'a> {
    times: &'a SetupTimes,
    since: std::time::Instant,
}

impl PhaseTimer<'_> {
    /// `phase` is done: notes its time and starts the next one.
    pub fn done(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.times.observe(phase, now - self.since);
        self.since = now;
    }
}

/// The content type of [`encode_status`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
/// `phase="..."`.
type PhaseLabel = Vec<(&'static str, &'static str)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: usize) {
    let gauge: Gauge = Gauge::default();
    set_gauge(&gauge, value as u64);
    registry.register(name, help, gauge);
}

/// A family `name` of metrics `M`, one per value of `label`, each set by
/// `set` from its sample.
fn family<'a, M>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
    set: impl Fn(&M, u64),
) where
    M: EncodeMetric + TypedMetric + Default + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<Labels, M>::default();
    for (value_label, value) in samples {
        set(
            &family.get_or_create(&vec![(label, value_label.to_owned())]),
            value,
        );
    }
    registry.register(name, help, family);
}

fn set_gauge(gauge: &Gauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

fn add_to_counter(counter: &Counter, value: u64) {
    counter.inc_by(value);
}

/// Each pod's decisions by verdict: labels bounded by the managed pods and
/// the verdicts there are.
fn register_pod_decisions(registry: &mut Registry, pods: &[crate::status::PodStatus]) {
    let decisions = Family::<Labels, Counter>::default();
    for pod in pods {
        for (verdict, n) in &pod.decisions {
            let labels = vec![("pod", pod.name.clone()), ("verdict", verdict.clone())];
            decisions.get_or_create(&labels).inc_by(*n);
        }
    }
    registry.register(
        "netns_agent_pod_decisions",
        "Each managed pod's connection decisions by verdict, as the kernel counted them; a pod's series go with it",
        decisions,
    );
}

/// The monitors' part of the exposition.
fn register_monitor(registry: &mut Registry, monitor: &crate::status::MonitorStatus) {
    gauge(
        registry,
        "netns_agent_monitors_attached",
        "netns-agent monitors attached to the control socket",
        monitor.attached,
    );
    gauge(
        registry,
        "netns_agent_decisions_reporting",
        "1 while the programs report decisions (the switch as the kernel's map holds it)",
        usize::from(monitor.reporting),
    );
    let dropped: Counter = Counter::default();
    dropped.inc_by(monitor.dropped);
    registry.register(
        "netns_agent_monitor_dropped",
        "Decisions dropped for monitors that read too slowly",
        dropped,
    );
}

/// The exposition of `status`, with the pod setup times so far.
#[must_use]
pub fn encode_status(status: &Status, setup: &SetupTimes) -> String {
    let mut registry = Registry::default();
    gauge(
        &mut registry,
        "netns_agent_ready",
        "1 when the initial listing is done, the pod source is up and the kernel holds the whole data path",
        usize::from(status.ready),
    );
    gauge(
        &mut registry,
        "netns_agent_pods_managed",
        "Pods the agent manages",
        status.pods.len(),
    );
    gauge(
        &mut registry,
        "netns_agent_pods_meshed",
        "Managed pods in the mesh, as the kernel's maps say",
        status.pods.iter().filter(|p| p.meshed).count(),
    );
    family::<Gauge>(
        &mut registry,
        "netns_agent_pod_sidecar_listening",
        "1 when the pod's sidecar listens on the outbound port (the kernel's socket table); one series per managed pod, gone with it",
        "pod",
        status
            .pods
            .iter()
            .map(|p| (p.name.as_str(), u64::from(p.sidecar == "listening"))),
        set_gauge,
    );
    gauge(
        &mut registry,
        "netns_agent_programs_attached",
        "eBPF programs attached",
        status.programs.len(),
    );
    family::<Gauge>(
        &mut registry,
        "netns_agent_map_entries",
        "Entries in a data path map",
        "map",
        status.maps.iter().map(|m| (m.name.as_str(), m.entries)),
        set_gauge,
    );
    family::<Gauge>(
        &mut registry,
        "netns_agent_map_capacity",
        "Capacity of a data path map",
        "map",
        status.maps.iter().map(|m| (m.name.as_str(), m.capacity)),
        set_gauge,
    );
    family::<Counter>(
        &mut registry,
        "netns_agent_datapath",
        "Data path counters",
        "counter",
        status.counters.iter().map(|(n, v)| (n.as_str(), *v)),
        add_to_counter,
    );
    family::<Counter>(
        &mut registry,
        "netns_agent_errors",
        "Errors by kind",
        "kind",
        status.errors.iter().map(|(n, v)| (n.as_str(), *v)),
        add_to_counter,
    );
    family::<Counter>(
        &mut registry,
        "netns_agent_pod_work",
        "Pieces of pod work done by the pod worker, by kind",
        "kind",
        status.work.iter().map(|(n, v)| (n.as_str(), *v)),
        add_to_counter,
    );
    register_monitor(&mut registry, &status.monitor);
    register_pod_decisions(&mut registry, &status.pods);
    registry.register(
        "netns_agent_pod_setup_seconds",
        "Time from a namespace appearing to its map entries written",
        setup.total.clone(),
    );
    registry.register(
        "netns_agent_pod_setup_phase_seconds",
        "Time of each phase of a pod's setup (queued, open, learn, equip, write, record)",
        setup.phases.clone(),
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{MapStatus, PodStatus};

    fn pod(name: &str, sidecar: &str) -> PodStatus {
        PodStatus::example(name, sidecar)
    }

    #[test]
    fn every_family_is_exposed_and_a_pod_series_goes_with_its_pod() {
        let setup = SetupTimes::default();
        setup.total.observe(0.002);
        setup.observe("learn", std::time::Duration::from_micros(300));
        let mut status = Status {
            ready: true,
            pods: vec![pod("a", "listening"), pod("b", "not listening")],
            maps: vec![MapStatus {
                name: "MESHED_NETNS".into(),
                entries: 2,
                capacity: 65536,
            }],
            counters: vec![("redirected".into(), 7)],
            errors: vec![("datapath".into(), 1)],
            ..Status::default()
        };
        let text = encode_status(&status, &setup);
        for line in [
            "netns_agent_ready 1",
            "netns_agent_pods_managed 2",
            "netns_agent_pods_meshed 2",
            "netns_agent_pod_sidecar_listening{pod=\"a\"} 1",
            "netns_agent_pod_sidecar_listening{pod=\"b\"} 0",
            "netns_agent_map_entries{map=\"MESHED_NETNS\"} 2",
            "netns_agent_map_capacity{map=\"MESHED_NETNS\"} 65536",
            "netns_agent_datapath_total{counter=\"redirected\"} 7",
            "netns_agent_errors_total{kind=\"datapath\"} 1",
            "netns_agent_pod_setup_seconds_bucket{le=\"0.005\"} 1",
            "netns_agent_pod_setup_seconds_count 1",
            "netns_agent_pod_setup_phase_seconds_bucket{le=\"0.0005\",phase=\"learn\"} 1",
            "netns_agent_pod_setup_phase_seconds_count{phase=\"learn\"} 1",
            "netns_agent_pod_decisions_total{pod=\"a\",verdict=\"captured\"} 5",
            "netns_agent_pod_decisions_total{pod=\"b\",verdict=\"sidecar_not_listening\"} 1",
            "netns_agent_monitors_attached 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        status.pods.remove(0);
        let text = encode_status(&status, &setup);
        assert!(!text.contains("pod=\"a\""), "{text}");
    }
}
