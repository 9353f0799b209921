//! The one pod-work queue and the pod worker that drains it. Every change
//! to a pod enters here, whoever asks: the pod source's events, CNI
//! requests (each with its client's deadline), address changes inside pods
//! and the kernel check's request to look at the pods' inbound links. One
//! thread does them in order, so no pod is ever worked on twice at once and
//! the pod table needs no lock; signals, status and metrics are served
//! meanwhile by other threads.
//!
//! A CNI request whose deadline passed before its turn is not started
//! (answered "try again later", nothing done); an ADD that finished after it
//! is rolled back before the answer goes: a client told to try again never
//! finds its pod half meshed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::pending::Pending;
use super::pods::{PodTable, Taken};
use crate::cni::{CniReply, CniRequest, code};
use crate::source::PodEvent;
use netns_datapath::settings::PodSettings;

/// One piece of pod work.
#[derive(Debug)]
pub(crate) enum Work {
    /// What the pod source reported.
    Source(PodEvent),
    /// A CNI request, to be answered on `reply` by `deadline`.
    Cni(CniWork),
    /// The pod with this netns cookie announced an address change.
    Addresses(u64),
    /// Check every pod's inbound link, attaching a missing one again.
    CheckInbound,
    /// The agent is stopping: end now (work still queued is refused).
    Stop,
}

impl Work {
    /// What kind of work it is, for the `work` counts of status and metrics.
    fn kind(&self) -> &'static str {
        match self {
            Work::Source(_) => "source",
            Work::Cni(_) => "cni",
            Work::Addresses(_) => "addresses",
            Work::CheckInbound => "inbound_check",
            Work::Stop => "stop",
        }
    }
}

/// A CNI request in the queue.
#[derive(Debug)]
pub(crate) struct CniWork {
    pub(crate) request: CniRequest,
    /// With the Kubernetes source: the pod's name and settings, asked of
    /// the API server watch before the request was queued.
    pub(crate) described: Option<(String, PodSettings)>,
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<CniReply>,
    /// When it entered the queue.
    pub(crate) queued: Instant,
}

/// Where work is sent. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    tx: Sender<Work>,
    stopping: Arc<AtomicBool>,
    /// A [`Work::CheckInbound`] is queued and not yet done.
    check_queued: Arc<AtomicBool>,
}

impl Queue {
    pub(crate) fn new() -> (Queue, Receiver<Work>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let queue = Queue {
            tx,
            stopping: Arc::new(AtomicBool::new(false)),
            check_queued: Arc::new(AtomicBool::new(false)),
        };
        (queue, rx)
    }

    /// Queues `work`; `false` once the worker is gone.
    pub(crate) fn send(&self, work: Work) -> bool {
        self.tx.send(work).is_ok()
    }

    /// Queues a CNI request and waits for its answer, at most until a
    /// moment after its deadline (the worker answers by then: it drops
    /// work that could not start in time and rolls back an ADD that ended late).
    pub(crate) async fn cni(
        &self,
        request: CniRequest,
        described: Option<(String, PodSettings)>,
        deadline: Instant,
    ) -> CniReply {
        const GRACE: Duration = Duration::from_secs(5);
        let (reply, answer) = oneshot::channel();
        let work = Work::Cni(CniWork {
            request,
            described,
            deadline,
            reply,
            queued: Instant::now(),
        });
        if !self.send(work) {
            return stopping();
        }
        let wait = deadline.saturating_duration_since(Instant::now()) + GRACE;
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => stopping(),
            Err(_) => CniReply::failed(
                code::TRY_AGAIN_LATER,
                "the agent did not answer by the request's deadline",
            ),
        }
    }

    /// Asks for an inbound check unless one is already waiting its turn.
    pub(crate) fn check_inbound(&self) {
        if !self.check_queued.swap(true, SeqCst) && !self.send(Work::CheckInbound) {
            self.check_queued.store(false, SeqCst);
        }
    }

    /// Tells the worker to stop after the pod in hand.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, SeqCst);
        let _ = self.tx.send(Work::Stop);
    }
}

fn stopping() -> CniReply {
    CniReply::failed(
        code::TRY_AGAIN_LATER,
        "the agent is stopping: nothing was done",
    )
}

