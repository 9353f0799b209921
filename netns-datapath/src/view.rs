//! [`DataPathView`]: read-only handles on the data path's maps, typed and
//! opened once, for whoever reports on the data path (status, metrics,
//! health) without holding the [`DataPath`] itself: the kernel's maps are
//! safe to read while the owner writes them, so a report never waits for
//! pod work, and pod work never waits for a report.

use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::PathBuf;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use netns_ebpf::{LocalPod, PodFlags, PodVerdict, counter, names};

use crate::{DataPath, DataPathError, ip6_words, map_error};

/// Read-only handles on the maps of one attached data path (descriptors of
/// the maps themselves: a pin removed under it does not change what it reads).
pub struct DataPathView {
    meshed: HashMap<MapData, u64, PodFlags>,
    ips4: HashMap<MapData, u32, LocalPod>,
    ips6: HashMap<MapData, [u32; 4], LocalPod>,
    sidecar_seen: HashMap<MapData, u64, u8>,
    counters: PerCpuArray<MapData, u64>,
    monitoring: Array<MapData, u32>,
    pod_decisions: PerCpuHashMap<MapData, PodVerdict, u64>,
    /// The capacities of `meshed`, `ips4` and `ips6`.
    capacities: [Capacity; 3],
    inbound_pins: PathBuf,
}

impl std::fmt::Debug for DataPathView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPathView")
            .field("inbound_pins", &self.inbound_pins)
            .finish_non_exhaustive()
    }
}

/// A handle of its own on `datapath`'s map `name` (a duplicated descriptor:
/// it outlives the [`DataPath`] and any pin).
pub(crate) fn own_handle(
    datapath: &DataPath,
    name: &'static str,
) -> Result<MapData, DataPathError> {
    let (Map::HashMap(data)
    | Map::LruHashMap(data)
    | Map::PerCpuArray(data)
    | Map::Array(data)
    | Map::PerCpuHashMap(data)
    | Map::RingBuf(data)) = datapath.map(name)?
    else {
        return Err(DataPathError::Missing { kind: "map", name });
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| map_error(name, "duplicate the descriptor of", e.into()))?;
    MapData::from_fd(fd).map_err(|e| map_error(name, "open", e))
}

