//! The maps, named as `netns_ebpf::names` says, plus small accessors.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, SockHash},
};
use netns_ebpf::{
    Decision, LocalPod, MeshSettings, OriginalDst, PodCidr, PodFlags, PodListener, PodPort,
    PodVerdict, SockPair, counter, defaults::CONNECTION_MAP_ENTRIES,
};

#[map]
pub static SETTINGS: Array<MeshSettings> = Array::with_max_entries(1, 0);
#[map]
pub static MESHED_NETNS: HashMap<u64, PodFlags> = HashMap::with_max_entries(4096, 0);
#[map]
pub static LOCAL_POD_IPS4: HashMap<u32, LocalPod> = HashMap::with_max_entries(4096, 0);
#[map]
pub static LOCAL_POD_IPS6: HashMap<[u32; 4], LocalPod> = HashMap::with_max_entries(4096, 0);
#[map]
pub static EXCLUDED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);
#[map]
pub static EXCLUDED_CIDRS4: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);
#[map]
pub static EXCLUDED_CIDRS6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);
#[map]
pub static POD_EXCLUDED_PORTS: HashMap<PodPort, u8> = HashMap::with_max_entries(65_536, 0);
#[map]
pub static POD_EXCLUDED_CIDRS: LpmTrie<PodCidr, u8> =
    LpmTrie::with_max_entries(16_384, BPF_F_NO_PREALLOC);
#[map]
pub static POD_INCLUDED_CIDRS: LpmTrie<PodCidr, u8> =
    LpmTrie::with_max_entries(16_384, BPF_F_NO_PREALLOC);
/// Per socket (the app's redirected one): where it dialed. Freed with the
/// socket, so nothing has to watch for its close.
#[btf_map]
pub static DIALED_DST: SkStorage<OriginalDst> = SkStorage::new();
/// Per socket, so no key can collide across pods; freed with the socket.
/// A BTF map: the kernel refuses socket storage without BTF.
#[btf_map]
pub static SOCK_ORIG_DST: SkStorage<OriginalDst> = SkStorage::new();
/// On the sidecar's outbound listener: its pod's netns cookie, copied by the
/// kernel to each socket it accepts (`BPF_F_CLONE`, `bpf_sk_storage_clone`
/// in `sk_clone_lock`).
#[btf_map]
pub static LISTENER_POD: ClonedSkStorage<u64> = ClonedSkStorage::new();

/// A socket storage map whose values the kernel copies from a listener to
/// the sockets it accepts: aya's `SkStorage` with `BPF_F_CLONE` added to its
/// flags (which it does not let one set). The fields are the BTF map
/// definition libbpf and aya read: pointers to arrays whose lengths carry
/// the numbers, never dereferenced.
#[repr(C)]
pub struct ClonedSkStorage<T> {
    r#type: *const [i32; aya_ebpf::bindings::bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | aya_ebpf::bindings::BPF_F_CLONE) as usize],
}

// SAFETY: placeholder pointers the loader replaces; never dereferenced.
unsafe impl<T> Sync for ClonedSkStorage<T> {}

impl<T> ClonedSkStorage<T> {
    /// The definition the loader fills in.
    pub const fn new() -> Self {
        ClonedSkStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }
}

/// A socket storage map, of either kind, and the type of its values.
pub trait SocketStorage {
    /// What each socket holds.
    type Value;
}

impl<T> SocketStorage for SkStorage<T> {
    type Value = T;
}

impl<T> SocketStorage for ClonedSkStorage<T> {
    type Value = T;
}
#[map]
pub static SIDECAR_COOKIES: LruHashMap<u64, u8> =
    LruHashMap::with_max_entries(CONNECTION_MAP_ENTRIES, 0);
#[map]
pub static SIDECAR_PAIRS: LruHashMap<SockPair, u8> =
    LruHashMap::with_max_entries(CONNECTION_MAP_ENTRIES, 0);
#[map]
pub static SIDECAR_SOCKS: SockHash<SockPair> =
    SockHash::with_max_entries(CONNECTION_MAP_ENTRIES, 0);
