//! `cgroup/sock_create`, attached only to the agent's probe cgroup (one helper
//! process in it, nothing else): files the network namespace cookie of every
//! socket the helper creates under the helper's pid. This is how user space
//! learns a namespace's cookie on kernels without `SO_NETNS_COOKIE` (5.14);
//! `bpf_get_netns_cookie` reaches cgroup sock programs from 5.7 on.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_netns_cookie},
    macros::cgroup_sock,
    programs::SockContext,
};

use crate::maps::PROBED_NETNS;

/// cgroup sock programs return 1 to let the socket be created.
const ALLOW: i32 = 1;

#[cgroup_sock(sock_create)]
pub fn netns_probe(ctx: SockContext) -> i32 {
    // The high half is the thread group id: the helper's pid.
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: bpf_get_netns_cookie takes the cgroup sock context (Linux 5.7+).
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock.cast()) };
    let _ = PROBED_NETNS.insert(&pid, &cookie, 0);
    ALLOW
}
