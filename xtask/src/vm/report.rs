//! Reading a guest's console back into results: the init script's marker lines
//! (`@@netns-vm@@ begin|end|skip|module|done ...`) and libtest's own lines
//! (`test NAME ... FAILED`, `test result: ok. N passed; M failed; K ignored`).

use std::fmt::Write as _;
use std::time::Duration;

use super::qemu::{End, Run};

pub(crate) const MARKER: &str = "@@netns-vm@@ ";
/// Console lines shown when a guest dies without reporting.
const TAIL: usize = 40;

/// One test executable's run in the guest.
#[derive(Debug, Default)]
pub(crate) struct Binary {
    pub(crate) name: String,
    pub(crate) exit: Option<i32>,
    pub(crate) passed: u32,
    pub(crate) failed: u32,
    pub(crate) ignored: u32,
    /// libtest printed its `test result:` line.
    pub(crate) summarized: bool,
    pub(crate) failures: Vec<String>,
    pub(crate) output: Vec<String>,
}

impl Binary {
    pub(crate) fn ok(&self) -> bool {
        self.exit == Some(0) && self.failed == 0
    }
}

/// A test that reported it cannot run in a VM.
#[derive(Debug)]
pub(crate) struct Skip {
    pub(crate) binary: String,
    pub(crate) test: String,
    pub(crate) reason: String,
}

/// Everything one guest reported.
#[derive(Debug, Default)]
pub(crate) struct Guest {
    pub(crate) release: Option<String>,
    pub(crate) binaries: Vec<Binary>,
    pub(crate) skips: Vec<Skip>,
    pub(crate) modules_failed: Vec<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) done: bool,
    /// The binary that started and has not ended.
    pub(crate) running: Option<Binary>,
}

/// A step of the guest's progress, as one console line reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The init script started: the kernel is up.
    Up,
    /// A test binary ended (the last of `binaries`).
    Ended,
    /// Everything ran; the guest powers off.
    Done,
}

/// What a kernel's run amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Ok,
    Failed,
    TimedOut,
    Panicked,
    /// The guest stopped without saying it was done, and without a panic message.
    Died,
}

impl Verdict {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMEOUT",
            Self::Panicked => "PANIC",
            Self::Died => "DIED",
        }
    }
}

impl Guest {
    /// Feeds one console line.
    pub(crate) fn line(&mut self, line: &str) -> Option<Event> {
        let Some(rest) = line.find(MARKER).map(|at| &line[at + MARKER.len()..]) else {
            if let Some(running) = &mut self.running {
                read_libtest(running, line);
                running.output.push(line.to_owned());
            }
            return None;
        };
        let mut words = rest.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("kernel"), Some(release), _) => {
                self.release = Some(release.to_owned());
                return Some(Event::Up);
            }
            (Some("module"), Some(name), Some(state)) if state != "ok" => {
                self.modules_failed.push(name.to_owned());
            }
            (Some("begin"), Some(name), None) => {
                self.running = Some(Binary {
                    name: name.to_owned(),
                    ..Binary::default()
                });
            }
            (Some("end"), Some(_), Some(code)) => {
                if let Some(mut binary) = self.running.take() {
                    binary.exit = code.trim().parse().ok();
                    self.binaries.push(binary);
                    return Some(Event::Ended);
                }
            }
            (Some("skip"), Some(binary), Some(entry)) => {
                let (test, reason) = entry.split_once('\t').unwrap_or((entry, "no reason given"));
                self.skips.push(Skip {
                    binary: binary.to_owned(),
                    test: test.trim().to_owned(),
                    reason: reason.trim().to_owned(),
                });
            }
            (Some("warning"), ..) => self.warnings.push(rest.to_owned()),
            (Some("done"), ..) => {
                self.done = true;
                return Some(Event::Done);
            }
            _ => {}
        }
        None
    }

    pub(crate) fn verdict(&self, run: &Run) -> Verdict {
        if !self.done {
            return if matches!(run.end, End::TimedOut) {
                Verdict::TimedOut
            } else if run.lines.iter().any(|l| l.contains("Kernel panic")) {
                Verdict::Panicked
            } else {
                Verdict::Died
            };
        }
        if self.modules_failed.is_empty() && self.binaries.iter().all(Binary::ok) {
            Verdict::Ok
        } else {
            Verdict::Failed
        }
    }

    /// Whether the kernel panicked before our init reported in: before any code
    /// of the project ran (an emulation fault, worth another boot).
    pub(crate) fn panicked_while_booting(&self, run: &Run) -> bool {
        self.release.is_none() && self.verdict(run) == Verdict::Panicked
    }

    pub(crate) fn passed(&self) -> u32 {
        let passed: u32 = self.binaries.iter().map(|b| b.passed).sum();
        passed.saturating_sub(u32::try_from(self.skips.len()).unwrap_or(u32::MAX))
    }

    /// Failed tests, counting a binary that died without a summary as one.
    pub(crate) fn failed(&self) -> u32 {
        self.binaries
            .iter()
            .map(|b| {
                if b.summarized || b.ok() {
                    b.failed
                } else {
                    b.failed.max(1)
                }
            })
            .sum()
    }

    /// What a developer needs to see about a bad run: the failing binaries'
    /// output, or the console's tail when the guest itself went wrong.
    pub(crate) fn explain(&self, verdict: Verdict, run: &Run, label: &str) -> String {
        let mut text = String::new();
        for name in &self.modules_failed {
            let _ = writeln!(text, "{label}: module {name} failed to load");
        }
        for binary in self.binaries.iter().filter(|b| !b.ok()) {
            let exit = binary
                .exit
                .map_or_else(|| "?".to_owned(), |c| c.to_string());
            let _ = writeln!(
                text,
                "{label}: {} failed (exit {exit}; failing tests: {})\n--- output of {} ---",
                binary.name,
                if binary.failures.is_empty() {
                    "none reported".to_owned()
                } else {
                    binary.failures.join(", ")
                },
                binary.name
            );
            for line in &binary.output {
                let _ = writeln!(text, "  {line}");
            }
        }
        if matches!(
            verdict,
            Verdict::TimedOut | Verdict::Panicked | Verdict::Died
        ) {
            let what = match verdict {
                Verdict::TimedOut => format!("did not finish in time after {:.0?}", run.elapsed),
                Verdict::Panicked => "kernel panic".to_owned(),
                _ => match run.end {
                    End::Exited(status) => {
                        format!("guest stopped without reporting (qemu {status})")
                    }
                    End::TimedOut => "killed".to_owned(),
                },
            };
            let running = self
                .running
                .as_ref()
                .map_or_else(String::new, |b| format!("; {} was running", b.name));
            let _ = writeln!(text, "{label}: {what}{running}; console tail:");
            if run
                .lines
                .iter()
                .any(|l| l.contains("Initramfs unpacking failed"))
            {
                let _ = writeln!(
                    text,
                    "{label}: the initramfs did not unpack: too large for the guest's memory?"
                );
            }
            for line in &run.lines[run.lines.len().saturating_sub(TAIL)..] {
                let _ = writeln!(text, "  {line}");
            }
            if !run.qemu_stderr.trim().is_empty() {
                let _ = writeln!(
                    text,
                    "{label}: qemu stderr:\n{}",
                    run.qemu_stderr.trim_end()
                );
            }
        }
        text
    }
}

