//! `netns-agent cleanup`.

use anyhow::Context;

use super::print_all;
use crate::cli::CleanupArgs;

/// `netns-agent cleanup`.
pub(crate) fn cleanup(args: &CleanupArgs) -> anyhow::Result<()> {
    let done = netns_datapath::cleanup(&args.bpffs)
        .with_context(|| format!("clean up {}", args.bpffs.display()))?;
    let mut out = String::new();
    if done.is_empty() {
        out = format!("nothing to clean up under {}\n", args.bpffs.display());
    }
    for line in done {
        out.push_str(&line);
        out.push('\n');
    }
    print_all(&out)
}
