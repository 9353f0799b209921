//! Kinds of Linux namespaces, as `NS_GET_NSTYPE` reports them.

use std::fmt;

/// The kind of a namespace file. Only [`NsType::Net`] is accepted by
/// [`NetNs::open`](crate::NetNs::open); the others are named in
/// [`NsError::WrongType`](crate::NsError::WrongType).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NsType {
    /// Network namespace (`CLONE_NEWNET`).
    Net,
    /// Mount namespace (`CLONE_NEWNS`).
    Mount,
    /// PID namespace (`CLONE_NEWPID`).
    Pid,
    /// UTS (hostname) namespace (`CLONE_NEWUTS`).
    Uts,
    /// IPC namespace (`CLONE_NEWIPC`).
    Ipc,
    /// User namespace (`CLONE_NEWUSER`).
    User,
    /// Cgroup namespace (`CLONE_NEWCGROUP`).
    Cgroup,
    /// Time namespace (`CLONE_NEWTIME`).
    Time,
    /// A type this crate does not know, by its clone flag.
    Other(i32),
}

impl NsType {
    /// The `CLONE_NEW*` flag of this type, as `setns(2)` takes it.
    #[must_use]
    pub fn clone_flag(self) -> i32 {
        match self {
            NsType::Net => libc::CLONE_NEWNET,
            NsType::Mount => libc::CLONE_NEWNS,
            NsType::Pid => libc::CLONE_NEWPID,
            NsType::Uts => libc::CLONE_NEWUTS,
            NsType::Ipc => libc::CLONE_NEWIPC,
            NsType::User => libc::CLONE_NEWUSER,
            NsType::Cgroup => libc::CLONE_NEWCGROUP,
            NsType::Time => libc::CLONE_NEWTIME,
            NsType::Other(flag) => flag,
        }
    }

    /// Every type this crate knows.
    pub const KNOWN: [NsType; 8] = [
        NsType::Net,
        NsType::Mount,
        NsType::Pid,
        NsType::Uts,
        NsType::Ipc,
        NsType::User,
        NsType::Cgroup,
        NsType::Time,
    ];

    /// The type whose `CLONE_NEW*` flag is `flag`.
    #[must_use]
    pub fn from_clone_flag(flag: i32) -> NsType {
        NsType::KNOWN
            .into_iter()
            .find(|t| t.clone_flag() == flag)
            .unwrap_or(NsType::Other(flag))
    }

    /// The type named by a `/proc/*/ns/*` link target prefix such as `net` in `net:[4026531840]`.
    pub(crate) fn from_link_name(name: &str) -> NsType {
        match name {
            "net" => NsType::Net,
            "mnt" => NsType::Mount,
            "pid" | "pid_for_children" => NsType::Pid,
            "uts" => NsType::Uts,
            "ipc" => NsType::Ipc,
            "user" => NsType::User,
            "cgroup" => NsType::Cgroup,
            "time" | "time_for_children" => NsType::Time,
            _ => NsType::Other(0),
        }
    }
}

impl fmt::Display for NsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NsType::Net => f.write_str("network"),
            NsType::Mount => f.write_str("mount"),
            NsType::Pid => f.write_str("pid"),
            NsType::Uts => f.write_str("uts"),
            NsType::Ipc => f.write_str("ipc"),
            NsType::User => f.write_str("user"),
            NsType::Cgroup => f.write_str("cgroup"),
            NsType::Time => f.write_str("time"),
            NsType::Other(flag) => write!(f, "unknown (flag {flag:#x})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_flags_round_trip() {
        for t in NsType::KNOWN {
            assert_eq!(NsType::from_clone_flag(t.clone_flag()), t);
        }
        assert_eq!(NsType::from_clone_flag(0x7), NsType::Other(0x7));
    }

    #[test]
    fn link_names_map_to_types() {
        assert_eq!(NsType::from_link_name("net"), NsType::Net);
        assert_eq!(NsType::from_link_name("mnt"), NsType::Mount);
        assert_eq!(NsType::from_link_name("pid_for_children"), NsType::Pid);
    }
}
