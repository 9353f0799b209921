//! Names of the maps and programs in the eBPF object: user space finds them by
//! these names, and pins maps under them.

/// `Array<MeshSettings>`, one entry.
pub const SETTINGS: &str = "SETTINGS";
/// `HashMap<u64 netns cookie, PodFlags>`: the pods in the mesh.
pub const MESHED_NETNS: &str = "MESHED_NETNS";
/// `HashMap<u32 IPv4 (network order), LocalPod>`: addresses of meshed pods on this node.
pub const LOCAL_POD_IPS4: &str = "LOCAL_POD_IPS4";
/// `HashMap<[u32; 4] IPv6, LocalPod>`: addresses of meshed pods on this node.
pub const LOCAL_POD_IPS6: &str = "LOCAL_POD_IPS6";
/// `HashMap<u16 port (host order), u8>`: destination ports never redirected.
pub const EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
/// `LpmTrie<[u8; 4], u8>`: IPv4 destination CIDRs never redirected.
pub const EXCLUDED_CIDRS4: &str = "EXCLUDED_CIDRS4";
/// `LpmTrie<[u8; 16], u8>`: IPv6 destination CIDRs never redirected.
pub const EXCLUDED_CIDRS6: &str = "EXCLUDED_CIDRS6";
/// `HashMap<PodPort, u8>`: destination ports one pod never redirects.
pub const POD_EXCLUDED_PORTS: &str = "POD_EXCLUDED_PORTS";
/// `LpmTrie<PodCidr, u8>`: destination CIDRs one pod never redirects.
pub const POD_EXCLUDED_CIDRS: &str = "POD_EXCLUDED_CIDRS";
/// `LpmTrie<PodCidr, u8>`: with `PodFlags::FLAG_INCLUDE_ONLY`, the only
/// destination CIDRs the pod redirects.
pub const POD_INCLUDED_CIDRS: &str = "POD_INCLUDED_CIDRS";
/// `SkStorage<OriginalDst>`: socket-local storage of a socket connect
/// redirected (the app's, or a sidecar's dialing a local pod), holding the
/// destination it dialed; freed with the socket.
pub const DIALED_DST: &str = "DIALED_DST";
/// `SkStorage<OriginalDst>`: socket-local storage of the sidecar's accepted
/// socket, filled from the SYN's option when the connection is established.
pub const SOCK_ORIG_DST: &str = "SOCK_ORIG_DST";
/// `LruHashMap<u64 socket cookie, u8>`: sockets the sidecar connected (sockmap mode).
pub const SIDECAR_COOKIES: &str = "SIDECAR_COOKIES";
/// `LruHashMap<SockPair, u8>`: sidecar connections in the sockmap (sockmap mode).
pub const SIDECAR_PAIRS: &str = "SIDECAR_PAIRS";
/// `SockHash<SockPair>`: the sidecars' own sockets (sockmap mode only).
pub const SIDECAR_SOCKS: &str = "SIDECAR_SOCKS";
/// `HashMap<u32 pid, u64 netns cookie>`: what the netns probe program saw
/// (not pinned: each data path has its own).
pub const PROBED_NETNS: &str = "PROBED_NETNS";
/// `SockHash<PodListener>`: each pod's sidecar inbound listener, filed by
/// sock_ops when it calls `listen()`; the kernel drops it when it closes.
pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
/// `HashMap<PodPort, u8>`: ports of a pod that inbound capture leaves alone.
pub const INBOUND_PASS_PORTS: &str = "INBOUND_PASS_PORTS";
/// `LruHashMap<u64 socket cookie, u64 netns cookie>`: TCP sockets bound to
/// the sidecar's outbound or inbound port, and their namespace, until they
/// listen (sock_ops has no netns cookie before Linux 5.15).
pub const BOUND_LISTENERS: &str = "BOUND_LISTENERS";
/// `SkStorage<u64 netns cookie>`, declared with `BPF_F_CLONE`: on the
/// sidecar's outbound listener, its pod's namespace, which the kernel
/// copies to every socket the listener accepts (so the sidecar side of an
/// outbound connection, on a loopback address that names no pod, knows its
/// pod).
pub const LISTENER_POD: &str = "LISTENER_POD";
/// `HashMap<u64 netns cookie, u8>`: pods whose sidecar has bound the
/// outbound port (`post_bind`), or was found listening by the agent.
pub const SIDECAR_SEEN: &str = "SIDECAR_SEEN";
/// `PerCpuArray<u64>`: the counters of [`crate::counter`].
pub const COUNTERS: &str = "COUNTERS";
/// `RingBuf` of [`crate::Decision`]s, written only while [`MONITORING`] is
/// non-zero (`netns-agent monitor`).
pub const DECISIONS: &str = "DECISIONS";
/// `PerCpuHashMap<PodVerdict, u64>`: each meshed pod's decisions by
/// verdict, counted whether or not anyone monitors (where the hook knows
/// the pod); the agent removes a pod's entries with the pod.
pub const POD_DECISIONS: &str = "POD_DECISIONS";
/// `Array<u32>`, one entry: non-zero while someone reads [`DECISIONS`]. The
/// programs check it before anything else they would do for a report.
pub const MONITORING: &str = "MONITORING";

