//! CNI requests (from the `netns-cni` plugin, through the control socket):
//! the same per-pod work as the other sources, done while the plugin waits,
//! with the attachment recorded so that DEL finds it after a restart.

use std::time::{Duration, Instant};

use super::{Agent, Taken};
use crate::cni::{Attachment, CniReply, CniRequest, code};
use crate::source::cni::CniState;
use crate::source::kubernetes::Verdict;
use netns_datapath::settings::PodSettings;

/// How long a CNI ADD waits for the API server watch to know its pod.
const KUBE_WAIT: Duration = Duration::from_secs(3);

impl Agent {
    /// Does one CNI request by `deadline` and says how it went: a request
    /// whose turn comes after it is not started, an ADD that ends after it is
    /// rolled back (its client has been told to try again).
    pub(crate) fn cni(&self, request: CniRequest, deadline: Instant) -> CniReply {
        let Some(state) = &self.config.cni_state else {
            return CniReply::failed(
                code::INVALID_CONFIG,
                format!(
                    "this agent takes its pods from --pod-source {}: run it with --pod-source cni or kubernetes",
                    self.source
                ),
            );
        };
        // Asked before taking a turn: waiting for the watch must not hold
        // up the pod worker.
        let described = match &request {
            CniRequest::CniAdd(pod) => match self.kube_verdict(pod) {
                Ok(described) => described,
                Err(reply) => return reply,
            },
            _ => None,
        };
        let _turn = Self::lock(&self.pod_work);
        if Instant::now() >= deadline {
            return CniReply::failed(
                code::TRY_AGAIN_LATER,
                "the request's time ran out while it waited for its turn: nothing was done",
            );
        }
        match request {
            CniRequest::CniAdd(pod) => {
                let reply = self.cni_add(state, &pod, described.as_ref());
                if reply.ok && Instant::now() > deadline {
                    self.cni_del(state, &pod);
                    return CniReply::failed(
                        code::TRY_AGAIN_LATER,
                        "the pod was meshed after the request's time ran out: rolled back",
                    );
                }
                reply
            }
            CniRequest::CniDel(pod) => self.cni_del(state, &pod),
            CniRequest::CniCheck(pod) => self.cni_check(state, &pod),
            CniRequest::CniGc { valid } => self.cni_gc(state, &valid),
        }
    }

    /// With the Kubernetes pod source: the pod's name and settings when the
    /// API server says it has a sidecar; the reply to give at once when it
    /// does not (left alone), or when the watch has not seen it within
    /// [`KUBE_WAIT`] (try again later). Without: `None` (node settings).
    fn kube_verdict(&self, pod: &Attachment) -> Result<Option<(String, PodSettings)>, CniReply> {
        let Some(directory) = &self.config.kube_directory else {
            return Ok(None);
        };
        let (Some(namespace), Some(name)) = (&pod.pod_namespace, &pod.pod_name) else {
            tracing::info!(container = %pod.container_id, "CNI ADD without K8S_POD_NAMESPACE/K8S_POD_NAME: left alone");
            return Err(CniReply::done());
        };
        let name = format!("{namespace}/{name}");
        let deadline = Instant::now() + KUBE_WAIT;
        loop {
            match directory.verdict(&name) {
                Verdict::Mesh(settings) => return Ok(Some((name, settings))),
                Verdict::Leave => {
                    tracing::info!(pod = %name, container = %pod.container_id, "CNI ADD: no sidecar, left alone");
                    return Err(CniReply::done());
                }
                Verdict::Unknown if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Verdict::Unknown => {
                    return Err(CniReply::failed(
                        code::TRY_AGAIN_LATER,
                        format!(
                            "pod {name} is not known to this agent's API server watch yet (waited {KUBE_WAIT:?})"
                        ),
                    ));
                }
            }
        }
    }

    fn cni_add(
        &self,
        state: &CniState,
        pod: &Attachment,
        described: Option<&(String, PodSettings)>,
    ) -> CniReply {
        if let Err(e) = Attachment::check_container_id(&pod.container_id) {
            return CniReply::failed(code::INVALID_ENV, e);
        }
        if !pod.netns.is_absolute() {
            return CniReply::failed(
                code::INVALID_ENV,
                format!("CNI_NETNS {} is not an absolute path", pod.netns.display()),
            );
        }
        let described_ref = described.map(|(name, settings)| (name.as_str(), settings));
        match self.take_on(
            &pod.netns,
            Instant::now(),
            Duration::ZERO,
            &pod.addrs,
            described_ref,
        ) {
            Taken::Done => {}
            Taken::NotNamespace(reason) => {
                return CniReply::failed(
                    code::INVALID_ENV,
                    format!("CNI_NETNS {}: {reason}", pod.netns.display()),
                );
            }
            Taken::Failed(reason) => return CniReply::failed(code::MESH_FAILED, reason),
            Taken::NotYet => {
                return CniReply::failed(
                    code::TRY_AGAIN_LATER,
                    format!("{} is not a namespace yet", pod.netns.display()),
                );
            }
        }
        if let Err(e) = state.record(pod) {
            // Unrecorded, it could not be found by DEL after a restart: undo.
            self.gone(&pod.netns);
            return CniReply::failed(code::IO, format!("record the attachment: {e:#}"));
        }
        if let (Some(directory), Some((name, _))) = (&self.config.kube_directory, described) {
            directory.record_cni(name, &pod.netns);
        }
        tracing::info!(container = %pod.container_id, netns = %pod.netns.display(), addrs = ?pod.addrs, "CNI ADD: pod meshed");
        CniReply::done()
    }

