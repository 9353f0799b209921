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

//!
//! The roles live by purpose: `mesh` (the processes of an ordinary mesh
//! test: sidecar, service, clients), `isolation` (hostile and probing roles
//! for the isolation and sidecar-shape tests), `bench` (the data path
//! benchmark's servers and clients).

mod bench;
mod isolation;
mod mesh;

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use bench::{bulk, connrate, drain_conn, echo_conn, rr, serve_workers, sockopt_loop};
use isolation::{forge, hold, orig_answer, probe};
use mesh::{Dial, QUIET, churn, client, serve, sidecar, sink, udp_echo, udp_query};

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
    /// Benchmark clients (rr, connrate, bulk): also report the CPU time all
    /// processes under this cgroup v2 directory spent in the timed part.
    #[arg(long)]
    cpu_meter: Option<PathBuf>,
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
        /// Forward to this address instead of asking SO_ORIGINAL_DST (the
        /// benchmark's sidecar-only limit: the destination known by configuration).
        #[arg(long)]
        upstream: Option<SocketAddr>,
        /// Dial from this source address (Istio's inbound leg binds 127.0.0.6).
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// Dial the original destination's port on loopback instead of its
        /// address (the other way a sidecar reaches its app).
        #[arg(long)]
        to_loopback: bool,
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
    /// the peer closes. With `--ask-peer`: for each line on stdin, print
    /// `peer now=..` (getpeername again), and keep the socket until stdin closes.
    Hold {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        bind_port: u16,
        #[arg(long)]
        ask_peer: bool,
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
    /// A socket whose SYN the test controls: make it (with `--mark`), file
    /// `--claim` in its own `DIALED_DST` storage (where connect files a
    /// redirected socket's destination), print `filed`, wait for a line on
    /// stdin, connect, print `connected`, read until the peer closes.
    Forge {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        mark: Option<u32>,
        /// The destination to claim (IPv4).
        #[arg(long)]
        claim: SocketAddr,
        /// The pinned `DIALED_DST` map to file the claim in.
        #[arg(long)]
        dialed_map: PathBuf,
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
    let meter = cli
        .cpu_meter
        .as_deref()
        .map(bench::CpuMeter::new)
        .transpose()?;
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
            upstream,
            bind,
            to_loopback,
        } => {
            QUIET.store(quiet, Ordering::Relaxed);
            let dial = Dial {
                mark,
                upstream,
                bind,
                to_loopback,
            };
            sidecar(&listen, dial)
        }
        Role::Serve { listen } => serve(listen),
        Role::Client {
            connect,
            size,
            count,
            hold_ms,
            mark,
        } => client(connect, size, count, hold_ms, mark),
        Role::Hold {
            connect,
            bind_port,
            ask_peer,
        } => hold(connect, bind_port, ask_peer),
        Role::Probe { listen } => probe(listen),
        Role::Ask { connect } => {
            let stream =
                TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
            say(&format!("asked {}", orig_answer(&stream)));
            Ok(())
        }
        Role::SockoptLoop { iters } => sockopt_loop(iters),
        Role::Forge {
            connect,
            mark,
            claim,
            dialed_map,
        } => forge(connect, mark, claim, &dialed_map),
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
        } => rr(connect, count, size, warmup, meter.as_ref()),
        Role::Connrate {
            connect,
            count,
            warmup,
        } => connrate(connect, count, warmup, meter.as_ref()),
        Role::Bulk { connect, mib } => bulk(connect, mib, meter.as_ref()),
        Role::Exec { command } => {
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(&command[0]).args(&command[1..]),
            );
            bail!("exec {command:?}: {err}")
        }
    }
}

/// Prints one event line and flushes it (the test reads lines as they come).
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Deterministic bytes that make reordering or corruption visible.
pub(crate) fn pattern(size: usize) -> Vec<u8> {
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

pub(crate) struct Fnv(pub(crate) u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}
