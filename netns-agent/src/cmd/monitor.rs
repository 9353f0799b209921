//! `netns-agent monitor`.

use std::io::Write as _;

use anyhow::Context;
use netns_agent::monitor::{MonitorFilter, MonitorLine};
use netns_agent::protocol::parse_reply;

use crate::cli::MonitorArgs;

/// `netns-agent monitor`: prints the agent's decision lines until the
/// agent ends the stream (it stopped) or stdout goes away.
pub(crate) fn monitor(args: &MonitorArgs) -> anyhow::Result<()> {
    let filter = MonitorFilter {
        pod: args.pod.clone(),
        verdicts: args.verdicts.clone(),
    };
    filter.check().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(stream(args, filter))
}

async fn stream(args: &MonitorArgs, filter: MonitorFilter) -> anyhow::Result<()> {
    let mut lines = netns_agent::control::open_monitor(&args.control_socket, filter).await?;
    let mut first = true;
    while let Some(line) = lines.next_line().await.context("read from the agent")? {
        let parsed: MonitorLine = match parse_reply(&line) {
            Ok(parsed) => parsed,
            // The agent refused (an unknown verdict, too many monitors).
            Err(e) if first => return Err(e.into()),
            Err(e) => {
                eprintln!("netns-agent monitor: {e}");
                continue;
            }
        };
        first = false;
        let text = if args.json {
            line
        } else {
            match parsed {
                MonitorLine::Subscribed { pods } => {
                    eprintln!(
                        "monitoring the data path's decisions ({pods} pods meshed); Ctrl-C stops"
                    );
                    continue;
                }
                MonitorLine::Decision(d) => d.human(),
                MonitorLine::Lost { count } => {
                    format!("-- {count} decisions lost so far: the kernel's ring buffer was full")
                }
                MonitorLine::Dropped { count } => {
                    format!("-- {count} decisions dropped so far: this monitor read too slowly")
                }
            }
        };
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away (`monitor | head`): done.
            return Ok(());
        }
    }
    if first {
        anyhow::bail!("the agent closed the connection without answering");
    }
    eprintln!("netns-agent monitor: the agent stopped");
    Ok(())
}