/// Every map, in the order the agent pins them.
pub const ALL_MAPS: [&str; 24] = [
    SETTINGS,
    MESHED_NETNS,
    LOCAL_POD_IPS4,
    LOCAL_POD_IPS6,
    EXCLUDED_PORTS,
    EXCLUDED_CIDRS4,
    EXCLUDED_CIDRS6,
    POD_EXCLUDED_PORTS,
    POD_EXCLUDED_CIDRS,
    POD_INCLUDED_CIDRS,
    DIALED_DST,
    SOCK_ORIG_DST,
    SIDECAR_COOKIES,
    SIDECAR_PAIRS,
    SIDECAR_SOCKS,
    INBOUND_LISTENERS,
    INBOUND_PASS_PORTS,
    BOUND_LISTENERS,
    LISTENER_POD,
    SIDECAR_SEEN,
    COUNTERS,
    DECISIONS,
    MONITORING,
    POD_DECISIONS,
];

/// Programs, by function name in the object.
pub mod prog {
    /// `cgroup/connect4`.
    pub const CONNECT4: &str = "connect4";
    /// `cgroup/connect6`.
    pub const CONNECT6: &str = "connect6";
    /// `cgroup/getpeername4`.
    pub const GETPEERNAME4: &str = "getpeername4";
    /// `cgroup/getpeername6`.
    pub const GETPEERNAME6: &str = "getpeername6";
    /// `cgroup/sendmsg4` (DNS redirect).
    pub const SENDMSG4: &str = "sendmsg4";
    /// `cgroup/recvmsg4` (DNS redirect).
    pub const RECVMSG4: &str = "recvmsg4";
    /// `cgroup/sendmsg6` (DNS redirect).
    pub const SENDMSG6: &str = "sendmsg6";
    /// `cgroup/recvmsg6` (DNS redirect).
    pub const RECVMSG6: &str = "recvmsg6";
    /// `cgroup/getsockopt`: `SO_ORIGINAL_DST`.
    pub const GETSOCKOPT: &str = "getsockopt";
    /// `sockops`: bookkeeping, and the opt-in sockmap.
    pub const SOCKOPS: &str = "sockops_track";
    /// `sk_msg` on [`super::SIDECAR_SOCKS`] (opt-in sockmap mode).
    pub const SK_MSG: &str = "sidecar_msg";
    /// `cgroup/sock_create` on the probe cgroup: learns namespace cookies.
    /// Not one of [`ALL`] (the data path's programs on the captured cgroup).
    pub const NETNS_PROBE: &str = "netns_probe";

    /// `cgroup/post_bind4`: notes TCP sockets bound to the inbound port.
    pub const POST_BIND4: &str = "post_bind4";
    /// `cgroup/post_bind6`.
    pub const POST_BIND6: &str = "post_bind6";
    /// `sk_lookup`, attached to each meshed pod's network namespace: inbound
    /// capture. Not one of [`ALL`] (attached per pod, not to the cgroup).
    pub const INBOUND: &str = "inbound_lookup";

    /// Every program of the object attached to the captured cgroup (and
    /// the sidecar sockhash).
    pub const ALL: [&str; 13] = [
        CONNECT4,
        CONNECT6,
        GETPEERNAME4,
        GETPEERNAME6,
        SENDMSG4,
        RECVMSG4,
        SENDMSG6,
        RECVMSG6,
        GETSOCKOPT,
        SOCKOPS,
        SK_MSG,
        POST_BIND4,
        POST_BIND6,
    ];
}
