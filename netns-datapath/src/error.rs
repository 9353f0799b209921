//! [`DataPathError`]: what can go wrong loading, attaching and feeding the data path.

use std::path::PathBuf;

use crate::bpffs::BpffsError;
use crate::cgroup::CgroupError;

/// A data path failure, naming the program, map or path involved. Whatever the
/// failing call had already attached or pinned has been undone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataPathError {
    /// The pin directory could not be prepared.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),

    /// The cgroup to attach to is unusable.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),

    /// This build of the agent has no eBPF object: it was compiled before
    /// `cargo xtask build-ebpf` had written one (a check-only build).
    #[error(
        "this netns-agent was built without its eBPF object: run `./x build-ebpf` (or \
         `cargo xtask build-ebpf`), then build the agent again"
    )]
    NoObject,

    /// A pinned link could not take the new program.
    #[error("cannot put program {program} into the link pinned at {path}")]
    Update {
        /// The program.
        program: &'static str,
        /// The link's pin.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The agent is stopping: the data path is being taken down.
    #[error("the agent is stopping")]
    Stopping,

    /// The eBPF object could not be parsed or its maps created.
    #[error("cannot load the eBPF object")]
    Object(#[source] aya::EbpfError),

    /// The object lacks a program or map this version of the agent expects.
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        /// Its name.
        name: &'static str,
    },

    /// The namespace-cookie probe could not do `op` (its cgroup, its helper
    /// process, or a namespace it was asked about, at `path`).
    #[error("netns cookie probe: cannot {op} ({path})")]
    Probe {
        /// What it was doing.
        op: &'static str,
        /// The probe cgroup or the namespace concerned.
        path: std::path::PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },

    /// The kernel refused the namespace-cookie probe program
    /// (`cgroup/sock_create` with `bpf_get_netns_cookie`, Linux 5.7+).
    #[error("the kernel refused the netns cookie probe program (cgroup/sock_create, Linux 5.7+)")]
    ProbeProgram {
        /// What aya reported (the verifier log included).
        #[source]
        source: aya::programs::ProgramError,
    },

    /// The kernel refused a program: the verifier rejected it, or the kernel
    /// lacks the program type, attach type or a helper it uses.
    #[error("the kernel refused program {program} (it needs Linux {min_kernel} or newer)")]
    Load {
        /// The program.
        program: &'static str,
        /// The oldest kernel it is known to load on.
        min_kernel: &'static str,
        /// The kernel's answer, with the verifier log.
        #[source]
        source: aya::programs::ProgramError,
    },

    /// Attaching a loaded program failed.
    #[error("cannot attach program {program} to {target}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The cgroup directory or map it was attached to.
        target: PathBuf,
        /// The kernel's answer (boxed: it is most of the error's size).
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// Pinning a map or link failed.
    #[error("cannot pin {what} at {path}")]
    Pin {
        /// The map or program whose object was pinned.
        what: &'static str,
        /// The pin path.
        path: PathBuf,
        /// The reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Reading or writing a map failed.
    #[error("cannot {op} map {map}")]
    Map {
        /// The map.
        map: &'static str,
        /// What was being done, e.g. "add pod net:[...] to".
        op: String,
        /// The kernel's answer (boxed: it is most of the error's size).
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// A settings change asks for a mode whose programs were not attached.
    #[error("cannot turn on {mode} at run time: attach the data path with it enabled")]
    ModeNotAttached {
        /// "sockmap" or "DNS redirect".
        mode: &'static str,
    },

    /// Detaching a program's link failed.
    #[error("cannot detach program {program}")]
    Detach {
        /// The program.
        program: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },

    /// Removing pins or the pin directory failed.
    #[error("cannot remove {path}")]
    Unpin {
        /// What could not be removed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Asking the kernel what is attached failed.
    #[error("cannot ask the kernel what is attached to {target}")]
    Query {
        /// The cgroup or namespace asked about.
        target: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
