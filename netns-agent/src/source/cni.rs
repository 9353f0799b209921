//! Pods from the `netns-cni` plugin: requests arrive on the control socket
//! ([`crate::control`]) and are done by the agent ([`crate::daemon`]); what
//! this source adds is memory across agent restarts. Each attachment the
//! agent took on is a file in a state directory (`<dir>/<container id>@<interface>`,
//! holding the [`Attachment`] as JSON), so that a DEL after a restart finds
//! the pod, and at start the attachments on record are listed as present
//! (the agent re-takes them, and drops the entries of the rest).

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::sync::mpsc::Sender;

use super::{PodEvent, PodSource, SourceTask};
use crate::cni::Attachment;

/// The CNI pod source over the state directory `dir`.
#[derive(Debug, Clone)]
pub struct Cni {
    state: CniState,
}

impl Cni {
    /// A source keeping its records in `dir` (created if missing).
    #[must_use]
    pub fn new(dir: PathBuf) -> Cni {
        Cni {
            state: CniState { dir },
        }
    }
}

impl PodSource for Cni {
    fn clone_box(&self) -> Box<dyn PodSource> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "cni"
    }

    fn run(self: Box<Self>, events: Sender<PodEvent>) -> SourceTask {
        Box::pin(async move {
            let present = self.state.recorded_netns()?;
            tracing::info!(
                dir = %self.state.dir.display(),
                attachments = present.len(),
                "CNI source: attachments on record"
            );
            if events.send(PodEvent::Present(present)).await.is_err() {
                return Ok(());
            }
            // Everything else comes through the control socket.
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

/// The state directory: one file per attachment.
#[derive(Debug, Clone)]
pub struct CniState {
    /// The directory.
    pub dir: PathBuf,
}

impl CniState {
    /// `<dir>/<container id>@<interface>`: an attachment is the pair, as the
    /// spec keys it (a pod may have several interfaces, each its own ADD).
    fn file(&self, container_id: &str, ifname: &str) -> anyhow::Result<PathBuf> {
        Attachment::check_container_id(container_id).map_err(anyhow::Error::msg)?;
        if !crate::cni::file_name_part(ifname, 15) {
            anyhow::bail!("interface name {ifname:?} is not up to 15 of [A-Za-z0-9._-]");
        }
        Ok(self.dir.join(format!("{container_id}@{ifname}")))
    }

    /// Records `pod` (write to a temporary file, then rename: never half written).
    pub fn record(&self, pod: &Attachment) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        let file = self.file(&pod.container_id, &pod.ifname)?;
        let tmp = self
            .dir
            .join(format!(".{}@{}.tmp", pod.container_id, pod.ifname));
        std::fs::write(&tmp, serde_json::to_vec(pod)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("rename to {}", file.display()))
    }

    /// The attachment recorded for (`container_id`, `ifname`), if any.
    pub fn get(&self, container_id: &str, ifname: &str) -> anyhow::Result<Option<Attachment>> {
        read_record(&self.file(container_id, ifname)?)
    }

    /// Forgets (`container_id`, `ifname`). Idempotent.
    pub fn forget(&self, container_id: &str, ifname: &str) -> anyhow::Result<()> {
        let file = self.file(container_id, ifname)?;
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove {}", file.display()))
            }
            _ => Ok(()),
        }
    }

    /// The attachments on record of `container_id`: the one on `ifname`, or
    /// every one of the container when `ifname` is empty (a DEL without
    /// `CNI_IFNAME`). Reads only that container's records.
    pub fn find(&self, container_id: &str, ifname: &str) -> anyhow::Result<Vec<Attachment>> {
        Attachment::check_container_id(container_id).map_err(anyhow::Error::msg)?;
        let mut found = Vec::new();
        if ifname.is_empty() {
            let prefix = format!("{container_id}@");
            let entries = match std::fs::read_dir(&self.dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
                other => other.with_context(|| format!("list {}", self.dir.display()))?,
            };
            for entry in entries {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    found.extend(read_record(&entry.path())?);
                }
            }
        } else {
            found.extend(self.get(container_id, ifname)?);
        }
        // A record of an earlier build, named after the container alone.
        found.extend(
            read_record(&self.dir.join(container_id))?
                .filter(|old| ifname.is_empty() || old.ifname == ifname),
        );
        Ok(found)
    }

    /// Every attachment on record.
    pub fn all(&self) -> anyhow::Result<Vec<Attachment>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.with_context(|| format!("list {}", self.dir.display()))?,
        };
        let mut all = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Some(pod) = read_record(&entry.path())? {
                all.push(pod);
            }
        }
        Ok(all)
    }

    /// Forgets `pod`'s record, whatever its file is called (records of an
    /// earlier build are named after the container id alone).
    pub fn forget_record(&self, pod: &Attachment) -> anyhow::Result<()> {
        let legacy = self.dir.join(&pod.container_id);
        if legacy.is_file() {
            std::fs::remove_file(&legacy)
                .with_context(|| format!("remove {}", legacy.display()))?;
        }
        self.forget(&pod.container_id, &pod.ifname)
    }

    /// The namespaces of the attachments on record; records whose namespace
    /// is gone (the pod went while no agent ran) are forgotten.
    fn recorded_netns(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut present = Vec::new();
        for pod in &self.all()? {
            if Path::new(&pod.netns).exists() {
                present.push(pod.netns.clone());
            } else {
                tracing::info!(container = %pod.container_id, ifname = %pod.ifname, netns = %pod.netns.display(), "CNI attachment of a namespace that is gone: forgotten");
                self.forget_record(pod)?;
            }
        }
        present.sort();
        present.dedup();
        Ok(present)
    }
}

/// The attachment in the record file `file`, if it exists.
fn read_record(file: &Path) -> anyhow::Result<Option<Attachment>> {
    match std::fs::read(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", file.display())),
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", file.display()))?,
        )),
    }
}
