//! cgroup v2: where it is mounted, whether a path is on it, and throw-away
//! child cgroups.

use std::io;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// A cgroup problem, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error("no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    /// The path is not a directory on a cgroup v2 filesystem (a v1 hierarchy,
    /// a tmpfs, ... where attaching fails with EBADF).
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 {
        /// The path.
        path: PathBuf,
    },
    /// An operation on a cgroup failed.
    #[error("cannot {op} cgroup {path}")]
    Io {
        /// The cgroup directory.
        path: PathBuf,
        /// What failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The mount point of the cgroup v2 filesystem (e.g. `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Io {
            path: "/proc/self/mountinfo".into(),
            op: "read",
            source,
        })?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(unescape_mountinfo))?
        })
        .ok_or(CgroupError::NoCgroup2)
}

/// Fails unless `path` is a directory on a cgroup v2 filesystem.
pub fn check_cgroup2(path: &Path) -> Result<(), CgroupError> {
    match statfs(path) {
        Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC && path.is_dir() => Ok(()),
        Ok(_) => Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
        }),
        Err(e) => Err(CgroupError::Io {
            path: path.to_owned(),
            op: "inspect",
            source: e.into(),
        }),
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        if let Ok(byte) = u8::from_str_radix(rest.get(i + 1..i + 4).unwrap_or(""), 8) {
            out.push(char::from(byte));
            rest = &rest[i + 4..];
        } else {
            out.push('\\');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

/// A child cgroup that is removed on drop: its processes are moved back to the
/// parent first. For tests and demos: programs attach here, never to the root.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
}

impl ChildCgroup {
    /// Creates `parent/name` (`parent` must be cgroup v2).
    pub fn create(parent: &Path, name: &str) -> Result<ChildCgroup, CgroupError> {
        check_cgroup2(parent)?;
        let path = parent.join(name);
        std::fs::create_dir(&path).map_err(|source| CgroupError::Io {
            path: path.clone(),
            op: "create",
            source,
        })?;
        Ok(ChildCgroup { path })
    }

    /// The cgroup directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` (0: the caller) into this cgroup. Sockets it
    /// creates afterwards belong to this cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        write_procs(&self.path, pid)
    }

    /// The processes in this cgroup.
    pub fn processes(&self) -> Result<Vec<u32>, CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs).map_err(|source| CgroupError::Io {
            path: procs,
            op: "read processes of",
            source,
        })?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

fn write_procs(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Io {
        path: dir.to_owned(),
        op: "move a process into",
        source,
    })
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        if let (Ok(pids), Some(parent)) = (self.processes(), self.path.parent()) {
            for pid in pids {
                let _ = write_procs(parent, pid);
            }
        }
        // Children left behind empty (a probe cgroup of an agent that was
        // killed): rmdir succeeds only on empty ones.
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(cgroup = %self.path.display(), error = %e, "cannot remove cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo(r"/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mountinfo(r"/odd\x"), PathBuf::from(r"/odd\x"));
    }
}
