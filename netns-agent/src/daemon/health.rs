//! The agent's health as the kernel says it, checked every second: the data
//! path's programs on the cgroup and its map pins ([`DataPath::kernel_gaps`]),
//! each pod's inbound link in its namespace (read through the view, without
//! the pod worker; a missing one is repaired by the worker in its turn),
//! and the control socket file. A difference is logged, makes
//! `/readyz` false, and is repaired where it can be (a program attached
//! again, a map pinned again, a pod's inbound link attached again); what
//! stays broken keeps the agent unready and is named in `status`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use netns_datapath::{DataPathError, DataPathView};

use super::pods::{PodTable, SharedDataPath, with_datapath};
use super::shared::{Area, Shared};
use super::work::Queue;
use crate::status::ProgramStatus;

/// How often the kernel is asked.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// The kernel check's handles.
#[derive(Debug)]
pub(crate) struct KernelCheck {
    pub(crate) datapath: SharedDataPath,
    pub(crate) view: Arc<DataPathView>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: Queue,
    /// The control socket path, and the file (device, inode) the agent bound.
    pub(crate) control_socket: (PathBuf, Option<(u64, u64)>),
}

/// The file (device, inode) at `path` now.
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl KernelCheck {
    /// Checks every [`EVERY`] until `stop` says so (or its sender is gone),
    /// or the data path is taken out.
    pub(crate) fn run(&self, stop: &Receiver<()>) {
        loop {
            match stop.recv_timeout(EVERY) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if !self.check() {
                return;
            }
        }
    }

    /// One check and repair. Returns `false` once the agent is stopping.
    fn check(&self) -> bool {
        let mut problems = Vec::new();
        match with_datapath(&self.datapath, |dp| dp.kernel_gaps()) {
            Err(DataPathError::Stopping) => return false,
            Err(e) => problems.push(crate::error_chain(&e)),
            Ok(gaps) if gaps.is_empty() => {}
            Ok(gaps) => {
                for gap in &gaps {
                    tracing::warn!(%gap, "the kernel lacks part of the data path: repairing");
                }
                self.shared.count_error("kernel_gap");
                match with_datapath(&self.datapath, |dp| {
                    dp.repair(&gaps)?;
                    self.shared.publish_programs(programs(dp));
                    dp.kernel_gaps()
                }) {
                    Ok(left) => problems.extend(left.iter().map(|g| format!("{g} (not repaired)"))),
                    Err(e) => problems.push(format!("repair failed: {}", crate::error_chain(&e))),
                }
            }
        }
        self.shared.set_problems(Area::DataPath, problems);
        let (path, bound) = &self.control_socket;
        let control = if bound.is_some() && file_id(path) != *bound {
            vec![format!(
                "the control socket {} was removed or replaced: status and CNI requests cannot reach this agent",
                path.display()
            )]
        } else {
            Vec::new()
        };
        self.shared.set_problems(Area::ControlSocket, control);
        let pods = self.shared.pods();
        let gap = pods
            .meshed
            .iter()
            .any(|p| p.inbound && !self.view.inbound_in_place(&p.ns, p.cookie));
        if gap {
            self.queue.check_inbound();
        } else {
            self.shared.set_problems(Area::Inbound, Vec::new());
        }
        true
    }
}

/// The programs `dp` has attached, for status.
pub(crate) fn programs(dp: &netns_datapath::DataPath) -> Vec<ProgramStatus> {
    dp.programs()
        .iter()
        .map(|p| ProgramStatus {
            name: p.name.to_owned(),
            id: p.id,
        })
        .collect()
}

impl PodTable {
    /// Each meshed pod with inbound capture has its link attached (the
    /// kernel's word); a missing one is attached again. Returns what stays
    /// broken.
    pub(crate) fn check_inbound(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for pod in self.pods.values() {
            let Some(pass_ports) = self.config.inbound_pass_ports(&pod.settings) else {
                continue;
            };
            let cookie = pod.facts.cookie;
            let in_place =
                |dp: &mut netns_datapath::DataPath| Ok(dp.inbound_in_place(&pod.ns, cookie));
            if with_datapath(&self.datapath, in_place).unwrap_or(true) {
                continue;
            }
            let _span = super::pods::pod_span(&pod.path);
            tracing::warn!(cookie, "the pod's inbound link is gone: attaching it again");
            self.shared.count_error("kernel_gap");
            let repaired = with_datapath(&self.datapath, |dp| {
                dp.capture_inbound(&pod.ns, cookie, &pass_ports)?;
                Ok(dp.inbound_in_place(&pod.ns, cookie))
            });
            match repaired {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "pod {}: inbound link not attached (not repaired)",
                    pod.path.display()
                )),
                Err(e) => problems.push(format!(
                    "pod {}: inbound link repair failed: {}",
                    pod.path.display(),
                    crate::error_chain(&e)
                )),
            }
        }
        problems
    }
}
