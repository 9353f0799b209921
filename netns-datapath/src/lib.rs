//! The netns eBPF data path's loader, for the node agent, the tests and the
//! benchmarks alike (no async runtime, no Kubernetes client in it).
//!
//! - [`DataPath`]: load the embedded object ([`EBPF_OBJECT`]), pin its maps
//!   and links under a bpffs directory, attach every program to a cgroup v2
//!   directory, feed the maps (mesh settings, per-pod entries, per-pod
//!   settings, inbound capture per namespace), detach and unpin.
//! - [`cgroup`]: find the cgroup v2 mount, check a path is cgroup v2, and make
//!   throw-away child cgroups.
//! - [`bpffs`]: make sure a directory is on a BPF filesystem, mounting one if not.
//! - [`settings`]: a pod's own settings (its annotations) and what they mean
//!   for the maps.
//!
//! Minimum kernel: 5.10 for the default data path (sock_ops bookkeeping with
//! socket cookies, netns cookies in connect, getpeername hooks from 5.8). A
//! program the kernel refuses is reported as [`DataPathError::Load`] with its
//! name, the kernel it needs and the verifier's log; nothing is left attached.
//!
//! Pins: `<pin_dir>/maps/<MAP>` for every map, `<pin_dir>/links/<program>` for
//! every cgroup attachment, `<pin_dir>/inbound/<netns cookie>` for each pod's
//! inbound capture ([`DataPath::capture_inbound`]). Pinned links keep the programs attached if the agent
//! dies; [`DataPath::detach`] (or dropping the value) removes them, and with them
//! the attachment.
//!
//! ```no_run
//! use netns_datapath::{DataPath, DataPathConfig};
//! use netns_ebpf::MeshSettings;
//!
//! let config = DataPathConfig {
//!     cgroup: "/sys/fs/cgroup/kubepods".into(),
//!     pin_dir: "/sys/fs/bpf/netns".into(),
//!     settings: MeshSettings::istio(),
//! };
//! let mut datapath = DataPath::attach(netns_datapath::EBPF_OBJECT, &config)?;
//! let pod = netns_core::NetNs::open("/run/netns/pod-a")?;
//! let cookie = datapath.netns_cookie(&pod)?;
//! datapath.add_pod(cookie, &["198.18.0.7".parse()?])?;
//! // ...
//! datapath.detach()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod bpffs;
pub mod cgroup;
pub mod settings;
mod sys;

mod error;
mod inbound;
mod monitor;
mod pod_settings;
mod probe;
mod programs;
mod repair;
mod view;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{Array, HashMap, LpmTrie, MapData, SockHash, lpm_trie::Key};
use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr, CgroupSockopt, SkLookup, SkMsg, SockOps,
};
use netns_ebpf::{LocalPod, MeshSettings, PodFlags, SockPair, names};

pub use error::DataPathError;
pub use inbound::{InboundCapture, attached_inbound_ids};
pub use monitor::DecisionStream;
pub use pod_settings::{PodEntries, flags as pod_flags};
pub use probe::CookieProbe;
use programs::{Hook, PROGRAMS, ProgramSpec, When};
pub use repair::Gap;
pub use view::{DataPathView, MapFill};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time;
/// empty in a build made before the object existed (see [`DataPathError::NoObject`]).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETNS_EBPF_OBJECT"));

/// Where and how to attach the data path.
#[derive(Debug, Clone)]
pub struct DataPathConfig {
    /// The cgroup v2 directory whose processes are captured (and its children).
    /// On a node: the pods' parent cgroup, or the v2 root. In tests: a child.
    pub cgroup: PathBuf,
    /// The directory for pins; a bpffs is mounted there unless it is on one.
    pub pin_dir: PathBuf,
    /// The mesh settings. Their DNS and sockmap flags also decide which
    /// programs are attached.
    pub settings: MeshSettings,
}

/// A program the data path attached, with the id the kernel gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachedProgram {
    /// The program's name in the object.
    pub name: &'static str,
    /// The kernel's program id (as `bpftool prog` shows it).
    pub id: u32,
}

/// The attached data path. Dropping it detaches and unpins everything, like
/// [`DataPath::detach`] but without reporting errors.
#[derive(Debug)]
pub struct DataPath {
    ebpf: Ebpf,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    mounted_bpffs: bool,
    /// Pin files, in the order made; removed in reverse (links before maps).
    pins: Vec<PathBuf>,
    attached: Vec<AttachedProgram>,
    /// The `MeshSettings` flags whose programs are attached.
    attached_modes: u16,
    torn_down: bool,
    /// Started at the first [`DataPath::netns_cookie`]; never pinned.
    probe: Option<probe::NetnsProbe>,
}

