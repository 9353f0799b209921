//! Learning a network namespace's cookie, the key the data path knows a pod
//! by, on every kernel. `SO_NETNS_COOKIE` (what netns-core's `NetNs::cookie`
//! reads) exists from Linux 5.14 only; `bpf_get_netns_cookie` reaches cgroup
//! sock programs from 5.7. So: a helper process, forked once, lives alone in a
//! probe cgroup of its own (a child of the captured cgroup) with the
//! `netns_probe` program on its `sock_create` hook. For each namespace the
//! helper is handed the namespace's descriptor (`SCM_RIGHTS`), enters it,
//! creates one socket and closes it; the program files the socket's netns
//! cookie under the helper's pid, and this side reads it from the map. One
//! code path on every kernel, so it is tested everywhere.
//!
//! The helper is forked without exec from a process that may have other
//! threads: after the fork it makes only raw system calls (no allocation,
//! no locks). It dies with its parent (`PR_SET_PDEATHSIG`) and is killed and
//! reaped, and its cgroup removed, when the probe is dropped.

use std::fs::File;
use std::io::{IoSlice, Read as _};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::HashMap;
use aya::programs::{CgroupAttachMode, CgroupSock};
use netns_core::NetNs;
use netns_ebpf::names;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::unistd::{ForkResult, Pid};

use super::DataPathError;

/// How long the helper may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

static NEXT: AtomicU32 = AtomicU32::new(0);
/// The probe cgroups' names start with this, then pid and a counter.
const CGROUP_PREFIX: &str = "netns-cookie-probe-";

/// A namespace-cookie probe with its own copy of the object (and so of its
/// maps), for code without a [`super::DataPath`] at hand: tests, tools. A
/// data path has one built in ([`super::DataPath::netns_cookie`]).
///
/// ```no_run
/// use netns_datapath::CookieProbe;
/// // A cgroup of yours (never the cgroup v2 root): the probe's goes under it.
/// let mut probe = CookieProbe::start(netns_datapath::EBPF_OBJECT, "/sys/fs/cgroup/mine".as_ref())?;
/// let pod = netns_core::NetNs::open("/run/netns/pod-a")?;
/// println!("cookie {}", probe.cookie(&pod)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CookieProbe {
    // Dropped first: the helper and its cgroup go before the program.
    probe: NetnsProbe,
    ebpf: Ebpf,
}

impl CookieProbe {
    /// Loads `object` and starts a probe under cgroup `parent`.
    pub fn start(object: &[u8], parent: &Path) -> Result<CookieProbe, DataPathError> {
        if object.is_empty() {
            return Err(DataPathError::NoObject);
        }
        crate::cgroup::check_cgroup2(parent)?;
        let mut ebpf = Ebpf::load(object).map_err(DataPathError::Object)?;
        let probe = NetnsProbe::start(&mut ebpf, parent)?;
        Ok(CookieProbe { probe, ebpf })
    }

    /// The cookie of `ns`, as the kernel's programs see it.
    pub fn cookie(&mut self, ns: &NetNs) -> Result<u64, DataPathError> {
        self.probe.cookie(&mut self.ebpf, ns)
    }
}

/// The running probe: helper process, its cgroup, the channel to it.
#[derive(Debug)]
pub(super) struct NetnsProbe {
    helper: Pid,
    channel: UnixStream,
    cgroup: PathBuf,
}

