//! Sidecar listeners that predate the agent, found and equipped before the
//! pod's connections are redirected to them.
//!
//! The data path equips a sidecar's listener when it calls `listen()`: sock_ops
//! sets `TCP_SAVE_SYN` on it (the app's SYN carries the original destination)
//! and files the inbound one for the pod's `sk_lookup` program. A listener
//! opened before the programs were attached (the agent rolled out on a node
//! with running pods, or restarted without `--keep-state`) met neither: its
//! sidecar would be handed connections whose destination it cannot learn
//! (`SO_ORIGINAL_DST` fails with ENOENT), and inbound connections would find
//! no listener on file. So, per pod, before it joins the mesh:
//!
//! 1. the pod namespace's `NETLINK_SOCK_DIAG` lists its TCP listeners on the
//!    sidecar's ports (one dump per family, a socket made inside the pod);
//! 2. each one's owner is found by its inode among the processes of that
//!    namespace (`/proc/PID/fd/*` reads `socket:[INODE]`);
//! 3. `pidfd_getfd(2)` (Linux 5.6; root with `CAP_SYS_PTRACE`) gives the agent
//!    a descriptor of that very socket, on which it sets `TCP_SAVE_SYN` and
//!    which it files in the inbound listener map, as sock_ops would have.
//!
//! A new pod has no listener yet: this costs it one empty dump per family.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use netns_core::{NetNs, NsId};
use socket2::{Domain, Protocol, Type};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
const NLMSG_HDR: usize = 16;

/// A TCP listener on one of the sidecar's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Its local port.
    pub port: u16,
    /// Its socket inode (`socket:[INODE]`).
    pub inode: u64,
}

/// Why a listener could not be equipped.
#[derive(Debug, thiserror::Error)]
pub enum EquipError {
    /// Listing the pod's listeners failed.
    #[error("cannot list the TCP listeners in {path}")]
    Diag {
        /// The pod's namespace.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No process holds the listener (it has just closed).
    #[error("no process holds the pod's listener on port {port} (socket inode {inode})")]
    NoOwner {
        /// The listener's port.
        port: u16,
        /// Its inode.
        inode: u64,
    },
    /// Duplicating or configuring the listener failed.
    #[error("cannot {op} the listener on port {port} of pid {pid}")]
    Socket {
        /// What was attempted.
        op: &'static str,
        /// The listener's port.
        port: u16,
        /// The owning process.
        pid: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// An equipped listener: the agent's own descriptor of the sidecar's socket
/// (close it when done: the sidecar's stays open).
#[derive(Debug)]
pub struct Equipped {
    /// The listener.
    pub listener: Listener,
    /// The process it was taken from.
    pub pid: i32,
    /// The agent's duplicate of it.
    pub socket: OwnedFd,
}

impl std::fmt::Display for Equipped {
    /// `PORT/FAMILY (pid PID)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = if self.listener.family == netns_ebpf::AF_INET6 {
            "ipv6"
        } else {
            "ipv4"
        };
        write!(f, "{}/{family} (pid {})", self.listener.port, self.pid)
    }
}

/// The TCP listeners in `ns` on any of `ports`: from the namespace's
/// `NETLINK_SOCK_DIAG` (filtered by the kernel), or, where no TCP diag
/// handler is loaded (`tcp_diag` is a module on Debian's kernels and nothing
/// may load it), from `/proc/thread-self/net/tcp{,6}` read inside `ns`.
pub fn listeners(ns: &NetNs, ports: &[u16]) -> Result<Vec<Listener>, EquipError> {
    let diag = |source| EquipError::Diag {
        path: ns.path().to_owned(),
        source,
    };
    let mut found = Vec::new();
    match diag_listeners(ns, &mut found) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            found.clear();
            proc_listeners(ns, &mut found).map_err(diag)?;
        }
        Err(e) => return Err(diag(e)),
    }
    found.retain(|l| ports.contains(&l.port));
    Ok(found)
}

/// Every TCP listener of `ns`, by `NETLINK_SOCK_DIAG`.
fn diag_listeners(ns: &NetNs, found: &mut Vec<Listener>) -> io::Result<()> {
    let socket = ns
        .sockets()
        .raw(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
        )
        .map_err(io::Error::other)?;
    // AF_INET, AF_INET6, as `inet_diag_req_v2.sdiag_family` (a byte) takes them.
    for family in [2u8, 10] {
        socket.send(&dump_request(family))?;
        read_dump(&socket, &mut |listener| found.push(listener))?;
    }
    Ok(())
}

/// Every TCP listener of `ns`, from `/proc/thread-self/net/tcp` and `tcp6`
/// read by a thread inside it (that file shows the reading thread's namespace).
fn proc_listeners(ns: &NetNs, found: &mut Vec<Listener>) -> io::Result<()> {
    let tables = ns
        .run(|_| {
            [("tcp", 2u16), ("tcp6", 10)].map(|(file, family)| {
                (
                    std::fs::read_to_string(format!("/proc/thread-self/net/{file}")),
                    family,
                )
            })
        })
        .map_err(io::Error::other)?;
    for (text, family) in tables {
        match text {
            Ok(text) => found.extend(parse_proc_tcp(&text, family)),
            // No IPv6 in this kernel: no IPv6 listeners.
            Err(e) if e.kind() == io::ErrorKind::NotFound && family == 10 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The listeners (state `0A`) of a `/proc/net/tcp{,6}` table.
fn parse_proc_tcp(text: &str, family: u16) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            Some(Listener {
                family,
                port,
                inode: inode.parse().ok()?,
            })
        })
        .collect()
}

