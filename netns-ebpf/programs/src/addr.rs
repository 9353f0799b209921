//! Reading and writing addresses and ports in the kernel's context structs.

use netns_ebpf::{AF_INET, AF_INET6, SockPair};

/// 127.0.0.1 as the kernel stores it (network order in a native u32).
pub const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// `::1` as network order words.
pub const LOOPBACK6: [u32; 4] = [0, 0, 0, 1u32.to_be()];
/// `::ffff:127.0.0.1`, the IPv4 loopback as a dual-stack socket dials it.
pub const LOOPBACK6_MAPPED: [u32; 4] = [0, 0, 0xffffu32.to_be(), LOOPBACK4];

/// A port the kernel stores in network order in the low 16 bits (`user_port`,
/// `bpf_sock.dst_port`), in host order.
pub fn port_from_low_be(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

/// `remote_port` of sock_ops and sk_msg: network order, in the low 16 bits on
/// newer kernels and the high 16 bits on older ones. An established socket
/// never has port 0, so whichever half is non-zero is the port.
pub fn remote_port(raw: u32) -> u16 {
    let half = if raw & 0xffff == 0 {
        raw >> 16
    } else {
        raw & 0xffff
    };
    u16::from_be(half as u16)
}

/// The port as `user_port` wants it: network order in the low 16 bits.
pub fn user_port(host: u16) -> u32 {
    u32::from(host.to_be())
}

/// Is this a loopback destination (127.0.0.0/8, `::1`)? Loopback is never captured.
pub fn is_loopback(family: u16, addr: &[u32; 4]) -> bool {
    if family == AF_INET {
        addr[0].to_ne_bytes()[0] == 127
    } else {
        *addr == LOOPBACK6
    }
}

/// Is this an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)?
pub fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffffu32.to_be()
}

/// A [`SockPair`] from this socket's point of view: `client` fields hold the
/// local end, `server` fields the remote end.
pub fn pair(
    family: u16,
    local: [u32; 4],
    local_port: u16,
    remote: [u32; 4],
    remote_port: u16,
) -> SockPair {
    SockPair {
        client_addr: local,
        server_addr: remote,
        client_port: local_port,
        server_port: remote_port,
        family,
        pad: 0,
    }
}

/// The kernel's `family` field as one of ours, or `None` for anything else.
pub fn family(raw: u32) -> Option<u16> {
    match raw {
        2 => Some(AF_INET),
        10 => Some(AF_INET6),
        _ => None,
    }
}

/// The address of a context struct for `family`, from its IPv4 and IPv6
/// fields: IPv4 in word 0. Reads only the field the family needs, one word
/// at a time with volatile loads: copying the IPv6 array lets LLVM compute
/// `ctx + offset` into a register first, and the verifier rejects any load
/// through a modified context pointer.
macro_rules! ctx_addr {
    ($ptr:expr, $family:expr, $ip4:ident, $ip6:ident) => {{
        let ptr = $ptr;
        if $family == netns_ebpf::AF_INET {
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*ptr).$ip4)),
                0,
                0,
                0,
            ]
        } else {
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*ptr).$ip6[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*ptr).$ip6[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*ptr).$ip6[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*ptr).$ip6[3])),
            ]
        }
    }};
}
pub(crate) use ctx_addr;