    /// Removes exactly this attachment (every one of the container without an
    /// interface name); the pod leaves the mesh with its container's last
    /// attachment. An unknown attachment: done, nothing touched.
    fn cni_del(&self, state: &CniState, pod: &Attachment) -> CniReply {
        if Attachment::check_container_id(&pod.container_id).is_err() {
            // Nothing can have been recorded under it.
            return CniReply::done();
        }
        let recorded = match state.find(&pod.container_id, &pod.ifname) {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!(container = %pod.container_id, ifname = %pod.ifname, error = %format!("{e:#}"), "CNI DEL: unreadable record");
                return CniReply::failed(code::IO, format!("{e:#}"));
            }
        };
        let Some(first) = recorded.first() else {
            tracing::info!(container = %pod.container_id, ifname = %pod.ifname, "CNI DEL of an attachment not on record: nothing to do");
            return CniReply::done();
        };
        for attachment in &recorded {
            if let Err(e) = state.forget_record(attachment) {
                tracing::warn!(container = %pod.container_id, error = %format!("{e:#}"), "CNI DEL: cannot forget the record");
            }
        }
        let remaining = state
            .find(&pod.container_id, "")
            .map(|left| left.len())
            .unwrap_or_default();
        if remaining > 0 {
            tracing::info!(container = %pod.container_id, ifname = %pod.ifname, remaining, "CNI DEL: attachment removed, the pod stays meshed");
            return CniReply::done();
        }
        if let (Some(directory), Some(namespace), Some(name)) = (
            &self.config.kube_directory,
            &first.pod_namespace,
            &first.pod_name,
        ) {
            directory.forget_cni(&format!("{namespace}/{name}"));
        }
        let netns = first.netns.clone();
        if Self::lock(&self.pods).contains_key(&netns) {
            self.gone(&netns);
        }
        tracing::info!(container = %pod.container_id, netns = %netns.display(), "CNI DEL: pod removed");
        CniReply::done()
    }

    fn cni_check(&self, state: &CniState, pod: &Attachment) -> CniReply {
        let recorded = match state.find(&pod.container_id, &pod.ifname) {
            Ok(found) => match found.into_iter().next() {
                Some(recorded) => recorded,
                None => {
                    return CniReply::failed(
                        code::NOT_MESHED,
                        format!(
                            "no attachment on record for container {} interface {:?}",
                            pod.container_id, pod.ifname
                        ),
                    );
                }
            },
            Err(e) => return CniReply::failed(code::INVALID_ENV, format!("{e:#}")),
        };
        let facts = Self::lock(&self.pods)
            .get(&recorded.netns)
            .map(|p| p.facts.clone());
        let Some(facts) = facts else {
            return CniReply::failed(
                code::NOT_MESHED,
                format!(
                    "{} is not a meshed pod of this agent",
                    recorded.netns.display()
                ),
            );
        };
        let mut wanted = facts.addrs.clone();
        wanted.extend(&pod.addrs);
        wanted.sort_unstable();
        wanted.dedup();
        match self.with_datapath(|dp| dp.missing_pod_entries(facts.cookie, &wanted)) {
            Ok(missing) if missing.is_empty() => CniReply::done(),
            Ok(missing) => CniReply::failed(
                code::NOT_MESHED,
                format!(
                    "pod {} (netns cookie {}): missing from the data path: {}",
                    pod.container_id,
                    facts.cookie,
                    missing.join(", ")
                ),
            ),
            Err(e) => CniReply::failed(code::IO, crate::error_chain(&e)),
        }
    }

    fn cni_gc(&self, state: &CniState, valid: &[String]) -> CniReply {
        let recorded = match state.all() {
            Ok(all) => all,
            Err(e) => return CniReply::failed(code::IO, format!("{e:#}")),
        };
        let mut removed = 0;
        for pod in recorded.iter().filter(|p| !valid.contains(&p.container_id)) {
            self.cni_del(state, pod);
            removed += 1;
        }
        tracing::info!(removed, kept = recorded.len() - removed, "CNI GC");
        CniReply::done()
    }
}
