//! Per-pod mesh settings: what one pod asks of the data path beyond the
//! node's flags. The Kubernetes pod source reads them from the annotations
//! Istio uses ([`PodSettings::from_annotations`]); the data path keeps them in
//! per-pod map entries keyed by the pod's netns cookie, so two pods on one
//! node can exclude different ports and ranges.
//!
//! ```
//! use std::collections::BTreeMap;
//! use netns_datapath::settings::PodSettings;
//!
//! let annotations = BTreeMap::from([
//!     ("sidecar.istio.io/status".to_owned(), "{}".to_owned()),
//!     ("traffic.sidecar.istio.io/excludeOutboundPorts".to_owned(), "5432, 6379".to_owned()),
//!     ("traffic.sidecar.istio.io/excludeOutboundIPRanges".to_owned(), "198.18.7.0/24".to_owned()),
//!     ("sidecar.istio.io/proxyUID".to_owned(), "1500".to_owned()),
//! ]);
//! let settings = PodSettings::from_annotations(&annotations).unwrap();
//! assert_eq!(settings.exclude_outbound_ports, [5432, 6379]);
//! assert_eq!(settings.sidecar_uid, Some(1500));
//! assert!(settings.include_outbound_cidrs.is_none()); // every destination
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Istio's annotations, by what they set.
pub mod annotation {
    /// Destination ports the pod's outbound capture leaves alone.
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
    /// Destination CIDRs the pod's outbound capture leaves alone.
    pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    /// The only destination CIDRs captured (`*`: all, the default).
    pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    /// The pod's ports inbound capture leaves alone.
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    /// The pod's ports inbound capture takes (`*`: all, the default; empty: none).
    pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
    /// The uid the pod's sidecar runs as (Istio: 1337).
    pub const PROXY_UID: &str = "sidecar.istio.io/proxyUID";
    /// What marks a pod as having a sidecar (Istio's injector sets it).
    pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
}

/// A CIDR: address and prefix length.
pub type Cidr = (IpAddr, u8);

/// One pod's settings. The default is what a pod without annotations gets:
/// nothing excluded beyond the node's flags, every destination captured,
/// inbound capture on (when the node has it), the node's sidecar uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSettings {
    /// Destination ports this pod never redirects.
    pub exclude_outbound_ports: Vec<u16>,
    /// Destination CIDRs this pod never redirects.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// When set, the only destination CIDRs this pod redirects.
    pub include_outbound_cidrs: Option<Vec<Cidr>>,
    /// Ports of this pod inbound capture leaves alone.
    pub exclude_inbound_ports: Vec<u16>,
    /// Whether this pod's inbound connections are captured at all (when the
    /// node has inbound capture on).
    pub inbound: bool,
    /// The pod's sidecar uid, when it is not the node's.
    pub sidecar_uid: Option<u32>,
}

impl Default for PodSettings {
    fn default() -> PodSettings {
        PodSettings {
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_cidrs: None,
            exclude_inbound_ports: Vec::new(),
            inbound: true,
            sidecar_uid: None,
        }
    }
}

/// An annotation the agent cannot use; names the annotation and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?}: {reason}")]
pub struct SettingsError {
    /// The annotation's name.
    pub annotation: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PodSettings {
    /// The settings Istio's annotations ask for. Lists are comma separated
    /// (spaces allowed); an annotation that is absent or empty keeps the
    /// default. A value that does not parse is an error naming it: the pod is
    /// then not meshed with half of what it asked.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<PodSettings, SettingsError> {
        let get = |name: &'static str| annotations.get(name).map(|v| (name, v.trim()));
        let mut settings = PodSettings::default();
        if let Some((name, value)) = get(annotation::EXCLUDE_OUTBOUND_PORTS) {
            settings.exclude_outbound_ports = ports(name, value)?;
        }
        if let Some((name, value)) = get(annotation::EXCLUDE_INBOUND_PORTS) {
            settings.exclude_inbound_ports = ports(name, value)?;
        }
        if let Some((name, value)) = get(annotation::EXCLUDE_OUTBOUND_IP_RANGES) {
            settings.exclude_outbound_cidrs = cidrs(name, value)?;
        }
        if let Some((name, value)) = get(annotation::INCLUDE_OUTBOUND_IP_RANGES)
            && value != "*"
        {
            settings.include_outbound_cidrs = Some(cidrs(name, value)?);
        }
        if let Some((name, value)) = get(annotation::INCLUDE_INBOUND_PORTS) {
            match value {
                "*" => {}
                "" => settings.inbound = false,
                _ => {
                    return Err(error(
                        name,
                        value,
                        "only `*` (every port) or empty (none) is supported; \
                         use excludeInboundPorts to leave ports alone",
                    ));
                }
            }
        }
        if let Some((name, value)) = get(annotation::PROXY_UID)
            && !value.is_empty()
        {
            let uid = value
                .parse()
                .map_err(|e| error(name, value, &format!("not a uid: {e}")))?;
            settings.sidecar_uid = Some(uid);
        }
        Ok(settings)
    }

