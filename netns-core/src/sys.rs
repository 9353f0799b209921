//! The crate's only unsafe code: the ioctls and socket options nix has no
//! safe wrapper for.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::Ioctl = 0xb703;
// The request type of ioctl(2) is `c_ulong` on glibc and `c_int` on musl.
#[allow(clippy::unnecessary_cast, clippy::cast_possible_truncation)]
const SIOCGIFFLAGS: libc::Ioctl = libc::SIOCGIFFLAGS as libc::Ioctl;
#[allow(clippy::unnecessary_cast, clippy::cast_possible_truncation)]
const SIOCSIFFLAGS: libc::Ioctl = libc::SIOCSIFFLAGS as libc::Ioctl;

/// The `CLONE_NEW*` type of the namespace behind `fd` (Linux 4.11+).
pub(crate) fn ns_get_nstype(fd: impl AsFd) -> io::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd's inode; a
    // non-nsfs fd makes the kernel return ENOTTY, never touch our memory.
    let ret = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), NS_GET_NSTYPE) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Sets `IFF_UP` on the interface named `ifname`, in the namespace of `sock`.
pub(crate) fn set_interface_up(sock: impl AsFd, ifname: &str) -> io::Result<()> {
    let mut req = ifreq_for(ifname)?;
    let fd = sock.as_fd().as_raw_fd();
    // SAFETY: `req` is a valid, initialised ifreq that outlives the call; SIOCGIFFLAGS
    // writes only its `ifru_flags` union member.
    if unsafe { libc::ioctl(fd, SIOCGIFFLAGS, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so `ifru_flags` is the initialised member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // IFF_UP is 0x1: it fits the 16-bit flags field.
    #[allow(clippy::cast_possible_truncation)]
    let up = libc::IFF_UP as libc::c_short;
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: as above; SIOCSIFFLAGS reads the name and flags from `req`.
    if unsafe { libc::ioctl(fd, SIOCSIFFLAGS, &raw const req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ifreq_for(ifname: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    Ok(req)
}

/// `SO_NETNS_COOKIE` from `<asm-generic/socket.h>` (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace `sock` belongs to.
pub(crate) fn netns_cookie(sock: impl AsFd) -> io::Result<u64> {
    getsockopt_value(&sock, libc::SOL_SOCKET, SO_NETNS_COOKIE)
}

/// Plain-old-data values the kernel writes through `getsockopt`.
pub(crate) trait SockoptValue: Copy {}
impl SockoptValue for u64 {}
impl SockoptValue for libc::sockaddr_in {}
impl SockoptValue for libc::sockaddr_in6 {}

/// `getsockopt(sock, level, name)` into a zeroed `T`.
pub(crate) fn getsockopt_value<T: SockoptValue>(
    sock: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    // SAFETY: `T` is a C struct of plain data (sealed by `SockoptValue`);
    // all-zero is a valid value of it.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<T>())
        .map_err(|_| io::Error::other("option value too large"))?;
    // SAFETY: `value` is a live, writable `T` of `len` bytes; the kernel
    // writes at most `len` bytes into it.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}
