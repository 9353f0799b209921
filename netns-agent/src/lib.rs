//! netns-agent as a library: the pieces the node agent is made of, usable on
//! their own (the integration tests and the benchmark use them).
//!
//! - [`datapath`]: load the embedded eBPF object, pin its maps and links under a
//!   bpffs directory, attach every program to a cgroup v2 directory, write the
//!   mesh settings and per-pod entries, detach and unpin.
//! - [`cgroup`]: find the cgroup v2 mount, check a path is cgroup v2, and make
//!   throw-away child cgroups.
//! - [`bpffs`]: make sure a directory is on a BPF filesystem, mounting one if not.

#![deny(missing_docs)]

pub mod bpffs;
pub mod cgroup;
pub mod datapath;
mod sys;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time;
/// empty in a build made before the object existed (see [`datapath::DataPathError::NoObject`]).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETNS_EBPF_OBJECT"));
