//! The one error type of netns-core.

use std::io;
use std::path::PathBuf;

use crate::NsType;

/// Everything that can go wrong in netns-core. Each variant names the path or
/// namespace involved, and carries the OS error as its `source` where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NsError {
    /// The path does not exist (Go: `NSPathNotExistErr`).
    #[error("namespace path {path} does not exist")]
    NotFound {
        /// The path that was looked up.
        path: PathBuf,
    },

    /// The path exists but is not a namespace file: not on nsfs, e.g. a regular
    /// file, a directory or a device (Go: `NSPathNotNSErr`).
    #[error("{path} is not a namespace file ({what})")]
    NotNamespace {
        /// The path that was looked up.
        path: PathBuf,
        /// What the path is instead, e.g. "a regular file on another filesystem".
        what: &'static str,
    },

    /// The path is a namespace, but not a network namespace (for example
    /// `/proc/self/ns/mnt`). Go's package accepts these; we do not.
    #[error("{path} is a {found} namespace, not a network namespace")]
    WrongType {
        /// The path that was looked up.
        path: PathBuf,
        /// The kind of namespace found there.
        found: NsType,
    },

    /// Opening or inspecting the path failed for another reason (permissions, ...).
    #[error("cannot open namespace path {path}")]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// `setns(2)` into the namespace failed; the calling thread did not move.
    #[error("cannot enter network namespace {path} (thread {tid} stays where it was)")]
    Enter {
        /// The namespace that could not be entered.
        path: PathBuf,
        /// The thread that tried.
        tid: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A socket operation made for a namespace failed.
    #[error("cannot {op} in network namespace {path}")]
    Socket {
        /// The namespace the socket belongs to.
        path: PathBuf,
        /// What was being done, e.g. "bind TCP listener to 127.0.0.1:8080".
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A name for a named namespace (under `/run/netns`) is not usable.
    #[error("invalid network namespace name {name:?}: {why}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        why: &'static str,
    },

    /// A named namespace of that name already exists.
    #[error("network namespace {path} already exists")]
    AlreadyExists {
        /// The path of the existing namespace.
        path: PathBuf,
    },

    /// Creating or deleting a namespace failed at the step named by `op`.
    /// Whatever the failed call had done before the failure was undone.
    #[error("cannot {op} network namespace {path}")]
    Lifecycle {
        /// The namespace's path.
        path: PathBuf,
        /// The failing step, e.g. "bind-mount".
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Closing the namespace file descriptor failed.
    #[error("cannot close network namespace {path}")]
    Close {
        /// The namespace's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The work sent to a dedicated namespace thread panicked or could not start.
    #[error("the worker thread for network namespace {path} {what}")]
    Worker {
        /// The namespace's path.
        path: PathBuf,
        /// What happened to it, e.g. "panicked".
        what: String,
    },
}

/// `Result` with [`NsError`].
pub type Result<T, E = NsError> = std::result::Result<T, E>;