    /// The pod's ports inbound capture leaves alone: the node's `pass_ports`
    /// and the pod's own exclusions, sorted, without repeats.
    #[must_use]
    pub fn inbound_pass_ports(&self, pass_ports: &[u16]) -> Vec<u16> {
        let mut all: Vec<u16> = pass_ports
            .iter()
            .chain(&self.exclude_inbound_ports)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

impl std::fmt::Display for PodSettings {
    /// What differs from the defaults, as `key=value` words.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cidrs = |list: &[Cidr]| {
            list.iter()
                .map(|(a, l)| format!("{a}/{l}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let ports = |list: &[u16]| {
            list.iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut words = Vec::new();
        if !self.exclude_outbound_ports.is_empty() {
            words.push(format!(
                "exclude-outbound-ports={}",
                ports(&self.exclude_outbound_ports)
            ));
        }
        if !self.exclude_outbound_cidrs.is_empty() {
            words.push(format!(
                "exclude-outbound-cidrs={}",
                cidrs(&self.exclude_outbound_cidrs)
            ));
        }
        if let Some(include) = &self.include_outbound_cidrs {
            words.push(format!("include-outbound-cidrs={}", cidrs(include)));
        }
        if !self.exclude_inbound_ports.is_empty() {
            words.push(format!(
                "exclude-inbound-ports={}",
                ports(&self.exclude_inbound_ports)
            ));
        }
        if !self.inbound {
            words.push("inbound=off".to_owned());
        }
        if let Some(uid) = self.sidecar_uid {
            words.push(format!("sidecar-uid={uid}"));
        }
        if words.is_empty() {
            words.push("defaults".to_owned());
        }
        f.write_str(&words.join(" "))
    }
}

fn error(annotation: &'static str, value: &str, reason: &str) -> SettingsError {
    SettingsError {
        annotation,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports(name: &'static str, value: &str) -> Result<Vec<u16>, SettingsError> {
    let mut ports = Vec::new();
    for item in items(value) {
        let port = item
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| error(name, value, &format!("{item:?} is not a port (1-65535)")))?;
        ports.push(port);
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

fn cidrs(name: &'static str, value: &str) -> Result<Vec<Cidr>, SettingsError> {
    let mut all = Vec::new();
    for item in items(value) {
        all.push(parse_cidr(item).map_err(|reason| error(name, value, &reason))?);
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// Parses `ADDRESS/PREFIX` (a plain address is a host CIDR: /32 or /128).
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix {len:?} must be 0..={max}"))?,
    };
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Result<PodSettings, SettingsError> {
        PodSettings::from_annotations(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn no_annotations_is_the_default() {
        assert_eq!(of(&[]).unwrap(), PodSettings::default());
    }

    #[test]
    fn reads_every_annotation() {
        let s = of(&[
            (annotation::EXCLUDE_OUTBOUND_PORTS, "6379, 5432,5432"),
            (annotation::EXCLUDE_INBOUND_PORTS, "8081"),
            (
                annotation::EXCLUDE_OUTBOUND_IP_RANGES,
                "198.18.7.0/24,2001:db8::/32",
            ),
            (annotation::INCLUDE_OUTBOUND_IP_RANGES, "198.18.0.0/15"),
            (annotation::INCLUDE_INBOUND_PORTS, "*"),
            (annotation::PROXY_UID, "1500"),
        ])
        .unwrap();
        assert_eq!(s.exclude_outbound_ports, [5432, 6379]);
        assert_eq!(s.exclude_inbound_ports, [8081]);
        assert_eq!(
            s.exclude_outbound_cidrs,
            [
                ("198.18.7.0".parse().unwrap(), 24),
                ("2001:db8::".parse().unwrap(), 32)
            ]
        );
        assert_eq!(
            s.include_outbound_cidrs,
            Some(vec![("198.18.0.0".parse().unwrap(), 15)])
        );
        assert!(s.inbound);
        assert_eq!(s.sidecar_uid, Some(1500));
        assert_eq!(s.inbound_pass_ports(&[15020, 8081]), [8081, 15020]);
        assert_eq!(
            s.to_string(),
            "exclude-outbound-ports=5432,6379 exclude-outbound-cidrs=198.18.7.0/24,2001:db8::/32 \
             include-outbound-cidrs=198.18.0.0/15 exclude-inbound-ports=8081 sidecar-uid=1500"
        );
        assert_eq!(PodSettings::default().to_string(), "defaults");
    }

    #[test]
    fn star_and_empty() {
        let s = of(&[
            (annotation::INCLUDE_OUTBOUND_IP_RANGES, "*"),
            (annotation::INCLUDE_INBOUND_PORTS, ""),
            (annotation::EXCLUDE_OUTBOUND_PORTS, ""),
        ])
        .unwrap();
        assert_eq!(s.include_outbound_cidrs, None);
        assert!(!s.inbound);
        // An empty include list captures nothing outbound (Istio's meaning).
        let s = of(&[(annotation::INCLUDE_OUTBOUND_IP_RANGES, "")]).unwrap();
        assert_eq!(s.include_outbound_cidrs, Some(vec![]));
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (name, value) in [
            (annotation::EXCLUDE_OUTBOUND_PORTS, "80,http"),
            (annotation::EXCLUDE_INBOUND_PORTS, "0"),
            (annotation::EXCLUDE_OUTBOUND_IP_RANGES, "198.18.0.0/33"),
            (annotation::INCLUDE_OUTBOUND_IP_RANGES, "not-a-cidr"),
            (annotation::INCLUDE_INBOUND_PORTS, "80,443"),
            (annotation::PROXY_UID, "-1"),
        ] {
            let e = of(&[(name, value)]).unwrap_err();
            assert_eq!(e.annotation, name);
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}