impl DataPath {
    /// Loads `object`, pins its maps, writes the settings, and attaches every
    /// program the settings call for to `config.cgroup`. On failure, everything
    /// done so far is undone.
    pub fn attach(object: &[u8], config: &DataPathConfig) -> Result<DataPath, DataPathError> {
        if object.is_empty() {
            return Err(DataPathError::NoObject);
        }
        cgroup::check_cgroup2(&config.cgroup)?;
        // Loading creates the maps in the kernel but changes nothing outside
        // this process, so it goes before the first step that needs undoing.
        let ebpf = Ebpf::load(object).map_err(DataPathError::Object)?;
        let mounted_bpffs = bpffs::ensure(&config.pin_dir)?;
        let mut datapath = DataPath {
            ebpf,
            cgroup: config.cgroup.clone(),
            pin_dir: config.pin_dir.clone(),
            mounted_bpffs,
            pins: Vec::new(),
            attached: Vec::new(),
            attached_modes: 0,
            torn_down: false,
            probe: None,
        };
        // From here on, an early return drops `datapath`, which undoes it all.
        datapath.pin_maps()?;
        make_dir(&datapath.layout_marker())?;
        datapath.set_settings(config.settings)?;
        datapath.ensure_programs(config.settings.flags)?;
        Ok(datapath)
    }

    /// Like [`DataPath::attach`], but takes over what an earlier run left
    /// pinned under `config.pin_dir` (an agent restart with kept state):
    /// maps whose layout matches are reused with their entries, every pinned
    /// link gets the new program in place (`BPF_LINK_UPDATE`: the hook is never
    /// empty, so no connection goes around the sidecar meanwhile), programs
    /// not attached yet are attached and pinned, links of programs the
    /// settings no longer call for are detached. Maps of another layout
    /// version are recreated (the agent's reconcile refills them). With
    /// nothing pinned this is [`DataPath::attach`]. On failure what was
    /// pinned stays as it was. Returns whether it adopted.
    pub fn adopt(
        object: &[u8],
        config: &DataPathConfig,
    ) -> Result<(DataPath, bool), DataPathError> {
        let links = config.pin_dir.join("links");
        if pins_in(&links)?.is_empty() {
            return Ok((DataPath::attach(object, config)?, false));
        }
        if object.is_empty() {
            return Err(DataPathError::NoObject);
        }
        cgroup::check_cgroup2(&config.cgroup)?;
        let maps = config.pin_dir.join("maps");
        let marker = config.pin_dir.join(LAYOUT_MARKER);
        if !marker.is_dir() {
            tracing::warn!(pins = %maps.display(), "pinned maps of another layout: recreating them");
            for pin in pins_in(&maps)? {
                remove(&pin, std::fs::remove_file(&pin))?;
            }
        }
        let mut loader = aya::EbpfLoader::new();
        let pin_paths: Vec<(&str, PathBuf)> = names::ALL_MAPS
            .iter()
            .map(|name| (*name, maps.join(name)))
            .collect();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        make_dir(&maps)?;
        make_dir(&marker)?;
        let ebpf = loader.load(object).map_err(DataPathError::Object)?;
        let own_mount = bpffs::is_bpffs(&config.pin_dir)
            && !config.pin_dir.parent().is_some_and(bpffs::is_bpffs);
        let mut datapath = DataPath {
            ebpf,
            cgroup: config.cgroup.clone(),
            pin_dir: config.pin_dir.clone(),
            mounted_bpffs: own_mount,
            pins: pin_paths.into_iter().map(|(_, p)| p).collect(),
            attached: Vec::new(),
            attached_modes: 0,
            // Until the end, a failure leaves the pinned state alone.
            torn_down: true,
            probe: None,
        };
        datapath.set_settings(config.settings)?;
        datapath.ensure_programs(config.settings.flags)?;
        datapath.take_over_inbound()?;
        datapath.torn_down = false;
        Ok((datapath, true))
    }

    /// Makes the attached programs what `flags` call for, whatever is
    /// pinned (in the manner of Cilium's socketlb): a pinned link takes the
    /// new program in place (`BPF_LINK_UPDATE`: the hook is never empty); a
    /// pinned link that is defunct (its cgroup was removed and made again:
    /// `ENOLINK`) is replaced by a new one; a program without a pinned link
    /// is attached and pinned; the pinned link of a program no longer
    /// wanted is detached and unpinned. With nothing pinned, this attaches
    /// everything.
    fn ensure_programs(&mut self, flags: u16) -> Result<(), DataPathError> {
        let cgroup_fd = self.open_cgroup()?;
        let own_cgroup = cgroup_fd.metadata().map(|m| m.ino()).ok();
        let links = self.pin_dir.join("links");
        make_dir(&links)?;
        for spec in &PROGRAMS {
            let pin = links.join(spec.name);
            let mut pinned = pin.exists();
            if pinned && spec.hook != Hook::SkMsg {
                pinned = self.keep_pinned_link(spec, &pin, own_cgroup)?;
            }
            if !wanted(spec, flags) {
                if pinned {
                    sys::detach_pinned_link(&pin).map_err(|source| DataPathError::Detach {
                        program: spec.name,
                        source,
                    })?;
                    remove(&pin, std::fs::remove_file(&pin))?;
                }
                continue;
            }
            if pinned && spec.hook != Hook::SkMsg {
                let updated = match spec.hook {
                    Hook::SockAddr => load_only::<CgroupSockAddr>(&mut self.ebpf, spec, &pin),
                    Hook::Sock => load_only::<CgroupSock>(&mut self.ebpf, spec, &pin),
                    Hook::Sockopt => load_only::<CgroupSockopt>(&mut self.ebpf, spec, &pin),
                    Hook::SockOps => load_only::<SockOps>(&mut self.ebpf, spec, &pin),
                    Hook::SkMsg => unreachable!("never pinned"),
                };
                match updated {
                    Ok(id) => {
                        self.attached.push(AttachedProgram {
                            name: spec.name,
                            id,
                        });
                        self.pins.push(pin);
                        continue;
                    }
                    Err(DataPathError::Update { source, .. })
                        if source.raw_os_error() == Some(libc::ENOLINK) =>
                    {
                        tracing::warn!(program = spec.name, pin = %pin.display(), "pinned link is defunct (its cgroup went away): attaching anew");
                        remove(&pin, std::fs::remove_file(&pin))?;
                    }
                    Err(e) => return Err(e),
                }
            }
            self.attach_and_pin(spec, &cgroup_fd)?;
        }
        self.attached_modes =
            flags & (MeshSettings::FLAG_SOCKMAP | MeshSettings::FLAG_DNS_REDIRECT);
        Ok(())
    }