impl NetnsProbe {
    /// Makes the probe cgroup under `captured`, attaches the probe program of
    /// `ebpf` to it and starts the helper in it.
    pub(super) fn start(ebpf: &mut Ebpf, captured: &Path) -> Result<NetnsProbe, DataPathError> {
        // Probe cgroups of agents that were killed are empty: rmdir takes
        // them (and fails on live ones).
        if let Ok(entries) = std::fs::read_dir(captured) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(CGROUP_PREFIX)
                {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let cgroup = captured.join(format!("{CGROUP_PREFIX}{}-{n}", std::process::id()));
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| DataPathError::Probe {
                op,
                path: path.clone(),
                source,
            }
        };
        std::fs::create_dir(&cgroup).map_err(io("create the probe cgroup", &cgroup))?;
        // From here on, dropping `probe` undoes everything.
        let (ours, theirs) =
            UnixStream::pair().map_err(io("make the helper's channel", &cgroup))?;
        ours.set_read_timeout(Some(ANSWER_WITHIN))
            .map_err(io("make the helper's channel", &cgroup))?;
        let helper = fork_helper(theirs.as_raw_fd()).map_err(io("fork the helper", &cgroup))?;
        drop(theirs);
        let probe = NetnsProbe {
            helper,
            channel: ours,
            cgroup,
        };
        std::fs::write(
            probe.cgroup.join("cgroup.procs"),
            probe.helper.as_raw().to_string(),
        )
        .map_err(io("move the helper into the probe cgroup", &probe.cgroup))?;
        let program: &mut CgroupSock = ebpf
            .program_mut(names::prog::NETNS_PROBE)
            .ok_or(DataPathError::Missing {
                kind: "program",
                name: names::prog::NETNS_PROBE,
            })?
            .try_into()
            .map_err(|source| DataPathError::ProbeProgram { source })?;
        program
            .load()
            .map_err(|source| DataPathError::ProbeProgram { source })?;
        let dir = File::open(&probe.cgroup).map_err(io("open the probe cgroup", &probe.cgroup))?;
        // The link stays with the program: it goes when the object is dropped.
        program
            .attach(dir.as_fd(), CgroupAttachMode::Single)
            .map_err(|source| DataPathError::ProbeProgram { source })?;
        Ok(probe)
    }

    /// The cookie of `ns`, as the kernel's programs see it.
    pub(super) fn cookie(&mut self, ebpf: &mut Ebpf, ns: &NetNs) -> Result<u64, DataPathError> {
        self.ask(ns)?;
        self.answer(ebpf, ns)
    }

    /// Hands `ns` to the helper; [`NetnsProbe::answer`] collects the cookie
    /// (the caller may do other work meanwhile). One question at a time.
    /// The map keeps the helper's last answer; it is read only after the
    /// helper reports that this question's socket was made (and so filed).
    pub(super) fn ask(&mut self, ns: &NetNs) -> Result<(), DataPathError> {
        let fds = [ns.as_fd().as_raw_fd()];
        sendmsg::<()>(
            self.channel.as_raw_fd(),
            &[IoSlice::new(&[1])],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| failed(ns, "hand the namespace to the probe helper")(e.into()))?;
        Ok(())
    }

    /// The helper's answer to the last [`NetnsProbe::ask`] about `ns`.
    pub(super) fn answer(&mut self, ebpf: &mut Ebpf, ns: &NetNs) -> Result<u64, DataPathError> {
        let pid = self.helper.as_raw().cast_unsigned();
        let mut status = [0u8; 1];
        self.channel
            .read_exact(&mut status)
            .map_err(failed(ns, "hear from the probe helper"))?;
        if status[0] != 0 {
            return Err(failed(
                ns,
                "create a socket in the namespace (probe helper)",
            )(std::io::Error::from_raw_os_error(i32::from(
                status[0],
            ))));
        }
        seen(ebpf)?.get(&pid, 0).map_err(|e| {
            failed(ns, "read the probe's answer")(std::io::Error::other(format!(
                "{}: {e}",
                names::PROBED_NETNS
            )))
        })
    }
}

/// The probe's map: helper pid -> cookie of its last socket.
fn seen(ebpf: &mut Ebpf) -> Result<HashMap<&mut aya::maps::MapData, u32, u64>, DataPathError> {
    let map = ebpf
        .map_mut(names::PROBED_NETNS)
        .ok_or(DataPathError::Missing {
            kind: "map",
            name: names::PROBED_NETNS,
        })?;
    HashMap::try_from(map).map_err(|e| super::map_error(names::PROBED_NETNS, "open", e))
}

