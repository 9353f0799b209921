//! What the netns eBPF programs (in `programs/`, built by `cargo xtask build-ebpf`)
//! and user space share: the `#[repr(C)]` values of the maps, the map and program
//! names, and the mesh defaults. `no_std`; the `user` feature adds `aya::Pod`.
//!
//! Byte order, everywhere in these types: addresses are kept as the kernel hands
//! them to programs (network order, as `[u32; 4]` words; IPv4 in word 0), ports
//! in **host** order, so user space can compare them with plain numbers.

#![no_std]
#![deny(missing_docs)]

pub mod defaults;
pub mod names;

/// `AF_INET`, as stored in [`OriginalDst::family`] and [`SockPair::family`].
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// The mesh settings, one entry at index 0 of [`names::SETTINGS`]. Everything the
/// programs decide comes from here and from the other maps: nothing is baked in
/// at compile time.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshSettings {
    /// Sidecar port for redirected outbound connections (Istio: 15001).
    pub outbound_port: u16,
    /// Sidecar port for connections into a pod (Istio: 15006).
    pub inbound_port: u16,
    /// Sidecar DNS port, used when [`MeshSettings::FLAG_DNS_REDIRECT`] is set (15053).
    pub dns_port: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// The sidecar's uid (Istio: 1337): its own connections are not redirected.
    pub sidecar_uid: u32,
    /// Sockets carrying this `SO_MARK` are left alone (0: no bypass mark).
    pub bypass_mark: u32,
}

/// The name of the directory beside the pins that says the pinned maps have
/// this build's layout. Bump the number whenever a map is added or removed,
/// or a key, value or counter changes (the layout test below fails until
/// its expectations are updated, as a reminder): an agent finding another
/// marker recreates the maps instead of reading them wrongly.
pub const LAYOUT_MARKER: &str = "layout-v10";

impl MeshSettings {
    /// Redirect DNS (UDP port 53) of meshed pods to `dns_port` on loopback.
    pub const FLAG_DNS_REDIRECT: u16 = 1 << 0;
    /// Opt-in sockmap acceleration between the sidecars' own sockets.
    pub const FLAG_SOCKMAP: u16 = 1 << 1;
    /// Redirect even when nothing listens on the sidecar's port, so the app
    /// gets ECONNREFUSED (what Istio's iptables REDIRECT does). Without it,
    /// connect first looks the sidecar's listener up in the pod's namespace
    /// and, when there is none, lets the connection go to its destination
    /// uncaptured ([`counter::SIDECAR_NOT_LISTENING`]); the next connection
    /// after the sidecar listens is captured.
    pub const FLAG_REDIRECT_WITHOUT_LISTENER: u16 = 1 << 2;
    /// Without [`MeshSettings::FLAG_REDIRECT_WITHOUT_LISTENER`]: once a
    /// pod's sidecar has bound the outbound port ([`names::SIDECAR_SEEN`]),
    /// a connection finding no listener is refused (sent to the closed port:
    /// ECONNREFUSED, [`counter::SIDECAR_ABSENT_REFUSED`]) instead of going
    /// around it; before that (an app that starts first) it goes uncaptured.
    pub const FLAG_REFUSE_ONCE_LISTENED: u16 = 1 << 3;

    /// Istio's defaults, DNS redirect and sockmap off.
    #[must_use]
    pub const fn istio() -> MeshSettings {
        MeshSettings {
            outbound_port: defaults::OUTBOUND_PORT,
            inbound_port: defaults::INBOUND_PORT,
            dns_port: defaults::DNS_PORT,
            flags: 0,
            sidecar_uid: defaults::SIDECAR_UID,
            bypass_mark: defaults::BYPASS_MARK,
        }
    }
}

/// Where a redirected connection was going: the value of the original-destination
/// maps ([`names::DIALED_DST`] for the app's socket,
/// [`names::SOCK_ORIG_DST`] for the sidecar's), and what `SO_ORIGINAL_DST` and
/// `getpeername` answer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OriginalDst {
    /// Address, network order words (IPv4 in word 0, the rest zero).
    pub addr: [u32; 4],
    /// Port, host order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
}

/// The TCP option in which a redirected connection's SYN carries its original
/// destination to the sidecar, on the pod's loopback. Layout: kind, length,
/// port (network order), address (4 or 16 bytes, network order); 8 or 20
/// bytes. The kind is an unassigned one (the experimental kinds 253/254 would
/// need a 2-byte `ExID`, and an IPv6 destination plus Linux's usual SYN options
/// leave exactly 20 bytes); it never leaves the host's loopback.
pub mod tcp_option {
    /// The option kind.
    pub const KIND: u8 = 183;
    /// Length of the option for an IPv4 destination.
    pub const LEN_V4: u8 = 8;
    /// Length of the option for an IPv6 destination.
    pub const LEN_V6: u8 = 20;
}

