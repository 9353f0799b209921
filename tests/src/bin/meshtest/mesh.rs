//! The processes of an ordinary mesh test: the sidecar (a tokio relay that
//! asks `SO_ORIGINAL_DST` like Envoy), the service, blocking clients, and the
//! UDP roles of the DNS tests.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use netns_core::original_dst;

use crate::{Fnv, pattern, say};

/// `sidecar --quiet`: report the first accepted connection only.
pub(crate) static QUIET: AtomicBool = AtomicBool::new(false);
static REPORTED_ONE: AtomicBool = AtomicBool::new(false);

/// Bytes the sidecar relay moves per read, each way.
const RELAY_BUFFER: usize = 64 * 1024;

/// How the sidecar dials onward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dial {
    /// SO_MARK for its onward connections.
    pub(crate) mark: Option<u32>,
    /// A configured destination instead of SO_ORIGINAL_DST.
    pub(crate) upstream: Option<SocketAddr>,
    /// Source address to bind before connecting.
    pub(crate) bind: Option<std::net::IpAddr>,
    /// Dial the destination port on loopback.
    pub(crate) to_loopback: bool,
}

pub(crate) fn sidecar(listen: &[SocketAddr], dial: Dial) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut listeners = Vec::new();
        for addr in listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("sidecar listen on {addr}"))?;
            listeners.push(l);
        }
        say("ready");
        let mut tasks = tokio::task::JoinSet::new();
        for listener in listeners {
            tasks.spawn(async move {
                loop {
                    let (conn, peer) = listener.accept().await?;
                    let local = conn.local_addr()?;
                    tokio::spawn(async move {
                        if let Err(e) = relay(conn, peer, local, dial).await {
                            say(&format!("error peer={peer} local={local} what={e:#}"));
                        }
                    });
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    })
}

async fn relay(
    mut conn: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    dial: Dial,
) -> anyhow::Result<()> {
    let orig = match dial.upstream {
        Some(configured) => configured,
        None => original_dst(&conn).context("SO_ORIGINAL_DST")?,
    };
    if !QUIET.load(Ordering::Relaxed) || !REPORTED_ONE.swap(true, Ordering::Relaxed) {
        say(&format!("accepted peer={peer} local={local} orig={orig}"));
    }
    let to = if dial.to_loopback {
        let loopback = if orig.is_ipv4() || dial.bind.is_some_and(|b| b.is_ipv4()) {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(loopback, orig.port())
    } else {
        orig
    };
    let socket = match to {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(mark) = dial.mark {
        netns_core::set_mark(&socket, mark)?;
    }
    if let Some(source) = dial.bind {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("bind {source}"))?;
    }
    let mut upstream = socket
        .connect(to)
        .await
        .with_context(|| format!("dial {to}"))?;
    // 64 KiB relay buffers, as a production proxy uses (tokio's default is
    // 8 KiB): the same for every capture path the benchmark compares.
    tokio::io::copy_bidirectional_with_sizes(&mut conn, &mut upstream, RELAY_BUFFER, RELAY_BUFFER)
        .await?;
    Ok(())
}

pub(crate) fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("serve on {listen}"))?;
    say("ready");
    for conn in listener.incoming() {
        let mut conn = conn?;
        std::thread::spawn(move || {
            let mut buf = vec![0; 256 * 1024];
            let (mut count, mut hash) = (0u64, Fnv::new());
            let mut last_data = Instant::now();
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => {
                        // How long the FIN trailed the last data: a close stall shows here.
                        let gap = last_data.elapsed().as_secs_f64() * 1e3;
                        say(&format!("eof bytes={count} fin_gap_ms={gap:.1}"));
                        break;
                    }
                    Ok(n) => {
                        count += n as u64;
                        hash.update(&buf[..n]);
                        last_data = Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        say(&format!("error what=read:{e}"));
                        return;
                    }
                }
            }
            let mut answer = count.to_be_bytes().to_vec();
            answer.extend_from_slice(&hash.0.to_be_bytes());
            let _ = conn.write_all(&answer);
        });
    }
    Ok(())
}

pub(crate) fn client(
    connect: SocketAddr,
    size: usize,
    count: usize,
    hold_ms: u64,
    mark: Option<u32>,
) -> anyhow::Result<()> {
    let payload = pattern(size);
    let mut expected = Fnv::new();
    expected.update(&payload);
    for i in 0..count {
        let started = Instant::now();
        let mut stream = dial(connect, mark).with_context(|| format!("connect {connect}"))?;
        let peer = stream.peer_addr()?;
        stream.write_all(&payload)?;
        std::thread::sleep(std::time::Duration::from_millis(hold_ms));
        let shut = Instant::now();
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut answer = [0u8; 16];
        let outcome = match stream.read_exact(&mut answer) {
            Ok(()) => {
                let got = u64::from_be_bytes(answer[..8].try_into()?);
                let hash = u64::from_be_bytes(answer[8..].try_into()?);
                format!("ok={}", got == size as u64 && hash == expected.0)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => "ok=false eagain=1".into(),
            Err(e) => format!("ok=false error={}", e.kind()),
        };
        say(&format!(
            "done i={i} peer={peer} local={} {outcome} close_ms={:.1} total_ms={:.1}",
            stream.local_addr()?,
            shut.elapsed().as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3,
        ));
    }
    Ok(())
}

pub(crate) fn sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("sink on {listen}"))?;
    say("ready");
    for conn in listener.incoming() {
        drop(conn);
    }
    Ok(())
}

pub(crate) fn churn(connect: SocketAddr, count: usize) -> anyhow::Result<()> {
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut first_error = String::new();
    for _ in 0..count {
        match TcpStream::connect(connect) {
            Ok(stream) => {
                socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO))?;
                ok += 1;
            }
            Err(e) => {
                if failed == 0 {
                    first_error = e.to_string().replace(' ', "_");
                }
                failed += 1;
            }
        }
    }
    say(&format!(
        "done ok={ok} failed={failed} first_error={first_error}"
    ));
    Ok(())
}

pub(crate) fn udp_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let socket = std::net::UdpSocket::bind(listen).with_context(|| format!("udp on {listen}"))?;
    say("ready");
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
}

pub(crate) fn udp_query(server: SocketAddr, payload: &str, connected: bool) -> anyhow::Result<()> {
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let socket = std::net::UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut buf = [0u8; 2048];
    let (n, from) = if connected {
        socket.connect(server)?;
        socket.send(payload.as_bytes())?;
        let n = socket.recv(&mut buf)?;
        (n, socket.peer_addr()?)
    } else {
        socket.send_to(payload.as_bytes(), server)?;
        socket.recv_from(&mut buf)?
    };
    say(&format!(
        "reply={} from={from}",
        String::from_utf8_lossy(&buf[..n])
    ));
    Ok(())
}

fn dial(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.connect(&addr.into())?;
    Ok(socket.into())
}
