//! CNI requests (from the `netns-cni` plugin, through the control socket):
//! the same per-pod work as the other sources, done by the pod worker in
//! its turn while the plugin waits, with the attachment recorded so that
//! DEL finds it after a restart.

use std::time::{Duration, Instant};

use super::pods::{PodTable, Taken};
use crate::cni::{Attachment, CniReply, code};
use crate::source::cni::CniState;
use crate::source::kubernetes::{Directory, Verdict};
use netns_datapath::settings::PodSettings;

/// How long a CNI ADD waits for the API server watch to know its pod.
const KUBE_WAIT: Duration = Duration::from_secs(3);

impl PodTable {
    pub(crate) fn cni_add(
        &mut self,
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
        let recording = Instant::now();
        let recorded = state.record(pod);
        self.shared.setup.observe("record", recording.elapsed());
        if let Err(e) = recorded {
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
    pub(crate) fn cni_del(&mut self, state: &CniState, pod: &Attachment) -> CniReply {
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
        if self.pods.contains_key(&netns) {
            self.gone(&netns);
        }
        tracing::info!(container = %pod.container_id, netns = %netns.display(), "CNI DEL: pod removed");
        CniReply::done()
    }

    pub(crate) fn cni_check(&mut self, state: &CniState, pod: &Attachment) -> CniReply {
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
        let facts = self.pods.get(&recorded.netns).map(|p| p.facts.clone());
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
        let missing = self.view.missing_pod_entries(facts.cookie, &wanted);
        if missing.is_empty() {
            CniReply::done()
        } else {
            CniReply::failed(
                code::NOT_MESHED,
                format!(
                    "pod {} (netns cookie {}): missing from the data path: {}",
                    pod.container_id,
                    facts.cookie,
                    missing.join(", ")
                ),
            )
        }
    }

    pub(crate) fn cni_gc(&mut self, state: &CniState, valid: &[String]) -> CniReply {
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

/// With the Kubernetes pod source: the pod's name and settings when the
/// API server says it has a sidecar; the reply to give at once when it
/// does not (left alone), or when the watch has not seen it within
/// [`KUBE_WAIT`] (try again later). Without: `None` (node settings).
/// Asked before the request is queued: waiting for the watch must not
/// hold up the pod worker.
pub(crate) async fn kube_verdict(
    directory: Option<&Directory>,
    pod: &Attachment,
) -> Result<Option<(String, PodSettings)>, CniReply> {
    let Some(directory) = directory else {
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
                tokio::time::sleep(Duration::from_millis(10)).await;
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
