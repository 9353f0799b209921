//! sock_ops: carry each redirected connection's original destination to the
//! sidecar's socket, tidy up at close, and, in the opt-in sockmap mode only,
//! add sidecar-owned sockets to the sockhash.
//!
//! The original destination travels inside the connection itself: the app's
//! SYN carries it in a TCP option ([`netns_ebpf::tcp_option`]), the sidecar's
//! listener keeps the SYN (`TCP_SAVE_SYN`), and when the sidecar's socket is
//! established the option is copied into that socket's own storage, where
//! getsockopt finds it. No table keyed by addresses is involved, so pods
//! whose connections have equal 4-tuples (every pod dials the same
//! 127.0.0.1:15001) cannot see each other's destinations. Linux 5.10+ (TCP
//! header options from BPF, socket storage in sock_ops and getsockopt).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::{
        bpf_get_socket_cookie, bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_setsockopt,
        bpf_store_hdr_opt,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use netns_ebpf::{
    AF_INET, AF_INET6, Decision, MeshSettings, OriginalDst, SockPair, counter, tcp_option, verdict,
};

use crate::addr;
use crate::maps::{
    DIALED_DST, LISTENER_POD, SIDECAR_COOKIES, SIDECAR_PAIRS, SIDECAR_SOCKS, SOCK_ORIG_DST, count,
    count_for_pod, monitoring, report, settings, sk_storage,
};

const TCP_CLOSE: u32 = 7;
const SOL_TCP: i32 = 6;
/// `TCP_SAVE_SYN`: the listener keeps each connection's SYN headers.
const TCP_SAVE_SYN: i32 = 27;
/// `TCP_BPF_RTO_MIN`, in microseconds (Linux 5.10+).
const TCP_BPF_RTO_MIN: i32 = 1003;
/// Shortens the ~200 ms tail-loss stall a sockmap ingress queue can cause at close.
const SOCKMAP_RTO_MIN_US: i32 = 5_000;
const BPF_NOEXIST: u64 = 1;
/// `BPF_LOAD_HDR_OPT_TCP_SYN`: search the saved SYN, not the current packet.
const LOAD_FROM_SYN: u64 = 1;
const TCPHDR_SYN: u32 = 0x02;
/// `bpf_load_hdr_opt` found no saved SYN.
const ENOENT: i64 = -2;
const TCPHDR_ACK: u32 = 0x10;
const OPTION_MAX: usize = tcp_option::LEN_V6 as usize;

#[sock_ops]
pub fn sockops_track(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => on_option_len(&ctx),
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => on_write_option(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
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
    if family == AF_INET6 && addr::is_v4_mapped(&local) && addr::is_v4_mapped(&remote) {
        return Some(addr::pair(
            AF_INET,
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

/// The original destination connect4/6 filed for this (app) socket, as the
/// sidecar will ask for it: a dial of `::ffff:a.b.c.d` is an IPv4 destination.
fn app_orig_dst(ctx: &SockOpsContext) -> Option<OriginalDst> {
    // SAFETY: `sk` of the sock_ops context, checked for null (a request
    // socket has none); the value is copied out at once.
    let mut orig = unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        *sk_storage(&DIALED_DST, sk, false)?
    };
    if orig.family == AF_INET6 && addr::is_v4_mapped(&orig.addr) {
        orig.family = AF_INET;
        orig.addr = [orig.addr[3], 0, 0, 0];
    }
    Some(orig)
}

fn set_flags(ctx: &SockOpsContext, set: u32, clear: u32) {
    let _ = ctx.set_cb_flags(((ctx.cb_flags() | set) & !clear) as i32);
}

/// Right before a redirected socket sends its SYN: ask to write the option.
/// Only a sidecar socket the sockmap mode tracks asks to be told at close
/// (to drop its entries); an app socket's destination lives in its own
/// storage and goes with it, so the app's socket costs no state callbacks.
fn on_connect(ctx: &SockOpsContext) {
    if app_orig_dst(ctx).is_none() {
        return;
    }
    // SAFETY: only checked for presence.
    let tracked = sockmap_mode() && unsafe { SIDECAR_COOKIES.get(&cookie(ctx)) }.is_some();
    let state = if tracked {
        BPF_SOCK_OPS_STATE_CB_FLAG
    } else {
        0
    };
    set_flags(ctx, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG | state, 0);
}

/// Is the packet being written a SYN (not a SYN-ACK)?
fn writing_syn(ctx: &SockOpsContext) -> bool {
    // SAFETY: skb_tcp_flags is readable in the header-option callbacks.
    let flags = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ops).skb_tcp_flags)) };
    flags & (TCPHDR_SYN | TCPHDR_ACK) == TCPHDR_SYN
}

fn option_len(orig: &OriginalDst) -> u32 {
    u32::from(if orig.family == AF_INET {
        tcp_option::LEN_V4
    } else {
        tcp_option::LEN_V6
    })
}

