//! `netns-agent exec`.

use std::path::PathBuf;

use anyhow::Context;
use netns_datapath::cgroup::cgroup2_mount;

use crate::cli::{ExecArgs, OWN_CGROUP};

/// `netns-agent exec`: join the captured cgroup first (a socket belongs to
/// the cgroup its creator was in), then the pod's network namespace, then
/// become the command.
pub(crate) fn exec(args: &ExecArgs) -> anyhow::Result<()> {
    let path = if args.pod.contains('/') {
        PathBuf::from(&args.pod)
    } else {
        args.netns_dir.join(&args.pod)
    };
    let ns = netns_agent::pod::open(&path)?;
    let cgroup = match &args.cgroup {
        Some(cgroup) => cgroup.clone(),
        None => cgroup2_mount()
            .context("find the cgroup v2 mount")?
            .join(OWN_CGROUP),
    };
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).with_context(
        || {
            format!(
                "join the captured cgroup {} (is the agent running?)",
                cgroup.display()
            )
        },
    )?;
    // Single-threaded here: the whole process moves.
    ns.set()
        .with_context(|| format!("enter {}", path.display()))?;
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&args.command[0]).args(&args.command[1..]),
    );
    Err(anyhow::anyhow!("exec {:?}: {err}", args.command))
}