    /// Whether the link pinned at `pin` serves this data path's cgroup (its
    /// id `cgroup_id`). One attached to another cgroup, or to one that is
    /// gone (removed and made again under the same path: the kernel frees
    /// the old one's attachments a moment after the removal, and from then
    /// on refuses updates with `ENOLINK`), is detached and unpinned.
    fn keep_pinned_link(
        &self,
        spec: &ProgramSpec,
        pin: &Path,
        cgroup_id: Option<u64>,
    ) -> Result<bool, DataPathError> {
        let Ok(target) = sys::pinned_cgroup_link_target(pin) else {
            // Not a link at all: the update says so, naming the pin.
            return Ok(true);
        };
        if cgroup_id.is_none_or(|id| id == target) {
            return Ok(true);
        }
        tracing::warn!(program = spec.name, pin = %pin.display(), cgroup = %self.cgroup.display(), "the pinned link serves another cgroup (the old one was removed): attaching anew");
        // Already detached when its cgroup is gone.
        let _ = sys::detach_pinned_link(pin);
        remove(pin, std::fs::remove_file(pin))?;
        Ok(false)
    }

    /// Attaches `spec` anew (cgroup programs through `cgroup_fd`; sk_msg to
    /// the sidecar sockhash) and pins its link under `links/`.
    fn attach_and_pin(
        &mut self,
        spec: &ProgramSpec,
        cgroup_fd: &File,
    ) -> Result<(), DataPathError> {
        let link = match spec.hook {
            Hook::SockAddr => attach_cgroup!(self, spec, CgroupSockAddr, cgroup_fd),
            Hook::Sock => attach_cgroup!(self, spec, CgroupSock, cgroup_fd),
            Hook::Sockopt => attach_cgroup!(self, spec, CgroupSockopt, cgroup_fd, keep_link),
            Hook::SockOps => attach_cgroup!(self, spec, SockOps, cgroup_fd),
            Hook::SkMsg => {
                self.attach_sk_msg(spec)?;
                None
            }
        };
        if let Some(link) = link {
            let path = self.pin_dir.join("links").join(spec.name);
            link.pin(&path)
                .map_err(|e| pin_error(spec.name, &path, e))?;
            self.pins.push(path);
        }
        Ok(())
    }

    fn open_cgroup(&self) -> Result<File, DataPathError> {
        File::open(&self.cgroup).map_err(|source| {
            cgroup::CgroupError::Io {
                path: self.cgroup.clone(),
                op: "open",
                source,
            }
            .into()
        })
    }

    fn layout_marker(&self) -> PathBuf {
        self.pin_dir.join(LAYOUT_MARKER)
    }

    /// The cookie of network namespace `ns`: the key [`DataPath::add_pod`]
    /// takes, as the kernel's programs see it (`bpf_get_netns_cookie`). Works
    /// on every kernel the data path runs on, also before Linux 5.14 where
    /// `SO_NETNS_COOKIE` (netns-core's `NetNs::cookie`) is missing: see
    /// the `probe` module. The first call starts the probe (a helper process
    /// in a cgroup of its own under the captured one); later calls take tens
    /// of microseconds.
    pub fn netns_cookie(&mut self, ns: &netns_core::NetNs) -> Result<u64, DataPathError> {
        self.ask_netns_cookie(ns)?;
        self.netns_cookie_answer(ns)
    }

    /// Starts the cookie probe now rather than at the first question (moving
    /// the helper into its cgroup waits for the kernel's cgroup lock: a few
    /// milliseconds better spent before pods arrive).
    pub fn start_cookie_probe(&mut self) -> Result<(), DataPathError> {
        if self.probe.is_none() {
            self.probe = Some(probe::NetnsProbe::start(&mut self.ebpf, &self.cgroup)?);
        }
        Ok(())
    }

    /// The first half of [`DataPath::netns_cookie`]: the probe starts on
    /// `ns` while the caller does other work. Every question asked must be
    /// answered ([`DataPath::netns_cookie_answer`]) before the next.
    pub fn ask_netns_cookie(&mut self, ns: &netns_core::NetNs) -> Result<(), DataPathError> {
        let probe = match &mut self.probe {
            Some(probe) => probe,
            empty => empty.insert(probe::NetnsProbe::start(&mut self.ebpf, &self.cgroup)?),
        };
        let asked = probe.ask(ns);
        if asked.is_err() {
            // A broken helper is replaced at the next question.
            self.probe = None;
        }
        asked
    }