/// A TCP connection seen from its client: client address and port, server
/// address and port. The key of the sidecar sockmap (opt-in mode).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SockPair {
    /// Client address, network order words.
    pub client_addr: [u32; 4],
    /// Server address, network order words.
    pub server_addr: [u32; 4],
    /// Client port, host order.
    pub client_port: u16,
    /// Server port, host order.
    pub server_port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Always zero: keys are compared byte for byte.
    pub pad: u16,
}

/// Per-pod settings, the value of [`names::MESHED_NETNS`] (keyed by netns
/// cookie). The pod's excluded outbound ports and CIDRs are in
/// [`names::POD_EXCLUDED_PORTS`] and [`names::POD_EXCLUDED_CIDRS`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodFlags {
    /// `FLAG_*` bits.
    pub bits: u32,
    /// The pod's own sidecar uid, with [`PodFlags::FLAG_OWN_SIDECAR_UID`]
    /// (otherwise [`MeshSettings::sidecar_uid`] holds).
    pub sidecar_uid: u32,
}

impl PodFlags {
    /// Only destinations in the pod's [`names::POD_INCLUDED_CIDRS`] are
    /// captured (Istio's `includeOutboundIPRanges` other than `*`).
    pub const FLAG_INCLUDE_ONLY: u32 = 1 << 0;
    /// [`PodFlags::sidecar_uid`] is the pod's sidecar uid.
    pub const FLAG_OWN_SIDECAR_UID: u32 = 1 << 1;
}

/// The data of a key of [`names::POD_EXCLUDED_CIDRS`] and
/// [`names::POD_INCLUDED_CIDRS`] (LPM tries): the pod's netns cookie (native
/// order, always matched whole) then the address, IPv4 as `::ffff:a.b.c.d`.
/// The prefix length counts the cookie's 64 bits, plus 96 for an IPv4 CIDR.
pub type PodCidr = [u8; 24];

/// Bits of a [`PodCidr`] key's prefix length before the address.
pub const POD_CIDR_COOKIE_BITS: u32 = 64;

/// A meshed pod on this node, the value of the local pod address maps
/// ([`names::LOCAL_POD_IPS4`], [`names::LOCAL_POD_IPS6`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalPod {
    /// The pod's network namespace cookie: a sidecar's connection to its own
    /// pod is never sent to the inbound port (it would loop).
    pub netns_cookie: u64,
    /// Reserved bits; zero today.
    pub bits: u32,
    /// Always zero.
    pub pad: u32,
}

/// The key of [`names::INBOUND_LISTENERS`]: a pod's inbound listener of one
/// address family. A dual-stack IPv6 listener (`[::]:15006`) is filed under
/// [`AF_INET6`] and also takes IPv4 connections when no IPv4 one is filed.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodListener {
    /// The pod's network namespace cookie.
    pub netns_cookie: u64,
    /// [`AF_INET`] or [`AF_INET6`]: the listener's own family.
    pub family: u16,
    /// Always zero: keys are compared byte for byte.
    pub pad: [u16; 3],
}

/// The key of [`names::INBOUND_PASS_PORTS`]: a port of one pod that inbound
/// capture leaves alone (the sidecar's own ports, the pod's excluded ports).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodPort {
    /// The pod's network namespace cookie.
    pub netns_cookie: u64,
    /// The pod's local port, host order.
    pub port: u16,
    /// Always zero: keys are compared byte for byte.
    pub pad: [u16; 3],
}

/// One capture decision, as the programs report it on the
/// [`names::DECISIONS`] ring buffer while someone listens
/// ([`names::MONITORING`] non-zero). What it is about: the destination the
/// connection asked for (outbound), the address it arrived at (inbound), or
/// the original destination a sidecar's socket was told (sidecar side).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// The pod's network namespace cookie; 0 where the hook cannot tell it
    /// (the sidecar side of an outbound connection, see `docs/monitor.md`).
    pub netns_cookie: u64,
    /// The socket's cookie (`SO_COOKIE`); 0 where the hook has none (inbound).
    pub socket_cookie: u64,
    /// Address, network order words (IPv4 in word 0).
    pub addr: [u32; 4],
    /// Port, host order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// One of [`verdict`].
    pub verdict: u8,
    /// Always zero (fills the struct to 48 bytes: no implicit padding).
    pub pad: [u8; 11],
}

/// The key of [`names::POD_DECISIONS`]: one pod's count of one verdict.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PodVerdict {
    /// The pod's network namespace cookie.
    pub netns_cookie: u64,
    /// One of [`verdict`].
    pub verdict: u8,
    /// Always zero: keys are compared byte for byte.
    pub pad: [u8; 7],
}

