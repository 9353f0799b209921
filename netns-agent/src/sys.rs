//! Raw system calls the sidecar module needs and nothing we depend on
//! wraps: `pidfd_getfd(2)` to take a descriptor of a sidecar's listener that
//! predates the agent, and `TCP_SAVE_SYN` on it.
//!
//! One of the agent's two places of unsafe code (each block says why it is
//! sound in its `SAFETY:` comment); the other is `cmd/run.rs`
//! (`reserve_fd_table`). The data path's own raw calls live in
//! netns-datapath.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A descriptor of the open file `fd` of process `pid` (`pidfd_open(2)` then
/// `pidfd_getfd(2)`, Linux 5.6; needs `PTRACE_MODE_ATTACH` on `pid`): for a
/// socket, the very same socket.
pub(crate) fn duplicate_fd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel has just given us, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(pidfd).map_err(io::Error::other)?) };
    // SAFETY: pidfd_getfd takes a pidfd, a target descriptor number and flags.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above: new, close-on-exec, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(dup).map_err(io::Error::other)?) })
}

/// `TCP_SAVE_SYN` (include/uapi/linux/tcp.h).
const TCP_SAVE_SYN: libc::c_int = 27;

/// `setsockopt(TCP_SAVE_SYN, 1)`: a listener keeps each connection's SYN.
pub(crate) fn save_syn(socket: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a 4-byte option value read from a live local.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_SAVE_SYN,
            (&raw const one).cast(),
            4,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
