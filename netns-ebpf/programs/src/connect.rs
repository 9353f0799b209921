//! cgroup/connect4|6, getpeername4|6, sendmsg4|6 and recvmsg4|6: where a
//! meshed pod's connections go, and what the app is told about them.

use core::ffi::c_void;
use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{
    bindings::{bpf_sock_addr, bpf_sock_tuple},
    helpers::{
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_sk_lookup_tcp,
        bpf_sk_lookup_udp, bpf_sk_release,
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use netns_ebpf::{
    AF_INET, AF_INET6, Decision, MeshSettings, OriginalDst, POD_CIDR_COOKIE_BITS, PodCidr,
    PodFlags, PodPort, counter, verdict,
};

use crate::addr::{self, LOOPBACK4, LOOPBACK6, LOOPBACK6_MAPPED};
use crate::maps::{
    DIALED_DST, EXCLUDED_CIDRS4, EXCLUDED_CIDRS6, EXCLUDED_PORTS, MESHED_NETNS, POD_EXCLUDED_CIDRS,
    POD_EXCLUDED_PORTS, POD_INCLUDED_CIDRS, SIDECAR_COOKIES, count, count_for_pod, monitoring,
    report, settings, sk_storage,
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const DNS_PORT: u16 = 53;
/// cgroup sock_addr programs return 1 to let the call proceed. We never refuse one.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let decided = on_connect::<false>(&ctx);
    tell::<false>(ctx.sock_addr, decided);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let decided = on_connect::<true>(&ctx);
    tell::<true>(ctx.sock_addr, decided);
    ALLOW
}

/// What a sock_addr program decided: the verdict (0: nothing to tell, the
/// socket is no meshed pod's), the pod's netns cookie when known (0: not
/// looked up; cookies are never 0), and the destination asked. Plain
/// numbers, no `Option`s: LLVM spills an `Option`'s undefined payload on
/// the `None` path, which the verifier refuses to read.
struct Decided {
    verdict: u8,
    netns: u64,
    dest: Dest,
}

impl Decided {
    const fn none(dest: Dest) -> Decided {
        Decided {
            verdict: 0,
            netns: 0,
            dest,
        }
    }
}

/// Counts `decided` for its pod, and reports it while someone listens (one
/// array lookup otherwise). Only meshed pods' decisions are told: a pod
/// not yet known (the bypass mark is checked first) is looked up then, and
/// counted per pod only then (node-wide it is a counter of its own).
#[inline(always)]
fn tell<const V6: bool>(sa: *mut bpf_sock_addr, decided: Decided) {
    if decided.verdict == 0 {
        return;
    }
    count_for_pod(decided.netns, decided.verdict);
    if !monitoring() {
        return;
    }
    let netns = if decided.netns != 0 {
        decided.netns
    } else {
        let pod = pod_of(sa);
        if !pod.meshed {
            return;
        }
        pod.netns
    };
    // SAFETY: bpf_get_socket_cookie takes the sock_addr context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(sa.cast::<c_void>()) };
    report(&Decision {
        netns_cookie: netns,
        socket_cookie,
        addr: decided.dest.addr,
        port: decided.dest.port,
        family: decided.dest.family,
        verdict: decided.verdict,
        pad: [0; 11],
    });
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer::<false>(&ctx, None);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer::<true>(&ctx, None);
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let decided = on_sendmsg::<false>(&ctx);
    tell::<false>(ctx.sock_addr, decided);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let decided = on_sendmsg::<true>(&ctx);
    tell::<true>(ctx.sock_addr, decided);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    if let Some(s) = settings() {
        restore_peer::<false>(&ctx, Some(s.dns_port));
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    if let Some(s) = settings() {
        restore_peer::<true>(&ctx, Some(s.dns_port));
    }
    ALLOW
}

/// The address family of a program, fixed at compile time: every function
/// below is generic over `V6`, so no code path picks a context field at run
/// time (the verifier rejects loads and stores through computed offsets).
const fn family<const V6: bool>() -> u16 {
    if V6 { AF_INET6 } else { AF_INET }
}

/// The destination of a sock_addr call, read once.
#[derive(Clone, Copy)]
struct Dest {
    family: u16,
    addr: [u32; 4],
    port: u16,
}

#[inline(always)]
fn dest<const V6: bool>(sa: *mut bpf_sock_addr) -> Dest {
    let family = family::<V6>();
    // SAFETY: `sa` is the program's context; these fields are readable in every
    // sock_addr attach type we use.
    unsafe {
        Dest {
            family,
            addr: addr::ctx_addr!(sa, family, user_ip4, user_ip6),
            port: addr::port_from_low_be(core::ptr::read_volatile(core::ptr::addr_of!(
                (*sa).user_port
            ))),
        }
    }
}

/// Points the call at `addr`:`port`. Volatile, one field at a time: LLVM would
/// otherwise merge adjacent u32 stores into a u64 store the verifier rejects.
/// Everything on the way here is inlined so that `family` is a constant: a
/// store through a computed context offset is rejected too.
#[inline(always)]
fn rewrite<const V6: bool>(sa: *mut bpf_sock_addr, addr: &[u32; 4], port: u16) {
    // SAFETY: writing user_ip4/user_ip6/user_port is allowed in connect,
    // sendmsg, recvmsg and getpeername programs; `sa` is the context.
    unsafe {
        if V6 {
            write_volatile(addr_of_mut!((*sa).user_ip6[0]), addr[0]);
            write_volatile(addr_of_mut!((*sa).user_ip6[1]), addr[1]);
            write_volatile(addr_of_mut!((*sa).user_ip6[2]), addr[2]);
            write_volatile(addr_of_mut!((*sa).user_ip6[3]), addr[3]);
        } else {
            write_volatile(addr_of_mut!((*sa).user_ip4), addr[0]);
        }
        write_volatile(addr_of_mut!((*sa).user_port), addr::user_port(port));
    }
}

#[inline(always)]
fn loopback<const V6: bool>() -> [u32; 4] {
    if V6 { LOOPBACK6 } else { [LOOPBACK4, 0, 0, 0] }
}

/// Files `d` in the calling socket's own storage ([`DIALED_DST`]): sock_ops
/// carries it in the SYN, getpeername shows it. The kernel frees it with
/// the socket: nothing has to watch for the close.
#[inline(always)]
fn remember(sa: *mut bpf_sock_addr, d: &Dest) {
    // SAFETY: `sk` of a sock_addr context is the calling (full) socket.
    if let Some(slot) = unsafe { sk_storage(&DIALED_DST, (*sa).__bindgen_anon_1.sk, true) } {
        *slot = OriginalDst {
            addr: d.addr,
            port: d.port,
            family: d.family,
        };
    }
}

/// The calling socket's namespace, and whether it is a meshed pod's (with
/// the pod's settings, default when not).
#[derive(Clone, Copy)]
struct Pod {
    netns: u64,
    meshed: bool,
    flags: PodFlags,
}

#[inline(always)]
fn pod_of(sa: *mut bpf_sock_addr) -> Pod {
    // SAFETY: bpf_get_netns_cookie takes the sock_addr context (Linux 5.7+).
    let netns = unsafe { bpf_get_netns_cookie(sa.cast::<c_void>()) };
    // SAFETY: the value is copied out, within this program run.
    match unsafe { MESHED_NETNS.get(&netns) } {
        Some(flags) => Pod {
            netns,
            meshed: true,
            flags: *flags,
        },
        None => Pod {
            netns,
            meshed: false,
            flags: PodFlags::default(),
        },
    }
}

/// The uid whose connections are the sidecar's: the pod's own, else the node's.
#[inline(always)]
fn sidecar_uid(s: &MeshSettings, pod: &Pod) -> u32 {
    if pod.meshed && pod.flags.bits & PodFlags::FLAG_OWN_SIDECAR_UID != 0 {
        pod.flags.sidecar_uid
    } else {
        s.sidecar_uid
    }
}

/// Why the pod's own settings leave `d` alone, if they do: one of its
/// excluded ports or CIDRs, or (with an include list) outside every CIDR it
/// includes. Exclusion wins over inclusion, as in Istio's iptables rules.
#[inline(always)]
fn pod_excluded(netns: u64, pod: &PodFlags, d: &Dest) -> Option<u8> {
    let port = PodPort {
        netns_cookie: netns,
        port: d.port,
        pad: [0; 3],
    };
    // SAFETY: values are only read, within this program run.
    if unsafe { POD_EXCLUDED_PORTS.get(&port) }.is_some() {
        return Some(verdict::EXCLUDED_PORT);
    }
    let key = Key::new(POD_CIDR_COOKIE_BITS + 128, pod_cidr(netns, d));
    if POD_EXCLUDED_CIDRS.get(&key).is_some() {
        return Some(verdict::EXCLUDED_CIDR);
    }
    (pod.bits & PodFlags::FLAG_INCLUDE_ONLY != 0 && POD_INCLUDED_CIDRS.get(&key).is_none())
        .then_some(verdict::NOT_INCLUDED)
}

/// The per-pod CIDR tries' key data for `d` (see [`PodCidr`]).
#[inline(always)]
fn pod_cidr(netns: u64, d: &Dest) -> PodCidr {
    let mut key: PodCidr = [0; 24];
    key[..8].copy_from_slice(&netns.to_ne_bytes());
    if d.family == AF_INET {
        key[18] = 0xff;
        key[19] = 0xff;
        key[20..24].copy_from_slice(&d.addr[0].to_ne_bytes());
    } else {
        for (i, word) in d.addr.iter().enumerate() {
            key[8 + i * 4..12 + i * 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
    key
}

#[inline(always)]
fn has_bypass_mark(sa: *mut bpf_sock_addr, s: &MeshSettings) -> bool {
    if s.bypass_mark == 0 {
        return false;
    }
    // SAFETY: `sk` of a sock_addr context always points at the calling socket;
    // `mark` is a readable field of bpf_sock.
    let mark = unsafe { (*(*sa).__bindgen_anon_1.sk).mark };
    mark == s.bypass_mark
}

/// Why the node's settings leave `d` alone, if they do.
#[inline(always)]
fn excluded(d: &Dest) -> Option<u8> {
    // SAFETY: values are only read, within this program run.
    if unsafe { EXCLUDED_PORTS.get(&d.port) }.is_some() {
        return Some(verdict::EXCLUDED_PORT);
    }
    let cidr = if d.family == AF_INET {
        EXCLUDED_CIDRS4
            .get(&Key::new(32, d.addr[0].to_ne_bytes()))
            .is_some()
    } else {
        let mut bytes = [0u8; 16];
        for (i, word) in d.addr.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        EXCLUDED_CIDRS6.get(&Key::new(128, bytes)).is_some()
    };
    cidr.then_some(verdict::EXCLUDED_CIDR)
}

/// The netns cookie of the local meshed pod that owns `d`'s address, if any.
#[inline(always)]
fn local_pod(d: &Dest) -> Option<u64> {
    crate::maps::local_pod(d.family, &d.addr)
}

fn uid() -> u32 {
    // The low half is the uid.
    bpf_get_current_uid_gid() as u32
}

#[inline(always)]
fn on_connect<const V6: bool>(ctx: &SockAddrContext) -> Decided {
    let sa = ctx.sock_addr;
    let d = dest::<V6>(sa);
    let Some(s) = settings() else {
        return Decided::none(d);
    };
    // SAFETY: `type_` is readable in connect programs.
    let sock_type = unsafe { (*sa).type_ };
    // A dual-stack socket dialing IPv4 (::ffff:a.b.c.d, e.g. Java's default)
    // is judged as the IPv4 connection it is, and sent to ::ffff:127.0.0.1.
    let mapped = V6 && addr::is_v4_mapped(&d.addr);
    let judged = if mapped {
        Dest {
            family: AF_INET,
            addr: [d.addr[3], 0, 0, 0],
            port: d.port,
        }
    } else {
        Dest { ..d }
    };
    if has_bypass_mark(sa, &s) {
        count(counter::BYPASSED_MARK);
        return Decided {
            verdict: verdict::BYPASS_MARK,
            netns: 0,
            dest: d,
        };
    }
    if sock_type == SOCK_DGRAM {
        // Connected UDP (glibc's resolver): the same DNS redirect as sendmsg.
        if !mapped {
            return redirect_dns::<V6>(sa, &s, d);
        }
        return Decided::none(d);
    }
    if sock_type != SOCK_STREAM {
        return Decided::none(d);
    }
    let pod = pod_of(sa);
    let netns = pod.netns;
    let decided = |verdict| Decided {
        verdict,
        netns,
        dest: Dest { ..d },
    };
    if uid() == sidecar_uid(&s, &pod) {
        // Sidecars dial IPv4 with IPv4 sockets; a mapped dial is left alone.
        let to_pod = !mapped && sidecar_to_local_pod::<V6>(sa, &s, netns, &d);
        return if !pod.meshed {
            Decided::none(d)
        } else if to_pod {
            decided(verdict::TO_LOCAL_POD)
        } else {
            decided(verdict::SIDECAR_UID)
        };
    }
    if !pod.meshed {
        return Decided::none(d);
    }
    let flags = pod.flags;
    if addr::is_loopback(judged.family, &judged.addr) {
        return decided(verdict::LOOPBACK);
    }
    if let Some(why) = excluded(&judged).or_else(|| pod_excluded(netns, &flags, &judged)) {
        return decided(why);
    }
    let mut outcome = verdict::CAPTURED;
    if !sidecar_listening::<V6>(sa, &s, mapped, s.outbound_port, SOCK_STREAM) {
        if !refuse_while_absent(&s, netns) {
            count(counter::SIDECAR_NOT_LISTENING);
            return decided(verdict::SIDECAR_NOT_LISTENING);
        }
        // Sent to the closed port: ECONNREFUSED, never around the sidecar.
        count(counter::SIDECAR_ABSENT_REFUSED);
        outcome = verdict::REFUSED_NO_SIDECAR;
    }
    // Kept as dialed, so that getpeername6 shows the mapped address again.
    remember(sa, &d);
    let to = if mapped {
        LOOPBACK6_MAPPED
    } else {
        loopback::<V6>()
    };
    rewrite::<V6>(sa, &to, s.outbound_port);
    count(counter::REDIRECTED_OUTBOUND);
    decided(outcome)
}

/// With [`MeshSettings::FLAG_REFUSE_ONCE_LISTENED`]: has this pod's sidecar
/// been seen (bound the outbound port, or found listening by the agent)?
#[inline(always)]
fn refuse_while_absent(s: &MeshSettings, netns: u64) -> bool {
    // SAFETY: only checked for presence.
    s.flags & MeshSettings::FLAG_REFUSE_ONCE_LISTENED != 0
        && unsafe { crate::maps::SIDECAR_SEEN.get(&netns) }.is_some()
}

/// Is there a socket on the pod's loopback `port` (a TCP listener for
/// `SOCK_STREAM`, a bound UDP socket for `SOCK_DGRAM`) that the rewritten
/// call would reach? One socket-table lookup in the calling socket's own
/// namespace, the same lookup an arriving SYN makes: it finds listeners on
/// the loopback address and on the wildcard, and dual-stack IPv6 listeners
/// for IPv4 (and `::ffff:` mapped) dials. Always `true` with
/// [`MeshSettings::FLAG_REDIRECT_WITHOUT_LISTENER`].
#[inline(always)]
fn sidecar_listening<const V6: bool>(
    sa: *mut bpf_sock_addr,
    s: &MeshSettings,
    mapped: bool,
    port: u16,
    sock_type: u32,
) -> bool {
    if s.flags & MeshSettings::FLAG_REDIRECT_WITHOUT_LISTENER != 0 {
        return true;
    }
    // SAFETY: the tuple is plain old data; all zero is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let v4 = !V6 || mapped;
    // SAFETY: writing plain fields of a union held on this stack.
    let size = unsafe {
        if v4 {
            tuple.__bindgen_anon_1.ipv4.daddr = LOOPBACK4;
            tuple.__bindgen_anon_1.ipv4.dport = port.to_be();
            core::mem::size_of_val(&tuple.__bindgen_anon_1.ipv4)
        } else {
            tuple.__bindgen_anon_1.ipv6.daddr = LOOPBACK6;
            tuple.__bindgen_anon_1.ipv6.dport = port.to_be();
            core::mem::size_of_val(&tuple.__bindgen_anon_1.ipv6)
        }
    } as u32;
    // Negative: the namespace of the calling socket (BPF_F_CURRENT_NETNS).
    let current_netns = u64::MAX;
    // SAFETY: sock_addr programs may look sockets up (Linux 5.2+); the tuple
    // lives on the stack for the call; a socket found is released below.
    let sk = unsafe {
        let ctx = sa.cast::<c_void>();
        if sock_type == SOCK_STREAM {
            bpf_sk_lookup_tcp(ctx, &raw mut tuple, size, current_netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx, &raw mut tuple, size, current_netns, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` came from a lookup and is released exactly once.
    unsafe { bpf_sk_release(sk.cast::<c_void>()) };
    true
}

/// The sidecar dialing a meshed pod on this node goes straight to that pod's
/// inbound port (there is no iptables PREROUTING to take it there). Returns
/// whether it did.
#[inline(always)]
fn sidecar_to_local_pod<const V6: bool>(
    sa: *mut bpf_sock_addr,
    s: &MeshSettings,
    own_netns: u64,
    d: &Dest,
) -> bool {
    if d.port == s.inbound_port {
        return false;
    }
    let Some(pod_netns) = local_pod(d) else {
        return false;
    };
    if pod_netns == own_netns {
        return false; // the sidecar talking to its own app
    }
    remember(sa, d);
    rewrite::<V6>(sa, &d.addr, s.inbound_port);
    count(counter::REDIRECTED_INBOUND);
    if s.flags & MeshSettings::FLAG_SOCKMAP != 0 {
        // SAFETY: bpf_get_socket_cookie takes the sock_addr context.
        let cookie = unsafe { bpf_get_socket_cookie(sa.cast::<c_void>()) };
        let _ = SIDECAR_COOKIES.insert(&cookie, &1, 0);
    }
    true
}

#[inline(always)]
fn on_sendmsg<const V6: bool>(ctx: &SockAddrContext) -> Decided {
    let sa = ctx.sock_addr;
    let d = dest::<V6>(sa);
    let Some(s) = settings() else {
        return Decided::none(d);
    };
    if V6 && addr::is_v4_mapped(&d.addr) {
        return Decided::none(d);
    }
    if has_bypass_mark(sa, &s) {
        return Decided::none(d);
    }
    redirect_dns::<V6>(sa, &s, d)
}

#[inline(always)]
fn redirect_dns<const V6: bool>(sa: *mut bpf_sock_addr, s: &MeshSettings, d: Dest) -> Decided {
    if s.flags & MeshSettings::FLAG_DNS_REDIRECT == 0 || d.port != DNS_PORT {
        return Decided::none(d);
    }
    let pod = pod_of(sa);
    if !pod.meshed || uid() == sidecar_uid(s, &pod) {
        return Decided::none(d);
    }
    let netns = pod.netns;
    let decided = |verdict| Decided {
        verdict,
        netns,
        dest: Dest { ..d },
    };
    if !sidecar_listening::<V6>(sa, s, false, s.dns_port, SOCK_DGRAM) {
        count(counter::SIDECAR_NOT_LISTENING);
        return decided(verdict::DNS_SIDECAR_NOT_LISTENING);
    }
    remember(sa, &d);
    rewrite::<V6>(sa, &loopback::<V6>(), s.dns_port);
    count(counter::DNS_REDIRECTED);
    decided(verdict::DNS_REDIRECTED)
}

/// Shows the original destination in place of the sidecar's address. With
/// `only_from_port` (recvmsg), only for datagrams from that loopback port.
#[inline(always)]
fn restore_peer<const V6: bool>(ctx: &SockAddrContext, only_from_port: Option<u16>) {
    let sa = ctx.sock_addr;
    if let Some(port) = only_from_port {
        let d = dest::<V6>(sa);
        if d.port != port || d.addr != loopback::<V6>() {
            return;
        }
    }
    // SAFETY: `sk` of a sock_addr context is the calling (full) socket; the
    // value is copied out at once.
    let Some(orig) =
        (unsafe { sk_storage(&DIALED_DST, (*sa).__bindgen_anon_1.sk, false) }).map(|o| *o)
    else {
        return;
    };
    if orig.family == family::<V6>() {
        rewrite::<V6>(sa, &orig.addr, orig.port);
    }
}
