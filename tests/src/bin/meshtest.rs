//! meshtest: the processes of a mesh test, started by the kernel tests.
//!
//! Every role first joins a cgroup (so the data path sees its sockets), enters
//! a network namespace, and optionally becomes another user (the sidecar uid),
//! in that order, before it opens any socket:
//!
//! ```text
//! meshtest [--cgroup DIR] [--netns PATH] [--uid UID] sidecar|serve|client|exec ...
//! meshtest ... echo|drain|rr|connrate|bulk ...      (the data path benchmark)
//! ```
//!
//! Output is one `key=value ...` line per event on stdout, for the test to parse.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use netns_core::original_dst;

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
        /// Report only the first accepted connection (benchmarks: a line per
        /// connection costs a pipe write and a wakeup of the reader).
        #[arg(long)]
        quiet: bool,
    },
    /// A server: for each connection, read until EOF, then answer with the
    /// byte count (8 bytes, big endian) and an FNV-1a hash of the bytes (8 bytes).
    /// Prints `eof bytes=N fin_gap_ms=T`: how long the FIN trailed the last data.
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
    /// Connect from a fixed source port (bound before connecting, as a
    /// hostile app can), print `connected local=.. peer=..`, then read until
    /// the peer closes.
    Hold {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        bind_port: u16,
    },
    /// A sidecar that only answers questions: for each line on stdin, accept
    /// one connection, print what `SO_ORIGINAL_DST` says about it
    /// (`accepted peer=.. local=.. orig=..` or `.. orig_error=..`), close it.
    Probe {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Connect to `connect` and ask `SO_ORIGINAL_DST` on the app's own
    /// socket: `asked orig=..` or `asked orig_error=..`.
    Ask {
        #[arg(long)]
        connect: SocketAddr,
    },
    /// Benchmark: `iters` calls of `getsockopt(SO_RCVBUF)` on a TCP socket,
    /// a call the data path's getsockopt program sees and must pass through;
    /// prints the mean cost per call.
    SockoptLoop {
        #[arg(long, default_value_t = 200_000)]
        iters: u32,
    },
    /// A socket whose SYN the test controls: make it (with `--mark`), print
    /// `cookie=N` (`SO_COOKIE`, the key the data path files a socket's original
    /// destination under), wait for a line on stdin, connect, print
    /// `connected`, read until the peer closes.
    Forge {
        #[arg(long)]
        connect: SocketAddr,
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
    /// Send one datagram to `server` and print the reply and whom it came from:
    /// with `sendto` (unconnected), or after `connect` (then `getpeername`).
    UdpQuery {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        payload: String,
        #[arg(long)]
        connected: bool,
    },
    /// Benchmark echo server: `workers` threads accept in turn and send back
    /// whatever a connection sends until it closes (keep-alive, `TCP_NODELAY`).
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 8)]
        workers: usize,
    },
    /// Benchmark bulk sink: read until EOF, answer the byte count (8 bytes,
    /// big endian). No hashing, unlike `serve`: it measures the path, not FNV.
    Drain {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 8)]
        workers: usize,
    },
    /// Request/response latency: one connection (`TCP_NODELAY`), `count`
    /// round trips of `size` bytes to an `echo` server after `warmup` ones;
    /// prints per-request percentiles measured in this process.
    Rr {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: u32,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 200)]
        warmup: u32,
    },
    /// Connection rate: `count` times connect, send 1 byte, read the echo,
    /// close (after `warmup` untimed ones); prints connections per second.
    Connrate {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 1_000)]
        count: u32,
        #[arg(long, default_value_t = 20)]
        warmup: u32,
    },
    /// Bulk throughput: send `mib` MiB to a `drain` server, shut down
    /// writing, wait for its byte count; prints MB/s (10^6 bytes).
    Bulk {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 256)]
        mib: u32,
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
        Role::Sidecar {
            listen,
            mark,
            quiet,
        } => {
            QUIET.store(quiet, Ordering::Relaxed);
            sidecar(&listen, mark)
        }
        Role::Serve { listen } => serve(listen),
        Role::Client {
            connect,
            size,
            count,
            hold_ms,
            mark,
        } => client(connect, size, count, hold_ms, mark),
        Role::Hold { connect, bind_port } => hold(connect, bind_port),
        Role::Probe { listen } => probe(listen),
        Role::Ask { connect } => {
            let stream =
                TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
            say(&format!("asked {}", orig_answer(&stream)));
            Ok(())
        }
        Role::SockoptLoop { iters } => sockopt_loop(iters),
        Role::Forge { connect, mark } => forge(connect, mark),
        Role::Sink { listen } => sink(listen),
        Role::Churn { connect, count } => churn(connect, count),
        Role::UdpEcho { listen } => udp_echo(listen),
        Role::UdpQuery {
            server,
            payload,
            connected,
        } => udp_query(server, &payload, connected),
        Role::Echo { listen, workers } => serve_workers(listen, workers, echo_conn),
        Role::Drain { listen, workers } => serve_workers(listen, workers, drain_conn),
        Role::Rr {
            connect,
            count,
            size,
            warmup,
        } => rr(connect, count, size, warmup),
        Role::Connrate {
            connect,
            count,
            warmup,
        } => connrate(connect, count, warmup),
        Role::Bulk { connect, mib } => bulk(connect, mib),
        Role::Exec { command } => {
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(&command[0]).args(&command[1..]),
            );
            bail!("exec {command:?}: {err}")
        }
    }
}

/// `sidecar --quiet`: report the first accepted connection only.
static QUIET: AtomicBool = AtomicBool::new(false);
static REPORTED_ONE: AtomicBool = AtomicBool::new(false);