/// Each pod's sidecar inbound listener (per address family).
#[map]
pub static INBOUND_LISTENERS: SockHash<PodListener> = SockHash::with_max_entries(8192, 0);
#[map]
pub static INBOUND_PASS_PORTS: HashMap<PodPort, u8> = HashMap::with_max_entries(65_536, 0);
/// Socket cookie -> netns cookie of TCP sockets bound to the inbound port,
/// from bind until listen (sock_ops has no netns cookie before Linux 5.15).
#[map]
pub static BOUND_LISTENERS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);
/// Netns cookie -> 1: pods whose sidecar has bound the outbound port.
#[map]
pub static SIDECAR_SEEN: HashMap<u64, u8> = HashMap::with_max_entries(65_536, 0);
/// Written by the probe program: pid of the helper -> netns cookie of the
/// socket it last created.
#[map]
pub static PROBED_NETNS: HashMap<u32, u64> = HashMap::with_max_entries(64, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// Decisions, while someone listens (256 KiB: ~5,000 of them).
#[map]
pub static DECISIONS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
#[map]
pub static MONITORING: Array<u32> = Array::with_max_entries(1, 0);
/// Each pod's decisions by verdict (per CPU).
#[map]
pub static POD_DECISIONS: PerCpuHashMap<PodVerdict, u64> =
    PerCpuHashMap::with_max_entries(CONNECTION_MAP_ENTRIES, 0);

/// Counts `verdict` for the pod of netns cookie `netns` (0: unknown, not
/// counted). Per CPU: this CPU's slot only, so no lock and no atomics.
#[inline(always)]
pub fn count_for_pod(netns: u64, verdict: u8) {
    if netns == 0 {
        return;
    }
    let key = PodVerdict {
        netns_cookie: netns,
        verdict,
        pad: [0; 7],
    };
    match POD_DECISIONS.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot, touched by one program at a time.
        Some(slot) => unsafe { *slot += 1 },
        // New: this CPU's slot 1, the others 0 (an update from a program
        // writes the calling CPU's slot only).
        None => {
            let _ = POD_DECISIONS.insert(&key, &1, 0);
        }
    }
}

/// Does someone listen for decisions? One array lookup (the verifier inlines
/// it): all a decision costs while nobody does.
#[inline(always)]
pub fn monitoring() -> bool {
    MONITORING.get(0).is_some_and(|on| *on != 0)
}

/// Puts `decision` on the ring buffer, or counts it lost when it is full.
#[inline(always)]
pub fn report(decision: &Decision) {
    if DECISIONS.output(decision, 0).is_err() {
        count(counter::DECISIONS_LOST);
    }
}

/// The settings user space wrote; `None` until it has (then nothing is redirected).
pub fn settings() -> Option<MeshSettings> {
    SETTINGS.get(0).copied()
}

/// The pod's netns cookie the sidecar's outbound listener handed to the
/// socket `sk` it accepted ([`LISTENER_POD`]), or 0.
///
/// # Safety
/// `sk` must be a full socket the verifier knows as one (a context's `sk`).
#[inline(always)]
pub unsafe fn listener_pod(sk: *mut aya_ebpf::bindings::bpf_sock) -> u64 {
    // SAFETY: the caller vouches for `sk`; the value is copied out at once.
    unsafe { sk_storage(&LISTENER_POD, sk, false) }.map_or(0, |netns| *netns)
}

/// The netns cookie of the meshed pod on this node that owns `addr`
/// (`family` [`netns_ebpf::AF_INET`]: IPv4 in word 0), if any.
#[inline(always)]
pub fn local_pod(family: u16, addr: &[u32; 4]) -> Option<u64> {
    // SAFETY: values are only read, within this program run.
    unsafe {
        if family == netns_ebpf::AF_INET {
            LOCAL_POD_IPS4.get(&addr[0]).map(|p| p.netns_cookie)
        } else {
            LOCAL_POD_IPS6.get(addr).map(|p| p.netns_cookie)
        }
    }
}

/// The value of socket storage `map` on socket `sk`, created (zeroed) when
/// `create` and absent; `None` when absent or the kernel could not allocate it.
///
/// # Safety
/// `sk` must be a full socket the verifier knows as one (a context's `sk`).
#[inline(always)]
pub unsafe fn sk_storage<M: SocketStorage>(
    map: &M,
    sk: *mut aya_ebpf::bindings::bpf_sock,
    create: bool,
) -> Option<&'static mut M::Value> {
    let flags = if create {
        u64::from(aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    // SAFETY: the caller vouches for `sk`; the pointer returned is the
    // socket's own storage, valid for this program run, checked for null.
    unsafe {
        aya_ebpf::helpers::bpf_sk_storage_get(map_ptr(map), sk.cast(), core::ptr::null_mut(), flags)
            .cast::<M::Value>()
            .as_mut()
    }
}

/// Adds one to a per-CPU counter.
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU, one at a time.
        unsafe { *slot += 1 };
    }
}

/// The address of a BTF map definition, as helpers take it.
pub fn map_ptr<T>(map: &T) -> *mut core::ffi::c_void {
    core::ptr::from_ref(map).cast_mut().cast()
}
