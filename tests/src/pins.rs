//! The agent's pinned maps read back from its `--bpffs` directory: what the
//! kernel holds, never what the agent says it wrote.

use std::net::IpAddr;
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use netns_ebpf::{LocalPod, PodFlags, names};

/// The map pinned as `name` under `bpffs/maps`.
#[must_use]
pub fn map(bpffs: &Path, name: &str) -> MapData {
    let path = bpffs.join("maps").join(name);
    MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The hash map pinned as `name`.
#[must_use]
pub fn hash<K: aya::Pod, V: aya::Pod>(bpffs: &Path, name: &str) -> HashMap<MapData, K, V> {
    HashMap::try_from(Map::HashMap(map(bpffs, name))).unwrap()
}

/// The netns cookies in `MESHED_NETNS`, sorted.
#[must_use]
pub fn meshed_cookies(bpffs: &Path) -> Vec<u64> {
    let meshed: HashMap<_, u64, PodFlags> = hash(bpffs, names::MESHED_NETNS);
    let mut keys: Vec<u64> = meshed.keys().map(Result::unwrap).collect();
    keys.sort_unstable();
    keys
}

/// The pod addresses in `LOCAL_POD_IPS4` and `LOCAL_POD_IPS6`, each with
/// the netns cookie it is filed under, sorted.
#[must_use]
pub fn local_pods(bpffs: &Path) -> Vec<(IpAddr, u64)> {
    let v4: HashMap<_, u32, LocalPod> = hash(bpffs, names::LOCAL_POD_IPS4);
    let v6: HashMap<_, [u32; 4], LocalPod> = hash(bpffs, names::LOCAL_POD_IPS6);
    let mut all: Vec<(IpAddr, u64)> = v4
        .iter()
        .map(Result::unwrap)
        .map(|(k, v)| (IpAddr::from(k.to_ne_bytes()), v.netns_cookie))
        .collect();
    for (k, v) in v6.iter().map(Result::unwrap) {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_mut(4).zip(k) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        all.push((IpAddr::from(octets), v.netns_cookie));
    }
    all.sort_unstable();
    all
}