/// Bytes the sidecar relay moves per read, each way.
const RELAY_BUFFER: usize = 64 * 1024;

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
    if !QUIET.load(Ordering::Relaxed) || !REPORTED_ONE.swap(true, Ordering::Relaxed) {
        say(&format!("accepted peer={peer} local={local} orig={orig}"));
    }
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
    // 64 KiB relay buffers, as a production proxy uses (tokio's default is
    // 8 KiB): the same for every capture path the benchmark compares.
    tokio::io::copy_bidirectional_with_sizes(&mut conn, &mut upstream, RELAY_BUFFER, RELAY_BUFFER)
        .await?;
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

fn hold(connect: SocketAddr, bind_port: u16) -> anyhow::Result<()> {
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

fn probe(listen: SocketAddr) -> anyhow::Result<()> {
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
fn orig_answer(conn: &TcpStream) -> String {
    match original_dst(conn) {
        Ok(orig) => format!("orig={orig}"),
        Err(e) => format!("orig_error={}", e.raw_os_error().unwrap_or(0)),
    }
}

fn sockopt_loop(iters: u32) -> anyhow::Result<()> {
    anyhow::ensure!(iters > 0, "iters must be positive");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let mut sum = 0usize;
    let started = Instant::now();
    for _ in 0..iters {
        sum = sum.wrapping_add(socket.recv_buffer_size()?);
    }
    let ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(iters);
    say(&format!(
        "done ok={} iters={iters} ns_per_call={ns:.1}",
        sum > 0
    ));
    Ok(())
}

fn forge(connect: SocketAddr, mark: Option<u32>) -> anyhow::Result<()> {
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

fn udp_query(server: SocketAddr, payload: &str, connected: bool) -> anyhow::Result<()> {
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

// ---- The data path benchmark's roles (tests/benches/datapath.rs) ----

/// `workers` threads take turns accepting on one listener and run `handle` on
/// each connection: no thread is spawned per connection, so a connection's
/// cost is the path's, not the server's.
fn serve_workers(listen: SocketAddr, workers: usize, handle: fn(TcpStream)) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listen on {listen}"))?;
    let mut threads = Vec::new();
    for _ in 0..workers.max(1) {
        let listener = listener.try_clone()?;
        threads.push(std::thread::spawn(move || {
            loop {
                match listener.accept() {
                    Ok((conn, _)) => handle(conn),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        say(&format!("error what=accept:{e}"));
                        return;
                    }
                }
            }
        }));
    }
    say("ready");
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn echo_conn(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Resets and the like end this connection only.
            Err(_) => return,
        }
    }
}

fn drain_conn(mut conn: TcpStream) {
    let mut buf = vec![0; 1024 * 1024];
    let mut count = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => count += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = conn.write_all(&count.to_be_bytes());
}

/// The value at `per_mille` of `sorted` (nearest rank below).
fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn micros(elapsed: std::time::Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6
}

fn rr(connect: SocketAddr, count: u32, size: usize, warmup: u32) -> anyhow::Result<()> {
    anyhow::ensure!(count > 0 && size > 0, "count and size must be positive");
    let mut stream = TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
    stream.set_nodelay(true)?;
    let request = pattern(size);
    let mut response = vec![0u8; size];
    for _ in 0..warmup {
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
    }
    let mut took = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let started = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
        took.push(micros(started.elapsed()));
    }
    let ok = response == request;
    took.sort_by(f64::total_cmp);
    let mean = took.iter().sum::<f64>() / f64::from(count);
    say(&format!(
        "done ok={ok} count={count} size={size} p50_us={:.2} p90_us={:.2} p99_us={:.2} \
         mean_us={mean:.2} min_us={:.2} max_us={:.2}",
        percentile(&took, 500),
        percentile(&took, 900),
        percentile(&took, 990),
        took[0],
        took[took.len() - 1],
    ));
    Ok(())
}

fn connrate(connect: SocketAddr, count: u32, warmup: u32) -> anyhow::Result<()> {
    anyhow::ensure!(count > 0, "count must be positive");
    let one = |byte: &mut [u8; 1]| -> anyhow::Result<()> {
        let mut stream =
            TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
        stream.write_all(b"x")?;
        stream.read_exact(byte)?;
        Ok(())
    };
    let mut byte = [0u8; 1];
    for _ in 0..warmup {
        one(&mut byte)?;
    }
    let mut took = Vec::with_capacity(count as usize);
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        one(&mut byte)?;
        took.push(micros(t.elapsed()));
    }
    let per_s = f64::from(count) / started.elapsed().as_secs_f64();
    took.sort_by(f64::total_cmp);
    say(&format!(
        "done ok={} count={count} conns_per_s={per_s:.1} p50_us={:.2} p99_us={:.2}",
        byte == *b"x",
        percentile(&took, 500),
        percentile(&took, 990),
    ));
    Ok(())
}

fn bulk(connect: SocketAddr, mib: u32) -> anyhow::Result<()> {
    const CHUNK: usize = 256 * 1024;
    let chunk = pattern(CHUNK);
    let bytes = u64::from(mib) << 20;
    let started = Instant::now();
    let mut stream = TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
    for _ in 0..(bytes / CHUNK as u64) {
        stream.write_all(&chunk)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = [0u8; 8];
    stream.read_exact(&mut answer)?;
    let secs = started.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(answer);
    say(&format!(
        "done ok={} mib={mib} secs={secs:.3} mb_per_s={:.1}",
        got == bytes,
        f64::from(mib) * 1.048_576 / secs,
    ));
    Ok(())
}
