//! meshtest: the processes of a mesh test, started by the kernel tests.
//!
//! Every role first joins a cgroup (so the data path sees its sockets), enters
//! a network namespace, and optionally becomes another user (the sidecar uid),
//! in that order, before it opens any socket:
//!
//! ```text
//! meshtest [--cgroup DIR] [--netns PATH] [--uid UID] sidecar|serve|client|exec ...
//! ```
//!
//! Output is one `key=value ...` line per event on stdout, for the test to parse.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use netns_agent::original_dst;

#[derive(Debug, Parser)]
struct Cli {
    /// cgroup v2 directory to join before anything else.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Network namespace to enter.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// User id to switch to after joining (drops root's capabilities).
    #[arg(long)]
    uid: Option<u32>,
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// A sidecar: accept on the outbound and inbound ports, ask
    /// SO_ORIGINAL_DST, dial it (with --mark, if given) and relay both ways
    /// with a non-blocking event loop.
    Sidecar {
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// SO_MARK for the sidecar's onward connections.
        #[arg(long)]
        mark: Option<u32>,
    },
    /// A server: for each connection, read until EOF, then answer with the
    /// byte count (8 bytes, big endian) and an FNV-1a hash of the bytes (8 bytes).
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// A plain blocking client (`std::net`, no timeouts): connect, send `size`
    /// bytes, shut down writing, read the server's answer; `count` times.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 1)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Keep the connection open this long after writing, before shutdown.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// SO_MARK for the client's socket.
        #[arg(long)]
        mark: Option<u32>,
    },
    /// Accept connections and drop them at once.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Open and abort (RST, no `TIME_WAIT`) `count` connections, sending nothing.
    Churn {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    /// Answer every UDP datagram with the same bytes.
    UdpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Run a command (e.g. a Python client) as this process.
    Exec {
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(cgroup) = &cli.cgroup {
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("join cgroup {}", cgroup.display()))?;
    }
    if let Some(netns) = &cli.netns {
        // This process is single-threaded so far: the whole process moves.
        netns_core::NetNs::open(netns)?.set()?;
    }
    if let Some(uid) = cli.uid {
        let uid = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setgid(nix::unistd::Gid::from_raw(uid.as_raw())).context("setgid")?;
        nix::unistd::setuid(uid).context("setuid")?;
    }
    match cli.role {
        Role::Sidecar { listen, mark } => sidecar(&listen, mark),
        Role::Serve { listen } => serve(listen),
        Role::Client {
            connect,
            size,
            count,
            hold_ms,
            mark,
        } => client(connect, size, count, hold_ms, mark),
        Role::Sink { listen } => sink(listen),
        Role::Churn { connect, count } => churn(connect, count),
        Role::UdpEcho { listen } => udp_echo(listen),
        Role::Exec { command } => {
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(&command[0]).args(&command[1..]),
            );
            bail!("exec {command:?}: {err}")
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn sidecar(listen: &[SocketAddr], mark: Option<u32>) -> anyhow::Result<()> {
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
                        if let Err(e) = relay(conn, peer, local, mark).await {
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
    mark: Option<u32>,
) -> anyhow::Result<()> {
    let orig = original_dst(&conn).context("SO_ORIGINAL_DST")?;
    say(&format!("accepted peer={peer} local={local} orig={orig}"));
    let socket = match orig {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(mark) = mark {
        netns_core::set_mark(&socket, mark)?;
    }
    let mut upstream = socket
        .connect(orig)
        .await
        .with_context(|| format!("dial {orig}"))?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("serve on {listen}"))?;
    say("ready");
    for conn in listener.incoming() {
        let mut conn = conn?;
        std::thread::spawn(move || {
            let mut buf = vec![0; 256 * 1024];
            let (mut count, mut hash) = (0u64, Fnv::new());
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        count += n as u64;
                        hash.update(&buf[..n]);
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

fn client(
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

fn sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("sink on {listen}"))?;
    say("ready");
    for conn in listener.incoming() {
        drop(conn);
    }
    Ok(())
}

fn churn(connect: SocketAddr, count: usize) -> anyhow::Result<()> {
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

fn udp_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let socket = std::net::UdpSocket::bind(listen).with_context(|| format!("udp on {listen}"))?;
    say("ready");
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
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

/// Deterministic bytes that make reordering or corruption visible.
fn pattern(size: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}
