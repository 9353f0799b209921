//! sock_ops: file each redirected connection's original destination under its
//! 4-tuple once established (connect runs before the source port exists), tidy
//! up at close, and, in the opt-in sockmap mode only, add sidecar-owned sockets
//! to the sockhash.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::{bpf_get_socket_cookie, bpf_setsockopt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use netns_ebpf::{MeshSettings, SockPair, counter};

use crate::addr;
use crate::maps::{
    COOKIE_ORIG_DST, PAIR_ORIG_DST, SIDECAR_COOKIES, SIDECAR_PAIRS, SIDECAR_SOCKS, count, settings,
};

const TCP_CLOSE: u32 = 7;
const SOL_TCP: i32 = 6;
/// `TCP_BPF_RTO_MIN`, in microseconds (Linux 5.10+).
const TCP_BPF_RTO_MIN: i32 = 1003;
/// Shortens the ~200 ms tail-loss stall a sockmap ingress queue can cause at close.
const SOCKMAP_RTO_MIN_US: i32 = 5_000;
const BPF_NOEXIST: u64 = 1;

#[sock_ops]
pub fn sockops_track(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    1
}

/// This socket's (local, remote) pair.
fn own_pair(ctx: &SockOpsContext) -> Option<SockPair> {
    let family = addr::family(ctx.family())?;
    let ops = ctx.ops;
    // SAFETY: fields of the sock_ops context, readable in every callback.
    let (local, remote) = unsafe {
        (
            addr::ctx_addr!(ops, family, local_ip4, local_ip6),
            addr::ctx_addr!(ops, family, remote_ip4, remote_ip6),
        )
    };
    let (local_port, remote_port) = (
        ctx.local_port() as u16,
        addr::remote_port(ctx.remote_port()),
    );
    // A dual-stack socket talking IPv4 is filed as IPv4: that is how its peer
    // (an IPv4 socket, such as the sidecar's) sees the connection.
    if family == netns_ebpf::AF_INET6 && addr::is_v4_mapped(&local) && addr::is_v4_mapped(&remote) {
        return Some(addr::pair(
            netns_ebpf::AF_INET,
            [local[3], 0, 0, 0],
            local_port,
            [remote[3], 0, 0, 0],
            remote_port,
        ));
    }
    Some(addr::pair(family, local, local_port, remote, remote_port))
}

fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie takes the sock_ops context.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast::<c_void>()) }
}

fn on_active_established(ctx: &SockOpsContext) {
    let Some(pair) = own_pair(ctx) else { return };
    let cookie = cookie(ctx);
    // SAFETY: the value is copied out at once.
    if let Some(mut orig) = unsafe { COOKIE_ORIG_DST.get(&cookie) }.copied() {
        if orig.family == netns_ebpf::AF_INET6 && addr::is_v4_mapped(&orig.addr) {
            // Dialed as ::ffff:a.b.c.d; the sidecar asks SO_ORIGINAL_DST in IPv4.
            orig.family = netns_ebpf::AF_INET;
            orig.addr = [orig.addr[3], 0, 0, 0];
        }
        let _ = PAIR_ORIG_DST.insert(&pair, &orig, 0);
        // Be told at close, to drop the cookie entry.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
    if !sockmap_mode() {
        return;
    }
    // SAFETY: only checked for presence.
    if unsafe { SIDECAR_COOKIES.get(&cookie) }.is_some() {
        let _ = SIDECAR_PAIRS.insert(&pair, &1, 0);
        add_to_sockmap(ctx, pair);
    }
}

/// The accepting end of a sidecar-to-sidecar leg joins only when the dialing
/// end is a sidecar socket already in the map: an application socket never does.
fn on_passive_established(ctx: &SockOpsContext) {
    let Some(s) = settings() else { return };
    if s.flags & MeshSettings::FLAG_SOCKMAP == 0 || ctx.local_port() != u32::from(s.inbound_port) {
        return;
    }
    let Some(pair) = own_pair(ctx) else { return };
    let dialer = addr::pair(
        pair.family,
        pair.server_addr,
        pair.server_port,
        pair.client_addr,
        pair.client_port,
    );
    // SAFETY: only checked for presence.
    if unsafe { SIDECAR_PAIRS.get(&dialer) }.is_some() {
        add_to_sockmap(ctx, pair);
    }
}

fn add_to_sockmap(ctx: &SockOpsContext, mut pair: SockPair) {
    // SAFETY: ctx.ops is a full socket in the established callbacks.
    if SIDECAR_SOCKS
        .update(&mut pair, unsafe { &mut *ctx.ops }, BPF_NOEXIST)
        .is_ok()
    {
        count(counter::SOCKMAP_ADDED);
        let rto_min = SOCKMAP_RTO_MIN_US;
        // SAFETY: bpf_setsockopt reads 4 bytes from a live stack value.
        let _ = unsafe {
            bpf_setsockopt(
                ctx.ops.cast::<c_void>(),
                SOL_TCP,
                TCP_BPF_RTO_MIN,
                (&raw const rto_min).cast_mut().cast::<c_void>(),
                4,
            )
        };
    }
}

fn on_close(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let _ = COOKIE_ORIG_DST.remove(&cookie);
    let _ = SIDECAR_COOKIES.remove(&cookie);
    if let Some(pair) = own_pair(ctx) {
        let _ = SIDECAR_PAIRS.remove(&pair);
    }
}

fn sockmap_mode() -> bool {
    settings().is_some_and(|s| s.flags & MeshSettings::FLAG_SOCKMAP != 0)
}