/// Picks libtest's per-test failures and its summary line out of the output.
fn read_libtest(binary: &mut Binary, line: &str) {
    if let Some(name) = line
        .strip_prefix("test ")
        .and_then(|rest| rest.strip_suffix(" ... FAILED"))
    {
        binary.failures.push(name.to_owned());
    }
    if let Some(summary) = line.strip_prefix("test result: ") {
        binary.summarized = true;
        for part in summary.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u32>() else {
                continue;
            };
            match kind {
                "passed" => binary.passed += count,
                "failed" => binary.failed += count,
                "ignored" => binary.ignored += count,
                _ => {}
            }
        }
    }
}

/// Seconds, for the table.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Event, Guest};
    use crate::vm::qemu::{End, Run};

    fn panicked(lines: &[&str]) -> Run {
        Run {
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
            end: End::TimedOut,
            elapsed: Duration::ZERO,
            qemu_stderr: String::new(),
        }
    }

    #[test]
    fn a_panic_before_init_reports_is_a_boot_panic() {
        let boot = [
            "[    4.09] Oops: int3",
            "Kernel panic - not syncing: Fatal exception",
        ];
        let mut run = panicked(&boot);
        run.end = End::Exited(std::process::ExitStatus::default());
        let mut guest = Guest::default();
        for line in boot {
            guest.line(line);
        }
        assert!(guest.panicked_while_booting(&run));

        // Once our init has said which kernel it runs on, a panic is the suite's.
        let suite = [
            "@@netns-vm@@ kernel 6.12.117",
            "Kernel panic - not syncing: x",
        ];
        let mut run = panicked(&suite);
        run.end = End::Exited(std::process::ExitStatus::default());
        let mut guest = Guest::default();
        for line in suite {
            guest.line(line);
        }
        assert!(!guest.panicked_while_booting(&run));
    }

    #[test]
    fn reads_markers_and_libtest_lines() {
        let mut guest = Guest::default();
        let console = [
            "@@netns-vm@@ kernel 6.1.0-50-amd64",
            "@@netns-vm@@ module veth ok",
            "@@netns-vm@@ module cls_bpf failed",
            "@@netns-vm@@ begin root_a",
            "running 3 tests",
            "test x ... ok",
            "test y ... FAILED",
            "test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "@@netns-vm@@ skip root_a z\tneeds python3",
            "@@netns-vm@@ end root_a 101",
            "@@netns-vm@@ begin root_b",
            "@@netns-vm@@ end root_b 134",
        ];
        let events: Vec<_> = console.iter().filter_map(|l| guest.line(l)).collect();
        assert_eq!(events, [Event::Up, Event::Ended, Event::Ended]);
        assert_eq!(guest.line("@@netns-vm@@ done"), Some(Event::Done));
        assert_eq!(guest.release.as_deref(), Some("6.1.0-50-amd64"));
        assert_eq!(guest.modules_failed, ["cls_bpf"]);
        let a = &guest.binaries[0];
        assert_eq!(
            (a.passed, a.failed, a.ignored, a.exit),
            (1, 1, 1, Some(101))
        );
        assert_eq!(a.failures, ["y"]);
        assert_eq!(guest.skips[0].test, "z");
        assert_eq!(guest.skips[0].reason, "needs python3");
        // root_b died without a summary: counted as one failure.
        assert_eq!(guest.failed(), 2);
        assert_eq!(guest.passed(), 0);
    }
}
