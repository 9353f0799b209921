//! Decompressing kernel modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) and the kernel
//! payload inside a bzImage on the host, with Debian's own tools (busybox's
//! `insmod` in the guest cannot).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::apt;

/// A compression format, with the command (and the Debian package) that undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Xz,
    Zstd,
    Gzip,
}

impl Format {
    /// The format of a file named `name` (by its extension), if compressed.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1;
        match ext {
            "xz" => Some(Self::Xz),
            "zst" => Some(Self::Zstd),
            "gz" => Some(Self::Gzip),
            _ => None,
        }
    }

    /// The format of `bytes`, by magic number.
    pub(crate) fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\xfd7zXZ\0") {
            Some(Self::Xz)
        } else if bytes.starts_with(b"\x28\xb5\x2f\xfd") {
            Some(Self::Zstd)
        } else if bytes.starts_with(b"\x1f\x8b") {
            Some(Self::Gzip)
        } else {
            None
        }
    }

    fn tool(self) -> (&'static str, &'static str) {
        match self {
            Self::Xz => ("xz", "xz-utils"),
            Self::Zstd => ("zstd", "zstd"),
            Self::Gzip => ("gzip", "gzip"),
        }
    }
}

/// The decompressed contents of `path`. For xz only the first stream is read, so
/// trailing bytes (a bzImage appends the payload's size) are ignored.
pub(crate) fn decompress(path: &Path, format: Format) -> anyhow::Result<Vec<u8>> {
    let (tool, package) = format.tool();
    apt::ensure(&[package], "decompressing kernel files on the host")?;
    let mut cmd = Command::new(tool);
    cmd.args(["-d", "-c"]);
    if format == Format::Xz {
        cmd.arg("--single-stream");
    }
    let out = cmd
        .arg(path)
        .output()
        .with_context(|| format!("cannot start {tool} for {}", path.display()))?;
    // gzip exits 2 for a mere warning (e.g. trailing bytes after the stream).
    let ok = out.status.success() || (format == Format::Gzip && out.status.code() == Some(2));
    if !ok || out.stdout.is_empty() {
        bail!(
            "{tool} -dc {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