/// What a [`Decision`] decided, and why. The numbers are the wire format
/// of the ring buffer; [`verdict::NAMES`] are the names `monitor`, `status`
/// and `/metrics` use.
pub mod verdict {
    /// Outbound: sent to the sidecar.
    pub const CAPTURED: u8 = 1;
    /// Outbound, left alone: an excluded destination port (node or pod).
    pub const EXCLUDED_PORT: u8 = 2;
    /// Outbound, left alone: an excluded destination CIDR (node or pod).
    pub const EXCLUDED_CIDR: u8 = 3;
    /// Outbound, left alone: outside the pod's included CIDRs.
    pub const NOT_INCLUDED: u8 = 4;
    /// Outbound, left alone: the sidecar's own uid.
    pub const SIDECAR_UID: u8 = 5;
    /// Outbound, left alone: the socket carries the bypass `SO_MARK`.
    pub const BYPASS_MARK: u8 = 6;
    /// Outbound, left alone: nothing listened on the sidecar's port.
    pub const SIDECAR_NOT_LISTENING: u8 = 7;
    /// Outbound, refused: the sidecar listened before and does not now.
    pub const REFUSED_NO_SIDECAR: u8 = 8;
    /// Outbound, left alone: a loopback destination.
    pub const LOOPBACK: u8 = 9;
    /// The sidecar dialing a meshed pod on this node: sent to its inbound port.
    pub const TO_LOCAL_POD: u8 = 10;
    /// Sidecar side: the SYN's option was filed for the sidecar's socket.
    pub const ORIGINAL_DST_RECEIVED: u8 = 11;
    /// Sidecar side: the listener kept no SYN (it listened before the
    /// agent, or the connection came through a SYN cookie).
    pub const NO_SAVED_SYN: u8 = 12;
    /// Sidecar side: the SYN carried no original-destination option.
    pub const NO_OPTION: u8 = 13;
    /// Sidecar side: the option was not believed (inbound port, about
    /// another address; outbound port, not from the pod's loopback).
    pub const OPTION_NOT_BELIEVED: u8 = 14;
    /// Sidecar side: `SO_ORIGINAL_DST` answered.
    pub const ANSWERED: u8 = 15;
    /// Sidecar side: `SO_ORIGINAL_DST` asked about a socket with no answer.
    pub const NOT_ANSWERED: u8 = 16;
    /// Inbound: handed to the pod's sidecar.
    pub const INBOUND_CAPTURED: u8 = 17;
    /// Inbound, left alone: a port the pod leaves alone.
    pub const INBOUND_PASS_PORT: u8 = 18;
    /// Inbound, left alone: from the pod itself (the sidecar reaching its app).
    pub const INBOUND_LOOP_GUARD: u8 = 19;
    /// Inbound, refused: the pod's sidecar has no inbound listener.
    pub const INBOUND_REFUSED: u8 = 20;
    /// DNS sent to the sidecar's DNS port.
    pub const DNS_REDIRECTED: u8 = 21;
    /// DNS left alone: nothing listened on the sidecar's DNS port.
    pub const DNS_SIDECAR_NOT_LISTENING: u8 = 22;
    /// One more than the largest verdict.
    pub const COUNT: u8 = 23;

    /// Names by number (index 0 is unused).
    pub const NAMES: [&str; COUNT as usize] = [
        "none",
        "captured",
        "excluded_port",
        "excluded_cidr",
        "not_included",
        "sidecar_uid",
        "bypass_mark",
        "sidecar_not_listening",
        "refused_no_sidecar",
        "loopback",
        "to_local_pod",
        "original_dst_received",
        "no_saved_syn",
        "no_option",
        "option_not_believed",
        "answered",
        "not_answered",
        "inbound_captured",
        "inbound_pass_port",
        "inbound_loop_guard",
        "inbound_refused",
        "dns_redirected",
        "dns_sidecar_not_listening",
    ];

    /// Where a verdict is decided: `outbound`, `sidecar`, `inbound` or `dns`.
    #[must_use]
    pub const fn hook(verdict: u8) -> &'static str {
        match verdict {
            1..=10 => "outbound",
            11..=16 => "sidecar",
            17..=20 => "inbound",
            21..=22 => "dns",
            _ => "none",
        }
    }
}

