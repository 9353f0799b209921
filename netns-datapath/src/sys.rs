//! Raw system calls nothing we depend on wraps: `bpf(2)` commands aya does
//! not wrap.
//!
//! - Pinning a link aya gives no handle on: aya 0.16 cannot turn a
//!   `CgroupSockoptLink` into an `FdLink`, so it cannot pin it. We find the link
//!   by its program id, open it by id and pin it ourselves, so that
//!   `getsockopt` survives an agent restart like the other programs.
//! - Detaching a link now (`BPF_LINK_DETACH`), whoever else holds it.
//! - Asking what is attached to a cgroup or namespace (`BPF_PROG_QUERY`), and
//!   which namespace a pinned link serves (`BPF_OBJ_GET_INFO_BY_FD`).
//!
//! This is one of the two places of this crate's unsafe code (each block
//! says why it is sound in its `SAFETY:` comment); the other is `probe.rs`,
//! the netns-cookie probe: forking its helper without exec from a process
//! that may have other threads, and the helper's whole life, which may make
//! only raw (async-signal-safe) system calls after such a fork: `prctl`,
//! `close_range`, `recvmsg` and the `SCM_RIGHTS` control message it carries,
//! `setns` into the pod's namespace and back, `socket`, `close`, `write`,
//! `_exit`, and reading `errno`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr`, as much of it as these two commands read (zero-filled).
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> BpfAttr {
        BpfAttr([0; 128])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr-sized buffer that lives for
    // the call; the kernel reads at most its size, which we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (&raw mut attr.0).cast::<libc::c_void>(),
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The (only) link of program `prog_id`, opened by its id.
fn link_of_program(prog_id: u32) -> io::Result<OwnedFd> {
    let link_id = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .find(|link| link.program_id() == prog_id)
        .map(|link| link.id())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no link for program {prog_id}"),
            )
        })?;
    let mut attr = BpfAttr::new();
    attr.put_u32(0, link_id); // link_id
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link of program `prog_id` from its target now (Linux 5.9+),
/// whoever else still holds it. Unpinning alone releases a link only when its
/// last holder lets go, and the kernel may finish that later, on a workqueue.
/// A program without a link is not an error.
pub(crate) fn detach_link_of_program(prog_id: u32) -> io::Result<()> {
    let link = match link_of_program(prog_id) {
        Ok(link) => link,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut attr = BpfAttr::new();
    attr.put_u32(0, link.as_raw_fd().cast_unsigned()); // link_detach.link_fd
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Program ids attached to `cgroup` for `attach_type` (`BPF_PROG_QUERY`).
pub(crate) fn query_cgroup(cgroup: &Path, attach_type: u32) -> io::Result<Vec<u32>> {
    query_attached(&std::fs::File::open(cgroup)?, attach_type)
}

/// Program ids attached to `target` (a cgroup directory or a namespace
/// file) for `attach_type` (`BPF_PROG_QUERY`).
pub(crate) fn query_attached(target: &impl AsRawFd, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut found = [0u32; 64];
    let mut attr = BpfAttr::new();
    attr.put_u32(0, target.as_raw_fd().cast_unsigned()); // query.target_fd
    attr.put_u32(4, attach_type); // query.attach_type
    attr.put_u64(16, found.as_mut_ptr() as u64); // query.prog_ids
    attr.put_u32(24, 64); // query.prog_cnt
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = u32::from_ne_bytes(attr.0[24..28].try_into().expect("4 bytes"));
    Ok(found[..count.min(64) as usize].to_vec())
}

/// Does a program with this id exist (`BPF_PROG_GET_FD_BY_ID`)?
pub(crate) fn program_exists(id: u32) -> bool {
    let mut attr = BpfAttr::new();
    attr.put_u32(0, id); // prog_id
    match bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(i32::try_from) {
        Ok(Ok(fd)) => {
            // SAFETY: the kernel just returned this new descriptor; we own it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            true
        }
        _ => false,
    }
}

/// The link pinned at `path` (`BPF_OBJ_GET`).
fn pinned_link(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = BpfAttr::new();
    attr.put_u64(0, c_path.as_ptr() as u64); // pathname
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Replaces the program of the link pinned at `path` with `program`, in
/// place (`BPF_LINK_UPDATE`, Linux 5.7+ for cgroup links): the attachment
/// never goes away, so no connection slips past while the agent restarts.
pub(crate) fn update_pinned_link(path: &Path, program: &impl AsRawFd) -> io::Result<()> {
    let link = pinned_link(path)?;
    let mut attr = BpfAttr::new();
    attr.put_u32(0, link.as_raw_fd().cast_unsigned()); // link_update.link_fd
    attr.put_u32(4, program.as_raw_fd().cast_unsigned()); // link_update.new_prog_fd
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches the link pinned at `path` now (`BPF_OBJ_GET`, then
/// `BPF_LINK_DETACH`), from the pin alone: what `netns-agent cleanup` does
/// with what an earlier run left.
pub(crate) fn detach_pinned_link(path: &Path) -> io::Result<()> {
    let link = pinned_link(path)?;
    let mut attr = BpfAttr::new();
    attr.put_u32(0, link.as_raw_fd().cast_unsigned()); // link_detach.link_fd
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Pins the (only) link of program `prog_id` at `path`.
pub(crate) fn pin_link_of_program(prog_id: u32, path: &Path) -> io::Result<()> {
    let link = link_of_program(prog_id)?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = BpfAttr::new();
    attr.put_u64(0, c_path.as_ptr() as u64); // pathname
    attr.put_u32(8, link.as_raw_fd().cast_unsigned()); // bpf_fd
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// What the kernel says about a network namespace link pinned at `path`
/// (`BPF_OBJ_GET_INFO_BY_FD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetnsLinkInfo {
    /// The program in the link.
    pub(crate) prog_id: u32,
    /// The inode of the namespace it is attached to; 0 once that namespace is gone.
    pub(crate) netns_ino: u32,
}

/// [`NetnsLinkInfo`] of the link pinned at `path`.
pub(crate) fn pinned_netns_link(path: &Path) -> io::Result<NetnsLinkInfo> {
    // The union's `netns` member is { netns_ino, attach_type }.
    let info = pinned_link_info(path)?;
    let word = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes"));
    Ok(NetnsLinkInfo {
        prog_id: word(8),
        netns_ino: word(16),
    })
}

/// The id of the cgroup the link pinned at `path` is attached to (on cgroup
/// v2, the inode of its directory); 0 once that cgroup is gone.
pub(crate) fn pinned_cgroup_link_target(path: &Path) -> io::Result<u64> {
    // The union's `cgroup` member is { cgroup_id, attach_type }.
    let info = pinned_link_info(path)?;
    Ok(u64::from_ne_bytes(
        info[16..24].try_into().expect("8 bytes"),
    ))
}

/// `struct bpf_link_info` of the link pinned at `path`: type, id, `prog_id`,
/// then (8-aligned, at 16) the union of the link types' members.
fn pinned_link_info(path: &Path) -> io::Result<[u8; 64]> {
    let link = pinned_link(path)?;
    let mut info = [0u8; 64];
    let mut attr = BpfAttr::new();
    attr.put_u32(0, link.as_raw_fd().cast_unsigned()); // info.bpf_fd
    attr.put_u32(4, 64); // info.info_len
    attr.put_u64(8, info.as_mut_ptr() as u64); // info.info
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}