/// Every listener of `found` taken from its owner in namespace `ns` and set to
/// keep SYNs (`TCP_SAVE_SYN`).
pub fn equip(ns: NsId, found: &[Listener]) -> Result<Vec<Equipped>, EquipError> {
    let inodes: Vec<u64> = found.iter().map(|l| l.inode).collect();
    let owners = owners(ns, &inodes);
    let mut equipped = Vec::new();
    for listener in found {
        let Some(&(_, pid, fd)) = owners.iter().find(|(inode, _, _)| *inode == listener.inode)
        else {
            return Err(EquipError::NoOwner {
                port: listener.port,
                inode: listener.inode,
            });
        };
        let failed = |op| {
            move |source| EquipError::Socket {
                op,
                port: listener.port,
                pid,
                source,
            }
        };
        let socket =
            crate::sys::duplicate_fd(pid, fd).map_err(failed("duplicate (pidfd_getfd)"))?;
        crate::sys::save_syn(&socket).map_err(failed("set TCP_SAVE_SYN on"))?;
        equipped.push(Equipped {
            listener: *listener,
            pid,
            socket,
        });
    }
    Ok(equipped)
}

/// `(inode, pid, fd)` of the first process descriptor found for each of
/// `inodes`: among the processes whose network namespace is `ns` first (an
/// in-pod sidecar), then among all (a node proxy that made the listener in
/// the pod's namespace from outside it, as ztunnel does).
fn owners(ns: NsId, inodes: &[u64]) -> Vec<(u64, i32, i32)> {
    use std::os::unix::fs::MetadataExt;
    let mut found: Vec<(u64, i32, i32)> = Vec::new();
    let in_pod = |pid: i32| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| m.dev() == ns.dev && m.ino() == ns.ino)
    };
    scan(&mut found, inodes, &in_pod);
    if found.len() < inodes.len() {
        scan(&mut found, inodes, &|pid| !in_pod(pid));
    }
    found
}

/// Adds to `found` the descriptors of `inodes` held by processes `pick` takes.
fn scan(found: &mut Vec<(u64, i32, i32)>, inodes: &[u64], pick: &dyn Fn(i32) -> bool) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !pick(pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path()).ok().and_then(|target| {
                target
                    .to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            let Some(fd) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if inodes.contains(&inode) && !found.iter().any(|(i, _, _)| *i == inode) {
                found.push((inode, pid, fd));
            }
        }
        if found.len() == inodes.len() {
            return;
        }
    }
}

/// `SOCK_DIAG_BY_FAMILY` dump of `family`'s TCP sockets in state LISTEN.
fn dump_request(family: u8) -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSG_HDR + 56);
    let len = u32::try_from(NLMSG_HDR + 56).expect("small");
    let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).expect("flags fit");
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    // struct inet_diag_req_v2
    msg.push(family);
    msg.push(u8::try_from(libc::IPPROTO_TCP).expect("fits"));
    msg.push(0); // idiag_ext
    msg.push(0); // pad
    msg.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    msg.extend_from_slice(&[0; 48]); // struct inet_diag_sockid: any
    msg
}

/// Reads the dump's messages until `NLMSG_DONE`, handing each listener on.
fn read_dump(socket: &socket2::Socket, each: &mut dyn FnMut(Listener)) -> io::Result<()> {
    use std::io::Read as _;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = (&*socket).read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut at = 0;
        while at + NLMSG_HDR <= n {
            let word = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
            let len = word(at) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < NLMSG_HDR || at + len > n {
                return Err(io::Error::other("truncated sock_diag message"));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(
                        buf[at + NLMSG_HDR..at + NLMSG_HDR + 4]
                            .try_into()
                            .expect("4 bytes"),
                    );
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDR + 72 => {
                    let m = &buf[at + NLMSG_HDR..at + len];
                    each(Listener {
                        family: u16::from(m[0]),
                        port: u16::from_be_bytes([m[4], m[5]]),
                        inode: u64::from(u32::from_ne_bytes(
                            m[68..72].try_into().expect("4 bytes"),
                        )),
                    });
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_of_this_process_and_its_owner() {
        // The test's own namespace: a listener made here is found, with us
        // as its owner.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ns = NetNs::current().unwrap();
        let found = listeners(&ns, &[port]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].family, 2);
        let owners = owners(ns.id(), &[found[0].inode]);
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].1, i32::try_from(std::process::id()).unwrap());
        assert_eq!(listeners(&ns, &[1]).unwrap(), Vec::new());
        // The fallback sees the same listener.
        let mut by_proc = Vec::new();
        proc_listeners(&ns, &mut by_proc).unwrap();
        assert!(by_proc.contains(&found[0]), "{by_proc:?}");
    }

    #[test]
    fn reads_listeners_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                    0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 4242 1 0 100 0 0 10 0\n\
                    1: 0100007F:3A99 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1337        0 4243 1 0 20 4 30 10 -1\n";
        assert_eq!(
            parse_proc_tcp(text, 2),
            [Listener {
                family: 2,
                port: 15001,
                inode: 4242
            }]
        );
    }
}