    /// The second half: the cookie of the `ns` last asked about.
    pub fn netns_cookie_answer(&mut self, ns: &netns_core::NetNs) -> Result<u64, DataPathError> {
        let probe = self.probe.as_mut().ok_or(DataPathError::Probe {
            op: "answer a question never asked",
            path: ns.path().to_owned(),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        let answer = probe.answer(&mut self.ebpf, ns);
        if answer.is_err() {
            self.probe = None;
        }
        answer
    }

    /// Read-only handles on this data path's maps, for reports that must
    /// not wait for the owner of the data path (see [`DataPathView`]).
    pub fn view(&self) -> Result<DataPathView, DataPathError> {
        DataPathView::of(self)
    }

    /// The programs attached, with their kernel ids.
    #[must_use]
    pub fn programs(&self) -> &[AttachedProgram] {
        &self.attached
    }

    /// The pin path of a map (see [`netns_ebpf::names`]).
    #[must_use]
    pub fn map_pin(&self, map: &str) -> PathBuf {
        self.pin_dir.join("maps").join(map)
    }

    /// The cgroup the programs are attached to.
    #[must_use]
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Replaces the mesh settings. DNS redirect and sockmap can be switched
    /// off at run time, and back on only if they were on at attach time.
    pub fn set_settings(&mut self, settings: MeshSettings) -> Result<(), DataPathError> {
        if !self.attached.is_empty() {
            for (flag, mode) in [
                (MeshSettings::FLAG_SOCKMAP, "sockmap"),
                (MeshSettings::FLAG_DNS_REDIRECT, "DNS redirect"),
            ] {
                if settings.flags & flag != 0 && self.attached_modes & flag == 0 {
                    return Err(DataPathError::ModeNotAttached { mode });
                }
            }
        }
        let mut array: Array<_, MeshSettings> = Array::try_from(self.map_mut(names::SETTINGS)?)
            .map_err(|e| map_error(names::SETTINGS, "open", e))?;
        array
            .set(0, &settings, 0)
            .map_err(|e| map_error(names::SETTINGS, "write", e))
    }

    /// Puts a pod in the mesh: its namespace (by cookie, see
    /// `netns_core::NetNs::cookie`) and its addresses on this node.
    pub fn add_pod(&mut self, netns_cookie: u64, addrs: &[IpAddr]) -> Result<(), DataPathError> {
        let op = format!("add pod (netns cookie {netns_cookie}) to");
        let pod = LocalPod {
            netns_cookie,
            bits: 0,
            pad: 0,
        };
        for addr in addrs {
            self.local_addr(*addr, Some(&pod), &op)?;
        }
        // A pod already meshed keeps its flags (see `DataPath::set_pod_settings`).
        let mut meshed: HashMap<_, u64, PodFlags> = self.hash(names::MESHED_NETNS)?;
        if meshed.get(&netns_cookie, 0).is_ok() {
            return Ok(());
        }
        meshed
            .insert(&netns_cookie, &PodFlags::default(), 0)
            .map_err(|e| map_error(names::MESHED_NETNS, &op, e))
    }

    /// Notes that pod `netns_cookie`'s sidecar exists (found listening by
    /// the agent; the programs note the ones that bind later): from now on
    /// its absence refuses connections instead of letting them around it
    /// (`MeshSettings::FLAG_REFUSE_ONCE_LISTENED`).
    pub fn note_sidecar_seen(&mut self, netns_cookie: u64) -> Result<(), DataPathError> {
        let mut seen: HashMap<_, u64, u8> = self.hash(names::SIDECAR_SEEN)?;
        seen.insert(&netns_cookie, &1, 0).map_err(|e| {
            map_error(
                names::SIDECAR_SEEN,
                &format!("note the sidecar of pod (netns cookie {netns_cookie}) in"),
                e,
            )
        })
    }

    /// Files pod `netns_cookie` on `listener` (the agent's descriptor of a
    /// sidecar's outbound listener that predates the agent), as sock_ops
    /// does at `listen()`: the sockets it accepts from now on know their pod
    /// ([`names::LISTENER_POD`]).
    pub fn file_outbound_listener(
        &mut self,
        netns_cookie: u64,
        listener: &impl std::os::fd::AsRawFd,
    ) -> Result<(), DataPathError> {
        let name = names::LISTENER_POD;
        let mut storage: aya::maps::SkStorage<&mut MapData, u64> =
            aya::maps::SkStorage::try_from(self.map_mut(name)?)
                .map_err(|e| map_error(name, "open", e))?;
        storage.insert(listener, &netns_cookie, 0).map_err(|e| {
            map_error(
                name,
                &format!("file the outbound listener of pod (netns cookie {netns_cookie}) in"),
                e,
            )
        })
    }

    /// Takes a pod out of the mesh: exactly what [`DataPath::add_pod`] wrote,
    /// and whether its sidecar was seen.
    pub fn remove_pod(&mut self, netns_cookie: u64, addrs: &[IpAddr]) -> Result<(), DataPathError> {
        let op = format!("remove pod (netns cookie {netns_cookie}) from");
        let mut meshed: HashMap<_, u64, PodFlags> = self.hash(names::MESHED_NETNS)?;
        remove_present(meshed.remove(&netns_cookie), names::MESHED_NETNS, &op)?;
        let mut seen: HashMap<_, u64, u8> = self.hash(names::SIDECAR_SEEN)?;
        remove_present(seen.remove(&netns_cookie), names::SIDECAR_SEEN, &op)?;
        for addr in addrs {
            self.local_addr(*addr, None, &op)?;
        }
        self.retain_pod_decisions(|cookie| cookie != netns_cookie, &op)?;
        Ok(())
    }

    /// Removes the decision counts of every pod `keep` refuses; returns how
    /// many entries went.
    fn retain_pod_decisions(
        &mut self,
        keep: impl Fn(u64) -> bool,
        op: &str,
    ) -> Result<usize, DataPathError> {
        let name = names::POD_DECISIONS;
        let mut map: aya::maps::PerCpuHashMap<_, netns_ebpf::PodVerdict, u64> =
            aya::maps::PerCpuHashMap::try_from(self.map_mut(name)?)
                .map_err(|e| map_error(name, "open", e))?;
        let stale: Vec<netns_ebpf::PodVerdict> = map
            .keys()
            .flatten()
            .filter(|k| !keep(k.netns_cookie))
            .collect();
        for key in &stale {
            remove_present(map.remove(key), name, op)?;
        }
        Ok(stale.len())
    }

    /// Removes every pod entry that does not belong to `pods` (cookie and
    /// addresses): what a restart finds in adopted maps for pods that went
    /// away while no agent ran. Returns how many entries it removed.
    pub fn retain_pods(&mut self, pods: &[(u64, Vec<IpAddr>)]) -> Result<usize, DataPathError> {
        let op = "drop stale entries from";
        let cookies: Vec<u64> = pods.iter().map(|(c, _)| *c).collect();
        let owns =
            |addr: IpAddr, cookie: u64| pods.iter().any(|(c, a)| *c == cookie && a.contains(&addr));
        let live = |cookie: &u64| cookies.contains(cookie);
        let removed = self
            .remove_stale::<u64, PodFlags>(names::MESHED_NETNS, op, |c, _| live(c))?
            + self.remove_stale::<u64, u8>(names::SIDECAR_SEEN, op, |c, _| live(c))?
            + self.remove_stale::<u32, LocalPod>(names::LOCAL_POD_IPS4, op, |k, v| {
                owns(IpAddr::from(k.to_ne_bytes()), v.netns_cookie)
            })?
            + self.remove_stale::<[u32; 4], LocalPod>(names::LOCAL_POD_IPS6, op, |k, v| {
                owns(IpAddr::from(ip6_octets(*k)), v.netns_cookie)
            })?;
        let decisions = self.retain_pod_decisions(|c| cookies.contains(&c), op)?;
        Ok(removed
            + decisions
            + self.retain_inbound(&cookies)?
            + self.retain_pod_settings(&cookies)?)
    }

    /// Removes local-pod address entries (an address a pod no longer has).
    pub fn remove_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), DataPathError> {
        let op = "remove a pod address from";
        for addr in addrs {
            self.local_addr(*addr, None, op)?;
        }
        Ok(())
    }

    /// Never redirects connections to this destination port.
    pub fn exclude_port(&mut self, port: u16) -> Result<(), DataPathError> {
        let mut map: HashMap<_, u16, u8> = self.hash(names::EXCLUDED_PORTS)?;
        map.insert(&port, &1, 0)
            .map_err(|e| map_error(names::EXCLUDED_PORTS, &format!("exclude port {port} in"), e))
    }

    /// Never redirects connections into `addr/prefix_len`.
    pub fn exclude_cidr(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), DataPathError> {
        let op = format!("exclude {addr}/{prefix_len} in");
        match addr {
            IpAddr::V4(v4) => {
                let name = names::EXCLUDED_CIDRS4;
                let mut trie: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(self.map_mut(name)?)
                    .map_err(|e| map_error(name, "open", e))?;
                trie.insert(&Key::new(u32::from(prefix_len), v4.octets()), &1, 0)
                    .map_err(|e| map_error(name, &op, e))
            }
            IpAddr::V6(v6) => {
                let name = names::EXCLUDED_CIDRS6;
                let mut trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(self.map_mut(name)?)
                    .map_err(|e| map_error(name, "open", e))?;
                trie.insert(&Key::new(u32::from(prefix_len), v6.octets()), &1, 0)
                    .map_err(|e| map_error(name, &op, e))
            }
        }
    }

    /// The counters of [`netns_ebpf::counter`], summed over CPUs.
    pub fn counters(&self) -> Result<[u64; netns_ebpf::counter::COUNT as usize], DataPathError> {
        let array = aya::maps::PerCpuArray::try_from(self.map(names::COUNTERS)?)
            .map_err(|e| map_error(names::COUNTERS, "open", e))?;
        view::sum_counters(&array)
    }

    /// Detaches every program and removes every pin, and the pin directory.
    pub fn detach(mut self) -> Result<(), DataPathError> {
        self.teardown()
    }

    /// Leaves everything attached and pinned (for an agent restart) and forgets it.
    pub fn keep(mut self) {
        self.torn_down = true;
    }

    fn pin_maps(&mut self) -> Result<(), DataPathError> {
        let dir = self.pin_dir.join("maps");
        make_dir(&dir)?;
        for name in names::ALL_MAPS {
            let map = self.map(name)?;
            let path = dir.join(name);
            map.pin(&path).map_err(|e| pin_error(name, &path, e))?;
            self.pins.push(path);
        }
        Ok(())
    }

    /// sk_msg attaches to the sidecar sockhash, not to the cgroup. Its
    /// attachment lives with this value (and with the pinned map).
    fn attach_sk_msg(&mut self, spec: &ProgramSpec) -> Result<(), DataPathError> {
        let map_fd = {
            let map: SockHash<&MapData, SockPair> =
                SockHash::try_from(self.map(names::SIDECAR_SOCKS)?)
                    .map_err(|e| map_error(names::SIDECAR_SOCKS, "open", e))?;
            map.fd()
                .try_clone()
                .map_err(|e| map_error(names::SIDECAR_SOCKS, "duplicate the fd of", e.into()))?
        };
        let program: &mut SkMsg = program(&mut self.ebpf, spec)?;
        program.load().map_err(|source| load_error(spec, source))?;
        program
            .attach(&map_fd)
            .map_err(|source| DataPathError::Attach {
                program: spec.name,
                target: PathBuf::from(names::SIDECAR_SOCKS),
                source: Box::new(source),
            })?;
        let id = program
            .info()
            .map_err(|source| load_error(spec, source))?
            .id();
        self.attached.push(AttachedProgram {
            name: spec.name,
            id,
        });
        Ok(())
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataPathError> {
        self.ebpf
            .map(name)
            .ok_or(DataPathError::Missing { kind: "map", name })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataPathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataPathError::Missing { kind: "map", name })
    }

    /// Removes the entries of hash map `name` that `keep` does not keep;
    /// returns how many.
    fn remove_stale<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        op: &str,
        keep: impl Fn(&K, &V) -> bool,
    ) -> Result<usize, DataPathError> {
        let mut map: HashMap<_, K, V> = self.hash(name)?;
        let stale: Vec<K> = map
            .iter()
            .flatten()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k)
            .collect();
        for key in &stale {
            remove_present(map.remove(key), name, op)?;
        }
        Ok(stale.len())
    }

    /// Files `addr` as `pod`'s in the local-pod map of its family, or with
    /// `None` removes it (an entry already gone is no error).
    fn local_addr(
        &mut self,
        addr: IpAddr,
        pod: Option<&LocalPod>,
        op: &str,
    ) -> Result<(), DataPathError> {
        fn apply<K: aya::Pod>(
            mut map: HashMap<&mut MapData, K, LocalPod>,
            name: &'static str,
            key: &K,
            pod: Option<&LocalPod>,
            op: &str,
        ) -> Result<(), DataPathError> {
            match pod {
                Some(pod) => map.insert(key, pod, 0).map_err(|e| map_error(name, op, e)),
                None => remove_present(map.remove(key), name, op),
            }
        }
        match addr {
            IpAddr::V4(v4) => {
                let name = names::LOCAL_POD_IPS4;
                apply(
                    self.hash(name)?,
                    name,
                    &u32::from_ne_bytes(v4.octets()),
                    pod,
                    op,
                )
            }
            IpAddr::V6(v6) => {
                let name = names::LOCAL_POD_IPS6;
                apply(self.hash(name)?, name, &ip6_words(v6.octets()), pod, op)
            }
        }
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DataPathError> {
        HashMap::try_from(self.map_mut(name)?).map_err(|e| map_error(name, "open", e))
    }

    fn teardown(&mut self) -> Result<(), DataPathError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut first_error = None;
        let mut note = |result: Result<(), DataPathError>| {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        };
        // Links first: nothing is redirected any more before the maps go.
        // Detached explicitly, so that they are gone when this returns.
        note(self.release_all_inbound());
        for program in self.attached.drain(..).rev() {
            note(
                sys::detach_link_of_program(program.id).map_err(|source| DataPathError::Detach {
                    program: program.name,
                    source,
                }),
            );
        }
        for pin in self.pins.drain(..).rev() {
            note(remove(&pin, std::fs::remove_file(&pin)));
        }
        for dir in [
            self.pin_dir.join("links"),
            self.pin_dir.join("maps"),
            self.layout_marker(),
        ] {
            note(remove(&dir, std::fs::remove_dir(&dir)));
        }
        if self.mounted_bpffs {
            let unmounted = nix::mount::umount2(&self.pin_dir, nix::mount::MntFlags::MNT_DETACH);
            note(remove(&self.pin_dir, unmounted.map_err(Into::into)));
        }
        note(remove(&self.pin_dir, std::fs::remove_dir(&self.pin_dir)));
        first_error.map_or(Ok(()), Err)
    }
}

