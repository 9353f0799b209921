//! What the kernel holds, checked against what the data path attached, and
//! the difference repaired: one idempotent step the agent runs every second.
//!
//! The agent keeps no descriptor of its cgroup links: their pins hold them.
//! So a pin removed under the agent (the `--bpffs` directories emptied, a
//! `cleanup` run by mistake) is a program detached at once, while the agent's
//! own records still list it. Only the kernel can say: `BPF_PROG_QUERY` on the
//! cgroup lists the programs really attached, `BPF_PROG_QUERY` on a pod's
//! namespace its `sk_lookup` program. A program missing there is attached
//! again through a new link, pinned where the old one was; a map whose pin is
//! gone is pinned again (the map itself lives on in this process, with its
//! entries).

use netns_core::NetNs;
use netns_ebpf::names;

use super::programs::{Hook, PROGRAMS};
use super::{DataPath, DataPathError, attached_program_ids, make_dir, pin_error};
use crate::sys;

/// Something of the data path the kernel does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// A program of the cgroup's is not attached to it.
    Program(&'static str),
    /// A map's pin is gone (the map is not: this process holds it).
    MapPin(&'static str),
    /// A program is attached but its link's pin is gone (a restart with
    /// kept state could not take it over).
    LinkPin(&'static str),
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::Program(name) => write!(f, "program {name} is not attached to the cgroup"),
            Gap::MapPin(name) => write!(f, "map {name} is not pinned"),
            Gap::LinkPin(name) => write!(f, "the link of program {name} is not pinned"),
        }
    }
}

impl DataPath {
    /// What the kernel lacks of this data path: its cgroup programs (asked of
    /// the cgroup with `BPF_PROG_QUERY`) and its map pins.
    pub fn kernel_gaps(&self) -> Result<Vec<Gap>, DataPathError> {
        let attached =
            attached_program_ids(&self.cgroup).map_err(|source| DataPathError::Query {
                target: self.cgroup.clone(),
                source,
            })?;
        let on_cgroup = |name: &str| {
            PROGRAMS
                .iter()
                .any(|spec| spec.name == name && spec.hook != Hook::SkMsg)
        };
        let mut gaps: Vec<Gap> = self
            .attached
            .iter()
            .filter(|p| on_cgroup(p.name) && !attached.contains(&p.id))
            .map(|p| Gap::Program(p.name))
            .collect();
        let links = self.pin_dir.join("links");
        gaps.extend(
            self.attached
                .iter()
                .filter(|p| on_cgroup(p.name) && attached.contains(&p.id))
                .filter(|p| !links.join(p.name).exists())
                .map(|p| Gap::LinkPin(p.name)),
        );
        let maps = self.pin_dir.join("maps");
        gaps.extend(
            names::ALL_MAPS
                .iter()
                .filter(|name| !maps.join(name).exists())
                .map(|name| Gap::MapPin(name)),
        );
        Ok(gaps)
    }

    /// Puts back what `gaps` names: each program attached again through a new
    /// link pinned where its old one was (a stale pin, of a link someone
    /// detached, is replaced), each map pinned again.
    pub fn repair(&mut self, gaps: &[Gap]) -> Result<(), DataPathError> {
        let cgroup_fd = self.open_cgroup()?;
        for gap in gaps {
            match gap {
                Gap::MapPin(name) => {
                    let dir = self.pin_dir.join("maps");
                    make_dir(&dir)?;
                    make_dir(&self.layout_marker())?;
                    let path = dir.join(name);
                    self.map(name)?
                        .pin(&path)
                        .map_err(|e| pin_error(name, &path, e))?;
                }
                Gap::LinkPin(name) => {
                    let Some(program) = self.attached.iter().find(|p| p.name == *name) else {
                        continue;
                    };
                    let dir = self.pin_dir.join("links");
                    make_dir(&dir)?;
                    let path = dir.join(name);
                    sys::pin_link_of_program(program.id, &path)
                        .map_err(|e| pin_error(name, &path, e))?;
                }
                Gap::Program(name) => {
                    let Some(spec) = PROGRAMS.iter().find(|s| s.name == *name) else {
                        continue;
                    };
                    make_dir(&self.pin_dir.join("links"))?;
                    let path = self.pin_dir.join("links").join(spec.name);
                    if path.exists() {
                        std::fs::remove_file(&path).map_err(|source| DataPathError::Unpin {
                            path: path.clone(),
                            source,
                        })?;
                    }
                    // Attached anew: the records of the old attachment go.
                    self.attached.retain(|p| p.name != spec.name);
                    self.pins.retain(|p| *p != path);
                    if spec.hook != Hook::SkMsg {
                        self.attach_and_pin(spec, &cgroup_fd)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether pod `ns` (netns cookie `netns_cookie`) has its inbound capture
    /// in place as the kernel says: its link pinned, and this data path's
    /// `sk_lookup` program attached to its namespace.
    #[must_use]
    pub fn inbound_in_place(&self, ns: &NetNs, netns_cookie: u64) -> bool {
        let Some(id) = self.inbound_program_id() else {
            return false;
        };
        inbound_link_serves(&self.inbound_pin(netns_cookie), ns)
            && super::attached_inbound_ids(ns).is_ok_and(|ids| ids.contains(&id))
    }
}

/// Whether the link pinned at `pin` is attached to `ns` (the kernel's
/// word: a link detached, or whose namespace is gone, says inode 0).
pub(crate) fn inbound_link_serves(pin: &std::path::Path, ns: &NetNs) -> bool {
    sys::pinned_netns_link(pin).is_ok_and(|link| u64::from(link.netns_ino) == ns.id().ino)
}
