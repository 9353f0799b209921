//! Safe Linux network namespaces for Rust: a port of the Go package `pkg/ns`
//! (containernetworking, as forked by Merbridge) that is harder to misuse and
//! costs little more than the two `setns(2)` calls a switch needs.
//!
//! # The thread model, in short
//!
//! A network namespace belongs to an OS **thread**, not to a process. Everything
//! here follows from that:
//!
//! - [`NetNs::run`] runs a synchronous closure inside the namespace and moves
//!   the thread back on every exit path, panics included. It cannot `.await`,
//!   so it cannot resume on another thread.
//! - [`NetNs::enter`] returns an [`NsGuard`] that is `!Send`: it cannot be held
//!   across an `.await` in a spawned future.
//! - If a thread cannot go back (the work dropped `CAP_SYS_ADMIN`), the process
//!   aborts with a message rather than run on in the wrong namespace; work that
//!   may do that belongs in [`NetNs::run_in_thread`], whose thread never returns.
//! - A socket keeps the namespace it was made in for life: [`NetNs::sockets`]
//!   makes listeners, streams and UDP sockets inside a namespace (optionally with
//!   `SO_MARK`) and hands them to any thread or runtime.
//! - Long async work gets its own OS thread and current-thread runtime:
//!   `NetNs::run_async` (feature `tokio`).
//! - Paths are checked before use: [`NsError::NotFound`], [`NsError::NotNamespace`]
//!   and [`NsError::WrongType`] (a mount namespace is a namespace too) name the path.
//!
//! # Example
//!
//! ```
//! use netns_core::{NetNs, TempNetNs};
//!
//! // A named namespace (like `ip netns add`), removed again on drop. Needs root.
//! let pod = TempNetNs::new("doc-pod")?;
//! pod.set_loopback_up()?;
//! let same = NetNs::open(pod.path())?; // e.g. "/run/netns/doc-pod-<pid>-<n>"
//! assert_eq!(same.id(), pod.id());
//!
//! // A listener inside the pod, its packets marked 0x539, usable from any thread.
//! let listener = pod.sockets().mark(0x539).tcp_listener("127.0.0.1:0".parse()?)?;
//! assert_eq!(netns_core::mark(&listener)?, 0x539);
//!
//! // A closure inside the pod; the thread comes back even if it panics.
//! let inside = pod.run(|_host| std::fs::metadata("/proc/thread-self/ns/net"))??;
//! # use std::os::unix::fs::MetadataExt;
//! assert_eq!(inside.ino(), pod.id().ino);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Go to Rust
//!
//! | Go (`pkg/ns`) | netns-core |
//! |---|---|
//! | `GetNS(path)` | [`NetNs::open`] |
//! | `GetCurrentNS()` | [`NetNs::current`] (the calling thread's) |
//! | `WithNetNSPath(path, f)` | [`with_netns_path`] |
//! | `IsNSorErr(path)` | [`validate`] |
//! | `NetNS.Do(f)` / `Set()` / `Path()` / `Fd()` / `Close()` | [`NetNs::run`] / [`NetNs::set`] / [`NetNs::path`] / `as_raw_fd()` / [`NetNs::close`] |
//! | `Setns(fd, nstype)`, `Gettid()` | [`setns`], [`gettid`] |
//! | `SoMark` | [`SO_MARK`], [`set_mark`], [`mark`] |
//!
//! Every call needs `CAP_SYS_ADMIN` to switch namespaces; creating them needs
//! root. Minimum kernel: 3.0 for `setns(2)`; 4.11 gives the exact type check
//! (`NS_GET_NSTYPE`), older kernels fall back to the `/proc` link name.

#![deny(missing_docs)]

mod error;
mod named;
mod netns;
mod ns_type;
#[cfg(feature = "tokio")]
mod runtime;
mod socket;
mod sys;
mod thread;

pub use error::{NsError, Result};
pub use named::{NETNS_RUN_DIR, TempNetNs};
pub use netns::{NetNs, NsId, validate};
pub use ns_type::NsType;
pub use socket::{NsSockets, SO_MARK, SO_ORIGINAL_DST, mark, netns_cookie, original_dst, set_mark};
pub use thread::{NsGuard, forget_thread_netns, gettid, setns, with_netns_path};