/// Removes what a data path left pinned under `pin_dir` (an agent run with
/// `--keep-state`, or one that was killed), from the pins alone: detaches
/// every pinned link now, removes every pin and the directories, and
/// unmounts a bpffs mounted on `pin_dir` itself. Idempotent. Returns what it
/// removed, one line each.
pub fn cleanup(pin_dir: &Path) -> Result<Vec<String>, DataPathError> {
    let mut done = Vec::new();
    let links = pin_dir.join("links");
    for pin in pins_in(&links)? {
        sys::detach_pinned_link(&pin).map_err(|source| DataPathError::Unpin {
            path: pin.clone(),
            source,
        })?;
        remove(&pin, std::fs::remove_file(&pin))?;
        done.push(format!("detached and unpinned link {}", pin.display()));
    }
    for pin in pins_in(&pin_dir.join("inbound"))? {
        inbound::unpin_inbound_link(&pin)?;
        done.push(format!(
            "detached and unpinned inbound link {}",
            pin.display()
        ));
    }
    for pin in pins_in(&pin_dir.join("maps"))? {
        remove(&pin, std::fs::remove_file(&pin))?;
        done.push(format!("unpinned map {}", pin.display()));
    }
    // Layout markers of any build, this one's included.
    let markers = std::fs::read_dir(pin_dir).map_or_else(
        |_| Vec::new(),
        |entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("layout-v"))
                })
                .collect()
        },
    );
    for dir in [links, pin_dir.join("inbound"), pin_dir.join("maps")]
        .into_iter()
        .chain(markers)
    {
        if dir.exists() {
            remove(&dir, std::fs::remove_dir(&dir))?;
            done.push(format!("removed {}", dir.display()));
        }
    }
    // The node's own bpffs root is never ours to unmount.
    if pin_dir != Path::new("/sys/fs/bpf")
        && bpffs::is_bpffs(pin_dir)
        && nix::mount::umount2(pin_dir, nix::mount::MntFlags::MNT_DETACH).is_ok()
    {
        done.push(format!("unmounted the bpffs at {}", pin_dir.display()));
    }
    if pin_dir.exists() && std::fs::remove_dir(pin_dir).is_ok() {
        done.push(format!("removed {}", pin_dir.display()));
    }
    Ok(done)
}

