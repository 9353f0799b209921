//! The suite's own QEMU, unpacked from Debian's packages into the cache, never
//! the system's.
//!
//! Why not `apt-get install qemu-system-x86`: a machine may carry a QEMU package
//! of another release (ours ship a backported `qemu-utils` 10.0 that `Breaks:`
//! every `qemu-system-common` older than 8.0, while the release's own
//! `qemu-system-x86` is 7.2), and then apt can only install by removing what the
//! user has, which an install step must never do. Unpacking instead touches no
//! package of the system: `apt-get download` + `dpkg-deb -x` of `qemu-system-x86`
//! and of every package of its dependency closure that the host lacks (or has
//! older), into `CACHE/qemu/VERSION/`; QEMU then runs with that tree's libraries
//! first (`LD_LIBRARY_PATH`), its firmware (`-L`) and its modules
//! (`QEMU_MODULE_DIR`). Whatever QEMU the machine has, or lacks, the suite runs
//! the same binary: the path CI takes is the path a fresh machine takes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::debian::Suite;
use crate::cmd;

const PACKAGE: &str = "qemu-system-x86";
const BINARY: &str = "usr/bin/qemu-system-x86_64";
/// Unpacked whatever the host has: they must match the binary's own version.
const ALWAYS: &[&str] = &["qemu-", "seabios", "ipxe-qemu"];
/// Firmware directories inside the tree (`-L`, searched in this order).
const FIRMWARE: &[&str] = &["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"];
const MODULES: &str = "usr/lib/x86_64-linux-gnu/qemu";

/// An unpacked QEMU, ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Qemu {
    root: PathBuf,
    pub(crate) version: String,
}

impl Qemu {
    /// `qemu-system-x86_64` with the tree's libraries, firmware and modules.
    pub(crate) fn command(&self) -> Command {
        let mut qemu = Command::new(self.root.join(BINARY));
        qemu.env("LD_LIBRARY_PATH", library_path(&self.root))
            .env("QEMU_MODULE_DIR", self.root.join(MODULES));
        for dir in FIRMWARE {
            let dir = self.root.join(dir);
            if dir.is_dir() {
                qemu.arg("-L").arg(dir);
            }
        }
        qemu
    }
}

/// The QEMU of `suite` (the host's release), unpacked under `cache/qemu` on first
/// use and checked to start.
pub(crate) fn prepare(suite: &mut Suite, cache: &Path) -> anyhow::Result<Qemu> {
    let package = suite.resolve(PACKAGE)?;
    let root = cache
        .join("qemu")
        .join(package.version.replace([':', '~', '+'], "_"));
    let stamp = root.join(".ready");
    let qemu = Qemu {
        root: root.clone(),
        version: package.version.clone(),
    };
    if stamp.exists() {
        return Ok(qemu);
    }
    eprintln!(
        "xtask: unpacking {PACKAGE} {} and the libraries it needs into {} (no system package is touched)",
        package.version,
        root.display()
    );
    let scratch = root.with_extension("partial");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("remove {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    for name in wanted(suite)? {
        let (_, deb) = suite.fetch(&name)?;
        cmd::status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&scratch))
            .with_context(|| format!("unpack {}", deb.display()))?;
    }
    check(&scratch)?;
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    }
    std::fs::rename(&scratch, &root).with_context(|| format!("move into {}", root.display()))?;
    std::fs::write(&stamp, &package.version)
        .with_context(|| format!("write {}", stamp.display()))?;
    Ok(qemu)
}

/// `qemu-system-x86` and each package of its closure that the host lacks or
/// has at an older version than the suite offers.
fn wanted(suite: &mut Suite) -> anyhow::Result<Vec<String>> {
    let out = suite
        .apt("apt-cache")
        .args([
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            PACKAGE,
        ])
        .output()
        .context("cannot start apt-cache depends")?;
    if !out.status.success() {
        bail!(
            "apt-cache depends {PACKAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let closure = closure_names(&String::from_utf8_lossy(&out.stdout));
    let installed = installed_versions(&closure)?;
    let candidates = suite.candidates(&closure)?;
    let mut wanted = Vec::new();
    for name in closure {
        let Some(candidate) = candidates.get(&name) else {
            continue;
        };
        let keep_hosts = !ALWAYS.iter().any(|prefix| name.starts_with(prefix))
            && installed
                .get(&name)
                .is_some_and(|have| version_at_least(have, candidate));
        if !keep_hosts {
            wanted.push(name);
        }
    }
    Ok(wanted)
}

/// The real package names of `apt-cache depends --recurse` output (virtual
/// packages, in angle brackets, are left out: a real one provides them).
fn closure_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<') && !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Installed versions (dpkg's database) of those of `names` that are installed.
fn installed_versions(names: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Version} ${db:Status-Abbrev}\n"])
        .args(names)
        .output()
        .context("cannot start dpkg-query")?;
    // dpkg-query exits 1 when some name is unknown; the others are still listed.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (name, version, status) = (words.next()?, words.next()?, words.next()?);
            (status == "ii").then(|| (name.to_owned(), version.to_owned()))
        })
        .collect())
}

/// `have >= want` in Debian's version order (`dpkg --compare-versions`).
fn version_at_least(have: &str, want: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", have, "ge", want])
        .status()
        .is_ok_and(|s| s.success())
}

/// The directories holding shared objects in `root`, for `LD_LIBRARY_PATH`.
fn library_path(root: &Path) -> OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for base in ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"] {
        let base = root.join(base);
        if !base.is_dir() {
            continue;
        }
        dirs.push(base.clone());
        // Libraries some packages keep a level down (e.g. pulseaudio/).
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && path != root.join(MODULES) && has_shared_objects(&path) {
                dirs.push(path);
            }
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn has_shared_objects(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.contains(".so") && name.starts_with("lib")
        })
}

/// The unpacked binary finds every library and starts.
fn check(root: &Path) -> anyhow::Result<()> {
    let binary = root.join(BINARY);
    let out = Command::new("ldd")
        .arg(&binary)
        .env("LD_LIBRARY_PATH", library_path(root))
        .output()
        .with_context(|| format!("cannot start ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("not found"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if !out.status.success() || !missing.is_empty() {
        bail!(
            "the unpacked {} lacks shared libraries {missing:?} ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let qemu = Qemu {
        root: root.to_owned(),
        version: String::new(),
    };
    let out = qemu
        .command()
        .arg("--version")
        .output()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::closure_names;

    #[test]
    fn reads_the_recursive_closure() {
        let text = "qemu-system-x86\n  Depends: libc6\n |Depends: <debconf-2.0>\n\
                    libc6\n  Depends: libgcc-s1\n<debconf-2.0>\nlibc6\nseabios\n";
        assert_eq!(closure_names(text), ["libc6", "qemu-system-x86", "seabios"]);
    }
}
