//! Asking the kernel directly: `bpf(2)` for what is attached to a cgroup and
//! which programs exist, `/proc/net/sockstat` for TCP memory.

use std::path::Path;

/// `BPF_PROG_QUERY`, `BPF_PROG_GET_FD_BY_ID` (`enum bpf_cmd`).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
/// The cgroup attach types the data path uses (`enum bpf_attach_type`):
/// sock_ops, connect4/6, sendmsg4/6, recvmsg4/6, getsockopt, getpeername4/6.
const CGROUP_ATTACH_TYPES: [u32; 10] = [3, 10, 11, 14, 15, 19, 20, 21, 29, 30];

/// `bpf(2)` with a zeroed 128-byte `union bpf_attr` that `fill` writes into.
fn bpf(cmd: libc::c_long, fill: impl FnOnce(&mut [u8; 128])) -> (libc::c_long, [u8; 128]) {
    #[repr(C, align(8))]
    struct Attr([u8; 128]);
    let mut attr = Attr([0; 128]);
    fill(&mut attr.0);
    // SAFETY: `attr` is a writable, initialised buffer of the size we pass; the
    // kernel reads and writes at most that much of it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (&raw mut attr.0).cast::<libc::c_void>(),
            128usize,
        )
    };
    (ret, attr.0)
}

/// Program ids attached to `cgroup` (the data path's attach types), asked of
/// the kernel with `BPF_PROG_QUERY`. Works on every kernel the suite runs on,
/// where bpftool's JSON output does not (5.10 refuses attach types it lacks).
#[must_use]
pub fn cgroup_program_ids(cgroup: &Path) -> Vec<u32> {
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(cgroup).expect("open the cgroup directory");
    let mut ids = Vec::new();
    for attach_type in CGROUP_ATTACH_TYPES {
        let mut found = [0u32; 64];
        let ids_ptr = found.as_mut_ptr() as u64;
        let (ret, attr) = bpf(BPF_PROG_QUERY, |a| {
            a[0..4].copy_from_slice(&dir.as_raw_fd().cast_unsigned().to_ne_bytes()); // target_fd
            a[4..8].copy_from_slice(&attach_type.to_ne_bytes()); // attach_type
            a[16..24].copy_from_slice(&ids_ptr.to_ne_bytes()); // prog_ids
            a[24..28].copy_from_slice(&64u32.to_ne_bytes()); // prog_cnt
        });
        let err = std::io::Error::last_os_error();
        assert!(
            ret >= 0,
            "BPF_PROG_QUERY {} type {attach_type}: {err}",
            cgroup.display()
        );
        let count = u32::from_ne_bytes(attr[24..28].try_into().unwrap());
        ids.extend_from_slice(&found[..count.min(64) as usize]);
    }
    ids
}

/// Does a program with this id exist (`BPF_PROG_GET_FD_BY_ID`)?
#[must_use]
pub fn program_exists(id: u32) -> bool {
    let (fd, _) = bpf(BPF_PROG_GET_FD_BY_ID, |a| {
        a[0..4].copy_from_slice(&id.to_ne_bytes());
    });
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just gave us this descriptor; we close it once.
    unsafe { libc::close(i32::try_from(fd).expect("an fd")) };
    true
}

/// Can user space read a namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14)?
#[must_use]
pub fn has_netns_cookie() -> bool {
    netns_core::NetNs::current()
        .and_then(|ns| ns.cookie())
        .is_ok()
}

/// Pages of memory TCP sockets hold, per the `TCP: ... mem N` line of the
/// calling thread's `/proc/thread-self/net/sockstat`.
#[must_use]
pub fn tcp_mem_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").expect("read sockstat");
    text.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(2).find(|w| w[0] == "mem").map(|w| w[1])
        })
        .and_then(|n| n.parse().ok())
        .expect("TCP mem in sockstat")
}