fn on_option_len(ctx: &SockOpsContext) {
    if !writing_syn(ctx) {
        return;
    }
    let Some(orig) = app_orig_dst(ctx) else {
        return;
    };
    // SAFETY: the sock_ops context, in the header-length callback.
    if unsafe { bpf_reserve_hdr_opt(ctx.ops, option_len(&orig), 0) } != 0 {
        count(counter::ORIGINAL_DST_NO_ROOM);
    }
}

fn on_write_option(ctx: &SockOpsContext) {
    if !writing_syn(ctx) {
        return;
    }
    let Some(orig) = app_orig_dst(ctx) else {
        return;
    };
    let mut option = [0u8; OPTION_MAX];
    option[0] = tcp_option::KIND;
    option[2..4].copy_from_slice(&orig.port.to_be_bytes());
    // SAFETY: the sock_ops context, in the write callback; `option` lives
    // on the stack for the call and holds at least the length passed.
    unsafe {
        if orig.family == AF_INET {
            option[1] = tcp_option::LEN_V4;
            option[4..8].copy_from_slice(&orig.addr[0].to_ne_bytes());
            let _ = bpf_store_hdr_opt(
                ctx.ops,
                option.as_ptr().cast(),
                u32::from(tcp_option::LEN_V4),
                0,
            );
        } else {
            option[1] = tcp_option::LEN_V6;
            for (i, word) in orig.addr.iter().enumerate() {
                option[4 + i * 4..8 + i * 4].copy_from_slice(&word.to_ne_bytes());
            }
            let _ = bpf_store_hdr_opt(
                ctx.ops,
                option.as_ptr().cast(),
                u32::from(tcp_option::LEN_V6),
                0,
            );
        }
    }
}

/// A listener on one of the sidecar's ports keeps the SYN of every
/// connection it accepts: the original destination is in it.
fn on_listen(ctx: &SockOpsContext) {
    let Some(s) = settings() else { return };
    let port = ctx.local_port();
    if port != u32::from(s.outbound_port) && port != u32::from(s.inbound_port) {
        return;
    }
    set_tcp_option(ctx, TCP_SAVE_SYN, 1);
    if port == u32::from(s.inbound_port) {
        crate::inbound::file_listener(ctx, cookie(ctx));
    } else if let Some(netns) = crate::inbound::bound_netns(cookie(ctx)) {
        // The outbound listener: its pod, for every socket it will accept.
        // SAFETY: `sk` of the sock_ops context, checked for null; in
        // TCP_LISTEN_CB a full socket.
        let stored = unsafe {
            let sk = (*ctx.ops).__bindgen_anon_2.sk;
            if sk.is_null() {
                return;
            }
            sk_storage(&LISTENER_POD, sk, true)
        };
        if let Some(stored) = stored {
            *stored = netns;
        }
    }
}

/// `bpf_setsockopt(SOL_TCP, name, value)` on this socket, best effort.
fn set_tcp_option(ctx: &SockOpsContext, name: i32, value: i32) {
    // SAFETY: bpf_setsockopt reads 4 bytes from a live stack value.
    let _ = unsafe {
        bpf_setsockopt(
            ctx.ops.cast::<c_void>(),
            SOL_TCP,
            name,
            (&raw const value).cast_mut().cast::<c_void>(),
            4,
        )
    };
}

fn on_active_established(ctx: &SockOpsContext) {
    // The option rides on the SYN only.
    set_flags(ctx, 0, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
    if !sockmap_mode() {
        return;
    }
    let Some(pair) = own_pair(ctx) else { return };
    // SAFETY: only checked for presence.
    if unsafe { SIDECAR_COOKIES.get(&cookie(ctx)) }.is_some() {
        let _ = SIDECAR_PAIRS.insert(&pair, &1, 0);
        add_to_sockmap(ctx, pair);
    }
}

fn on_passive_established(ctx: &SockOpsContext) {
    let Some(s) = settings() else { return };
    let port = ctx.local_port();
    if port == u32::from(s.outbound_port) {
        file_original_dst(ctx, Leg::Outbound);
    } else if port == u32::from(s.inbound_port) {
        file_original_dst(ctx, Leg::Inbound);
        if s.flags & MeshSettings::FLAG_SOCKMAP != 0 {
            join_sidecar_leg(ctx);
        }
    }
}

/// Which sidecar port a connection was accepted on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leg {
    /// An app's connection, redirected on the pod's loopback.
    Outbound,
    /// Another pod's sidecar dialing this pod: only the port was redirected.
    Inbound,
}