/// An error of the probe about namespace `ns`.
fn failed(ns: &NetNs, op: &'static str) -> impl FnOnce(std::io::Error) -> DataPathError {
    let path = ns.path().to_owned();
    move |source| DataPathError::Probe { op, path, source }
}

impl Drop for NetnsProbe {
    fn drop(&mut self) {
        // Only the helper this probe forked, by its pid.
        let _ = nix::sys::signal::kill(self.helper, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.helper, None);
        if let Err(e) = std::fs::remove_dir(&self.cgroup) {
            tracing::warn!(cgroup = %self.cgroup.display(), error = %e, "cannot remove the probe cgroup");
        }
    }
}

/// Forks the helper, which serves on `channel` until it closes.
fn fork_helper(channel: RawFd) -> std::io::Result<Pid> {
    let parent = nix::unistd::getpid();
    // The namespace the helper goes back to after each question, so that it
    // never keeps a deleted pod's namespace (and its interfaces) alive.
    let home = File::open("/proc/thread-self/ns/net")?;
    // SAFETY: the child only makes raw system calls (async-signal-safe) and
    // leaves with _exit; it never returns into Rust code of the parent.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(child),
        // SAFETY: this is the child of the fork.
        ForkResult::Child => unsafe { helper_main(channel, home.as_raw_fd(), parent) },
    }
}

/// The helper's whole life. Raw system calls only.
///
/// # Safety
/// Only in the child of a fork.
unsafe fn helper_main(channel: RawFd, home: RawFd, parent: Pid) -> ! {
    // SAFETY: plain system calls on values owned by this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent.as_raw() {
            libc::_exit(0); // the parent is already gone
        }
        // Keep nothing of the parent's but the two descriptors it needs: an
        // inherited lock (the agent's single-instance flock) or namespace
        // would otherwise outlive a killed agent by as long as this helper.
        let (low, high) = (channel.min(home), channel.max(home));
        for (first, last) in [
            (3, low - 1),
            (low + 1, high - 1),
            (high + 1, libc::c_int::MAX),
        ] {
            if first <= last {
                libc::syscall(
                    libc::SYS_close_range,
                    first.cast_unsigned(),
                    last.cast_unsigned(),
                    0,
                );
            }
        }
        loop {
            let mut byte = 0u8;
            let mut iov = libc::iovec {
                iov_base: (&raw mut byte).cast(),
                iov_len: 1,
            };
            // Room for one descriptor's control message, aligned.
            let mut control = [0u64; 8];
            let mut msg: libc::msghdr = core::mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = core::mem::size_of_val(&control);
            let n = libc::recvmsg(channel, &raw mut msg, libc::MSG_CMSG_CLOEXEC);
            if n <= 0 {
                libc::_exit(0); // the parent closed the channel
            }
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            let mut status: u8 = EINVAL;
            if !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            {
                let ns: RawFd = core::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                status = if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                    errno()
                } else {
                    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                    let made = if s < 0 {
                        errno()
                    } else {
                        libc::close(s);
                        0
                    };
                    if libc::setns(home, libc::CLONE_NEWNET) != 0 {
                        libc::_exit(1); // cannot leave: the next question restarts the probe
                    }
                    made
                };
                libc::close(ns);
            }
            if libc::write(channel, (&raw const status).cast(), 1) != 1 {
                libc::_exit(0);
            }
        }
    }
}

/// `EINVAL` as the one-byte answer carries it.
const EINVAL: u8 = 22;

/// The calling thread's errno, squeezed into the one-byte answer (never 0).
fn errno() -> u8 {
    // SAFETY: reading this thread's errno.
    let e = unsafe { *libc::__errno_location() };
    u8::try_from(e).unwrap_or(u8::MAX).max(1)
}
