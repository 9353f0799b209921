//! The data path benchmark's roles (tests/benches/datapath.rs): servers that
//! cost the same on every path, and clients that time themselves.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::{pattern, say};

/// `workers` threads take turns accepting on one listener and run `handle` on
/// each connection: no thread is spawned per connection, so a connection's
/// cost is the path's, not the server's.
pub(crate) fn serve_workers(
    listen: SocketAddr,
    workers: usize,
    handle: fn(TcpStream),
) -> anyhow::Result<()> {
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

pub(crate) fn echo_conn(mut conn: TcpStream) {
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

pub(crate) fn drain_conn(mut conn: TcpStream) {
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

/// The CPU time every process of a benchmark path spends, read from the
/// cgroup v2 directory that holds them all (`cpu.stat` `usage_usec`, which
/// counts descendants), plus the run time of the `ksoftirqd` threads of the
/// CPUs this process may run on: softirq work the kernel defers to them is
/// charged to them, not to the cgroup. Softirq work done on the way out of a
/// system call (a loopback packet's receive path, mostly) is charged to the
/// task that made the call when the kernel lacks
/// `CONFIG_IRQ_TIME_ACCOUNTING`, and to nobody's cgroup when it has it: the
/// harness reports which.
pub(crate) struct CpuMeter {
    stat: PathBuf,
    ksoftirqd: Vec<PathBuf>,
}

/// One reading of a [`CpuMeter`].
#[derive(Clone, Copy)]
pub(crate) struct CpuReading {
    cgroup_us: u64,
    ksoftirqd_ns: u64,
}

impl CpuMeter {
    pub(crate) fn new(cgroup: &Path) -> anyhow::Result<CpuMeter> {
        let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
        let mut ksoftirqd = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let Some(cpu) = comm.trim().strip_prefix("ksoftirqd/") else {
                continue;
            };
            if cpu
                .parse()
                .is_ok_and(|cpu| allowed.is_set(cpu).unwrap_or(false))
            {
                ksoftirqd.push(entry.path().join("schedstat"));
            }
        }
        let meter = CpuMeter {
            stat: cgroup.join("cpu.stat"),
            ksoftirqd,
        };
        meter.read()?;
        Ok(meter)
    }

    /// The counters now. The calling thread's own run time is brought up to
    /// date first (reading its CPU clock makes the scheduler account the time
    /// since it last ran the books, which it otherwise does only at a tick or
    /// a switch), so a reading taken by a busy thread is exact.
    pub(crate) fn read(&self) -> anyhow::Result<CpuReading> {
        let _ = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
        let stat = std::fs::read_to_string(&self.stat)
            .with_context(|| format!("read {}", self.stat.display()))?;
        let cgroup_us = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no usage_usec in {}", self.stat.display()))?;
        let mut ksoftirqd_ns = 0;
        for path in &self.ksoftirqd {
            // The first field of /proc/PID/schedstat: time on the CPU, in ns.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            ksoftirqd_ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(CpuReading {
            cgroup_us,
            ksoftirqd_ns,
        })
    }

    /// ` cpu_us=N ksoftirqd_us=M` since `start`, for a `done` line.
    pub(crate) fn since(&self, start: CpuReading) -> anyhow::Result<String> {
        let now = self.read()?;
        // Run times of one benchmark run: far below 2^52 ns.
        #[allow(clippy::cast_precision_loss)]
        Ok(format!(
            " cpu_us={} ksoftirqd_us={:.1}",
            now.cgroup_us.saturating_sub(start.cgroup_us),
            now.ksoftirqd_ns.saturating_sub(start.ksoftirqd_ns) as f64 / 1e3,
        ))
    }
}

/// Starts `meter`, if any.
fn meter_start(meter: Option<&CpuMeter>) -> anyhow::Result<Option<CpuReading>> {
    meter.map(CpuMeter::read).transpose()
}

/// What `meter` counted since `start`, or nothing without a meter.
fn meter_since(meter: Option<&CpuMeter>, start: Option<CpuReading>) -> anyhow::Result<String> {
    match (meter, start) {
        (Some(m), Some(s)) => m.since(s),
        _ => Ok(String::new()),
    }
}

/// The value at `per_mille` of `sorted` (nearest rank below).
fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn micros(elapsed: std::time::Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6
}

pub(crate) fn rr(
    connect: SocketAddr,
    count: u32,
    size: usize,
    warmup: u32,
    meter: Option<&CpuMeter>,
) -> anyhow::Result<()> {
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
    let cpu = meter_start(meter)?;
    for _ in 0..count {
        let started = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
        took.push(micros(started.elapsed()));
    }
    let cpu = meter_since(meter, cpu)?;
    let ok = response == request;
    took.sort_by(f64::total_cmp);
    let mean = took.iter().sum::<f64>() / f64::from(count);
    say(&format!(
        "done ok={ok} count={count} size={size} p50_us={:.2} p90_us={:.2} p99_us={:.2} \
         mean_us={mean:.2} min_us={:.2} max_us={:.2}{cpu}",
        percentile(&took, 500),
        percentile(&took, 900),
        percentile(&took, 990),
        took[0],
        took[took.len() - 1],
    ));
    Ok(())
}

pub(crate) fn connrate(
    connect: SocketAddr,
    count: u32,
    warmup: u32,
    meter: Option<&CpuMeter>,
) -> anyhow::Result<()> {
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
    let cpu = meter_start(meter)?;
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        one(&mut byte)?;
        took.push(micros(t.elapsed()));
    }
    let per_s = f64::from(count) / started.elapsed().as_secs_f64();
    let cpu = meter_since(meter, cpu)?;
    took.sort_by(f64::total_cmp);
    say(&format!(
        "done ok={} count={count} conns_per_s={per_s:.1} p50_us={:.2} p99_us={:.2}{cpu}",
        byte == *b"x",
        percentile(&took, 500),
        percentile(&took, 990),
    ));
    Ok(())
}

pub(crate) fn bulk(connect: SocketAddr, mib: u32, meter: Option<&CpuMeter>) -> anyhow::Result<()> {
    const CHUNK: usize = 256 * 1024;
    let chunk = pattern(CHUNK);
    let bytes = u64::from(mib) << 20;
    let cpu = meter_start(meter)?;
    let started = Instant::now();
    let mut stream = TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
    for _ in 0..(bytes / CHUNK as u64) {
        stream.write_all(&chunk)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = [0u8; 8];
    stream.read_exact(&mut answer)?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = meter_since(meter, cpu)?;
    let got = u64::from_be_bytes(answer);
    say(&format!(
        "done ok={} mib={mib} secs={secs:.3} mb_per_s={:.1}{cpu}",
        got == bytes,
        f64::from(mib) * 1.048_576 / secs,
    ));
    Ok(())
}

pub(crate) fn sockopt_loop(iters: u32) -> anyhow::Result<()> {
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
