//! `/healthz` (the process answers), `/readyz` (initial reconcile done,
//! the pod source up, the kernel holding the whole data path) and
//! `/metrics` (OpenMetrics text, see [`crate::metrics`]) on a local port.
//! What they say is the [`Health`] handle's business.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What the HTTP endpoints report (the daemon's handles).
pub trait Health: Send + Sync + 'static {
    /// Whether `/readyz` says ready.
    fn ready(&self) -> bool;
    /// The `/metrics` text (may block: called on a blocking thread).
    fn metrics(&self) -> String;
}

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
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<dyn Health>,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    axum::serve(listener, app).await.context("HTTP server")
}

async fn readyz(State(health): State<Arc<dyn Health>>) -> impl IntoResponse {
    if health.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(health): State<Arc<dyn Health>>) -> impl IntoResponse {
    // Made from the kernel's maps and the pods' socket tables: off the
    // async workers.
    match tokio::task::spawn_blocking(move || health.metrics()).await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("metrics failed: {e}\n"),
        ),
    }
}
