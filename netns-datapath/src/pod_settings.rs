//! One pod's outbound settings in the data path, keyed by its netns cookie:
//! its excluded destination ports ([`names::POD_EXCLUDED_PORTS`]), excluded
//! and included destination CIDRs ([`names::POD_EXCLUDED_CIDRS`],
//! [`names::POD_INCLUDED_CIDRS`], LPM tries whose keys start with the cookie)
//! and its flags and sidecar uid (the pod's [`names::MESHED_NETNS`] value).
//! connect4/6 look them up after the node's own exclusions. The pod's
//! inbound settings are its inbound pass ports (see [`super::inbound`]).

use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use netns_ebpf::{POD_CIDR_COOKIE_BITS, PodCidr, PodFlags, PodPort, names};

use super::{DataPath, DataPathError, map_error, remove_present};
use crate::settings::{Cidr, PodSettings};

/// What the kernel holds for one pod's outbound settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEntries {
    /// The pod's [`names::MESHED_NETNS`] value (`None`: not meshed).
    pub flags: Option<PodFlags>,
    /// Its excluded destination ports, sorted.
    pub exclude_ports: Vec<u16>,
    /// Its excluded destination CIDRs, sorted.
    pub exclude_cidrs: Vec<Cidr>,
    /// Its included destination CIDRs, sorted.
    pub include_cidrs: Vec<Cidr>,
}

impl DataPath {
    /// Writes `new` for the pod `netns_cookie` (already added with
    /// [`DataPath::add_pod`]), replacing `old`, what was written for it before
    /// (`PodSettings::default()` for a new pod). New entries go in before the
    /// flags that make connect read them, and old ones come out after.
    pub fn set_pod_settings(
        &mut self,
        netns_cookie: u64,
        old: &PodSettings,
        new: &PodSettings,
    ) -> Result<(), DataPathError> {
        let op = format!("write the settings of pod (netns cookie {netns_cookie}) to");
        let mut ports: HashMap<_, PodPort, u8> = self.hash(names::POD_EXCLUDED_PORTS)?;
        for port in &new.exclude_outbound_ports {
            ports
                .insert(&pod_port(netns_cookie, *port), &1, 0)
                .map_err(|e| map_error(names::POD_EXCLUDED_PORTS, &op, e))?;
        }
        for (name, cidrs) in [
            (names::POD_EXCLUDED_CIDRS, &new.exclude_outbound_cidrs[..]),
            (
                names::POD_INCLUDED_CIDRS,
                new.include_outbound_cidrs.as_deref().unwrap_or_default(),
            ),
        ] {
            let mut trie = self.trie(name)?;
            for cidr in cidrs {
                trie.insert(&pod_cidr(netns_cookie, *cidr), &1, 0)
                    .map_err(|e| map_error(name, &op, e))?;
            }
        }
        let mut meshed: HashMap<_, u64, PodFlags> = self.hash(names::MESHED_NETNS)?;
        meshed
            .insert(&netns_cookie, &flags(new), 0)
            .map_err(|e| map_error(names::MESHED_NETNS, &op, e))?;
        self.remove_settings_entries(netns_cookie, old, Some(new))
    }

    /// Removes the per-pod entries [`DataPath::set_pod_settings`] wrote for
    /// `settings` (the pod's flags go with [`DataPath::remove_pod`]).
    pub fn clear_pod_settings(
        &mut self,
        netns_cookie: u64,
        settings: &PodSettings,
    ) -> Result<(), DataPathError> {
        self.remove_settings_entries(netns_cookie, settings, None)
    }

    /// The entries of `old` that `kept` does not have.
    fn remove_settings_entries(
        &mut self,
        netns_cookie: u64,
        old: &PodSettings,
        kept: Option<&PodSettings>,
    ) -> Result<(), DataPathError> {
        let op = format!("remove the settings of pod (netns cookie {netns_cookie}) from");
        let kept = kept.cloned().unwrap_or_default();
        let mut ports: HashMap<_, PodPort, u8> = self.hash(names::POD_EXCLUDED_PORTS)?;
        for port in old
            .exclude_outbound_ports
            .iter()
            .filter(|p| !kept.exclude_outbound_ports.contains(p))
        {
            remove_present(
                ports.remove(&pod_port(netns_cookie, *port)),
                names::POD_EXCLUDED_PORTS,
                &op,
            )?;
        }
        let kept_include = kept.include_outbound_cidrs.unwrap_or_default();
        for (name, gone, stay) in [
            (
                names::POD_EXCLUDED_CIDRS,
                &old.exclude_outbound_cidrs[..],
                &kept.exclude_outbound_cidrs[..],
            ),
            (
                names::POD_INCLUDED_CIDRS,
                old.include_outbound_cidrs.as_deref().unwrap_or_default(),
                &kept_include[..],
            ),
        ] {
            let mut trie = self.trie(name)?;
            for cidr in gone.iter().filter(|c| !stay.contains(c)) {
                remove_present(trie.remove(&pod_cidr(netns_cookie, *cidr)), name, &op)?;
            }
        }
        Ok(())
    }

