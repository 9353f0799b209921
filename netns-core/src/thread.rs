//! Moving threads between namespaces: [`NsGuard`], [`NetNs::run`], [`NetNs::set`]
//! and the per-thread record that makes a switch cost two `setns(2)` calls.
//!
//! Each thread that netns-core switches remembers, in a thread-local, a handle on
//! the namespace it is in. That saves reopening `/proc/thread-self/ns/net` (which
//! costs more than the two `setns` calls themselves) on every switch. The record
//! is filled from `/proc` on a thread's first switch and updated by every switch
//! made through this crate, including the thin [`setns`] wrapper. Code that calls
//! `setns(2)` directly must call [`forget_thread_netns`] afterwards.

use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sched::CloneFlags;

use crate::netns::NsFile;
use crate::{NetNs, NsError, NsType, Result};

thread_local! {
    /// The namespace this thread is in, as far as netns-core switched it.
    static CURRENT: Cell<Option<Arc<NsFile>>> = const { Cell::new(None) };
}

/// The id of the calling thread (Go: `Gettid`).
#[must_use]
pub fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// Thin `setns(2)` (Go: `Setns`): moves the calling thread into the namespace
/// behind `fd`. `nstype` `None` accepts any type, as `0` does in C.
///
/// Prefer [`NetNs::set`] or [`NetNs::run`]. This call drops the thread's record
/// of its network namespace (see the module docs), so mixing it with them is safe.
pub fn setns(fd: impl AsFd, nstype: Option<NsType>) -> io::Result<()> {
    let flags = CloneFlags::from_bits_retain(nstype.map_or(0, NsType::clone_flag));
    nix::sched::setns(fd, flags)?;
    // Whatever the type says (`None`, `Other(0)`, `Other(CLONE_NEWNET)` all
    // can be a network namespace), the record may be stale now: drop it.
    forget_thread_netns();
    Ok(())
}

/// Tells netns-core that the calling thread may have changed network namespace
/// behind its back (a raw `setns(2)` or `unshare(2)`, another library). The next
/// switch then reads the thread's namespace from `/proc` again.
pub fn forget_thread_netns() {
    // A thread that is exiting has no record left to forget.
    let _ = CURRENT.try_with(|c| c.set(None));
}

/// `/proc/thread-self/ns/net`: the calling thread's own namespace link. Not
/// `/proc/<pid>/task/<tid>`: in a process with its own pid namespace that
/// still sees the host's `/proc` (`unshare --pid --fork` without
/// `--mount-proc`), those numbers name another process's thread.
pub(crate) fn own_netns_path() -> PathBuf {
    PathBuf::from("/proc/thread-self/ns/net")
}

/// The namespace the calling thread is in, from its record or from `/proc`.
fn current_file() -> Result<Arc<NsFile>> {
    CURRENT.with(|c| {
        let file = match c.take() {
            Some(file) => file,
            None => NetNs::current()?.file,
        };
        c.set(Some(Arc::clone(&file)));
        Ok(file)
    })
}

fn record(file: Arc<NsFile>) {
    let _ = CURRENT.try_with(|c| c.set(Some(file)));
}

fn raw_setns(file: &NsFile) -> io::Result<()> {
    nix::sched::setns(&file.fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Keeps the calling thread inside a network namespace; dropping it moves the
/// thread back to where it was, on every exit path, unwinding panics included.
///
/// Made by [`NetNs::enter`]. The guard is neither `Send` nor `Sync`: a namespace
/// belongs to one OS thread, so a guard cannot be held across an `.await` in a
/// future that may resume on another thread:
///
/// ```compile_fail
/// # async fn f(ns: netns_core::NetNs) {
/// tokio::spawn(async move {
///     let _inside = ns.enter().unwrap();
///     tokio::task::yield_now().await; // may resume on another worker thread
/// });
/// # }
/// ```
///
/// ```compile_fail
/// fn assert_send<T: Send>(_: T) {}
/// # fn f(ns: &netns_core::NetNs) {
/// assert_send(ns.enter().unwrap());
/// # }
/// ```
///
/// # If the thread cannot go back
///
/// Returning to the original namespace needs `CAP_SYS_ADMIN`. If the work inside
/// dropped it (or anything else makes `setns(2)` fail), the guard prints what
/// happened to standard error and **aborts the process**: Rust has no way to
/// retire a thread the way Go does, and a thread left in the wrong namespace
/// would open every later socket there, silently. Work that may lose the
/// privilege belongs in [`NetNs::run_in_thread`], whose thread never goes back.
///
/// Guards restore in the order they are dropped; drop nested guards in reverse
/// order of creation, as scopes do.
#[must_use = "the thread leaves the namespace when the guard is dropped"]
pub struct NsGuard<'a> {
    target: &'a NetNs,
    /// Where the thread was before; it returns there on drop.
    origin: Arc<NsFile>,
    /// False when the thread was already inside the target: nothing to undo.
    switched: bool,
    _not_send: PhantomData<*const ()>,
}

impl NsGuard<'_> {
    /// The namespace the thread was in before, and returns to on drop.
    #[must_use]
    pub fn origin(&self) -> NetNs {
        NetNs {
            file: Arc::clone(&self.origin),
        }
    }
}