/// The cgroup attach types the data path uses (`enum bpf_attach_type`):
/// `sock_ops`, `connect4/6`, `post_bind4/6`, `sendmsg4/6`, `recvmsg4/6`,
/// `getsockopt`, `getpeername4/6`.
const CGROUP_ATTACH_TYPES: [u32; 12] = [3, 10, 11, 12, 13, 14, 15, 19, 20, 21, 29, 30];

/// The program ids attached to `cgroup` at the data path's hooks, asked of
/// the kernel (`BPF_PROG_QUERY`): its view, not ours. Works on every kernel
/// we support (bpftool's JSON does not on 5.10).
pub fn attached_program_ids(cgroup: &Path) -> std::io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for attach_type in CGROUP_ATTACH_TYPES {
        ids.extend(sys::query_cgroup(cgroup, attach_type)?);
    }
    Ok(ids)
}

/// Does a program with this id exist?
#[must_use]
pub fn program_exists(id: u32) -> bool {
    sys::program_exists(id)
}

/// The pins under `pin_dir` (links, then maps), as paths, for `status` when
/// no agent runs.
#[must_use]
pub fn pins(pin_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for sub in ["links", "inbound", "maps"] {
        let mut here: Vec<String> = pins_in(&pin_dir.join(sub))
            .unwrap_or_default()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        here.sort();
        found.extend(here);
    }
    found
}

