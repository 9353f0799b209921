//! cgroup/getsockopt: answers `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6) for connections the data path redirected, the
//! way netfilter's conntrack answers them after an iptables REDIRECT.
//!
//! The answer comes from the asking socket's own storage (filled by sock_ops
//! from the SYN that opened it), never from a table shared with other sockets:
//! a socket can only be told where its own connection was going. For a
//! connection inbound capture took, it is the socket's own local address.
//!
//! Every other getsockopt of every process in the cgroup passes through
//! untouched, also those whose value is larger than the page the kernel shows
//! programs (iptables-legacy's `IPT_SO_GET_ENTRIES`).

use aya_ebpf::{
    bindings::bpf_sockopt, helpers::bpf_sk_storage_get, macros::cgroup_sockopt,
    programs::SockoptContext,
};
use netns_ebpf::{AF_INET, AF_INET6, Decision, OriginalDst, counter, verdict};

use crate::addr;
use crate::inbound;
use crate::maps::{
    SOCK_ORIG_DST, count, count_for_pod, listener_pod, local_pod, map_ptr, monitoring, report,
    settings,
};

const IPPROTO_TCP: u32 = 6;

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number.
const SO_ORIGINAL_DST: i32 = 80;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    if !answer(so) {
        pass_through(so);
    }
    1
}

/// A value larger than the buffer the kernel shows us (one page) must be
/// handed back as the kernel produced it: optlen 0 says so. Leaving optlen
/// alone makes Linux 5.11 to 6.4 fail the call with EFAULT.
fn pass_through(so: *mut bpf_sockopt) {
    // SAFETY: optval, optval_end and optlen are fields of the context.
    unsafe {
        let start = (*so).__bindgen_anon_2.optval as usize;
        let end = (*so).__bindgen_anon_3.optval_end as usize;
        let optlen = (*so).optlen;
        if optlen > 0 && (optlen as usize) > end.wrapping_sub(start) {
            (*so).optlen = 0;
        }
    }
}

/// Answers an original-destination question about a redirected connection;
/// false when the call is anything else.
fn answer(so: *mut bpf_sockopt) -> bool {
    // SAFETY: level and optname are readable fields of the context.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return false;
    }
    // SAFETY: `sk` of a sockopt context always points at the socket asked;
    // the storage pointer is checked for null and copied out at once.
    let stored = unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        let stored =
            bpf_sk_storage_get(map_ptr(&SOCK_ORIG_DST), sk.cast(), core::ptr::null_mut(), 0)
                .cast::<OriginalDst>();
        if stored.is_null() {
            None
        } else {
            Some(*stored)
        }
    };
    let Some(orig) = stored.or_else(|| captured_inbound(so)) else {
        tell(so, verdict::NOT_ANSWERED, &OriginalDst::default());
        return false;
    };
    // SAFETY: optval..optval_end is the kernel's buffer for the answer; every
    // write below is bounds-checked against optval_end first.
    let written = unsafe {
        let start = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        match (level, orig.family) {
            (SOL_IP, AF_INET) => write_sockaddr_in(start, end, &orig),
            // A dual-stack sidecar ([::]:15001) asks in IPv6 about an IPv4
            // app: the answer is the mapped address, as its socket sees IPv4.
            (SOL_IPV6, AF_INET) => write_sockaddr_in6(start, end, &mapped(&orig)),
            (SOL_IPV6, AF_INET6) => write_sockaddr_in6(start, end, &orig),
            _ => None,
        }
    };
    let Some(len) = written else { return false };
    // SAFETY: optlen and retval are writable in getsockopt programs.
    unsafe {
        (*so).optlen = len as i32;
        (*so).retval = 0;
    }
    count(counter::ORIGINAL_DST_ANSWERED);
    tell(so, verdict::ANSWERED, &orig);
    true
}

/// Reports an `SO_ORIGINAL_DST` question's outcome while someone listens.
/// The pod is known when the asking socket's own address is a pod's (the
/// inbound side), else from what the outbound listener handed the socket
/// (`LISTENER_POD`); the hook has neither a netns cookie (before Linux
/// 5.15) nor a socket cookie.
fn tell(so: *mut bpf_sockopt, why: u8, orig: &OriginalDst) {
    // SAFETY: `sk` points at the socket asked; family is readable.
    let family = unsafe { (*(*so).__bindgen_anon_1.sk).family };
    let by_address = match addr::family(family) {
        Some(AF_INET) => asking_pod::<false>(so),
        Some(_) => asking_pod::<true>(so),
        None => 0,
    };
    let pod = if by_address != 0 {
        by_address
    } else {
        // SAFETY: `sk` of a sockopt context is the (full) socket asked.
        unsafe { listener_pod((*so).__bindgen_anon_1.sk) }
    };
    count_for_pod(pod, why);
    if !monitoring() {
        return;
    }
    report(&Decision {
        netns_cookie: pod,
        socket_cookie: 0,
        addr: orig.addr,
        port: orig.port,
        family: orig.family,
        verdict: why,
        pad: [0; 11],
    });
}

