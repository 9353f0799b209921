//! Inbound capture: a TCP connection from outside a meshed pod to any port of
//! the pod's address is handed to the pod's sidecar inbound listener, the way
//! Istio's `PREROUTING ... REDIRECT --to-ports 15006` does, but without
//! rewriting a packet: `inbound_lookup` is an `sk_lookup` program attached to
//! the pod's network namespace, and it picks the socket the SYN goes to. The
//! accepted socket's local address stays the one the client dialed (that is
//! the original destination, and what `getsockopt` answers).
//!
//! The listener is found in [`INBOUND_LISTENERS`], filed by sock_ops when the
//! sidecar calls `listen()` on the inbound port (see [`file_listener`]). The
//! pod is known by the destination address (a pod's address is unique on the
//! node): `sk_lookup` programs have no netns cookie on any kernel.
//!
//! Left alone (`SK_PASS`, the normal socket lookup): anything not TCP, not
//! to a meshed pod's address, from the pod itself (loopback sources such as
//! Istio's 127.0.0.6, or the pod's own addresses: the sidecar reaching its
//! app), to the sidecar's ports or the pod's excluded ports. A SYN that should
//! be captured while the sidecar has no listener is dropped, and the client
//! gets a reset: never the app uncaptured.

use aya_ebpf::{
    bindings::{
        bpf_sk_lookup,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock, sk_lookup},
    programs::{SkLookupContext, SockContext, SockOpsContext},
};
use netns_ebpf::{AF_INET, AF_INET6, Decision, PodListener, PodPort, counter, verdict};

use crate::addr::{self, ctx_addr};
use crate::maps::{
    BOUND_LISTENERS, INBOUND_LISTENERS, INBOUND_PASS_PORTS, SIDECAR_SEEN, count, count_for_pod,
    local_pod, monitoring, report, settings,
};

const IPPROTO_TCP: u32 = 6;
/// cgroup sock programs return 1 to let the call proceed.
const ALLOW: i32 = 1;
const BPF_ANY: u64 = 0;

#[sk_lookup]
pub fn inbound_lookup(ctx: SkLookupContext) -> u32 {
    let lookup = ctx.lookup;
    // SAFETY: family and protocol are readable fields of the context.
    let (family, protocol) = unsafe { ((*lookup).family, (*lookup).protocol) };
    // Every SYN and every UDP datagram of the namespace comes here: the
    // cheapest checks first.
    if protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    match addr::family(family) {
        Some(AF_INET) => capture::<false>(&ctx),
        Some(_) => capture::<true>(&ctx),
        None => SK_PASS,
    }
}

#[inline(always)]
fn capture<const V6: bool>(ctx: &SkLookupContext) -> u32 {
    let lookup: *mut bpf_sk_lookup = ctx.lookup;
    let family = if V6 { AF_INET6 } else { AF_INET };
    let Some(s) = settings() else { return SK_PASS };
    // SAFETY: readable fields of the context; local_port is in host order.
    let (local, remote, port) = unsafe {
        (
            ctx_addr!(lookup, family, local_ip4, local_ip6),
            ctx_addr!(lookup, family, remote_ip4, remote_ip6),
            core::ptr::read_volatile(core::ptr::addr_of!((*lookup).local_port)) as u16,
        )
    };
    if port == s.inbound_port || port == s.outbound_port {
        return SK_PASS;
    }
    let Some(pod) = local_pod(family, &local) else {
        return SK_PASS;
    };
    let tell = |why| {
        count_for_pod(pod, why);
        if monitoring() {
            report(&Decision {
                netns_cookie: pod,
                socket_cookie: 0,
                addr: local,
                port,
                family,
                verdict: why,
                pad: [0; 11],
            });
        }
    };
    if from_own_pod(family, &remote, pod) {
        tell(verdict::INBOUND_LOOP_GUARD);
        return SK_PASS;
    }
    if passed_port(pod, port) {
        tell(verdict::INBOUND_PASS_PORT);
        return SK_PASS;
    }
    let mut key = PodListener {
        netns_cookie: pod,
        family,
        pad: [0; 3],
    };
    if INBOUND_LISTENERS.redirect_sk_lookup(ctx, &key, 0).is_ok() {
        count(counter::INBOUND_CAPTURED);
        tell(verdict::INBOUND_CAPTURED);
        return SK_PASS;
    }
    if !V6 {
        // A dual-stack sidecar (`[::]:15006`) takes IPv4 too.
        key.family = AF_INET6;
        if INBOUND_LISTENERS.redirect_sk_lookup(ctx, &key, 0).is_ok() {
            count(counter::INBOUND_CAPTURED);
            tell(verdict::INBOUND_CAPTURED);
            return SK_PASS;
        }
    }
    count(counter::INBOUND_REFUSED);
    tell(verdict::INBOUND_REFUSED);
    SK_DROP
}