fn pins_in(dir: &Path) -> Result<Vec<PathBuf>, DataPathError> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(DataPathError::Unpin {
            path: dir.to_owned(),
            source,
        }),
        Ok(entries) => Ok(entries.filter_map(Result::ok).map(|e| e.path()).collect()),
    }
}

/// Loads a cgroup program and attaches it to `$cgroup_fd`, recording its id;
/// evaluates to its link. `keep_link` leaves the link with the program and
/// pins it by id instead (aya cannot hand out that link type).
macro_rules! attach_cgroup {
    ($self:ident, $spec:ident, $ty:ty, $cgroup_fd:expr $(, $keep:ident)?) => {{
        let cgroup = $self.cgroup.clone();
        let attach_error = |source| DataPathError::Attach {
            program: $spec.name,
            target: cgroup.clone(),
            source: Box::new(source),
        };
        let program: &mut $ty = program(&mut $self.ebpf, $spec)?;
        // Loaded already when a repair attaches it again.
        match program.load() {
            Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => {}
            Err(source) => return Err(load_error($spec, source)),
        }
        let link_id = program
            // bpf_link_create takes no flags: cgroup links always coexist with others.
            .attach($cgroup_fd, CgroupAttachMode::Single)
            .map_err(attach_error)?;
        let id = program.info().map_err(|source| load_error($spec, source))?.id();
        $self.attached.push(AttachedProgram { name: $spec.name, id });
        let path = $self.pin_dir.join("links").join($spec.name);
        attach_cgroup!(@pin $self, $spec, program, link_id, id, path, attach_error $(, $keep)?)
    }};
    (@pin $self:ident, $spec:ident, $program:ident, $link_id:ident, $id:ident, $path:ident, $err:ident, keep_link) => {{
        let _ = $link_id;
        sys::pin_link_of_program($id, &$path).map_err(|e| pin_error($spec.name, &$path, e))?;
        $self.pins.push($path);
        None
    }};
    (@pin $self:ident, $spec:ident, $program:ident, $link_id:ident, $id:ident, $path:ident, $err:ident) => {{
        let link = $program.take_link($link_id).map_err($err)?;
        Some(FdLink::try_from(link).map_err(|e| pin_error($spec.name, &$path, e))?)
    }};
}
use attach_cgroup;

