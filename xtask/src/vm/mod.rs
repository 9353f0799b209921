//! `./x integration-test local|vm`: the kernel test suite (the `tests` crate) on
//! this machine's kernel, or on every kernel of `xtask/vm-kernels.txt`, each
//! booted under QEMU (TCG) with the suite in its initramfs.
//!
//! VM mode, step by step: unpack the suite's own QEMU ([`emulator`]); build the test executables statically
//! ([`testbins`]); fetch busybox and each kernel from Debian by package name
//! through private apt lists ([`debian`], [`kernels`]), into the cache
//! (`/var/cache/netns-vm`, or `NETNS_VM_CACHE`); write one initramfs per kernel
//! ([`initramfs`], [`cpio`]) under `target/vm/RELEASE/`; boot it ([`qemu`]); read
//! the console back ([`report`]); print a table. Console logs stay in
//! `target/vm/RELEASE/console.log`.
//!
//! What tests see in a guest: root, the mounts of a Linux host (cgroup v2 at
//! `/sys/fs/cgroup`, bpffs at `/sys/fs/bpf`), `lo` up, the modules of [`MODULES`]
//! loaded, busybox, the host's `ip`, `tc` and `bpftool` ([`hosttools`]), their
//! crate root as working directory, `NETNS_TEST_IN_VM=1`, `NETNS_*` and
//! `RUST_BACKTRACE` as on the host, the files of [`EXTRA_FILES`] and the
//! packages' programs (`CARGO_BIN_EXE_*`) at their host paths. A test that cannot run in a VM
//! (e.g. it needs python3, which the guests lack) appends `TEST<TAB>REASON` to the
//! file named by `NETNS_TEST_SKIP_FILE` and returns; the table counts it as
//! skipped and the reason is printed.

mod bzimage;
mod cpio;
mod debian;
mod elf;
mod emulator;
mod hosttools;
mod initramfs;
mod kernels;
mod modules;
mod qemu;
mod report;
mod testbins;
mod unpack;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{apt, cmd};
use report::{Event, Guest, Verdict, secs};

/// Kernel modules the guests load (with their dependencies) unless built in.
const MODULES: &[&str] = &[
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    // iptables-legacy inside captured pods (the getsockopt pass-through test).
    "iptable_filter",
    "ip6table_filter",
    "xt_tcpudp",
];
/// Files tests may need, relative to the workspace root, and the variable that
/// tells the tests where they are (set when the file exists, locally too).
const EXTRA_FILES: &[(&str, &str)] = &[("target/ebpf/netns-ebpf.o", "NETNS_EBPF_OBJECT")];
const KERNEL_LIST: &str = "xtask/vm-kernels.txt";
const DEFAULT_CACHE: &str = "/var/cache/netns-vm";
/// Boots of one kernel when each panics before the suite starts.
const BOOT_ATTEMPTS: usize = 3;
const SKIP_FILE: &str = "/run/netns-vm/skipped";
/// Host variables passed on to the guests, besides every `NETNS_*` one.
const PASSED_ON: &[&str] = &["RUST_BACKTRACE", "RUST_LOG"];

/// Where `./x integration-test` runs the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// On this machine's kernel (`cargo test -p netns-tests -p netns-datapath -p netns-agent`; needs root).
    Local,
    /// On each kernel of xtask/vm-kernels.txt, booted under QEMU.
    Vm,
}

/// Options of `./x integration-test`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to run the suite.
    #[arg(value_enum)]
    mode: Mode,
    /// vm: only this kernel: a suite (`bullseye`), a package, or a release or its
    /// start (`6.1` is 6.1.0-50-amd64, not 6.12.x) (repeatable).
    #[arg(long = "kernel", value_name = "MATCH")]
    kernels: Vec<String>,
    /// Only the test binary NAME (tests/tests/NAME.rs, netns-agent/tests/NAME.rs); `*` matches anything, as
    /// in `cargo test --test 'root_netns*'` (repeatable).
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
    /// vm: seconds a guest may run before it is killed and reported as hung
    /// (the whole suite on one kernel takes about 7-8 minutes under TCG).
    #[arg(long, default_value_t = GUEST_TIMEOUT_S)]
    timeout: u64,
    /// vm: download the package lists again, picking up newer kernels.
    #[arg(long)]
    refresh: bool,
    /// vm: print every guest's console as it runs.
    #[arg(long, short)]
    verbose: bool,
    /// Arguments for every test binary: a test name filter, `--exact`, ...
    #[arg(last = true, value_name = "TEST_ARGS")]
    libtest: Vec<String>,
}

