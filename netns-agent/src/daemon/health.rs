//! The agent's health as the kernel says it, checked every second: the data
//! path's programs on the cgroup and its map pins ([`DataPath::kernel_gaps`]),
//! each pod's inbound link in its namespace, and the control socket file. A
//! difference is logged, makes `/readyz` false, and is repaired where it can
//! be (a program attached again, a map pinned again, a pod's inbound link
//! attached again); what stays broken keeps the agent unready and is named
//! in `status`.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use super::Agent;
use netns_datapath::{DataPath, DataPathError};

/// How often the kernel is asked.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

impl Agent {
    /// Remembers the control socket file just bound at `path`.
    pub(crate) fn note_control_socket(&self, path: &std::path::Path) {
        *Self::lock(&self.control_socket) =
            std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    }

    /// One check and repair. Returns `false` once the agent is stopping.
    pub(crate) fn check_kernel(&self) -> bool {
        let mut problems = Vec::new();
        match self.with_datapath(|dp| dp.kernel_gaps()) {
            Err(DataPathError::Stopping) => return false,
            Err(e) => problems.push(crate::error_chain(&e)),
            Ok(gaps) if gaps.is_empty() => {}
            Ok(gaps) => {
                for gap in &gaps {
                    tracing::warn!(%gap, "the kernel lacks part of the data path: repairing");
                }
                self.count_error("kernel_gap");
                match self.with_datapath(|dp| {
                    dp.repair(&gaps)?;
                    dp.kernel_gaps()
                }) {
                    Ok(left) => problems.extend(left.iter().map(|g| format!("{g} (not repaired)"))),
                    Err(e) => problems.push(format!("repair failed: {}", crate::error_chain(&e))),
                }
            }
        }
        problems.extend(self.check_inbound());
        let bound = *Self::lock(&self.control_socket);
        let now = std::fs::metadata(&self.config.control_socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if bound.is_some() && now != bound {
            problems.push(format!(
                "the control socket {} was removed or replaced: status and CNI requests cannot reach this agent",
                self.config.control_socket.display()
            ));
        }
        let mut held = Self::lock(&self.problems);
        if *held != problems {
            if problems.is_empty() {
                tracing::info!("the kernel holds the whole data path again: ready");
            } else {
                tracing::error!(problems = ?problems, "not ready");
            }
            *held = problems;
        }
        true
    }

    /// Each meshed pod with inbound capture has its link attached (the
    /// kernel's word); a missing one is attached again.
    fn check_inbound(&self) -> Vec<String> {
        let pods: Vec<_> = Self::lock(&self.pods)
            .values()
            .filter_map(|p| {
                let pass_ports = self.inbound_pass_ports(&p.settings)?;
                Some((p.path.clone(), p.ns.clone(), p.facts.cookie, pass_ports))
            })
            .collect();
        let mut problems = Vec::new();
        for (path, ns, cookie, pass_ports) in pods {
            // One pod at a time, between pod work: a pod that went meanwhile
            // is not checked (nor given a link back).
            let _turn = Self::lock(&self.pod_work);
            let still_there = Self::lock(&self.pods)
                .get(&path)
                .is_some_and(|p| p.facts.cookie == cookie);
            let in_place = |dp: &mut DataPath| Ok(dp.inbound_in_place(&ns, cookie));
            if !still_there || self.with_datapath(in_place).unwrap_or(true) {
                continue;
            }
            tracing::warn!(pod = %path.display(), cookie, "the pod's inbound link is gone: attaching it again");
            self.count_error("kernel_gap");
            let repaired = self.with_datapath(|dp| {
                dp.capture_inbound(&ns, cookie, &pass_ports)?;
                Ok(dp.inbound_in_place(&ns, cookie))
            });
            match repaired {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "pod {}: inbound link not attached (not repaired)",
                    path.display()
                )),
                Err(e) => problems.push(format!(
                    "pod {}: inbound link repair failed: {}",
                    path.display(),
                    crate::error_chain(&e)
                )),
            }
        }
        problems
    }
}

/// Checks every [`EVERY`] until `stop` is dropped or the agent stops.
pub(crate) fn run(agent: &Agent, stop: &std::sync::mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if !agent.check_kernel() {
            return;
        }
    }
}
