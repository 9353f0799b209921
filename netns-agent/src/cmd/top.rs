//! `netns-agent top`: one row per pod, refreshed each second, from the
//! same decision stream `monitor` reads (so it costs the data path nothing
//! once it quits, and only a ring buffer write per decision while it runs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use netns_agent::monitor::{DecisionLine, MonitorFilter, MonitorLine};
use netns_agent::protocol::parse_reply;

use crate::cli::TopArgs;

/// What one pod did in a window.
#[derive(Debug, Default, Clone)]
struct Window {
    captured: u64,
    /// Outbound connections left alone or refused, by verdict.
    not_captured: BTreeMap<String, u64>,
    received: u64,
    answered: u64,
    asked: u64,
    inbound_captured: u64,
    inbound_refused: u64,
}

impl Window {
    fn count(&mut self, d: &DecisionLine) {
        match d.verdict.as_str() {
            "captured" | "to_local_pod" => self.captured += 1,
            "original_dst_received" => self.received += 1,
            "answered" => {
                self.answered += 1;
                self.asked += 1;
            }
            "not_answered" => self.asked += 1,
            "inbound_captured" => self.inbound_captured += 1,
            "inbound_refused" => self.inbound_refused += 1,
            "inbound_pass_port" | "inbound_loop_guard" | "sidecar_uid" => {}
            other if d.hook == "outbound" || d.hook == "dns" => {
                *self.not_captured.entry(other.to_owned()).or_default() += 1;
            }
            _ => {}
        }
    }

    fn not_captured_total(&self) -> u64 {
        self.not_captured.values().sum()
    }

    /// `reason N, reason M`, most first.
    fn reasons(&self) -> String {
        let mut by: Vec<(&String, &u64)> = self.not_captured.iter().collect();
        by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        by.iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The screen: per pod, the last second's counts and totals.
#[derive(Debug, Default)]
struct Screen {
    last: BTreeMap<String, Window>,
    now: BTreeMap<String, Window>,
    total: BTreeMap<String, Window>,
    lost: u64,
    dropped: u64,
    pods: usize,
}

impl Screen {
    fn take(&mut self, line: MonitorLine) {
        match line {
            MonitorLine::Subscribed { pods } => self.pods = pods,
            MonitorLine::Lost { count } => self.lost = count,
            MonitorLine::Dropped { count } => self.dropped = count,
            MonitorLine::Decision(d) => {
                self.now.entry(d.pod.clone()).or_default().count(&d);
                self.total.entry(d.pod.clone()).or_default().count(&d);
            }
        }
    }

    fn tick(&mut self) {
        self.last = std::mem::take(&mut self.now);
    }

    fn render(&self, agent: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "netns-agent top: {agent}   {} pods meshed at start   lost {}   dropped {}   (q or Ctrl-C quits)",
            self.pods, self.lost, self.dropped
        );
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>14} {:>16} {:>12} {:>12}  WHY NOT CAPTURED (total)",
            "POD", "CAPTURED/s", "UNCAPTURED/s", "ANSWERED/ASKED/s", "INBOUND/s", "REFUSED/s",
        );
        for (pod, total) in &self.total {
            let w = self.last.get(pod).cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<20} {:>10} {:>14} {:>16} {:>12} {:>12}  {}",
                truncate(pod, 20),
                w.captured,
                w.not_captured_total(),
                format!("{}/{}", w.answered, w.asked),
                w.inbound_captured,
                w.inbound_refused,
                total.reasons()
            );
        }
        if self.total.is_empty() {
            let _ = writeln!(out, "(no decisions yet)");
        }
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(['~']).collect()
    }
}

/// `netns-agent top`.
pub(crate) fn top(args: &TopArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: &TopArgs) -> anyhow::Result<()> {
    let path = &args.control_socket;
    let filter = MonitorFilter {
        pod: args.pod.clone(),
        verdicts: Vec::new(),
    };
    let mut lines = netns_agent::control::open_monitor(path, filter).await?;
    let first = lines
        .next_line()
        .await
        .context("read from the agent")?
        .context("the agent closed the connection without answering")?;
    let mut screen = Screen::default();
    screen.take(parse_reply(&first)?);
    let quit = std::sync::Arc::new(tokio::sync::Notify::new());
    {
        let quit = std::sync::Arc::clone(&quit);
        // A thread of its own, never joined: a blocked read of the
        // terminal must not hold the exit. Without a terminal (stdin
        // closed) only Ctrl-C or the agent's stop ends it.
        std::thread::spawn(move || {
            for key in std::io::stdin().lines().map_while(Result::ok) {
                if key.trim() == "q" {
                    quit.notify_one();
                    return;
                }
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let started = Instant::now();
    let agent = path.display().to_string();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line.context("read from the agent")? else {
                    println!("netns-agent top: the agent stopped");
                    return Ok(());
                };
                if let Ok(parsed) = parse_reply::<MonitorLine>(&line) {
                    screen.take(parsed);
                }
            }
            () = quit.notified() => return Ok(()),
            _ = tick.tick() => {
                if started.elapsed() >= Duration::from_millis(900) {
                    screen.tick();
                }
                let mut stdout = std::io::stdout().lock();
                // Home, clear, then the table.
                let text = format!("\x1b[H\x1b[2J{}", screen.render(&agent));
                if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                    return Ok(());
                }
                if args.once {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(pod: &str, hook: &str, verdict: &str) -> MonitorLine {
        MonitorLine::Decision(DecisionLine {
            pod: pod.into(),
            netns_cookie: 1,
            hook: hook.into(),
            verdict: verdict.into(),
            destination: "198.18.96.10:80".into(),
            socket_cookie: 0,
            detail: String::new(),
        })
    }

    #[test]
    fn a_row_per_pod_with_its_last_second_and_reasons() {
        let mut s = Screen::default();
        s.take(MonitorLine::Subscribed { pods: 2 });
        for _ in 0..3 {
            s.take(decision("pod-a", "outbound", "captured"));
            s.take(decision("pod-a", "sidecar", "answered"));
        }
        s.take(decision("pod-a", "outbound", "sidecar_not_listening"));
        s.take(decision("pod-b", "inbound", "inbound_refused"));
        s.take(MonitorLine::Lost { count: 4 });
        s.tick();
        let text = s.render("/run/netns-agent/agent.sock");
        assert!(text.contains("lost 4"), "{text}");
        let row = |pod: &str| {
            text.lines()
                .find(|l| l.starts_with(pod))
                .unwrap_or_else(|| panic!("no row for {pod}: {text}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("pod-a")[..6],
            ["pod-a", "3", "1", "3/3", "0", "0"],
            "{text}"
        );
        assert!(text.contains("sidecar_not_listening 1"), "{text}");
        assert_eq!(row("pod-b")[..6], ["pod-b", "0", "0", "0/0", "0", "1"]);
        // The next second, nothing happened: rates go to 0, totals stay.
        s.tick();
        let text = s.render("x");
        assert!(text.contains("sidecar_not_listening 1"), "{text}");
    }
}
