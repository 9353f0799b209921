//! `netns-agent run`: the process around the daemon (logs, descriptor
//! limits, the single-instance lock, the agent's own cgroup, the demo pod,
//! the tokio runtime).
//!
//! One of the agent's two places of unsafe code (`reserve_fd_table`: one
//! `fcntl(F_DUPFD_CLOEXEC)` at start, to grow the descriptor table while
//! the process has one thread, and taking ownership of the duplicate to
//! close it); the other is `sys.rs`.

use std::path::Path;

use anyhow::Context;
use netns_agent::instance::{InstanceLock, LOCK_DIR, Resource};
use netns_datapath::cgroup::cgroup2_mount;

use crate::cli::{LogFormat, OWN_CGROUP, RunArgs};

fn init_logs(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log-level {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// `netns-agent run`.
pub(crate) fn run(args: &RunArgs) -> anyhow::Result<()> {
    init_logs(args.log_format, &args.log_level)?;
    raise_fd_limit();
    reserve_fd_table();
    let v2 = cgroup2_mount().context("find the cgroup v2 mount")?;
    let (cgroup, own_cgroup) = match &args.cgroup {
        Some(path) => (path.clone(), false),
        None => (v2.join(OWN_CGROUP), true),
    };
    let _instance = lock_instance(args, &cgroup)?;
    if own_cgroup {
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("create the agent's cgroup {}", cgroup.display()))?;
    }
    if cgroup.canonicalize().ok() == v2.canonicalize().ok() && !args.allow_cgroup_root {
        anyhow::bail!(
            "--cgroup {} is the cgroup v2 root: that captures every process of this machine; \
             pass the pods' parent cgroup, or --allow-cgroup-root on a dedicated node",
            cgroup.display()
        );
    }
    let (config, source) = args.agent(&cgroup)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let demo = args
        .demo_pod
        .then(|| start_demo_pod(&args.netns_dir, &args.control_socket, &cgroup))
        .transpose()?;
    let result = runtime.block_on(netns_agent::daemon::run(config, source));
    if let Some((stop, thread)) = demo {
        drop(stop);
        let _ = thread.join();
    }
    if own_cgroup && !args.keep_state {
        remove_own_cgroup(&cgroup);
    }
    result
}

/// Before anything is touched: a second agent on the same pins, cgroup or
/// socket stops here, and the first one never notices.
fn lock_instance(args: &RunArgs, cgroup: &Path) -> anyhow::Result<InstanceLock> {
    InstanceLock::acquire(
        Path::new(LOCK_DIR),
        &[
            Resource {
                flag: "--bpffs",
                path: &args.bpffs,
            },
            Resource {
                flag: "--cgroup",
                path: cgroup,
            },
            Resource {
                flag: "--control-socket",
                path: &args.control_socket,
            },
        ],
    )
}

/// Each pod holds two descriptors (its namespace, its address watch): raise
/// the soft limit to the hard one, as a service manager's default soft limit
/// (1024) would stop the agent near 500 pods.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Descriptor slots made room for at start: two per pod, for thousands.
const FD_TABLE_SLOTS: i32 = 16_384;

/// Grows the descriptor table once, now, while the process has one thread.
/// The kernel grows it by doubling when a new descriptor does not fit, and in
/// a multi-threaded process each growth waits for an RCU grace period
/// (`expand_fdtable` in fs/file.c calls `synchronize_rcu`): measured here,
/// a pod that needed descriptor 256, 512 or 1024 waited 7-19 ms for its
/// socket. Costs 16,384 pointers (128 KiB). Skipped when the limit is lower.
fn reserve_fd_table() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let stdin = std::io::stdin();
    // SAFETY: F_DUPFD_CLOEXEC duplicates stdin to the lowest free slot at or
    // above the given one; the duplicate is owned and closed at once.
    let fd = unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FD_TABLE_SLOTS - 1) };
    if fd >= 0 {
        // SAFETY: fcntl returned a new descriptor we own.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// The demo pod, on a thread that starts its processes once the agent has
/// meshed it and takes it down when `stop` is dropped.
fn start_demo_pod(
    netns_dir: &Path,
    socket: &Path,
    cgroup: &Path,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let mut pod = crate::demo_pod::DemoPod::create(netns_dir)?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (socket, cgroup) = (socket.to_owned(), cgroup.to_owned());
    let thread = std::thread::spawn(move || {
        if let Err(e) = pod.play(&socket, &cgroup) {
            tracing::error!(error = %format!("{e:#}"), "demo pod");
        }
        let _ = stopped.recv();
        drop(pod);
    });
    Ok((stop, thread))
}

/// Removes the agent-owned cgroup if nothing lives in it any more.
fn remove_own_cgroup(cgroup: &Path) {
    if let Err(e) = std::fs::remove_dir(cgroup) {
        tracing::info!(cgroup = %cgroup.display(), error = %e, "agent cgroup left in place");
    }
}
