//! Finding a pod's network namespace from its UID, the way istio-cni's
//! repair/reconcile does for pods that existed before it: every container of
//! a pod runs in a cgroup whose path carries the pod's UID (cgroupfs driver:
//! `/kubepods/besteffort/pod<uid>/<container>`; systemd driver:
//! `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid
//! with _ for ->.slice/cri-containerd-<id>.scope`). The first such process
//! (lowest pid: the sandbox's pause process, which lives as long as the pod)
//! whose network namespace is not the host's gives `/proc/<pid>/ns/net`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where processes are listed: `/proc`, or a fake tree in tests.
#[derive(Debug, Clone)]
pub struct ProcRoot(pub PathBuf);

impl Default for ProcRoot {
    fn default() -> ProcRoot {
        ProcRoot(PathBuf::from("/proc"))
    }
}

/// A pod's namespace, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `<proc>/<pid>/ns/net`.
    pub path: PathBuf,
    /// The process it belongs to (0: a path from CNI).
    pub pid: u32,
    /// The namespace's (device, inode).
    pub id: (u64, u64),
}

impl Found {
    /// A namespace file named otherwise (a runtime's `CNI_NETNS`), if it is there.
    #[must_use]
    pub fn at(path: &Path) -> Option<Found> {
        Some(Found {
            path: path.to_owned(),
            pid: 0,
            id: ProcRoot::ns_id(path)?,
        })
    }
}

impl ProcRoot {
    /// The (device, inode) of a namespace file, if it can be read.
    fn ns_id(path: &Path) -> Option<(u64, u64)> {
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    /// The host's network namespace: the agent's own (it runs with the
    /// host's network).
    fn host(&self) -> Option<(u64, u64)> {
        Self::ns_id(&self.0.join("self/ns/net"))
    }

    /// The network namespace of the pod with `uid`, if one of its processes
    /// runs outside the host's namespace now. A pod on the host network has none.
    #[must_use]
    pub fn find(&self, uid: &str) -> Option<Found> {
        if uid.is_empty() {
            return None;
        }
        let host = self.host();
        let (dashed, underscored) = (format!("pod{uid}"), format!("pod{}", uid.replace('-', "_")));
        let mut pids: Vec<u32> = std::fs::read_dir(&self.0)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.into_iter().find_map(|pid| {
            let dir = self.0.join(pid.to_string());
            let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
            let ours = cgroup.lines().any(|line| {
                let path = line.splitn(3, ':').nth(2).unwrap_or_default();
                path.split('/')
                    .any(|part| part_is_pod(part, &dashed) || part_is_pod(part, &underscored))
            });
            if !ours {
                return None;
            }
            let path = dir.join("ns/net");
            let id = Self::ns_id(&path)?;
            (Some(id) != host).then_some(Found { path, pid, id })
        })
    }

    /// Whether `found` still names the same namespace.
    #[must_use]
    pub fn still(found: &Found) -> bool {
        Self::ns_id(&found.path) == Some(found.id)
    }
}

/// A cgroup path element of the pod: `pod<uid>` (cgroupfs) or ending in
/// `-pod<uid>.slice` (systemd).
fn part_is_pod(part: &str, pod: &str) -> bool {
    part == pod
        || part
            .strip_suffix(".slice")
            .and_then(|p| p.strip_suffix(pod))
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2b9e-4d3a-4f5e-9a8b-0c1d2e3f4a5b";

    fn proc_entry(root: &Path, pid: u32, cgroup: &str, netns: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        // Processes of one namespace share its file: a hard link.
        let ns = root.join(netns);
        if !ns.exists() {
            std::fs::write(&ns, "").unwrap();
        }
        std::fs::hard_link(&ns, dir.join("ns/net")).unwrap();
    }

    fn tree() -> (tempdir::Dir, ProcRoot) {
        let dir = tempdir::Dir::new();
        let root = dir.path().join("proc");
        std::fs::create_dir_all(root.join("self/ns")).unwrap();
        std::fs::write(root.join("host-net"), "").unwrap();
        std::fs::hard_link(root.join("host-net"), root.join("self/ns/net")).unwrap();
        (dir, ProcRoot(root))
    }

    mod tempdir {
        /// A directory removed on drop.
        pub(super) struct Dir(std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Dir {
                let path = std::env::temp_dir().join(format!(
                    "netns-procscan-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&path);
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
            pub(super) fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn finds_the_pods_first_process_under_either_cgroup_driver() {
        let (_dir, root) = tree();
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-1.scope\n",
            UID.replace('-', "_")
        );
        proc_entry(&root.0, 300, &systemd, "pod-net");
        proc_entry(&root.0, 200, &systemd, "pod-net");
        proc_entry(
            &root.0,
            100,
            "0::/system.slice/kubelet.service\n",
            "host-net",
        );
        let found = root.find(UID).unwrap();
        assert_eq!(found.pid, 200);
        assert_eq!(found.path, root.0.join("200/ns/net"));
        assert!(ProcRoot::still(&found));

        let (_dir, root) = tree();
        let cgroupfs = format!(
            "12:pids:/kubepods/burstable/pod{UID}/abc\n0::/kubepods/burstable/pod{UID}/abc\n"
        );
        proc_entry(&root.0, 7, &cgroupfs, "pod-net");
        assert_eq!(root.find(UID).unwrap().pid, 7);
    }

    #[test]
    fn skips_the_host_namespace_other_pods_and_lookalikes() {
        let (_dir, root) = tree();
        // A host-network pod: its processes share the host's namespace.
        proc_entry(
            &root.0,
            10,
            &format!("0::/kubepods/pod{UID}/c\n"),
            "host-net",
        );
        // Another pod whose UID starts like ours.
        proc_entry(
            &root.0,
            11,
            &format!("0::/kubepods/pod{UID}0/c\n"),
            "other-net",
        );
        proc_entry(
            &root.0,
            12,
            &format!("0::/kubepods-x{UID}.slice/c\n"),
            "other-net",
        );
        assert_eq!(root.find(UID), None);
        assert_eq!(root.find(""), None);
    }
}
