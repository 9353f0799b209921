//! Creating and deleting namespaces: named ones under `/run/netns`, as
//! `ip netns add/del` does, anonymous ones, and [`TempNetNs`] for tests and tools.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::{NetNs, NsError, Result};

/// Where named network namespaces live, as iproute2 keeps them.
pub const NETNS_RUN_DIR: &str = "/run/netns";

impl NetNs {
    /// Creates a new network namespace named `name`, bind-mounted at
    /// `/run/netns/<name>` so that `ip netns` and other processes see it
    /// (`ip netns add`). Its loopback interface is down, as there.
    ///
    /// On failure nothing is left behind: no file, no mount.
    ///
    /// ```no_run
    /// let blue = netns_core::NetNs::create_named("blue")?;
    /// assert_eq!(blue.path(), std::path::Path::new("/run/netns/blue"));
    /// netns_core::NetNs::delete_named("blue")?;
    /// # Ok::<(), netns_core::NsError>(())
    /// ```
    pub fn create_named(name: &str) -> Result<NetNs> {
        let path = named_path(name)?;
        let dir = Path::new(NETNS_RUN_DIR);
        std::fs::create_dir_all(dir).map_err(|e| lifecycle(dir, "create directory for", e))?;
        // As `ip netns add`: mounts made here reach other mount namespaces.
        make_shared_mount(dir)?;
        NetNs::create_at(&path)
    }

    /// Creates a new network namespace bind-mounted at `path` (a file that
    /// must not exist yet; its directory is created). For namespace
    /// directories of your own (an agent's test, a runtime's state dir);
    /// unlike [`NetNs::create_named`] the directory is not made a shared mount.
    ///
    /// On failure nothing is left behind: no file, no mount.
    pub fn create_at(path: &Path) -> Result<NetNs> {
        let path = path.to_owned();
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| lifecycle(dir, "create directory for", e))?;
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => NsError::AlreadyExists { path: path.clone() },
                _ => lifecycle(&path, "create mount point for", e),
            })?;
        let made = on_new_netns_thread(|| {
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| lifecycle(&path, "bind-mount", e.into()))
        })
        .and_then(|r| r)
        .and_then(|()| NetNs::open(&path));
        made.inspect_err(|_| {
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&path);
        })
    }

    /// Deletes the named namespace at `/run/netns/<name>` (`ip netns del`): its
    /// bind mount and file. Handles still open on it keep it alive.
    pub fn delete_named(name: &str) -> Result<()> {
        NetNs::delete_at(&named_path(name)?)
    }

    /// Deletes the namespace bind-mounted at `path` (see [`NetNs::create_at`]):
    /// its bind mount and file.
    pub fn delete_at(path: &Path) -> Result<()> {
        let path = path.to_owned();
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a half-made entry); the file still goes.
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(nix::errno::Errno::ENOENT) => return Err(NsError::NotFound { path }),
            Err(e) => return Err(lifecycle(&path, "unmount", e.into())),
        }
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NsError::NotFound { path: path.clone() },
            _ => lifecycle(&path, "remove", e),
        })
    }

    /// Creates a new, anonymous network namespace that lives as long as a
    /// handle on it (or a socket or process in it) does. Its path is
    /// `/proc/<pid>/fd/<fd>`, valid while this handle is open.
    ///
    /// ```no_run
    /// let scratch = netns_core::NetNs::new_anonymous()?;
    /// scratch.set_loopback_up()?;
    /// let listener = scratch.sockets().tcp_listener("127.0.0.1:0".parse().unwrap())?;
    /// # Ok::<(), netns_core::NsError>(())
    /// ```
    pub fn new_anonymous() -> Result<NetNs> {
        let fd: OwnedFd = on_new_netns_thread(|| {
            File::open("/proc/thread-self/ns/net")
                .map(OwnedFd::from)
                .map_err(|e| lifecycle(Path::new("/proc/thread-self/ns/net"), "open new", e))
        })??;
        let label = format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd());
        NetNs::from_fd(fd, label)
    }
}

/// A named network namespace that deletes itself on drop: for tests and tools.
/// It dereferences to its [`NetNs`].
///
/// ```no_run
/// let ns = netns_core::TempNetNs::new("demo")?; // /run/netns/demo-<pid>-<n>
/// ns.set_loopback_up()?;
/// let here = ns.run(|_| netns_core::NetNs::current())??;
/// assert_eq!(here.id(), ns.id());
/// # Ok::<(), netns_core::NsError>(())
/// ```
#[derive(Debug)]
pub struct TempNetNs {
    ns: NetNs,
    name: String,
}

impl TempNetNs {
    /// Creates `/run/netns/<prefix>-<pid>-<n>`, with `n` counting up per process.
    pub fn new(prefix: &str) -> Result<TempNetNs> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = NetNs::create_named(&name)?;
        Ok(TempNetNs { ns, name })
    }

    /// The name under `/run/netns`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TempNetNs {
    type Target = NetNs;
    fn deref(&self) -> &NetNs {
        &self.ns
    }
}

impl Drop for TempNetNs {
    fn drop(&mut self) {
        if let Err(e) = NetNs::delete_named(&self.name) {
            tracing::warn!(error = %e, "cannot delete temporary namespace");
        }
    }
}

fn named_path(name: &str) -> Result<PathBuf> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        Some("must be a plain file name")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match why {
        Some(why) => Err(NsError::InvalidName {
            name: name.to_owned(),
            why,
        }),
        None => Ok(Path::new(NETNS_RUN_DIR).join(name)),
    }
}

/// Makes `dir` a shared mount point, so that namespace bind mounts made below it
/// propagate to other mount namespaces (what iproute2 does for `/run/netns`).
fn make_shared_mount(dir: &Path) -> Result<()> {
    let share = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet; bind it onto itself and try again.
        Err(nix::errno::Errno::EINVAL) => mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| share())
        .map_err(|e| lifecycle(dir, "make shared mount of", e.into())),
        Err(e) => Err(lifecycle(dir, "make shared mount of", e.into())),
    }
}

/// Runs `f` on a throw-away thread that has unshared into a brand-new network
/// namespace. The thread exits afterwards, so no thread ever has to come back.
fn on_new_netns_thread<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    let new_ns = Path::new("(new network namespace)");
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("netns-create".into())
            .spawn_scoped(scope, || {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| lifecycle(new_ns, "unshare", e.into()))?;
                Ok(f())
            })
            .map_err(|e| lifecycle(new_ns, "start a thread to create", e))?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn lifecycle(path: &Path, op: &'static str, source: io::Error) -> NsError {
    NsError::Lifecycle {
        path: path.to_owned(),
        op,
        source,
    }
}