/// A connection from inside the pod itself: from a loopback address (Istio's
/// sidecar sends from 127.0.0.6) or from one of the pod's own addresses (a
/// socket's default source when it dials its own pod address). This is the
/// sidecar reaching its app; capturing it would loop.
#[inline(always)]
pub fn from_own_pod(family: u16, remote: &[u32; 4], pod: u64) -> bool {
    addr::is_loopback(family, remote) || local_pod(family, remote) == Some(pod)
}

/// Is `port` one of `pod`'s ports that inbound capture leaves alone?
#[inline(always)]
pub fn passed_port(pod: u64, port: u16) -> bool {
    let key = PodPort {
        netns_cookie: pod,
        port,
        pad: [0; 3],
    };
    // SAFETY: only checked for presence.
    unsafe { INBOUND_PASS_PORTS.get(&key) }.is_some()
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    note_bound(&ctx);
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    note_bound(&ctx);
    ALLOW
}

/// A TCP socket bound to the outbound port: its pod has a sidecar (noted in
/// `SIDECAR_SEEN`). One bound to either sidecar port: remember its namespace,
/// which sock_ops needs at `listen()` ([`file_listener`],
/// `sockops::on_listen`) and cannot learn there before Linux 5.15 (no
/// `bpf_get_netns_cookie` in sock_ops).
#[inline(always)]
fn note_bound(ctx: &SockContext) {
    let Some(s) = settings() else { return };
    let sock = ctx.sock;
    // SAFETY: protocol and src_port (host order) are readable in post_bind.
    let (protocol, port) = unsafe { ((*sock).protocol, (*sock).src_port) };
    if protocol != IPPROTO_TCP {
        return;
    }
    let outbound = port == u32::from(s.outbound_port);
    if !outbound && port != u32::from(s.inbound_port) {
        return;
    }
    // SAFETY: both helpers take the cgroup sock context (Linux 5.7+).
    let (socket, netns) = unsafe {
        (
            bpf_get_socket_cookie(sock.cast()),
            bpf_get_netns_cookie(sock.cast()),
        )
    };
    if outbound {
        // The pod's sidecar exists: from now on its absence refuses
        // (FLAG_REFUSE_ONCE_LISTENED) rather than letting apps around it.
        let _ = SIDECAR_SEEN.insert(&netns, &1, 0);
    }
    let _ = BOUND_LISTENERS.insert(&socket, &netns, 0);
}

/// The namespace [`note_bound`] saw for the socket of cookie
/// `socket_cookie`, forgotten as it is read (the socket listens now).
pub fn bound_netns(socket_cookie: u64) -> Option<u64> {
    // SAFETY: the value is copied out at once.
    let netns = (unsafe { BOUND_LISTENERS.get(&socket_cookie) }).copied()?;
    let _ = BOUND_LISTENERS.remove(&socket_cookie);
    Some(netns)
}

/// sock_ops `TCP_LISTEN_CB` on the inbound port: file the listener under its
/// pod (by the namespace [`note_bound`] saw) and address family. A newer
/// listener of the same pod and family replaces the old one; a closed one
/// leaves the map by itself (the kernel unlinks sockets from sockmaps at close).
pub fn file_listener(ctx: &SockOpsContext, socket_cookie: u64) {
    let Some(netns) = bound_netns(socket_cookie) else {
        return;
    };
    let Some(family) = addr::family(ctx.family()) else {
        return;
    };
    let mut key = PodListener {
        netns_cookie: netns,
        family,
        pad: [0; 3],
    };
    // SAFETY: in TCP_LISTEN_CB the context is a full listening socket, which
    // bpf_sock_hash_update accepts (Linux 5.7+).
    let ops = unsafe { &mut *ctx.ops };
    let _ = INBOUND_LISTENERS.update(&mut key, ops, BPF_ANY);
}