impl Args {
    /// `vm` on every listed kernel, every test, default timeout.
    pub(crate) fn all_kernels() -> Args {
        Args {
            mode: Mode::Vm,
            kernels: Vec::new(),
            tests: Vec::new(),
            timeout: GUEST_TIMEOUT_S,
            refresh: false,
            verbose: false,
            libtest: Vec::new(),
        }
    }
}

/// How long a guest may run by default: the whole suite on one kernel took
/// 300-330 s on two host threads and takes 410-450 s on one.
const GUEST_TIMEOUT_S: u64 = 1500;

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    match args.mode {
        Mode::Local => local(args),
        Mode::Vm => vm(args),
    }
}

fn local(args: &Args) -> anyhow::Result<()> {
    cmd::require_root("./x integration-test local")?;
    let mut cargo_args = vec!["test"];
    for package in testbins::PACKAGES {
        cargo_args.extend(["--package", package]);
    }
    for test in &args.tests {
        cargo_args.extend(["--test", test]);
    }
    let mut cargo = cmd::cargo(&cargo_args);
    if !args.libtest.is_empty() {
        cargo.arg("--").args(&args.libtest);
    }
    for (var, path) in extra_files() {
        cargo.env(var, path);
    }
    cmd::status(&mut cargo)
}

fn vm(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    apt::ensure(
        &["libc6-dev"],
        "static test executables link glibc's libc.a",
    )?;
    let root = cmd::workspace_root();
    let cache = std::env::var_os("NETNS_VM_CACHE")
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from);
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("create the cache {}", cache.display()))?;

    let specs = kernels::load_list(&root.join(KERNEL_LIST))?;
    let mut built = testbins::build()?;
    if !args.tests.is_empty() {
        built
            .tests
            .retain(|t| args.tests.iter().any(|pattern| glob(pattern, &t.name)));
        if built.tests.is_empty() {
            bail!("no test binary matches --test {:?}", args.tests);
        }
    }

    let mirror = debian::host_mirror();
    let mut suites: Vec<debian::Suite> = Vec::new();
    let host_suite = suite(&mut suites, &cache, &host_codename(), &mirror, args.refresh)?;
    let busybox = initramfs::busybox(host_suite, &cache)?;
    let emulator = emulator::prepare(host_suite, &cache)?;
    eprintln!(
        "xtask: QEMU {} (the suite's own, unpacked in the cache)",
        emulator.version
    );
    let payload = payload(busybox, built, hosttools::collect()?, args)?;
    // Patterns that all name a suite or package of the list spare fetching the
    // other kernels; a release (`6.1`) is only known once the kernel is fetched.
    let by_spec = |s: &kernels::Spec| {
        args.kernels
            .iter()
            .any(|m| *m == s.suite || *m == s.package)
    };
    let only_listed = args
        .kernels
        .iter()
        .all(|m| specs.iter().any(|s| *m == s.suite || *m == s.package));
    let mut kernels = Vec::new();
    for spec in specs
        .iter()
        .filter(|s| !only_listed || args.kernels.is_empty() || by_spec(s))
    {
        let suite = suite(&mut suites, &cache, &spec.suite, &mirror, args.refresh)?;
        let kernel = kernels::prepare(spec, suite, &cache, MODULES)?;
        if args.kernels.is_empty() || args.kernels.iter().any(|m| kernel_matches(&kernel, m)) {
            kernels.push(kernel);
        }
    }
    if kernels.is_empty() {
        bail!(
            "no kernel of {KERNEL_LIST} matches --kernel {:?}",
            args.kernels
        );
    }
    eprintln!(
        "xtask: ready in {}s (cache {})",
        secs(started.elapsed()),
        cache.display()
    );

    let mut rows = Vec::new();
    let mut explanations = String::new();
    for kernel in &kernels {
        let (row, explanation) = run_kernel(&root, kernel, &emulator, &payload, args)?;
        rows.push(row);
        explanations.push_str(&explanation);
    }
    if !explanations.is_empty() {
        eprintln!("\n{explanations}");
    }
    print_table(&rows, started.elapsed());
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| r.verdict != Verdict::Ok)
        .map(|r| r.release.as_str())
        .collect();
    if !bad.is_empty() {
        bail!("the suite failed on {}", bad.join(", "));
    }
    Ok(())
}

