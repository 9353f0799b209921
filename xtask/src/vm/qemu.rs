//! Booting one guest under QEMU and collecting its serial console.
//!
//! `-accel tcg` explicitly: this machine's /dev/kvm is a PVM hypervisor on which
//! stock kernels crash or crawl, and QEMU then hangs rather than exits. The
//! console is the only channel back (no isa-debug-exit: /dev/port is missing
//! in these kernels); `panic=-1` with `-no-reboot` turns a panic into an exit,
//! and a guest that outlives `timeout` is killed.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::kernels::Kernel;

const CMDLINE: &str = "console=ttyS0 panic=-1 oops=panic quiet rdinit=/init";
/// After the guest says it is done, how long powering off may take.
const POWEROFF_GRACE: Duration = Duration::from_secs(20);

/// How a guest run ended.
#[derive(Debug)]
pub(crate) enum End {
    /// QEMU exited (the guest powered off, or rebooted on a panic).
    Exited(ExitStatus),
    /// Killed after the timeout.
    TimedOut,
}

/// A finished guest run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) lines: Vec<String>,
    pub(crate) end: End,
    pub(crate) elapsed: Duration,
    /// What QEMU itself printed on stderr.
    pub(crate) qemu_stderr: String,
}

/// Boots `kernel` with `initramfs`, writing the console to `log` and handing each
/// line to `on_line`, which returns true once the guest has reported everything.
pub(crate) fn boot(
    mut qemu: Command,
    kernel: &Kernel,
    initramfs: &Path,
    log: &Path,
    timeout: Duration,
    mut on_line: impl FnMut(&str) -> bool,
) -> anyhow::Result<Run> {
    let stderr_path = log.with_extension("qemu-stderr");
    let stderr =
        File::create(&stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
    let mut console = File::create(log).with_context(|| format!("create {}", log.display()))?;
    // Both vCPUs on one host thread (round-robin TCG) unless
    // NETNS_VM_TCG_THREAD=multi. Multi-threaded TCG is 1.3-1.4x as fast but
    // does not keep the kernel's own code patching (static branches, switched
    // whenever the first or last BPF program of a kind is attached or
    // detached) coherent across vCPUs: under it a 6.12 guest has died of a
    // stale `int3` in `tcp_connect` and of a jump into the middle of a patched
    // `jmp` in `__inet_stream_connect`, and a 6.1 guest hung in a soft lockup,
    // each mid-suite and in a different test. One thread makes that class of
    // fault impossible; the suite's time is the price.
    let accel = match std::env::var("NETNS_VM_TCG_THREAD").as_deref() {
        Ok("multi") => "tcg,thread=multi",
        _ => "tcg,thread=single",
    };
    qemu.args(["-accel", accel, "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nodefaults", "-no-reboot", "-display", "none"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let shown = format!("{qemu:?}");
    let start = Instant::now();
    let mut child = qemu
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match stdout.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    console.write_all(&raw).ok();
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut deadline = start + timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if on_line(&line) {
                    deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                }
                lines.push(line);
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                child.kill().ok();
                break;
            }
        }
    }
    let status = child.wait().with_context(|| format!("wait for {shown}"))?;
    let elapsed = start.elapsed();
    reader.join().ok();
    // Lines that arrived between the timeout and the kill.
    lines.extend(rx.try_iter());
    let qemu_stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    Ok(Run {
        lines,
        end: if timed_out {
            End::TimedOut
        } else {
            End::Exited(status)
        },
        elapsed,
        qemu_stderr,
    })
}