    /// The pod's outbound settings as the kernel holds them.
    pub fn pod_entries(&mut self, netns_cookie: u64) -> Result<PodEntries, DataPathError> {
        let meshed: HashMap<_, u64, PodFlags> = self.hash(names::MESHED_NETNS)?;
        let flags = meshed.get(&netns_cookie, 0).ok();
        let ports: HashMap<_, PodPort, u8> = self.hash(names::POD_EXCLUDED_PORTS)?;
        let mut exclude_ports: Vec<u16> = ports
            .keys()
            .flatten()
            .filter(|k| k.netns_cookie == netns_cookie)
            .map(|k| k.port)
            .collect();
        exclude_ports.sort_unstable();
        let mut cidrs = |name| -> Result<Vec<Cidr>, DataPathError> {
            let trie = self.trie(name)?;
            let mut all: Vec<Cidr> = trie
                .keys()
                .flatten()
                .filter_map(|k| from_pod_cidr(&k).filter(|(c, _)| *c == netns_cookie))
                .map(|(_, cidr)| cidr)
                .collect();
            all.sort_unstable();
            Ok(all)
        };
        Ok(PodEntries {
            flags,
            exclude_ports,
            exclude_cidrs: cidrs(names::POD_EXCLUDED_CIDRS)?,
            include_cidrs: cidrs(names::POD_INCLUDED_CIDRS)?,
        })
    }

    /// Removes the per-pod settings entries of pods not in `cookies`.
    pub(crate) fn retain_pod_settings(&mut self, cookies: &[u64]) -> Result<usize, DataPathError> {
        let op = "drop stale pod settings from";
        let mut removed = self.retain_pod_ports(names::POD_EXCLUDED_PORTS, cookies)?;
        for name in [names::POD_EXCLUDED_CIDRS, names::POD_INCLUDED_CIDRS] {
            let mut trie = self.trie(name)?;
            let stale: Vec<Key<PodCidr>> = trie
                .keys()
                .flatten()
                .filter(|k| !cookies.contains(&cookie_of(&k.data())))
                .collect();
            for key in stale {
                remove_present(trie.remove(&key), name, op)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the entries of a map keyed by [`PodPort`] whose pod is not in
    /// `cookies`; returns how many.
    pub(super) fn retain_pod_ports(
        &mut self,
        name: &'static str,
        cookies: &[u64],
    ) -> Result<usize, DataPathError> {
        self.remove_stale::<PodPort, u8>(name, "drop stale entries from", |k, _| {
            cookies.contains(&k.netns_cookie)
        })
    }

    fn trie(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, PodCidr, u8>, DataPathError> {
        LpmTrie::try_from(self.map_mut(name)?).map_err(|e| map_error(name, "open", e))
    }
}

/// The pod's [`names::MESHED_NETNS`] value for `settings`.
#[must_use]
pub fn flags(settings: &PodSettings) -> PodFlags {
    let mut flags = PodFlags::default();
    if settings.include_outbound_cidrs.is_some() {
        flags.bits |= PodFlags::FLAG_INCLUDE_ONLY;
    }
    if let Some(uid) = settings.sidecar_uid {
        flags.bits |= PodFlags::FLAG_OWN_SIDECAR_UID;
        flags.sidecar_uid = uid;
    }
    flags
}

fn pod_port(netns_cookie: u64, port: u16) -> PodPort {
    PodPort {
        netns_cookie,
        port,
        pad: [0; 3],
    }
}

/// The trie key of `cidr` for one pod: IPv4 as `::ffff:a.b.c.d/(96 + len)`.
fn pod_cidr(netns_cookie: u64, (addr, len): Cidr) -> Key<PodCidr> {
    let mut data: PodCidr = [0; 24];
    data[..8].copy_from_slice(&netns_cookie.to_ne_bytes());
    let bits = match addr {
        IpAddr::V4(v4) => {
            data[8..].copy_from_slice(&v4.to_ipv6_mapped().octets());
            96 + u32::from(len)
        }
        IpAddr::V6(v6) => {
            data[8..].copy_from_slice(&v6.octets());
            u32::from(len)
        }
    };
    Key::new(POD_CIDR_COOKIE_BITS + bits, data)
}

fn cookie_of(data: &PodCidr) -> u64 {
    let mut cookie = [0; 8];
    cookie.copy_from_slice(&data[..8]);
    u64::from_ne_bytes(cookie)
}

/// The cookie and CIDR of a trie key written by [`pod_cidr`].
fn from_pod_cidr(key: &Key<PodCidr>) -> Option<(u64, Cidr)> {
    let data = key.data();
    let bits = key.prefix_len().checked_sub(POD_CIDR_COOKIE_BITS)?;
    let mut octets = [0; 16];
    octets.copy_from_slice(&data[8..]);
    let v6 = std::net::Ipv6Addr::from(octets);
    let cidr = match v6.to_ipv4_mapped() {
        Some(v4) if bits >= 96 => (IpAddr::V4(v4), u8::try_from(bits - 96).ok()?),
        _ => (IpAddr::V6(v6), u8::try_from(bits).ok()?),
    };
    Some((cookie_of(&data), cidr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_keys_round_trip() {
        for cidr in [
            ("198.18.7.0".parse().unwrap(), 24),
            ("198.18.7.9".parse().unwrap(), 32),
            ("2001:db8::".parse().unwrap(), 32),
            ("0.0.0.0".parse().unwrap(), 0),
        ] {
            let key = pod_cidr(42, cidr);
            assert_eq!(from_pod_cidr(&key), Some((42, cidr)));
        }
        assert_eq!(
            pod_cidr(1, ("198.18.0.0".parse().unwrap(), 15)).prefix_len(),
            64 + 96 + 15
        );
    }
}
