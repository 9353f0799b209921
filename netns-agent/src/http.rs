//! `/healthz` (the process answers), `/readyz` (programs attached, initial
//! reconcile done, control socket listening) and `/metrics` (Prometheus text
//! format) on a local port.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::daemon::Agent;

/// Pod setup latency buckets, in seconds.
const SETUP_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0];

/// Binds `addr`. The socket carries the data path's bypass `mark` (0: none),
/// like every IP socket the agent opens, and so does every connection it
/// accepts (the kernel copies the listener's mark).
pub fn listen(addr: SocketAddr, mark: u32) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if mark != 0 {
        socket
            .set_mark(mark)
            .with_context(|| format!("set SO_MARK {mark:#x} on the metrics listener"))?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("bind the metrics address {addr} (--metrics-addr)"))?;
    socket.listen(128)?;
    Ok(tokio::net::TcpListener::from_std(socket.into())?)
}

/// Serves until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, agent: Arc<Agent>) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(agent);
    axum::serve(listener, app).await.context("HTTP server")
}

async fn readyz(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    if agent.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&agent),
    )
}

/// The Prometheus text exposition of the agent's status.
fn render(agent: &Agent) -> String {
    let status = agent.status();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let count = |n: usize| vec![(String::new(), n as u64)];
    gauge(
        "netns_agent_ready",
        "1 when the initial listing is done, the pod source is up and the kernel holds the whole data path.",
        &count(usize::from(status.ready)),
    );
    gauge(
        "netns_agent_pods_managed",
        "Pods the agent manages.",
        &count(status.pods.len()),
    );
    gauge(
        "netns_agent_pods_meshed",
        "Managed pods in the mesh, as the kernel's maps say.",
        &count(status.pods.iter().filter(|p| p.meshed).count()),
    );
    let listening: Vec<(String, u64)> = status
        .pods
        .iter()
        .map(|p| {
            (
                format!("{{pod=\"{}\"}}", p.name.replace(['"', '\\'], "_")),
                u64::from(p.sidecar == "listening"),
            )
        })
        .collect();
    gauge(
        "netns_agent_pod_sidecar_listening",
        "1 when the pod's sidecar listens on the outbound port (the kernel's socket table); one series per managed pod, gone with it.",
        &listening,
    );
    gauge(
        "netns_agent_programs_attached",
        "eBPF programs attached.",
        &count(status.programs.len()),
    );
    let maps: Vec<(String, u64)> = status
        .maps
        .iter()
        .map(|m| (format!("{{map=\"{}\"}}", m.name), m.entries))
        .collect();
    gauge(
        "netns_agent_map_entries",
        "Entries in a data path map.",
        &maps,
    );
    let caps: Vec<(String, u64)> = status
        .maps
        .iter()
        .map(|m| (format!("{{map=\"{}\"}}", m.name), m.capacity))
        .collect();
    gauge(
        "netns_agent_map_capacity",
        "Capacity of a data path map.",
        &caps,
    );
    let _ = writeln!(
        out,
        "# HELP netns_agent_datapath_total Data path counters.\n# TYPE netns_agent_datapath_total counter"
    );
    for (name, value) in &status.counters {
        let _ = writeln!(
            out,
            "netns_agent_datapath_total{{counter=\"{name}\"}} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP netns_agent_errors_total Errors by kind.\n# TYPE netns_agent_errors_total counter"
    );
    for (kind, value) in &status.errors {
        let _ = writeln!(out, "netns_agent_errors_total{{kind=\"{kind}\"}} {value}");
    }
    render_setup_histogram(&mut out, &agent.setup_seconds());
    out
}

/// `netns_agent_pod_setup_seconds`, from every setup time so far.
fn render_setup_histogram(out: &mut String, setups: &[f64]) {
    let _ = writeln!(
        out,
        "# HELP netns_agent_pod_setup_seconds Time from a namespace appearing to its map entries written.\n# TYPE netns_agent_pod_setup_seconds histogram"
    );
    for bucket in SETUP_BUCKETS {
        let n = setups.iter().filter(|s| **s <= bucket).count();
        let _ = writeln!(
            out,
            "netns_agent_pod_setup_seconds_bucket{{le=\"{bucket}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "netns_agent_pod_setup_seconds_bucket{{le=\"+Inf\"}} {}",
        setups.len()
    );
    let _ = writeln!(
        out,
        "netns_agent_pod_setup_seconds_sum {}",
        setups.iter().sum::<f64>()
    );
    let _ = writeln!(out, "netns_agent_pod_setup_seconds_count {}", setups.len());
}