/// The suite `name`, opened (and its lists refreshed if asked) on first use.
fn suite<'s>(
    suites: &'s mut Vec<debian::Suite>,
    cache: &Path,
    name: &str,
    mirror: &str,
    refresh: bool,
) -> anyhow::Result<&'s mut debian::Suite> {
    let at = if let Some(at) = suites.iter().position(|s| s.name() == name) {
        at
    } else {
        let mut suite = debian::Suite::open(cache, name, mirror)?;
        suite.update(refresh)?;
        suites.push(suite);
        suites.len() - 1
    };
    Ok(&mut suites[at])
}

/// What every guest gets: busybox, the tests, the packages' programs, the extra
/// files, the host tools and the environment.
fn payload(
    busybox: PathBuf,
    built: testbins::Built,
    tools: Vec<hosttools::GuestFile>,
    args: &Args,
) -> anyhow::Result<initramfs::Payload> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            (k.starts_with("NETNS_") && !k.starts_with("NETNS_VM_"))
                || PASSED_ON.contains(&k.as_str())
        })
        .collect();
    env.push(("NETNS_TEST_IN_VM".into(), "1".into()));
    env.push(("NETNS_TEST_SKIP_FILE".into(), SKIP_FILE.into()));
    let mut files = Vec::new();
    for program in &built.programs {
        files.push(hosttools::GuestFile::same_path(program, 0o755)?);
    }
    for (var, path) in extra_files() {
        env.retain(|(k, _)| k != var);
        env.push((var.to_owned(), path.to_string_lossy().into_owned()));
        files.push(hosttools::GuestFile::same_path(&path, 0o644)?);
    }
    for tool in tools {
        if !files.iter().any(|f| f.guest == tool.guest) {
            files.push(tool);
        }
    }
    let mut test_args = args.libtest.clone();
    if !test_args.iter().any(|a| a.starts_with("--test-threads")) {
        test_args.push("--test-threads=2".into());
    }
    Ok(initramfs::Payload {
        busybox,
        tests: built.tests,
        files,
        env,
        args: test_args,
    })
}

/// The extra files that exist, with their variables.
fn extra_files() -> Vec<(&'static str, PathBuf)> {
    let root = cmd::workspace_root();
    EXTRA_FILES
        .iter()
        .map(|(rel, var)| {
            let path = std::env::var_os(var).map_or_else(|| root.join(rel), PathBuf::from);
            (*var, path)
        })
        .filter(|(_, path)| path.is_file())
        .map(|(var, path)| (var, std::path::absolute(&path).unwrap_or(path)))
        .collect()
}

/// Whether `pattern` picks `kernel`: its suite or package, its release, or the
/// start of its release up to a `.` or `-` (`6.1` is not `6.12`).
fn kernel_matches(kernel: &kernels::Kernel, pattern: &str) -> bool {
    kernel.suite == pattern
        || kernel.package == pattern
        || kernel
            .release
            .strip_prefix(pattern)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('-'))
}

/// `*`-glob matching of a whole name.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// The host's Debian codename (busybox comes from there), `bookworm` if unknown.
fn host_codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".to_owned())
}

/// One line of the summary table.
#[derive(Debug)]
struct Row {
    release: String,
    suite: String,
    verdict: Verdict,
    passed: u32,
    failed: u32,
    skipped: usize,
    elapsed: Duration,
}

fn run_kernel(
    root: &Path,
    kernel: &kernels::Kernel,
    emulator: &emulator::Qemu,
    payload: &initramfs::Payload,
    args: &Args,
) -> anyhow::Result<(Row, String)> {
    let label = kernel.release.clone();
    let dir = root.join("target/vm").join(&label);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let initrd = dir.join("initramfs.cpio");
    let size = initramfs::write(kernel, payload, &initrd)
        .with_context(|| format!("{label}: initramfs"))?;
    eprintln!(
        "xtask: {label} ({} {}): booting {} with {} MiB of initramfs",
        kernel.suite,
        kernel.version,
        kernel
            .image
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        size >> 20
    );
    let log = dir.join("console.log");
    let mut boot_panics = String::new();
    let (guest, run) = loop {
        let (guest, run) = boot_once(&label, kernel, emulator, &initrd, &log, args)?;
        // A panic before our init said "kernel" is the emulator's, not ours: no
        // code of the project has run yet (seen: `Oops: int3` in the 6.12 guest's
        // idle loop at 4 s, a stale breakpoint of the kernel's own boot-time text
        // patching under TCG). Boot again, keeping that console, at most twice.
        let attempt = boot_panics.lines().count() + 1;
        if guest.panicked_while_booting(&run) && attempt < BOOT_ATTEMPTS {
            let kept = dir.join(format!("console.boot-panic-{attempt}.log"));
            std::fs::rename(&log, &kept).ok();
            eprintln!(
                "xtask: {label}: kernel panicked while booting, before the suite started \
                 (console kept in {}); booting again",
                kept.display()
            );
            writeln!(
                boot_panics,
                "{label}: boot {attempt} panicked before the suite started; console in {}",
                kept.display()
            )?;
            continue;
        }
        break (guest, run);
    };
    let verdict = guest.verdict(&run);
    let mut explanation = boot_panics;
    explanation.push_str(&guest.explain(verdict, &run, &label));
    for skip in &guest.skips {
        writeln!(
            explanation,
            "{label}: skipped {}::{} ({})",
            skip.binary, skip.test, skip.reason
        )?;
    }
    for warning in &guest.warnings {
        writeln!(explanation, "{label}: guest {warning}")?;
    }
    if verdict != Verdict::Ok {
        writeln!(explanation, "{label}: full console in {}", log.display())?;
    }
    eprintln!(
        "xtask: {label}: {} in {}s",
        verdict.word(),
        secs(run.elapsed)
    );
    Ok((
        Row {
            release: label,
            suite: kernel.suite.clone(),
            verdict,
            passed: guest.passed(),
            failed: guest.failed(),
            skipped: guest.skips.len(),
            elapsed: run.elapsed,
        },
        explanation,
    ))
}

