//! Istio's defaults, which the agent writes into [`crate::names::SETTINGS`]
//! unless told otherwise.

/// Port the sidecar accepts redirected outbound connections on.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port the sidecar accepts redirected inbound connections on.
pub const INBOUND_PORT: u16 = 15006;
/// Port of the sidecar's DNS proxy.
pub const DNS_PORT: u16 = 15053;
/// User id the sidecar runs as; its own connections are never redirected.
pub const SIDECAR_UID: u32 = 1337;
/// `SO_MARK` that tells the data path to leave a socket alone.
pub const BYPASS_MARK: u32 = 0x539;
/// Bound of every map that grows with connections (LRU maps evict beyond it).
pub const CONNECTION_MAP_ENTRIES: u32 = 65_536;
