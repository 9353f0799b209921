//! [`NetNs`]: an open network namespace, its identity, and path validation.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use crate::{NsError, NsType, Result, sys, thread};

/// The identity of a namespace: the device and inode of its nsfs file.
///
/// Two handles refer to the same namespace exactly when their `NsId`s are equal,
/// whatever paths they were opened by (`/run/netns/x`, `/proc/PID/ns/net`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId {
    /// `st_dev` of the namespace file (the nsfs device).
    pub dev: u64,
    /// `st_ino` of the namespace file, the number shown in `net:[4026531840]`.
    pub ino: u64,
}

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// What a [`NetNs`] shares with the guards and thread records that point at it.
#[derive(Debug)]
pub(crate) struct NsFile {
    pub(crate) fd: OwnedFd,
    pub(crate) path: PathBuf,
    pub(crate) id: NsId,
}

/// An open network namespace.
///
/// The handle owns a file descriptor on the namespace, so the namespace lives at
/// least as long as the handle, even if its bind mount under `/run/netns` is
/// removed. It is `Send + Sync`: open it once and use it from any thread.
/// Cloning is cheap and shares the descriptor.
///
/// The Go package's `NetNS` interface maps as: `Do` → [`NetNs::run`],
/// `Set` → [`NetNs::set`], `Path` → [`NetNs::path`], `Fd` → [`AsRawFd`],
/// `Close` → [`NetNs::close`] (or drop).
///
/// ```no_run
/// use netns_core::NetNs;
///
/// let ns = NetNs::open("/run/netns/blue")?;
/// let inode = ns.run(|_host| std::fs::metadata("/proc/thread-self/ns/net"))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct NetNs {
    pub(crate) file: Arc<NsFile>,
}

impl NetNs {
    /// Opens the network namespace at `path` (Go: `GetNS`), after checking that
    /// it is one: a missing path, a file that is not a namespace, and a namespace
    /// of another type are each their own [`NsError`].
    ///
    /// Special files (FIFOs, devices, sockets) are rejected without being opened.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| open_error(path, e))?;
        if !meta.file_type().is_file() {
            return Err(NsError::NotNamespace {
                path: path.to_owned(),
                what: describe_non_file(&meta),
            });
        }
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        NetNs::from_fd(OwnedFd::from(file), path)
    }

    /// Wraps an already open namespace descriptor, checking it like [`NetNs::open`].
    /// `label` is what [`NetNs::path`] and error messages will show.
    pub fn from_fd(fd: OwnedFd, label: impl Into<PathBuf>) -> Result<NetNs> {
        let path = label.into();
        let fs = fstatfs(&fd).map_err(|e| open_error(&path, e.into()))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NsError::NotNamespace {
                path,
                what: "a file that is not on nsfs",
            });
        }
        let found = match sys::ns_get_nstype(&fd) {
            Ok(flag) => NsType::from_clone_flag(flag),
            // Kernels before 4.11 lack NS_GET_NSTYPE: read the type off the fd's name.
            Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => type_from_fd_link(&fd),
            Err(e) => return Err(open_error(&path, e)),
        };
        if found != NsType::Net {
            return Err(NsError::WrongType { path, found });
        }
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| open_error(&path, e.into()))?;
        let id = NsId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        };
        Ok(NetNs {
            file: Arc::new(NsFile { fd, path, id }),
        })
    }

    /// The network namespace of the calling **thread** (Go: `GetCurrentNS`),
    /// opened through `/proc/thread-self/ns/net` (Go spells it
    /// `/proc/<pid>/task/<tid>/ns/net`, which names another process's thread
    /// when the caller has its own pid namespace but the host's `/proc`).
    ///
    /// ```
    /// # if !nix::unistd::Uid::effective().is_root() { return Ok(()); }
    /// let here = netns_core::NetNs::current()?;
    /// assert_eq!(here.id(), netns_core::NetNs::open("/proc/thread-self/ns/net")?.id());
    /// # Ok::<(), netns_core::NsError>(())
    /// ```
    pub fn current() -> Result<NetNs> {
        NetNs::open(thread::own_netns_path())
    }

    /// The path this namespace was opened by (Go: `Path`).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The namespace's identity, for equality across paths.
    #[must_use]
    pub fn id(&self) -> NsId {
        self.file.id
    }

    /// Closes the handle, reporting an error from `close(2)` (Go: `Close`).
    ///
    /// Dropping the handle closes it too, silently. The descriptor is shared with
    /// clones of this handle and with threads currently inside the namespace; it
    /// is closed when the last of them lets go. A handle cannot be used after
    /// `close`, nor closed twice: both fail to compile.
    ///
    /// ```compile_fail
    /// # fn f(ns: netns_core::NetNs) -> netns_core::Result<()> {
    /// ns.close()?;
    /// ns.run(|_| ())?; // error[E0382]: use of moved value
    /// # Ok(()) }
    /// ```
    ///
    /// ```compile_fail
    /// # fn f(ns: netns_core::NetNs) -> netns_core::Result<()> {
    /// ns.close()?;
    /// ns.close()?; // error[E0382]: use of moved value
    /// # Ok(()) }
    /// ```
    pub fn close(self) -> Result<()> {
        match Arc::try_unwrap(self.file) {
            Ok(file) => {
                let path = file.path;
                nix::unistd::close(file.fd.into_raw_fd()).map_err(|e| NsError::Close {
                    path,
                    source: e.into(),
                })
            }
            Err(_shared) => Ok(()),
        }
    }
}

/// Checks that `path` is a network namespace file (Go: `IsNSorErr`), with the
/// same typed errors as [`NetNs::open`]. The file is opened and closed again.
///
/// ```
/// use netns_core::{validate, NsError};
///
/// assert!(matches!(validate("/no/such/ns"), Err(NsError::NotFound { .. })));
/// assert!(matches!(validate("/etc/hostname"), Err(NsError::NotNamespace { .. })));
/// # if nix::unistd::Uid::effective().is_root() {
/// assert!(matches!(validate("/proc/self/ns/mnt"), Err(NsError::WrongType { .. })));
/// validate("/proc/self/ns/net")?;
/// # }
/// # Ok::<(), NsError>(())
/// ```
pub fn validate(path: impl AsRef<Path>) -> Result<()> {
    NetNs::open(path).map(drop)
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.fd.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.file.fd.as_raw_fd()
    }
}

impl PartialEq for NetNs {
    /// Same namespace, whatever the path or descriptor.
    fn eq(&self, other: &NetNs) -> bool {
        self.id() == other.id()
    }
}

impl Eq for NetNs {}

impl fmt::Debug for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetNs")
            .field("path", &self.file.path)
            .field("id", &self.file.id)
            .field("fd", &self.file.fd.as_raw_fd())
            .finish()
    }
}

fn open_error(path: &Path, err: io::Error) -> NsError {
    if err.kind() == io::ErrorKind::NotFound {
        NsError::NotFound {
            path: path.to_owned(),
        }
    } else {
        NsError::Open {
            path: path.to_owned(),
            source: err,
        }
    }
}

fn describe_non_file(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if meta.mode() == 0 {
        "an unknown file type"
    } else {
        "not a regular file"
    }
}

fn type_from_fd_link(fd: &OwnedFd) -> NsType {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
    let name = link.to_string_lossy();
    NsType::from_link_name(name.split(':').next().unwrap_or_default())
}