/// A map's capacity: (name, `max_entries`).
type Capacity = (&'static str, u64);

/// How full a map is: (name, entries, capacity).
pub type MapFill = (&'static str, u64, u64);

impl DataPathView {
    /// Handles on `datapath`'s maps (duplicated descriptors).
    pub fn of(datapath: &DataPath) -> Result<DataPathView, DataPathError> {
        /// A handle of its own on map `name`, and the map's capacity.
        fn open(datapath: &DataPath, name: &'static str) -> Result<(Map, u64), DataPathError> {
            let data = own_handle(datapath, name)?;
            let capacity = data
                .info()
                .map_err(|e| map_error(name, "ask the size of", e))?
                .max_entries();
            let map = Map::from_map_data(data).map_err(|e| map_error(name, "open", e))?;
            Ok((map, u64::from(capacity)))
        }
        fn hash<K: aya::Pod, V: aya::Pod>(
            datapath: &DataPath,
            name: &'static str,
        ) -> Result<(HashMap<MapData, K, V>, Capacity), DataPathError> {
            let (map, capacity) = open(datapath, name)?;
            let map = HashMap::try_from(map).map_err(|e| map_error(name, "open", e))?;
            Ok((map, (name, capacity)))
        }
        let (meshed, meshed_size) = hash(datapath, names::MESHED_NETNS)?;
        let (ips4, ips4_size) = hash(datapath, names::LOCAL_POD_IPS4)?;
        let (ips6, ips6_size) = hash(datapath, names::LOCAL_POD_IPS6)?;
        let (sidecar_seen, _) = hash(datapath, names::SIDECAR_SEEN)?;
        let (counters, _) = open(datapath, names::COUNTERS)?;
        Ok(DataPathView {
            meshed,
            ips4,
            ips6,
            sidecar_seen,
            counters: PerCpuArray::try_from(counters)
                .map_err(|e| map_error(names::COUNTERS, "open", e))?,
            monitoring: Array::try_from(Map::Array(own_handle(datapath, names::MONITORING)?))
                .map_err(|e| map_error(names::MONITORING, "open", e))?,
            pod_decisions: PerCpuHashMap::try_from(Map::PerCpuHashMap(own_handle(
                datapath,
                names::POD_DECISIONS,
            )?))
            .map_err(|e| map_error(names::POD_DECISIONS, "open", e))?,
            capacities: [meshed_size, ips4_size, ips6_size],
            inbound_pins: datapath.inbound_pin(0).with_file_name(""),
        })
    }

    /// What of [`DataPath::add_pod`]`(netns_cookie, addrs)` is not in the
    /// maps, read from the kernel, one line each (empty: all there).
    #[must_use]
    pub fn missing_pod_entries(&self, netns_cookie: u64, addrs: &[IpAddr]) -> Vec<String> {
        let mut missing = Vec::new();
        if self.meshed.get(&netns_cookie, 0).is_err() {
            missing.push(format!("{} entry", names::MESHED_NETNS));
        }
        for addr in addrs {
            let owner = match addr {
                IpAddr::V4(v4) => self.ips4.get(&u32::from_ne_bytes(v4.octets()), 0),
                IpAddr::V6(v6) => self.ips6.get(&ip6_words(v6.octets()), 0),
            };
            if owner.ok().is_none_or(|p| p.netns_cookie != netns_cookie) {
                missing.push(format!("address {addr}"));
            }
        }
        missing
    }

    /// Whether pod `netns_cookie`'s sidecar has been seen (see
    /// [`DataPath::note_sidecar_seen`]), as the kernel's map says.
    #[must_use]
    pub fn sidecar_seen(&self, netns_cookie: u64) -> bool {
        self.sidecar_seen.get(&netns_cookie, 0).is_ok()
    }

    /// Whether pod `ns` (netns cookie `netns_cookie`) has its inbound link
    /// pinned and attached to its namespace, as the kernel says (two system
    /// calls: cheap enough for every pod every second, and no lock).
    #[must_use]
    pub fn inbound_in_place(&self, ns: &netns_core::NetNs, netns_cookie: u64) -> bool {
        crate::repair::inbound_link_serves(&self.inbound_pins.join(netns_cookie.to_string()), ns)
    }

    /// The fill of the maps that grow with pods, read from the kernel: one
    /// system call per entry, so callers do it seldom (the agent once per
    /// kernel check, never per request). Connections keep their state in
    /// socket storage, which grows with the sockets and has no capacity.
    #[must_use]
    pub fn map_fill(&self) -> Vec<MapFill> {
        fn fill<K: aya::Pod, V: aya::Pod>(
            (name, capacity): Capacity,
            map: &HashMap<MapData, K, V>,
        ) -> MapFill {
            (name, map.keys().flatten().count() as u64, capacity)
        }
        let [meshed, ips4, ips6] = self.capacities;
        vec![
            fill(meshed, &self.meshed),
            fill(ips4, &self.ips4),
            fill(ips6, &self.ips6),
        ]
    }

    /// Each pod's decisions by verdict (summed over CPUs), as the kernel
    /// counted them: one walk of the map, two system calls per entry.
    #[must_use]
    pub fn pod_decisions(&self) -> std::collections::BTreeMap<u64, Vec<(u8, u64)>> {
        let mut by_pod: std::collections::BTreeMap<u64, Vec<(u8, u64)>> =
            std::collections::BTreeMap::new();
        for (key, values) in self.pod_decisions.iter().flatten() {
            let total = values.iter().sum();
            by_pod
                .entry(key.netns_cookie)
                .or_default()
                .push((key.verdict, total));
        }
        for counts in by_pod.values_mut() {
            counts.sort_unstable();
        }
        by_pod
    }

    /// Whether the programs report decisions now (`netns-agent monitor`),
    /// as the kernel's switch map holds it.
    #[must_use]
    pub fn reporting(&self) -> bool {
        self.monitoring.get(&0, 0).is_ok_and(|on| on != 0)
    }

    /// The counters of [`netns_ebpf::counter`], summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], DataPathError> {
        sum_counters(&self.counters)
    }
}

/// The counters of [`netns_ebpf::counter`] in `array`, summed over CPUs.
pub(crate) fn sum_counters<T: std::borrow::Borrow<MapData>>(
    array: &PerCpuArray<T, u64>,
) -> Result<[u64; counter::COUNT as usize], DataPathError> {
    let mut totals = [0; counter::COUNT as usize];
    for (index, total) in (0..counter::COUNT).zip(totals.iter_mut()) {
        let values = array
            .get(&index, 0)
            .map_err(|e| map_error(names::COUNTERS, "read", e))?;
        *total = values.iter().sum();
    }
    Ok(totals)
}