/// The meshed pod whose address the asking socket has, or 0.
#[inline(always)]
fn asking_pod<const V6: bool>(so: *mut bpf_sockopt) -> u64 {
    let family = if V6 { AF_INET6 } else { AF_INET };
    // SAFETY: `sk` points at the socket asked, whose address fields are
    // readable in getsockopt programs.
    let local = unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        addr::ctx_addr!(sk, family, src_ip4, src_ip6)
    };
    let (family, local) = if family == AF_INET6 && addr::is_v4_mapped(&local) {
        (AF_INET, [local[3], 0, 0, 0])
    } else {
        (family, local)
    };
    // The outbound leg's sidecar socket is on loopback: no pod's address.
    if addr::is_loopback(family, &local) {
        return 0;
    }
    local_pod(family, &local).unwrap_or(0)
}

/// A connection inbound capture handed to the sidecar: its original
/// destination is the socket's own local address (`sk_lookup` rewrites
/// nothing). Answered only when the kernel had no answer (no conntrack NAT
/// entry) and the socket is one inbound capture would have taken: TCP, to a
/// meshed pod's address, not from the pod itself, not on a port the pod
/// leaves alone. Such a connection can only have reached the sidecar: the
/// capture drops what it cannot hand over.
fn captured_inbound(so: *mut bpf_sockopt) -> Option<OriginalDst> {
    // SAFETY: `sk` points at the socket asked; family is readable.
    let family = unsafe { (*(*so).__bindgen_anon_1.sk).family };
    match addr::family(family)? {
        AF_INET => socket_inbound::<false>(so),
        _ => socket_inbound::<true>(so),
    }
}

/// [`captured_inbound`] for one family, fixed at compile time (the verifier
/// rejects socket field loads through computed offsets).
#[inline(always)]
fn socket_inbound<const V6: bool>(so: *mut bpf_sockopt) -> Option<OriginalDst> {
    let s = settings()?;
    let family = if V6 { AF_INET6 } else { AF_INET };
    // SAFETY: retval and `sk` are readable; `sk` points at the socket asked,
    // whose address fields are readable in getsockopt programs.
    let (retval, protocol, local, remote, port) = unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        (
            (*so).retval,
            (*sk).protocol,
            addr::ctx_addr!(sk, family, src_ip4, src_ip6),
            addr::ctx_addr!(sk, family, dst_ip4, dst_ip6),
            (*sk).src_port as u16,
        )
    };
    if retval == 0 || protocol != IPPROTO_TCP {
        return None;
    }
    // A dual-stack sidecar's IPv4 connection is judged as IPv4.
    let (family, local, remote) = if family == AF_INET6 && addr::is_v4_mapped(&local) {
        (AF_INET, [local[3], 0, 0, 0], [remote[3], 0, 0, 0])
    } else {
        (family, local, remote)
    };
    if port == s.inbound_port || port == s.outbound_port {
        return None;
    }
    let pod = local_pod(family, &local)?;
    if inbound::from_own_pod(family, &remote, pod) || inbound::passed_port(pod, port) {
        return None;
    }
    Some(OriginalDst {
        addr: local,
        port,
        family,
    })
}

/// An IPv4 destination as `::ffff:a.b.c.d`.
fn mapped(orig: &OriginalDst) -> OriginalDst {
    OriginalDst {
        addr: [0, 0, 0xffffu32.to_be(), orig.addr[0]],
        port: orig.port,
        family: AF_INET6,
    }
}

/// `struct sockaddr_in`: family, port (network order), address, 8 zero bytes.
///
/// # Safety
/// `start..end` must be the kernel's writable buffer of a getsockopt context.
unsafe fn write_sockaddr_in(start: *mut u8, end: *mut u8, orig: &OriginalDst) -> Option<usize> {
    if start.wrapping_add(SOCKADDR_IN_LEN) > end {
        return None;
    }
    // SAFETY: start..start+16 lies inside the buffer (checked above).
    unsafe {
        start.cast::<u16>().write_unaligned(AF_INET);
        start
            .add(2)
            .cast::<u16>()
            .write_unaligned(orig.port.to_be());
        start.add(4).cast::<u32>().write_unaligned(orig.addr[0]);
        start.add(8).cast::<u64>().write_unaligned(0);
    }
    Some(SOCKADDR_IN_LEN)
}

/// `struct sockaddr_in6`: family, port, flowinfo 0, address, scope id 0.
///
/// # Safety
/// `start..end` must be the kernel's writable buffer of a getsockopt context.
unsafe fn write_sockaddr_in6(start: *mut u8, end: *mut u8, orig: &OriginalDst) -> Option<usize> {
    if start.wrapping_add(SOCKADDR_IN6_LEN) > end {
        return None;
    }
    // SAFETY: start..start+28 lies inside the buffer (checked above).
    unsafe {
        start.cast::<u16>().write_unaligned(AF_INET6);
        start
            .add(2)
            .cast::<u16>()
            .write_unaligned(orig.port.to_be());
        start.add(4).cast::<u32>().write_unaligned(0);
        for (i, word) in orig.addr.iter().enumerate() {
            start.add(8 + i * 4).cast::<u32>().write_unaligned(*word);
        }
        start.add(24).cast::<u32>().write_unaligned(0);
    }
    Some(SOCKADDR_IN6_LEN)
}
