//! Hostile and probing roles: apps that bind their source port, a sidecar
//! that only reports what `SO_ORIGINAL_DST` says, sockets whose SYN the test
//! controls.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};

use anyhow::Context;
use netns_core::original_dst;

use crate::say;

pub(crate) fn hold(connect: SocketAddr, bind_port: u16) -> anyhow::Result<()> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(connect),
        socket2::Type::STREAM,
        None,
    )?;
    let local: SocketAddr = if connect.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, bind_port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, bind_port).into()
    };
    socket.set_reuse_address(true)?;
    socket
        .bind(&local.into())
        .with_context(|| format!("bind {local}"))?;
    socket
        .connect(&connect.into())
        .with_context(|| format!("connect {connect}"))?;
    let mut stream: TcpStream = socket.into();
    say(&format!(
        "connected local={} peer={}",
        stream.local_addr()?,
        stream.peer_addr()?
    ));
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(())
}

pub(crate) fn probe(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("probe on {listen}"))?;
    say("ready");
    for line in std::io::stdin().lines() {
        line?;
        let (conn, peer) = listener.accept()?;
        say(&format!(
            "accepted peer={peer} local={} {}",
            conn.local_addr()?,
            orig_answer(&conn)
        ));
    }
    Ok(())
}

/// What `SO_ORIGINAL_DST` says about `conn`: `orig=ADDR` or `orig_error=ERRNO`.
pub(crate) fn orig_answer(conn: &TcpStream) -> String {
    match original_dst(conn) {
        Ok(orig) => format!("orig={orig}"),
        Err(e) => format!("orig_error={}", e.raw_os_error().unwrap_or(0)),
    }
}

pub(crate) fn forge(connect: SocketAddr, mark: Option<u32>) -> anyhow::Result<()> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(connect),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    say(&format!("cookie={}", socket_cookie(&socket)?));
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    socket
        .connect(&connect.into())
        .with_context(|| format!("connect {connect}"))?;
    say("connected");
    let mut stream: TcpStream = socket.into();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(())
}

/// `SO_COOKIE`: the kernel's 64-bit id of a socket.
fn socket_cookie(socket: &socket2::Socket) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let mut cookie = 0u64;
    let mut len: libc::socklen_t = 8;
    // SAFETY: `cookie` is a live u64 and `len` says so; the kernel writes at
    // most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