/// The pod worker: work in order, and files waiting to become namespaces
/// tried again between pieces of it. Returns when told to stop or when
/// every sender is gone.
pub(crate) fn run(table: &mut PodTable, queue: &Queue, rx: &Receiver<Work>, settle: Duration) {
    let mut pending = Pending::default();
    let mut first_listing = true;
    loop {
        let work = match pending.next_due() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => rx.recv_timeout(due),
        };
        if queue.stopping.load(SeqCst) {
            refuse_all(work.ok(), rx);
            return;
        }
        if let Ok(work) = &work {
            table.shared.count_work(work.kind());
        }
        match work {
            Ok(Work::Source(event)) => {
                source_event(table, &mut pending, &mut first_listing, event, settle);
            }
            Ok(Work::Cni(work)) => {
                table.shared.setup.observe("queued", work.queued.elapsed());
                let reply = cni(table, work.request, work.described.as_ref(), work.deadline);
                // A client that gave up is answered by nobody: its work was
                // dropped or rolled back by the deadline it gave.
                let _ = work.reply.send(reply);
            }
            Ok(Work::Addresses(token)) => table.addresses_changed(token),
            Ok(Work::CheckInbound) => {
                queue.check_queued.store(false, SeqCst);
                let problems = table.check_inbound();
                table
                    .shared
                    .set_problems(super::shared::Area::Inbound, problems);
            }
            Ok(Work::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        for (path, first_seen) in pending.due() {
            match table.appeared(&path, first_seen, settle) {
                Taken::NotYet => pending.wait(path, first_seen),
                _ => pending.done(&path),
            }
        }
        table.publish();
    }
}

/// Answers the CNI requests still queued at stop (and the one just taken).
fn refuse_all(taken: Option<Work>, rx: &Receiver<Work>) {
    for work in taken.into_iter().chain(rx.try_iter()) {
        if let Work::Cni(work) = work {
            let _ = work.reply.send(stopping());
        }
    }
}

fn source_event(
    table: &mut PodTable,
    pending: &mut Pending,
    first_listing: &mut bool,
    event: PodEvent,
    settle: Duration,
) {
    match event {
        PodEvent::Appeared(path) => {
            let first_seen = pending.first_seen(&path);
            match table.appeared(&path, first_seen, settle) {
                Taken::NotYet => pending.wait(path, first_seen),
                _ => pending.done(&path),
            }
        }
        PodEvent::Described(pod) => {
            pending.done(&pod.path);
            table.described(&pod);
        }
        PodEvent::Gone(path) => {
            pending.done(&path);
            table.gone(&path);
        }
        PodEvent::Present(paths) => {
            table.shared.set_source_up(true);
            for path in table.present(&paths, settle) {
                let first_seen = pending.first_seen(&path);
                pending.wait(path, first_seen);
            }
            if std::mem::take(first_listing) {
                table.drop_stale_entries();
                table.publish();
                table.shared.set_listed();
                tracing::info!(pods = table.pods.len(), "initial reconcile done: ready");
            }
        }
    }
}

/// Does one CNI request by `deadline`: not started when its turn comes
/// after it, rolled back when an ADD ends after it.
fn cni(
    table: &mut PodTable,
    request: CniRequest,
    described: Option<&(String, PodSettings)>,
    deadline: Instant,
) -> CniReply {
    let Some(state) = table.config.cni_state.clone() else {
        return CniReply::failed(
            code::INVALID_CONFIG,
            format!(
                "this agent takes its pods from --pod-source {}: run it with --pod-source cni or kubernetes",
                table.source
            ),
        );
    };
    if Instant::now() >= deadline {
        tracing::warn!(
            request = request.op(),
            "CNI request not started: its deadline passed while it waited for its turn"
        );
        return CniReply::failed(
            code::TRY_AGAIN_LATER,
            "the request's time ran out while it waited for its turn: nothing was done",
        );
    }
    match request {
        CniRequest::CniAdd(pod) => {
            let reply = table.cni_add(&state, &pod, described);
            if reply.ok && Instant::now() > deadline {
                tracing::warn!(container = %pod.container_id, "CNI ADD done after its deadline: rolled back");
                table.cni_del(&state, &pod);
                return CniReply::failed(
                    code::TRY_AGAIN_LATER,
                    "the pod was meshed after the request's time ran out: rolled back",
                );
            }
            reply
        }
        CniRequest::CniDel(pod) => table.cni_del(&state, &pod),
        CniRequest::CniCheck(pod) => table.cni_check(&state, &pod),
        CniRequest::CniGc { valid } => table.cni_gc(&state, &valid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gc() -> CniRequest {
        CniRequest::CniGc { valid: vec![] }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_request_to_a_gone_worker_is_told_the_agent_is_stopping() {
        let (queue, rx) = Queue::new();
        drop(rx);
        let reply =
            runtime().block_on(queue.cni(gc(), None, Instant::now() + Duration::from_secs(1)));
        assert_eq!(reply.code, Some(code::TRY_AGAIN_LATER));
        assert!(reply.error.unwrap().contains("stopping"));
    }

    #[test]
    fn requests_queued_at_stop_are_answered_not_done() {
        let (queue, rx) = Queue::new();
        let asker = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                runtime().block_on(queue.cni(gc(), None, Instant::now() + Duration::from_secs(30)))
            })
        };
        // The request is in the queue; the agent stops before its turn.
        let first = rx.recv().unwrap();
        queue.stop();
        refuse_all(Some(first), &rx);
        let reply = asker.join().unwrap();
        assert!(!reply.ok);
        assert!(reply.error.unwrap().contains("nothing was done"));
    }

    #[test]
    fn one_inbound_check_waits_at_a_time() {
        let (queue, rx) = Queue::new();
        queue.check_inbound();
        queue.check_inbound();
        assert!(matches!(rx.try_recv(), Ok(Work::CheckInbound)));
        assert!(rx.try_recv().is_err(), "the second ask joined the first");
        // Taken by the worker: the next ask queues a new check.
        queue.check_queued.store(false, SeqCst);
        queue.check_inbound();
        assert!(matches!(rx.try_recv(), Ok(Work::CheckInbound)));
    }
}
