//! Asking the kernel directly: `BPF_PROG_QUERY` for what is attached to a
//! cgroup and which programs exist, `/proc/net/sockstat` for TCP memory.

use std::path::Path;

/// Program ids attached to `cgroup` at the data path's hooks, asked of the
/// kernel with `BPF_PROG_QUERY` (netns-agent's own query: one `bpf(2)` code
/// path for the agent's status and the tests).
#[must_use]
pub fn cgroup_program_ids(cgroup: &Path) -> Vec<u32> {
    netns_datapath::attached_program_ids(cgroup)
        .unwrap_or_else(|e| panic!("BPF_PROG_QUERY {}: {e}", cgroup.display()))
}

/// Does a program with this id exist (`BPF_PROG_GET_FD_BY_ID`)?
#[must_use]
pub fn program_exists(id: u32) -> bool {
    netns_datapath::program_exists(id)
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
