//! The control socket: a root-only unix socket (mode 0600, peer credentials
//! checked) that answers one JSON request per line. `netns-agent status`
//! talks to it, and the `netns-cni` plugin (`cni_*` ops, see [`crate::cni`]).
//!
//! ```text
//! -> {"op":"status"}
//! <- {"pid":...,"ready":true,...}
//! -> {"op":"nonsense"}
//! <- {"error":"unknown op \"nonsense\" (known: status, cni_add, cni_del, cni_check, cni_gc)"}
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cni::{CniReply, CniRequest, code};
use crate::daemon::Agent;
use crate::status::Status;

/// The longest request line accepted, in bytes: a CNI GC lists every
/// attachment of the node (about 100 bytes each: 10,000 fit).
pub const MAX_REQUEST: usize = 1024 * 1024;
/// How long a client may take to read its answer before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many requests are served at once; more are answered "busy" (CNI
/// error 11, try again later) without being read.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long a CNI request may take the agent when its client names no
/// budget (`budget_ms`); the plugin always names its own (`timeoutMs` less a
/// margin). Work still queued when the budget runs out is never started, and
/// an ADD that finishes late is rolled back: the client was told to try again.
pub const CNI_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest budget a client may ask for.
pub const MAX_CNI_BUDGET: Duration = Duration::from_secs(300);
/// How long past its budget a request's work may run before the client is
/// answered anyway (the work itself checks the deadline and rolls back).
const BUDGET_GRACE: Duration = Duration::from_secs(5);
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A request.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// What is asked: `status`.
    pub op: String,
    /// How long the client waits for a CNI request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_ms: Option<u64>,
}

/// An answer that is not a status.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refusal {
    /// What went wrong.
    pub error: String,
}

/// Binds the socket at `path`, replacing a stale one, refusing to steal a
/// live agent's.
pub fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another agent answers on {}: stop it first (or pass another --control-socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("bind control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Answers clients until the listener fails. A bad client never stops it.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>) -> anyhow::Result<()> {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let (mut conn, _) = listener
            .accept()
            .await
            .context("accept on the control socket")?;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            // Over the limit: told at once, never queued (a plugin then
            // reports "try again later" to its runtime).
            tokio::spawn(async move {
                let busy = CniReply::failed(
                    code::TRY_AGAIN_LATER,
                    format!("busy: {MAX_IN_FLIGHT} requests in flight"),
                );
                let line = serde_json::to_string(&busy).unwrap_or_default();
                let _ = conn.write_all(line.as_bytes()).await;
                let _ = conn.write_all(b"\n").await;
            });
            continue;
        };
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            if let Err(e) = answer(conn, agent).await {
                tracing::debug!(error = %e, "control client");
            }
            drop(permit);
        });
    }
}

async fn answer(mut conn: UnixStream, agent: Arc<Agent>) -> std::io::Result<()> {
    let reply = match conn.peer_cred() {
        Ok(cred) if cred.uid() == 0 => read_request(&mut conn, agent).await,
        Ok(cred) => refuse(format!(
            "permission denied: the control socket answers root only (your uid is {})",
            cred.uid()
        )),
        Err(e) => refuse(format!("cannot read peer credentials: {e}")),
    };
    // A client that does not read cannot hold its slot (and its answer's
    // memory) for longer than this.
    let write = async {
        conn.write_all(reply.as_bytes()).await?;
        conn.write_all(b"\n").await?;
        conn.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn read_request(conn: &mut UnixStream, agent: Arc<Agent>) -> String {
    let mut line = Vec::new();
    let mut reader = BufReader::new(conn.take(MAX_REQUEST as u64 + 1));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    match read {
        Err(_) => return refuse(format!("no request within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => return refuse(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return refuse(format!("request larger than {MAX_REQUEST} bytes"));
    }
    match serde_json::from_slice::<Request>(&line) {
        Err(e) => refuse(format!("malformed request: {e}")),
        Ok(req) if req.op == "status" => {
            serde_json::to_string(&agent.status()).unwrap_or_else(|e| refuse(e.to_string()))
        }
        Ok(req) if req.op.starts_with("cni_") => {
            let reply = match serde_json::from_slice::<CniRequest>(&line) {
                Err(e) => CniReply::failed(code::DECODE, format!("malformed CNI request: {e}")),
                Ok(request) => {
                    let budget = req
                        .budget_ms
                        .map_or(CNI_TIMEOUT, Duration::from_millis)
                        .min(MAX_CNI_BUDGET);
                    do_cni(agent, request, budget).await
                }
            };
            serde_json::to_string(&reply).unwrap_or_else(|e| refuse(e.to_string()))
        }
        Ok(req) => refuse(format!(
            "unknown op {:?} (known: status, cni_add, cni_del, cni_check, cni_gc)",
            req.op
        )),
    }
}

/// Runs a CNI request on a blocking thread (pod work enters namespaces and
/// waits for the pod worker's turn) within `budget`: the work is dropped if
/// its turn comes too late and rolled back if it ends too late.
async fn do_cni(agent: Arc<Agent>, request: CniRequest, budget: Duration) -> CniReply {
    let deadline = std::time::Instant::now() + budget;
    let work = tokio::task::spawn_blocking(move || agent.cni(request, deadline));
    match tokio::time::timeout(budget + BUDGET_GRACE, work).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => CniReply::failed(code::TRY_AGAIN_LATER, format!("the request failed: {e}")),
        Err(_) => CniReply::failed(
            code::TRY_AGAIN_LATER,
            format!("the agent took longer than {budget:?}"),
        ),
    }
}

fn refuse(error: String) -> String {
    serde_json::to_string(&Refusal { error }).unwrap_or_default()
}

/// Asks the agent at `path` for its status (what `netns-agent status` does).
pub async fn ask_status(path: &Path) -> anyhow::Result<Status> {
    let mut conn = UnixStream::connect(path).await.with_context(|| {
        format!(
            "no agent answers on {} (is `netns-agent run` running?)",
            path.display()
        )
    })?;
    // An agent that refuses (busy, not root) answers without reading the
    // request and closes: the write may fail while its answer waits to be
    // read, so the answer is read either way.
    let sent = conn.write_all(b"{\"op\":\"status\"}\n").await;
    let mut reply = String::new();
    let read = BufReader::new(conn).read_line(&mut reply).await;
    if reply.is_empty() {
        sent.context("send the status request")?;
        read.context("read the agent's answer")?;
        anyhow::bail!("the agent closed the connection without answering");
    }
    if let Ok(refusal) = serde_json::from_str::<Refusal>(&reply) {
        anyhow::bail!("the agent refused: {}", refusal.error);
    }
    serde_json::from_str(&reply)
        .with_context(|| format!("unreadable status from the agent: {reply}"))
}
