//! `netns-agent status`.

use super::print_all;
use crate::cli::StatusArgs;

/// `netns-agent status`.
pub(crate) fn status(args: &StatusArgs) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = String::new();
    match runtime.block_on(netns_agent::control::ask_status(&args.control_socket)) {
        Ok(status) => match (&args.pod, args.json) {
            (None, true) => writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?,
            (None, false) => out.push_str(&status.render()),
            (Some(pod), true) => {
                let pod = status.pod(pod).map_err(anyhow::Error::msg)?;
                writeln!(out, "{}", serde_json::to_string_pretty(pod)?)?;
            }
            (Some(pod), false) => {
                out.push_str(&status.render_pod(pod).map_err(anyhow::Error::msg)?);
            }
        },
        Err(e) => {
            let pins = netns_datapath::pins(&args.bpffs);
            if args.json {
                let report =
                    serde_json::json!({"running": false, "error": format!("{e:#}"), "pins": pins});
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                writeln!(out, "no agent running: {e:#}")?;
                if pins.is_empty() {
                    writeln!(out, "nothing pinned under {}", args.bpffs.display())?;
                } else {
                    writeln!(
                        out,
                        "pinned under {} (`netns-agent cleanup` removes them):",
                        args.bpffs.display()
                    )?;
                    for pin in &pins {
                        writeln!(out, "  {pin}")?;
                    }
                }
            }
        }
    }
    print_all(&out)
}