/// One boot of `kernel`: the guest's report and the run.
fn boot_once(
    label: &str,
    kernel: &kernels::Kernel,
    emulator: &emulator::Qemu,
    initrd: &Path,
    log: &Path,
    args: &Args,
) -> anyhow::Result<(Guest, qemu::Run)> {
    let mut guest = Guest::default();
    let mut last = Instant::now();
    let run = qemu::boot(
        emulator.command(),
        kernel,
        initrd,
        log,
        Duration::from_secs(args.timeout),
        |line| {
            if args.verbose {
                eprintln!("[{label}] {line}");
            }
            let event = guest.line(line);
            match (event, guest.binaries.last()) {
                (Some(Event::Up), _) => {
                    eprintln!("xtask: {label}: up after {}s", secs(last.elapsed()));
                }
                (Some(Event::Ended), Some(binary)) => {
                    // libtest counts a test that skipped itself as passed.
                    let skipped = guest.skips.iter().filter(|s| s.binary == binary.name).count();
                    let skipped = u32::try_from(skipped).unwrap_or(u32::MAX);
                    eprintln!(
                        "xtask: {label}: {:<32} {:<6} {:>3} passed {:>3} failed {:>3} skipped {:>6}s",
                        binary.name,
                        if binary.ok() { "ok" } else { "FAILED" },
                        binary.passed.saturating_sub(skipped),
                        binary.failed,
                        skipped,
                        secs(last.elapsed())
                    );
                }
                _ => {}
            }
            if event.is_some() || line.contains(report::MARKER) {
                last = Instant::now();
            }
            event == Some(Event::Done)
        },
    )
    .with_context(|| format!("{label}: run QEMU"))?;
    Ok((guest, run))
}

fn print_table(rows: &[Row], total: Duration) {
    println!(
        "{:<28} {:<10} {:<8} {:>6} {:>6} {:>7} {:>8}",
        "kernel", "suite", "result", "passed", "failed", "skipped", "seconds"
    );
    for row in rows {
        println!(
            "{:<28} {:<10} {:<8} {:>6} {:>6} {:>7} {:>8}",
            row.release,
            row.suite,
            row.verdict.word(),
            row.passed,
            row.failed,
            row.skipped,
            secs(row.elapsed)
        );
    }
    let ok = rows.iter().filter(|r| r.verdict == Verdict::Ok).count();
    println!(
        "{ok} of {} kernels passed; {}s in all",
        rows.len(),
        secs(total)
    );
    // The plain closing line CI runners read, summed over the kernels.
    let sum = |f: fn(&Row) -> u64| rows.iter().map(f).sum::<u64>();
    println!(
        "vm: {} passed, {} failed, {} skipped",
        sum(|r| u64::from(r.passed)),
        sum(|r| u64::from(r.failed)),
        sum(|r| r.skipped as u64)
    );
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_like_cargo_test() {
        assert!(glob("root_netns*", "root_netns_safety"));
        assert!(glob("*safety", "root_netns_safety"));
        assert!(glob("root_*_safety", "root_netns_safety"));
        assert!(glob("root_netns_safety", "root_netns_safety"));
        assert!(!glob("root_netns", "root_netns_safety"));
        assert!(!glob("*datapath*", "root_netns_safety"));
    }
}
