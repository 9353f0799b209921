//! One agent per data path: before a `run` touches anything (pins, cgroup,
//! control socket), it takes an exclusive `flock(2)` on one lock file per
//! resource it will own. A second `run` naming any of the same resources fails
//! at once, naming the resource and the pid holding it, and the first agent
//! is unharmed. The kernel drops the locks when the holder exits, SIGKILL
//! included, so a crashed agent never blocks the next one.
//!
//! The lock files live in [`LOCK_DIR`] (bpffs holds no regular files, and a
//! lock beside a path that does not exist yet could not be taken before it
//! is created), named after the resource's absolute path.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

/// Where the lock files are.
pub const LOCK_DIR: &str = "/run/netns-agent/locks";

/// The locks this agent holds; dropped (released) when the agent ends.
#[derive(Debug)]
pub struct InstanceLock {
    held: Vec<Flock<File>>,
}

/// A resource only one agent may own, named as its flag names it.
#[derive(Debug, Clone, Copy)]
pub struct Resource<'p> {
    /// The flag that names it (`--bpffs`).
    pub flag: &'static str,
    /// Its path.
    pub path: &'p Path,
}

impl InstanceLock {
    /// Takes every lock of `resources`, or none: fails naming the first
    /// resource another agent holds, and that agent's pid.
    pub fn acquire(lock_dir: &Path, resources: &[Resource<'_>]) -> anyhow::Result<InstanceLock> {
        std::fs::create_dir_all(lock_dir)
            .with_context(|| format!("create the lock directory {}", lock_dir.display()))?;
        let mut held = Vec::new();
        for resource in resources {
            let absolute = absolute(resource.path);
            let file = lock_dir.join(lock_name(resource.flag, &absolute));
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file)
                .with_context(|| format!("open the lock file {}", file.display()))?;
            let mut lock = match Flock::lock(opened, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut opened, nix::errno::Errno::EWOULDBLOCK)) => {
                    let mut pid = String::new();
                    let _ = opened.read_to_string(&mut pid);
                    anyhow::bail!(
                        "another netns-agent (pid {}) already runs on {} {}: stop it first, \
                         or give this one its own --bpffs, --cgroup and --control-socket \
                         (lock {})",
                        pid.trim(),
                        resource.flag,
                        absolute.display(),
                        file.display()
                    );
                }
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("lock {}", file.display()));
                }
            };
            write_pid(&mut lock).with_context(|| format!("write {}", file.display()))?;
            held.push(lock);
        }
        Ok(InstanceLock { held })
    }

    /// How many locks are held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

fn write_pid(lock: &mut Flock<File>) -> std::io::Result<()> {
    let file: &mut File = lock;
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())
}

/// `path` made absolute and, as far as it exists, free of symlinks (two
/// spellings of one directory are one resource).
fn absolute(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path,
        }
    }
}

/// A file name for the lock of `flag` on `path`: readable, and unique per
/// path (long paths end in a hash of the whole).
fn lock_name(flag: &str, path: &Path) -> String {
    let flag = flag.trim_start_matches('-');
    let text = path.to_string_lossy();
    let readable: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a of the whole path: `_` stands for several characters above.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let tail: String = readable
        .chars()
        .rev()
        .take(150)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{flag}{tail}.{hash:016x}.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = std::env::temp_dir().join(format!("netns-lock-test-{}", std::process::id()));
        let pins = dir.join("pins");
        let socket = dir.join("agent.sock");
        let first = InstanceLock::acquire(
            &dir,
            &[
                Resource {
                    flag: "--bpffs",
                    path: &pins,
                },
                Resource {
                    flag: "--control-socket",
                    path: &socket,
                },
            ],
        )
        .unwrap();
        assert_eq!(first.len(), 2);
        // The same socket under another spelling.
        std::os::unix::fs::symlink(&dir, dir.join("link")).unwrap();
        let other = dir.join("link/agent.sock");
        let err = InstanceLock::acquire(
            &dir,
            &[
                Resource {
                    flag: "--bpffs",
                    path: &dir.join("other-pins"),
                },
                Resource {
                    flag: "--control-socket",
                    path: &other,
                },
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--control-socket"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        let again = InstanceLock::acquire(
            &dir,
            &[Resource {
                flag: "--bpffs",
                path: &pins,
            }],
        );
        assert!(again.is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn lock_names_are_unique_per_path() {
        assert_ne!(
            lock_name("--bpffs", Path::new("/a/b_c")),
            lock_name("--bpffs", Path::new("/a/b/c"))
        );
        assert!(lock_name("--cgroup", Path::new(&"/x".repeat(300))).len() < 255);
    }
}
