//! Helpers for the kernel tests: they read what the kernel says (the namespace
//! inode behind `/proc/thread-self/ns/net`, `/proc/*/net/tcp`), never what the
//! code under test believes.
//!
//! Every test in this crate needs root and a real kernel; see README.md.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::missing_panics_doc)]

use std::os::unix::fs::MetadataExt;

/// Fails the test, loudly, when not run as root. Tests here are never skipped.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) on a real kernel: run `./x test`"
    );
}

/// The inode of the calling thread's network namespace, as the kernel reports it.
#[must_use]
pub fn thread_netns_ino() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

/// The network namespace inode of every thread of this process.
#[must_use]
pub fn all_threads_netns_inos() -> Vec<u64> {
    let mut inos = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("read /proc/self/task") {
        let path = task.expect("task entry").path().join("ns/net");
        // A thread may exit between readdir and stat.
        if let Ok(meta) = std::fs::metadata(&path) {
            inos.push(meta.ino());
        }
    }
    inos
}

/// How many file descriptors this process has open.
#[must_use]
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// The socket inodes in the calling thread's network namespace, per
/// `/proc/thread-self/net/{tcp,tcp6,udp,udp6}`.
#[must_use]
pub fn socket_inodes_in_thread_netns() -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text =
            std::fs::read_to_string(format!("/proc/thread-self/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.push(inode.parse().expect("inode column"));
            }
        }
    }
    inodes
}

/// The inode of a socket, as listed in `/proc/net/*`.
#[must_use]
pub fn socket_inode(socket: &impl std::os::fd::AsFd) -> u64 {
    nix::sys::stat::fstat(socket.as_fd())
        .expect("fstat socket")
        .st_ino
}

pub mod agent;
pub mod bench;
pub mod cni;
pub mod kernel;
pub mod mesh;
pub mod pins;
pub mod pod_traffic;

/// True inside the guests of `./x integration-test vm`.
#[must_use]
pub fn in_vm() -> bool {
    std::env::var_os("NETNS_TEST_IN_VM").is_some()
}

/// Inside a VM guest, records that the calling test cannot run there and why
/// (the harness lists it as skipped, with the reason) and returns true: the
/// test then returns. On the host it returns false: host tests never skip.
#[must_use]
pub fn skip_in_vm(reason: &str) -> bool {
    if !in_vm() {
        return false;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_owned();
    if let Some(file) = std::env::var_os("NETNS_TEST_SKIP_FILE") {
        use std::io::Write as _;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .expect("open the VM skip file");
        // One write of the whole line: tests run in parallel, and O_APPEND keeps
        // single writes whole.
        out.write_all(format!("{test}\t{reason}\n").as_bytes())
            .expect("write the VM skip file");
    }
    true
}

/// Sets its flag when dropped, also while a test unwinds: a loop that runs
/// until the flag is set (a load generator in a scoped thread) then ends
/// instead of holding the failing test forever.
#[derive(Debug)]
pub struct StopOnDrop<'f>(pub &'f std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How much slower the emulated VM guests are than the host, for waits.
pub const GUEST_SLOWDOWN: u32 = 6;

/// Polls `done` every 10 ms until it holds; fails the test naming `what`
/// after `within` on the host, `GUEST_SLOWDOWN` times that in a VM guest
/// (QEMU's TCG), so one deadline serves both without hiding a hang.
pub fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let limit = if in_vm() {
        within * GUEST_SLOWDOWN
    } else {
        within
    };
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The lines `from` gives (a child's stdout), on a channel that a thread of
/// its own fills until the stream ends or the receiver is dropped.
pub fn lines_of(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
