//! Per-pod work, done inside the pod's network namespace through netns-core
//! (no raw `setns` here): open and hold the namespace (identity by device and
//! inode, not by name), learn its netns cookie and read its addresses.
//!
//! ```no_run
//! # fn f(datapath: &mut netns_datapath::DataPath) -> Result<(), netns_agent::pod::PodError> {
//! let ns = netns_agent::pod::open("/run/netns/pod-a".as_ref())?;
//! let facts = netns_agent::pod::inspect(&ns, datapath)?;
//! println!("cookie {} addresses {:?}", facts.cookie, facts.addrs);
//! # Ok(())
//! # }
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use netns_core::{NetNs, NsError, NsId};

use netns_datapath::DataPath;

/// Why a pod could not be looked at. Each names the namespace path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodError {
    /// The path is not (or no longer) a network namespace.
    #[error("{path}: not a usable network namespace")]
    Namespace {
        /// The namespace path.
        path: PathBuf,
        /// What netns-core found.
        #[source]
        source: NsError,
    },
    /// The namespace's cookie could not be learned.
    #[error("{path}: cannot learn the namespace's cookie")]
    Cookie {
        /// The namespace path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: Box<netns_datapath::DataPathError>,
    },
    /// The addresses inside the namespace could not be listed.
    #[error("{path}: cannot list the pod's addresses")]
    Addresses {
        /// The namespace path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// What the agent learned about a pod from inside its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// The namespace's cookie: the key the data path knows the pod by.
    pub cookie: u64,
    /// The pod's addresses (loopback and link-local left out), sorted.
    pub addrs: Vec<IpAddr>,
}

/// A pod the agent manages: the handle it holds on the namespace, and exactly
/// what it wrote into the data path for it (so removal undoes exactly that).
#[derive(Debug)]
pub struct Pod {
    /// The file name in the watched directory.
    pub name: String,
    /// The namespace path.
    pub path: PathBuf,
    /// The held namespace handle.
    pub ns: NetNs,
    /// The cookie and addresses written into the data path.
    pub facts: PodFacts,
    /// Its sidecar's listeners that were open before the agent took the pod
    /// on, equipped then (`PORT/FAMILY (pid PID)`).
    pub equipped: Vec<String>,
    /// The pod's own settings, as written into the data path.
    pub settings: netns_datapath::settings::PodSettings,
    /// The watch on its address changes (closed with the pod).
    pub addr_watch: crate::addr_watch::Subscription,
    /// When the agent took it on.
    pub since: SystemTime,
}

impl Pod {
    /// The namespace's identity (device and inode).
    #[must_use]
    pub fn id(&self) -> NsId {
        self.ns.id()
    }
}

/// Opens `path` as a network namespace: a missing path, a file that is not a
/// namespace and a namespace of another type are each a [`PodError::Namespace`].
pub fn open(path: &Path) -> Result<NetNs, PodError> {
    NetNs::open(path).map_err(|source| PodError::Namespace {
        path: path.to_owned(),
        source,
    })
}

/// Learns the pod's cookie (through the data path's probe: every kernel) and
/// reads its addresses inside its namespace.
pub fn inspect(ns: &NetNs, datapath: &mut DataPath) -> Result<PodFacts, PodError> {
    let cookie = datapath
        .netns_cookie(ns)
        .map_err(|source| PodError::Cookie {
            path: ns.path().to_owned(),
            source: Box::new(source),
        })?;
    let addrs = addresses(ns)?;
    Ok(PodFacts { cookie, addrs })
}

/// The pod's addresses (loopback and link-local left out), sorted, read
/// inside its namespace.
pub fn addresses(ns: &NetNs) -> Result<Vec<IpAddr>, PodError> {
    let path = ns.path().to_owned();
    ns.run(|_| -> std::io::Result<Vec<IpAddr>> {
        let mut addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map_err(std::io::Error::from)?
            .filter_map(|ifaddr| pod_address(ifaddr.address.as_ref()?))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        Ok(addrs)
    })
    .map_err(|source| PodError::Namespace {
        path: path.clone(),
        source,
    })?
    .map_err(|source| PodError::Addresses { path, source })
}

/// An address other pods can reach the pod at: not loopback, not link-local.
fn pod_address(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    let ip: IpAddr = if let Some(v4) = addr.as_sockaddr_in() {
        v4.ip().into()
    } else {
        addr.as_sockaddr_in6()?.ip().into()
    };
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    (!ip.is_loopback() && !ip.is_unspecified() && !link_local).then_some(ip)
}
