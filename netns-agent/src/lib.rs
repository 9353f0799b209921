//! netns-agent as a library: the pieces the node agent is made of, usable on
//! their own (the integration tests and the benchmark use them).
//!
//! - [`datapath`]: load the embedded eBPF object, pin its maps and links under a
//!   bpffs directory, attach every program to a cgroup v2 directory, write the
//!   mesh settings and per-pod entries, detach and unpin.
//! - [`cgroup`]: find the cgroup v2 mount, check a path is cgroup v2, and make
//!   throw-away child cgroups.
//! - [`bpffs`]: make sure a directory is on a BPF filesystem, mounting one if not.
//! - [`cni`]: the `netns-cni` chained plugin and what it asks the agent.
//! - [`daemon`]: the long-running agent (`netns-agent run`), wiring
//!   [`source`] (where pods come from), [`pod`] (per-pod work inside each
//!   namespace), [`addr_watch`] (address changes inside pods, from netlink),
//!   [`control`] (the root-only control socket), [`http`]
//!   (health, readiness, metrics) and [`status`] (what `status` shows).

#![deny(missing_docs)]

pub mod addr_watch;
pub mod bpffs;
pub mod cgroup;
pub mod cni;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod http;
pub mod instance;
pub mod pod;
pub mod settings;
pub mod sidecar;
pub mod source;
pub mod status;
mod sys;

/// An error with its chain of causes on one line, `a: b: c`.
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time;
/// empty in a build made before the object existed (see [`datapath::DataPathError::NoObject`]).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETNS_EBPF_OBJECT"));