impl Drop for NsGuard<'_> {
    fn drop(&mut self) {
        if !self.switched {
            return;
        }
        if let Err(err) = raw_setns(&self.origin) {
            restore_failed(&self.target.file.path, &self.origin.path, &err);
        }
        record(Arc::clone(&self.origin));
    }
}

impl std::fmt::Debug for NsGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsGuard")
            .field("inside", &self.target.file.path)
            .field("origin", &self.origin.path)
            .field("switched", &self.switched)
            .finish()
    }
}

#[cold]
fn restore_failed(from: &Path, to: &Path, err: &io::Error) -> ! {
    eprintln!(
        "netns-core: fatal: thread {tid} cannot return from network namespace {from} to {to}: \
         {err}; aborting, because a thread left in the wrong namespace would silently open \
         sockets there (run work that may drop CAP_SYS_ADMIN with NetNs::run_in_thread)",
        tid = gettid(),
        from = from.display(),
        to = to.display(),
    );
    std::process::abort()
}

impl NetNs {
    /// Moves the calling thread into this namespace until the returned guard is
    /// dropped. If the thread is already inside, nothing is switched.
    ///
    /// ```no_run
    /// let ns = netns_core::NetNs::open("/run/netns/blue")?;
    /// {
    ///     let _inside = ns.enter()?;
    ///     // sockets made here belong to "blue"
    /// } // back in the original namespace
    /// # Ok::<(), netns_core::NsError>(())
    /// ```
    pub fn enter(&self) -> Result<NsGuard<'_>> {
        let origin = current_file()?;
        let switched = origin.id != self.file.id;
        if switched {
            raw_setns(&self.file).map_err(|source| self.enter_error(source))?;
            record(Arc::clone(&self.file));
        }
        Ok(NsGuard {
            target: self,
            origin,
            switched,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` on the calling thread inside this namespace and moves the thread
    /// back afterwards, also when `f` panics (Go: `Do`). `f` receives the
    /// namespace the thread came from (Go's `hostNS` argument).
    ///
    /// `f` is synchronous by design: it cannot `.await`, so it cannot resume on
    /// another thread. For async work see `NetNs::run_async` (feature `tokio`).
    ///
    /// ```
    /// use std::net::TcpListener;
    ///
    /// let ns = netns_core::NetNs::new_anonymous()?; // needs root
    /// ns.set_loopback_up()?;
    /// // The listener belongs to `ns` for life and can be used from any thread.
    /// let listener = ns.run(|_host| TcpListener::bind("127.0.0.1:0"))??;
    /// let caught = std::panic::catch_unwind(|| ns.run(|_| panic!("inside")));
    /// assert!(caught.is_err()); // and this thread is back where it was
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run<T>(&self, f: impl FnOnce(&NetNs) -> T) -> Result<T> {
        let guard = self.enter()?;
        let origin = guard.origin();
        Ok(f(&origin))
    }

    /// Moves the calling thread into this namespace and leaves it there
    /// (Go: `Set`). Prefer [`NetNs::run`] or [`NetNs::enter`], which come back.
    pub fn set(&self) -> Result<()> {
        if current_file()?.id != self.file.id {
            raw_setns(&self.file).map_err(|source| self.enter_error(source))?;
            record(Arc::clone(&self.file));
        }
        Ok(())
    }

    /// Runs `f` on a new OS thread that enters this namespace and exits after
    /// `f`, so no thread ever has to come back. Use it for work that may drop the
    /// privilege needed to return, or to keep the calling thread untouched at
    /// the price of a thread start. A panic in `f` is resumed on the caller.
    ///
    /// ```no_run
    /// let ns = netns_core::NetNs::open("/run/netns/blue")?;
    /// let links = ns.run_in_thread(|| std::fs::read_to_string("/proc/net/dev"))??;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run_in_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("netns-worker".into())
                .spawn_scoped(scope, || {
                    self.enter_fresh_thread()?;
                    Ok(f())
                })
                .map_err(|e| self.worker_error(format!("could not start: {e}")))?;
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Switches a thread that netns-core has not seen yet and that will never
    /// come back, skipping the `/proc` lookup of where it was.
    pub(crate) fn enter_fresh_thread(&self) -> Result<()> {
        raw_setns(&self.file).map_err(|source| self.enter_error(source))?;
        record(Arc::clone(&self.file));
        Ok(())
    }

    fn enter_error(&self, source: io::Error) -> NsError {
        NsError::Enter {
            path: self.file.path.clone(),
            tid: gettid(),
            source,
        }
    }

    pub(crate) fn worker_error(&self, what: String) -> NsError {
        NsError::Worker {
            path: self.file.path.clone(),
            what,
        }
    }
}

/// Opens the namespace at `path`, runs `f` inside it on the calling thread, and
/// closes it again (Go: `WithNetNSPath`).
///
/// ```no_run
/// let addrs = netns_core::with_netns_path("/run/netns/blue", |_host| {
///     std::fs::read_to_string("/proc/net/if_inet6")
/// })??;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn with_netns_path<T>(path: impl AsRef<Path>, f: impl FnOnce(&NetNs) -> T) -> Result<T> {
    NetNs::open(path)?.run(f)
}
