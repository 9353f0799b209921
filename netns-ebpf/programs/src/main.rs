//! The netns data path, in Rust for the BPF target. Built only by
//! `cargo xtask build-ebpf`; loaded and attached by netns-agent.
//!
//! - `connect4/6` send a meshed pod's outbound TCP to the sidecar and remember
//!   where it was going; `getpeername4/6` show the app that address again.
//! - `sockops` carries the original destination in the app's SYN (a TCP
//!   option) into the sidecar socket's own storage, where `getsockopt`
//!   answers `SO_ORIGINAL_DST` from (docs/security.md says why).
//! - `sk_msg` + a sockhash short-circuit sidecar-to-sidecar legs: opt-in only,
//!   never for application sockets (docs/sockmap.md says why).
//! - `sendmsg4/6` + `recvmsg4/6` redirect DNS to a local port, opt-in.
//! - `inbound_lookup` (`sk_lookup`, attached to each meshed pod's namespace)
//!   hands connections into the pod to its sidecar's inbound listener, which
//!   sock_ops files in a sockhash at `listen()` (`post_bind4/6` note which
//!   namespace it is in).
//! - `netns_probe` (`cgroup/sock_create`, on the agent's probe cgroup only)
//!   tells user space a namespace's cookie on every kernel.
//!
//! Every setting comes from maps user space writes: nothing is compiled in.

#![no_std]
#![no_main]

mod addr;
mod connect;
mod inbound;
mod maps;
mod probe;
mod sockmap;
mod sockops;
mod sockopt;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could get here; this satisfies rustc.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