impl Drop for DataPath {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "data path teardown");
        }
    }
}

/// The directory whose presence says the pinned maps have this build's
/// layout (kept beside the layout test in netns-ebpf).
const LAYOUT_MARKER: &str = netns_ebpf::LAYOUT_MARKER;

/// Does `flags` call for `spec`?
fn wanted(spec: &ProgramSpec, flags: u16) -> bool {
    match spec.when {
        When::Always => true,
        When::DnsRedirect => flags & MeshSettings::FLAG_DNS_REDIRECT != 0,
        When::Sockmap => flags & MeshSettings::FLAG_SOCKMAP != 0,
    }
}

/// Loads program `spec` and puts it into the link pinned at `pin`, in place
/// of the program there. Returns its id.
fn load_only<P>(ebpf: &mut Ebpf, spec: &ProgramSpec, pin: &Path) -> Result<u32, DataPathError>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: LoadInfo,
{
    let program: &mut P = program(ebpf, spec)?;
    program
        .load_program()
        .map_err(|source| load_error(spec, source))?;
    let fd = program
        .program_fd()
        .map_err(|source| load_error(spec, source))?;
    sys::update_pinned_link(pin, &fd).map_err(|source| DataPathError::Update {
        program: spec.name,
        path: pin.to_owned(),
        source,
    })?;
    program
        .program_id()
        .map_err(|source| load_error(spec, source))
}

/// What [`load_only`] needs of a program type.
trait LoadInfo {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
    fn program_fd(&self) -> Result<std::os::fd::OwnedFd, aya::programs::ProgramError>;
    fn program_id(&self) -> Result<u32, aya::programs::ProgramError>;
}

macro_rules! load_info {
    ($($ty:ty),*) => {$(
        impl LoadInfo for $ty {
            fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
                self.load()
            }
            fn program_fd(&self) -> Result<std::os::fd::OwnedFd, aya::programs::ProgramError> {
                let fd = self.fd()?.as_fd().try_clone_to_owned().map_err(
                    |io_error| aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                        call: "dup",
                        io_error,
                    }),
                )?;
                Ok(fd)
            }
            fn program_id(&self) -> Result<u32, aya::programs::ProgramError> {
                Ok(self.info()?.id())
            }
        }
    )*};
}
load_info!(CgroupSock, CgroupSockAddr, CgroupSockopt, SockOps, SkLookup);

/// The program `spec` names, as its concrete type.
fn program<'a, P>(ebpf: &'a mut Ebpf, spec: &ProgramSpec) -> Result<&'a mut P, DataPathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(spec.name).ok_or(DataPathError::Missing {
        kind: "program",
        name: spec.name,
    })?;
    program
        .try_into()
        .map_err(|source| load_error(spec, source))
}

fn make_dir(dir: &Path) -> Result<(), DataPathError> {
    std::fs::create_dir_all(dir).map_err(|source| DataPathError::Pin {
        what: "pin directory",
        path: dir.to_owned(),
        source: source.into(),
    })
}

fn remove(path: &Path, result: std::io::Result<()>) -> Result<(), DataPathError> {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataPathError::Unpin {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_present(
    result: Result<(), aya::maps::MapError>,
    map: &'static str,
    op: &str,
) -> Result<(), DataPathError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
        // aya reports a delete of a missing key as the syscall's ENOENT.
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(map_error(map, op, e)),
    }
}

fn ip6_octets(words: [u32; 4]) -> [u8; 16] {
    let mut octets = [0; 16];
    for (chunk, word) in octets.as_chunks_mut::<4>().0.iter_mut().zip(words) {
        *chunk = word.to_ne_bytes();
    }
    octets
}

fn ip6_words(octets: [u8; 16]) -> [u32; 4] {
    let mut words = [0; 4];
    for (word, chunk) in words.iter_mut().zip(octets.as_chunks::<4>().0) {
        *word = u32::from_ne_bytes(*chunk);
    }
    words
}

fn load_error(spec: &ProgramSpec, source: aya::programs::ProgramError) -> DataPathError {
    DataPathError::Load {
        program: spec.name,
        min_kernel: spec.min_kernel,
        source,
    }
}

fn map_error(map: &'static str, op: &str, source: aya::maps::MapError) -> DataPathError {
    DataPathError::Map {
        map,
        op: op.to_owned(),
        source: Box::new(source),
    }
}

fn pin_error(
    what: &'static str,
    path: &Path,
    source: impl std::error::Error + Send + Sync + 'static,
) -> DataPathError {
    DataPathError::Pin {
        what,
        path: path.to_owned(),
        source: Box::new(source),
    }
}
