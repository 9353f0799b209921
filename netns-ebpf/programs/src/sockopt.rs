//! cgroup/getsockopt: answers `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6) for connections the data path redirected, the
//! way netfilter's conntrack answers them after an iptables REDIRECT.

use aya_ebpf::{bindings::bpf_sockopt, macros::cgroup_sockopt, programs::SockoptContext};
use netns_ebpf::{AF_INET, AF_INET6, OriginalDst, counter};

use crate::addr;
use crate::maps::{PAIR_ORIG_DST, count};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number.
const SO_ORIGINAL_DST: i32 = 80;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    on_getsockopt(ctx.sockopt);
    1
}

fn on_getsockopt(so: *mut bpf_sockopt) {
    // SAFETY: level and optname are readable fields of the context.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    let family = match (level, optname) {
        (SOL_IP, SO_ORIGINAL_DST) => AF_INET,
        (SOL_IPV6, SO_ORIGINAL_DST) => AF_INET6,
        _ => return,
    };
    // SAFETY: `sk` of a sockopt context always points at the socket asked.
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    // SAFETY: fields of a live bpf_sock, readable in sockopt programs.
    let (local, local_port, remote, remote_port) = unsafe {
        (
            addr::ctx_addr!(sk, family, src_ip4, src_ip6),
            (*sk).src_port as u16,
            addr::ctx_addr!(sk, family, dst_ip4, dst_ip6),
            u16::from_be((*sk).dst_port),
        )
    };
    // The sidecar holds the accepting end: its peer dialed, so the peer is the client.
    let key = addr::pair(family, remote, remote_port, local, local_port);
    // SAFETY: the value is copied out at once.
    let Some(orig) = (unsafe { PAIR_ORIG_DST.get(&key) }).copied() else {
        return;
    };
    if orig.family != family {
        return;
    }
    // SAFETY: optval..optval_end is the kernel's buffer for the answer; every
    // write below is bounds-checked against optval_end first.
    let written = unsafe {
        let start = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        if family == AF_INET {
            write_sockaddr_in(start, end, &orig)
        } else {
            write_sockaddr_in6(start, end, &orig)
        }
    };
    if let Some(len) = written {
        // SAFETY: optlen and retval are writable in getsockopt programs.
        unsafe {
            (*so).optlen = len as i32;
            (*so).retval = 0;
        }
        count(counter::ORIGINAL_DST_ANSWERED);
    }
}

/// `struct sockaddr_in`: family, port (network order), address, 8 zero bytes.
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
