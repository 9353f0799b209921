//! A directory on a BPF filesystem, for pins.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

/// A failure to provide a bpffs directory.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} bpffs at {path}")]
pub struct BpffsError {
    /// The directory.
    pub path: PathBuf,
    /// What failed: "create", "inspect" or "mount".
    pub op: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Is `dir` on a BPF filesystem?
#[must_use]
pub fn is_bpffs(dir: &Path) -> bool {
    statfs(dir).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes `dir` usable for pins: creates it, and mounts a bpffs on it unless it
/// already lies on one. Returns whether it mounted one (to unmount later).
pub fn ensure(dir: &Path) -> Result<bool, BpffsError> {
    let err = |op, source| BpffsError {
        path: dir.to_owned(),
        op,
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| err("create", e))?;
    if is_bpffs(dir) {
        return Ok(false);
    }
    mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| err("mount", e.into()))?;
    Ok(true)
}