/// Indexes of the per-CPU counters in [`names::COUNTERS`].
pub mod counter {
    /// Outbound connections redirected to the sidecar.
    pub const REDIRECTED_OUTBOUND: u32 = 0;
    /// Sidecar connections to a local pod redirected to its inbound port.
    pub const REDIRECTED_INBOUND: u32 = 1;
    /// `SO_ORIGINAL_DST` answers given.
    pub const ORIGINAL_DST_ANSWERED: u32 = 2;
    /// Sockets added to the sockmap (opt-in mode).
    pub const SOCKMAP_ADDED: u32 = 3;
    /// Messages redirected through the sockmap (opt-in mode).
    pub const SOCKMAP_REDIRECTED: u32 = 4;
    /// DNS datagrams or connections redirected.
    pub const DNS_REDIRECTED: u32 = 5;
    /// Connections left alone because of the bypass mark.
    pub const BYPASSED_MARK: u32 = 6;
    /// Redirected SYNs that had no room for the original-destination option
    /// (their sidecar gets no `SO_ORIGINAL_DST` answer).
    pub const ORIGINAL_DST_NO_ROOM: u32 = 7;
    /// Connections accepted on the outbound port whose SYN carried an original
    /// destination (filed for the sidecar's socket).
    pub const ORIGINAL_DST_RECEIVED: u32 = 8;
    /// Connections and DNS datagrams of meshed pods left uncaptured because
    /// nothing listened on the sidecar's port in the pod's namespace.
    pub const SIDECAR_NOT_LISTENING: u32 = 9;
    /// SYNs from outside a pod (inbound capture attached) handed to its
    /// sidecar's inbound listener.
    pub const INBOUND_CAPTURED: u32 = 10;
    /// SYNs from outside a pod (inbound capture attached) refused because its
    /// sidecar had no inbound listener (fail closed: the client sees a reset).
    pub const INBOUND_REFUSED: u32 = 11;
    /// Connections of meshed pods refused because their sidecar, which had
    /// listened before, was not listening (restarting): never sent around it.
    pub const SIDECAR_ABSENT_REFUSED: u32 = 12;
    /// Decisions not reported because the ring buffer was full (only while
    /// someone listens): `monitor` shows them as lost.
    pub const DECISIONS_LOST: u32 = 13;
    /// How many counters there are.
    pub const COUNT: u32 = 14;

    /// Their names, by index (for status and metrics).
    pub const NAMES: [&str; COUNT as usize] = [
        "redirected_outbound",
        "redirected_inbound",
        "original_dst_answered",
        "sockmap_added",
        "sockmap_redirected",
        "dns_redirected",
        "bypassed_mark",
        "original_dst_no_room",
        "original_dst_received",
        "sidecar_not_listening",
        "inbound_captured",
        "inbound_refused",
        "sidecar_absent_refused",
        "decisions_lost",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, has no padding the kernel could
    // leave uninitialised (fields are laid out to fill every byte) and is valid
    // for any bit pattern.
    unsafe impl aya::Pod for super::MeshSettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OriginalDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Decision {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PodVerdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockPair {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PodFlags {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalPod {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PodListener {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PodPort {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_are_pinned() {
        // Any change below, to the maps or to the counters bumps LAYOUT_MARKER.
        assert_eq!(LAYOUT_MARKER, "layout-v10");
        assert_eq!(names::ALL_MAPS.len(), 24);
        assert_eq!(size_of::<PodVerdict>(), 16);
        assert_eq!(counter::COUNT, 14);
        assert_eq!(size_of::<Decision>(), 48);
        assert_eq!(offset_of!(Decision, addr), 16);
        assert_eq!(offset_of!(Decision, port), 32);
        assert_eq!(offset_of!(Decision, verdict), 36);

        assert_eq!(size_of::<MeshSettings>(), 16);
        assert_eq!(offset_of!(MeshSettings, flags), 6);
        assert_eq!(offset_of!(MeshSettings, sidecar_uid), 8);
        assert_eq!(offset_of!(MeshSettings, bypass_mark), 12);

        assert_eq!(size_of::<OriginalDst>(), 20);
        assert_eq!(offset_of!(OriginalDst, port), 16);
        assert_eq!(offset_of!(OriginalDst, family), 18);

        assert_eq!(size_of::<SockPair>(), 40);
        assert_eq!(offset_of!(SockPair, server_addr), 16);
        assert_eq!(offset_of!(SockPair, client_port), 32);
        assert_eq!(offset_of!(SockPair, server_port), 34);
        assert_eq!(offset_of!(SockPair, family), 36);

        assert_eq!(size_of::<LocalPod>(), 16);
        assert_eq!(offset_of!(LocalPod, bits), 8);

        assert_eq!(size_of::<PodFlags>(), 8);
        assert_eq!(offset_of!(PodFlags, sidecar_uid), 4);
        assert_eq!(size_of::<PodListener>(), 16);
        assert_eq!(offset_of!(PodListener, family), 8);
        assert_eq!(size_of::<PodPort>(), 16);
        assert_eq!(offset_of!(PodPort, port), 8);
    }

    #[test]
    fn istio_defaults() {
        let s = MeshSettings::istio();
        assert_eq!(
            (s.outbound_port, s.inbound_port, s.dns_port),
            (15001, 15006, 15053)
        );
        assert_eq!((s.sidecar_uid, s.flags), (1337, 0));
    }
}