/// The sidecar's socket for a redirected connection: the original
/// destination from the SYN's option goes into this socket's storage. A SYN
/// can carry anything, so it is believed only where it cannot mislead: on the
/// outbound port from the pod's own loopback (no other namespace reaches
/// it), on the inbound port only about this very address (connect rewrote
/// the port alone; a forged option can name no other host).
fn file_original_dst(ctx: &SockOpsContext, leg: Leg) {
    let Some(pair) = own_pair(ctx) else { return };
    let (why, orig) = read_original_dst(ctx, leg, &pair);
    if why == verdict::ORIGINAL_DST_RECEIVED {
        // SAFETY: `sk` of the sock_ops context, checked for null before use.
        let stored = unsafe {
            let sk = (*ctx.ops).__bindgen_anon_2.sk;
            if sk.is_null() {
                return;
            }
            sk_storage(&SOCK_ORIG_DST, sk, true)
        };
        let Some(stored) = stored else { return };
        *stored = orig;
        count(counter::ORIGINAL_DST_RECEIVED);
    }
    // Inbound capture's connections carry no option (their destination is
    // the socket's own address): only a leg's outcome is news there.
    let news = leg == Leg::Outbound
        || why == verdict::ORIGINAL_DST_RECEIVED
        || why == verdict::OPTION_NOT_BELIEVED;
    if !news {
        return;
    }
    // The pod: known by address on the inbound port; on the outbound port
    // (loopback, whose address names no pod, and sock_ops has no netns
    // cookie before Linux 5.15) by what the listener's storage passed on to
    // this accepted socket (none for a listener older than the agent).
    let pod = if leg == Leg::Inbound {
        crate::maps::local_pod(pair.family, &pair.client_addr).unwrap_or(0)
    } else {
        // SAFETY: `sk` of the sock_ops context, checked for null.
        unsafe {
            let sk = (*ctx.ops).__bindgen_anon_2.sk;
            if sk.is_null() {
                0
            } else {
                crate::maps::listener_pod(sk)
            }
        }
    };
    count_for_pod(pod, why);
    if monitoring() {
        // Otherwise the address the connection reached: this socket's own
        // end (the pair's `client` fields, from its point of view).
        let (addr, port, family) = if why == verdict::ORIGINAL_DST_RECEIVED {
            (orig.addr, orig.port, orig.family)
        } else {
            (pair.client_addr, pair.client_port, pair.family)
        };
        report(&Decision {
            netns_cookie: pod,
            socket_cookie: cookie(ctx),
            addr,
            port,
            family,
            verdict: why,
            pad: [0; 11],
        });
    }
}

/// The original destination in the saved SYN's option, and whether it is
/// believed ([`verdict::ORIGINAL_DST_RECEIVED`]) or why not.
fn read_original_dst(ctx: &SockOpsContext, leg: Leg, pair: &SockPair) -> (u8, OriginalDst) {
    let none = OriginalDst::default();
    if leg == Leg::Outbound && !addr::is_loopback(pair.family, &pair.server_addr) {
        return (verdict::OPTION_NOT_BELIEVED, none);
    }
    let mut option = [0u8; OPTION_MAX];
    option[0] = tcp_option::KIND;
    // SAFETY: the sock_ops context in PASSIVE_ESTABLISHED (the saved SYN is
    // readable); `option` is a stack buffer of the length passed.
    let len = unsafe {
        bpf_load_hdr_opt(
            ctx.ops,
            option.as_mut_ptr().cast(),
            OPTION_MAX as u32,
            LOAD_FROM_SYN,
        )
    };
    if len == ENOENT {
        return (verdict::NO_SAVED_SYN, none);
    }
    let port = u16::from_be_bytes([option[2], option[3]]);
    let word =
        |i: usize| u32::from_ne_bytes([option[i], option[i + 1], option[i + 2], option[i + 3]]);
    let orig = if len == i64::from(tcp_option::LEN_V4) && option[1] == tcp_option::LEN_V4 {
        OriginalDst {
            addr: [word(4), 0, 0, 0],
            port,
            family: AF_INET,
        }
    } else if len == i64::from(tcp_option::LEN_V6) && option[1] == tcp_option::LEN_V6 {
        OriginalDst {
            addr: [word(4), word(8), word(12), word(16)],
            port,
            family: AF_INET6,
        }
    } else {
        return (verdict::NO_OPTION, none);
    };
    if leg == Leg::Inbound && (orig.family != pair.family || orig.addr != pair.client_addr) {
        return (verdict::OPTION_NOT_BELIEVED, none);
    }
    (verdict::ORIGINAL_DST_RECEIVED, orig)
}

/// The accepting end of a sidecar-to-sidecar leg joins only when the dialing
/// end is a sidecar socket already in the map: an application socket never does.
fn join_sidecar_leg(ctx: &SockOpsContext) {
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
    let ops = unsafe { &mut *ctx.ops };
    if SIDECAR_SOCKS.update(&mut pair, ops, BPF_NOEXIST).is_ok() {
        count(counter::SOCKMAP_ADDED);
        set_tcp_option(ctx, TCP_BPF_RTO_MIN, SOCKMAP_RTO_MIN_US);
    }
}

/// A sidecar socket of the sockmap mode closes (no other socket asks for
/// state callbacks): its entries go.
fn on_close(ctx: &SockOpsContext) {
    let _ = SIDECAR_COOKIES.remove(&cookie(ctx));
    if let Some(pair) = own_pair(ctx) {
        let _ = SIDECAR_PAIRS.remove(&pair);
    }
}

fn sockmap_mode() -> bool {
    settings().is_some_and(|s| s.flags & MeshSettings::FLAG_SOCKMAP != 0)
}
