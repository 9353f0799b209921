//! Sockets made inside a namespace, `SO_MARK`, and `SO_ORIGINAL_DST`.
//!
//! A socket belongs for life to the network namespace it was created in. Only
//! `socket(2)` runs inside the namespace; binding, connecting and every later use
//! happen on the caller's thread wherever it is, and the socket can be handed to
//! any thread or async runtime.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::{NetNs, NsError, Result};

/// `SO_MARK` (Go: `SoMark`): the socket option that sets the mark (fwmark) of
/// every packet a socket sends. Setting it needs `CAP_NET_ADMIN`.
pub const SO_MARK: i32 = 0x24;

/// Sets `SO_MARK` on a socket.
///
/// ```
/// # if !nix::unistd::Uid::effective().is_root() { return Ok(()); }
/// let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// netns_core::set_mark(&sock, 0x539)?;
/// assert_eq!(netns_core::mark(&sock)?, 0x539);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn set_mark(socket: impl AsFd, mark: u32) -> io::Result<()> {
    SockRef::from(&socket).set_mark(mark)
}

/// The cookie of the network namespace `socket` belongs to: the 64-bit id
/// eBPF programs get from `bpf_get_netns_cookie` (`SO_NETNS_COOKIE`, Linux
/// 5.14+; older kernels answer `ENOPROTOOPT`). Any socket made inside a
/// namespace tells its cookie, so a caller that already holds one there
/// needs no other trip into it.
///
/// ```no_run
/// let ns = netns_core::NetNs::open("/run/netns/pod-a")?;
/// let sock = ns.sockets().raw(socket2::Domain::UNIX, socket2::Type::DGRAM, None)?;
/// let cookie = netns_core::netns_cookie(&sock)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn netns_cookie(socket: impl AsFd) -> io::Result<u64> {
    crate::sys::netns_cookie(socket)
}

/// Reads `SO_MARK` back from a socket.
pub fn mark(socket: impl AsFd) -> io::Result<u32> {
    SockRef::from(&socket).mark()
}

/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` (they share the number).
pub const SO_ORIGINAL_DST: i32 = 80;

/// Where a redirected connection was going, as a transparent proxy (a
/// sidecar) asks it of an accepted socket: `SO_ORIGINAL_DST` on an IPv4
/// socket, `IP6T_SO_ORIGINAL_DST` on an IPv6 one. Answered by netfilter after
/// an iptables `REDIRECT`, or by the netns data path's getsockopt program. An
/// IPv4 destination asked about on a dual-stack socket (`::ffff:a.b.c.d`) is
/// returned as the IPv4 address it is. A connection nobody redirected gets
/// `ENOENT` (or `ENOPROTOOPT` where conntrack is not loaded).
///
/// ```no_run
/// let listener = std::net::TcpListener::bind("127.0.0.1:15001")?;
/// let (conn, _) = listener.accept()?;
/// let destination = netns_core::original_dst(&conn)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn original_dst(conn: &impl AsFd) -> io::Result<SocketAddr> {
    let local = SockRef::from(conn).local_addr()?;
    if local.as_socket_ipv4().is_some() {
        let sin: libc::sockaddr_in =
            crate::sys::getsockopt_value(conn, libc::SOL_IP, SO_ORIGINAL_DST)?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        Ok(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
    } else {
        let sin6: libc::sockaddr_in6 =
            crate::sys::getsockopt_value(conn, libc::SOL_IPV6, SO_ORIGINAL_DST)?;
        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        Ok(SocketAddr::new(
            ip.to_canonical(),
            u16::from_be(sin6.sin6_port),
        ))
    }
}

/// Makes sockets inside one namespace, optionally marked. Get one from
/// [`NetNs::sockets`].
///
/// ```no_run
/// use std::net::SocketAddr;
///
/// let ns = netns_core::NetNs::open("/run/netns/blue")?;
/// let listener = ns.sockets().tcp_listener("127.0.0.1:8080".parse()?)?;
/// let marked = ns.sockets().mark(0x539).tcp_connect("198.18.0.2:80".parse()?)?;
///
/// // Async code converts them as usual:
/// listener.set_nonblocking(true)?;
/// // let listener = tokio::net::TcpListener::from_std(listener)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct NsSockets<'a> {
    ns: &'a NetNs,
    mark: Option<u32>,
}

impl NetNs {
    /// A socket factory for this namespace.
    pub fn sockets(&self) -> NsSockets<'_> {
        NsSockets {
            ns: self,
            mark: None,
        }
    }

    /// The namespace's cookie, the 64-bit id that eBPF programs get from
    /// `bpf_get_netns_cookie` (read through `SO_NETNS_COOKIE`, Linux 5.14+).
    pub fn cookie(&self) -> Result<u64> {
        let sock = self.sockets().raw(Domain::UNIX, Type::DGRAM, None)?;
        netns_cookie(&sock).map_err(|source| NsError::Socket {
            path: self.path().to_owned(),
            op: "read SO_NETNS_COOKIE (needs Linux 5.14+)".into(),
            source,
        })
    }

    /// Sets the loopback interface `lo` up, as a new namespace has it down.
    pub fn set_loopback_up(&self) -> Result<()> {
        let sock = self.sockets().raw(Domain::IPV4, Type::DGRAM, None)?;
        crate::sys::set_interface_up(&sock, "lo").map_err(|source| NsError::Socket {
            path: self.path().to_owned(),
            op: "set interface lo up".into(),
            source,
        })
    }
}

impl NsSockets<'_> {
    /// Gives every socket made from here on this `SO_MARK`.
    pub fn mark(self, mark: u32) -> Self {
        NsSockets {
            mark: Some(mark),
            ..self
        }
    }

    /// A socket of any kind, created inside the namespace and marked if asked.
    pub fn raw(&self, domain: Domain, ty: Type, protocol: Option<Protocol>) -> Result<Socket> {
        let socket = self
            .ns
            .run(|_| Socket::new(domain, ty.cloexec(), protocol))?
            .map_err(|e| self.error("create socket".into(), e))?;
        if let Some(mark) = self.mark {
            socket
                .set_mark(mark)
                .map_err(|e| self.error(format!("set SO_MARK {mark:#x}"), e))?;
        }
        Ok(socket)
    }

    /// A TCP listener bound to `addr` inside the namespace (`SO_REUSEADDR` set,
    /// backlog 1024).
    pub fn tcp_listener(&self, addr: SocketAddr) -> Result<TcpListener> {
        let socket = self.raw(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        let op = || format!("bind TCP listener to {addr}");
        socket
            .set_reuse_address(true)
            .map_err(|e| self.error(op(), e))?;
        socket.bind(&addr.into()).map_err(|e| self.error(op(), e))?;
        socket.listen(1024).map_err(|e| self.error(op(), e))?;
        Ok(socket.into())
    }

    /// A TCP connection to `addr` from inside the namespace. Blocks until it is
    /// established, on the caller's thread, outside the namespace.
    pub fn tcp_connect(&self, addr: SocketAddr) -> Result<TcpStream> {
        let socket = self.raw(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket
            .connect(&addr.into())
            .map_err(|e| self.error(format!("connect to {addr}"), e))?;
        Ok(socket.into())
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn udp_socket(&self, addr: SocketAddr) -> Result<UdpSocket> {
        let socket = self.raw(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket
            .bind(&addr.into())
            .map_err(|e| self.error(format!("bind UDP socket to {addr}"), e))?;
        Ok(socket.into())
    }

    fn error(&self, op: String, source: io::Error) -> NsError {
        NsError::Socket {
            path: self.ns.path().to_owned(),
            op,
            source,
        }
    }
}
