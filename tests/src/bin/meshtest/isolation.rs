//! Hostile and probing roles: apps that bind their source port, a sidecar
//! that only reports what `SO_ORIGINAL_DST` says, sockets whose SYN the test
//! controls.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};

use anyhow::Context;
use netns_core::original_dst;

use crate::say;

pub(crate) fn hold(connect: SocketAddr, bind_port: u16, ask_peer: bool) -> anyhow::Result<()> {
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
    let questions = if ask_peer {
        let asked = stream.try_clone()?;
        Some(std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                if line.is_err() {
                    break;
                }
                match asked.peer_addr() {
                    Ok(peer) => say(&format!("peer now={peer}")),
                    Err(e) => say(&format!("peer error={e}")),
                }
            }
        }))
    } else {
        None
    };
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    if let Some(questions) = questions {
        let _ = questions.join();
    }
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

pub(crate) fn forge(
    connect: SocketAddr,
    mark: Option<u32>,
    claim: SocketAddr,
    dialed_map: &std::path::Path,
) -> anyhow::Result<()> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(connect),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    let std::net::IpAddr::V4(v4) = claim.ip() else {
        anyhow::bail!("IPv4 claims only: {claim}");
    };
    let orig = netns_ebpf::OriginalDst {
        addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        port: claim.port(),
        family: netns_ebpf::AF_INET,
    };
    // Where connect would have filed it: this socket's own storage.
    let data = aya::maps::MapData::from_pin(dialed_map)
        .with_context(|| format!("open {}", dialed_map.display()))?;
    let mut dialed: aya::maps::SkStorage<_, netns_ebpf::OriginalDst> =
        aya::maps::SkStorage::try_from(aya::maps::Map::SkStorage(data))?;
    dialed
        .insert(&socket, &orig, 0)
        .context("file the forged destination")?;
    say("filed");
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
