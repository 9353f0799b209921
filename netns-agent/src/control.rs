//! The control socket: a root-only unix socket (mode 0600, peer credentials
//! checked) that answers one request per connection ([`crate::protocol`]).
//! `netns-agent status` and `monitor` talk to it, and the `netns-cni`
//! plugin (`cni_*` ops, see [`crate::cni`]). What a request does is the
//! [`Handler`]'s business; this module only reads, bounds and answers. A
//! monitor's answer is a stream: lines until either side closes.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cni::{CniReply, CniRequest, code};
use crate::protocol::{Refusal, Request, parse_reply};
use crate::status::Status;

/// A monitor's lines (JSON, without newline), as the agent produces them;
/// the subscription ends when this is dropped.
pub struct MonitorStream {
    /// The lines; the channel closes when the agent stops.
    pub lines: tokio::sync::mpsc::Receiver<Arc<str>>,
    /// Ends the subscription when dropped.
    pub guard: Box<dyn Send>,
}

impl std::fmt::Debug for MonitorStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorStream").finish_non_exhaustive()
    }
}

/// What answers the control socket's requests (the daemon's handles).
pub trait Handler: Send + Sync + 'static {
    /// Subscribes a monitor, or says why not (an unknown verdict, too many
    /// monitors).
    fn monitor(&self, filter: crate::monitor::MonitorFilter) -> Result<MonitorStream, String>;
    /// The agent's status, made after the request came (may block: it is
    /// called on a blocking thread).
    fn status(&self) -> Arc<Status>;
    /// Does a CNI request by `deadline`: not started if its turn comes too
    /// late, rolled back if an ADD ends too late.
    fn cni(
        &self,
        request: CniRequest,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = CniReply> + Send + '_>>;
}

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
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

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
pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>) -> anyhow::Result<()> {
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
                let _ = conn.write_all(format!("{line}\n").as_bytes()).await;
            });
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            if let Err(e) = answer(conn, handler).await {
                tracing::debug!(error = %e, "control client");
            }
            drop(permit);
        });
    }
}

/// An answer: one line, or a monitor's stream.
enum Answer {
    Line(String),
    Stream(MonitorStream),
}

async fn answer(mut conn: UnixStream, handler: Arc<dyn Handler>) -> std::io::Result<()> {
    let answer = match conn.peer_cred() {
        Ok(cred) if cred.uid() == 0 => read_request(&mut conn, handler).await,
        Ok(cred) => Answer::Line(refuse(format!(
            "permission denied: the control socket answers root only (your uid is {})",
            cred.uid()
        ))),
        Err(e) => Answer::Line(refuse(format!("cannot read peer credentials: {e}"))),
    };
    let reply = match answer {
        Answer::Line(reply) => reply,
        Answer::Stream(stream) => return stream_lines(conn, stream).await,
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

/// Writes a monitor's lines until the agent ends the stream or the client
/// goes. A client that stops reading blocks only this task: the agent
/// drops what its queue cannot hold and counts it.
async fn stream_lines(mut conn: UnixStream, mut stream: MonitorStream) -> std::io::Result<()> {
    let (mut reader, mut writer) = conn.split();
    let mut ignored = [0u8; 64];
    loop {
        tokio::select! {
            line = stream.lines.recv() => {
                let Some(line) = line else { break };
                writer.write_all(line.as_bytes()).await?;
                writer.write_all(b"\n").await?;
            }
            // The client closed its end (or sent something): done.
            _ = reader.read(&mut ignored) => break,
        }
    }
    writer.shutdown().await
}

async fn read_request(conn: &mut UnixStream, handler: Arc<dyn Handler>) -> Answer {
    let mut line = Vec::new();
    let mut reader = BufReader::new(conn.take(MAX_REQUEST as u64 + 1));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let refused = |error: String| Answer::Line(refuse(error));
    match read {
        Err(_) => return refused(format!("no request within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => return refused(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return refused(format!("request larger than {MAX_REQUEST} bytes"));
    }
    let encoded = |reply: Result<String, serde_json::Error>| {
        Answer::Line(reply.unwrap_or_else(|e| refuse(e.to_string())))
    };
    match Request::parse(&line) {
        Err(error) => refused(error),
        Ok((Request::Status, _)) => {
            let status = tokio::task::spawn_blocking(move || handler.status()).await;
            match status {
                Ok(status) => encoded(serde_json::to_string(&*status)),
                Err(e) => refused(format!("status failed: {e}")),
            }
        }
        Ok((Request::Monitor(filter), _)) => match handler.monitor(filter) {
            Ok(stream) => Answer::Stream(stream),
            Err(error) => refused(error),
        },
        Ok((Request::Cni(request), budget)) => {
            let budget = budget.unwrap_or(CNI_TIMEOUT).min(MAX_CNI_BUDGET);
            let reply = handler.cni(request, Instant::now() + budget).await;
            encoded(serde_json::to_string(&reply))
        }
    }
}

fn refuse(error: String) -> String {
    serde_json::to_string(&Refusal { error }).unwrap_or_default()
}

/// Subscribes to the decisions of the agent at `path` (what `netns-agent
/// monitor` and `top` do): its answer's lines, one [`crate::monitor::MonitorLine`]
/// (or, first, a refusal) each, until the agent ends the stream.
pub async fn open_monitor(
    path: &Path,
    filter: crate::monitor::MonitorFilter,
) -> anyhow::Result<tokio::io::Lines<BufReader<UnixStream>>> {
    let mut conn = UnixStream::connect(path).await.with_context(|| {
        format!(
            "no agent answers on {} (is `netns-agent run` running?)",
            path.display()
        )
    })?;
    conn.write_all(&Request::Monitor(filter).to_line(None))
        .await
        .context("send the monitor request")?;
    Ok(BufReader::new(conn).lines())
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
    let sent = conn.write_all(&Request::Status.to_line(None)).await;
    let mut reply = String::new();
    let read = BufReader::new(conn).read_line(&mut reply).await;
    if reply.is_empty() {
        sent.context("send the status request")?;
        read.context("read the agent's answer")?;
        anyhow::bail!("the agent closed the connection without answering");
    }
    Ok(parse_reply(&reply)?)
}
