//! `SO_ORIGINAL_DST` as a sidecar asks it, with raw getsockopt: the test must
//! not take the data path's word through our own code.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

const SO_ORIGINAL_DST: libc::c_int = 80;

/// The original destination of an accepted, redirected connection (IPv4 or
/// IPv6 by the socket's own family), as netfilter or our getsockopt hook answer.
pub fn original_dst(conn: &impl AsFd) -> io::Result<SocketAddr> {
    let fd = conn.as_fd().as_raw_fd();
    let local = socket2::SockRef::from(conn).local_addr()?;
    if local.is_ipv4() {
        // SAFETY: sockaddr_in is plain old data; all-zero is valid.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&sin)).unwrap_or(16);
        // SAFETY: `sin` and `len` describe a writable buffer of `len` bytes.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&raw mut sin).cast(),
                &raw mut len,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        Ok(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
    } else {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is valid.
        let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&sin6)).unwrap_or(28);
        // SAFETY: as above, for sockaddr_in6.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                (&raw mut sin6).cast(),
                &raw mut len,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        Ok(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), 0, 0).into())
    }
}
