//! Building the suite as static test executables for the guests, whose only
//! user space is busybox. The list of executables is whatever cargo reports
//! (`--message-format=json`), so a new test file needs no change here. The
//! packages' own programs (`[[bin]]`) come along, for tests that start them
//! through `env!("CARGO_BIN_EXE_name")`, a host path baked in at build time.
//!
//! The target is `x86_64-unknown-linux-gnu` with `crt-static` (a static-pie
//! glibc program), built into `target/x86_64-unknown-linux-gnu/` apart from the
//! ordinary `target/debug`. musl would be the other way, but netns-core does
//! not build for it yet: `libc::ioctl` takes a `c_int` request there and
//! `netns-core/src/sys.rs` passes `SIOCGIFFLAGS` (a `c_ulong`) as is.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};

use super::elf::Elf;
use crate::cmd;

/// The packages whose tests the guests run.
pub(crate) const PACKAGES: &[&str] = &["netns-tests", "netns-datapath", "netns-agent"];
const TARGET: &str = "x86_64-unknown-linux-gnu";
const RUSTFLAGS_VAR: &str = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS";
/// Static, and without DWARF: a debug test executable is 5x smaller without it
/// (the initramfs has to fit in the guest's memory twice while it unpacks).
/// Panics still name file and line; backtraces keep function names.
const RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=debuginfo";

/// One test executable.
#[derive(Debug, Clone)]
pub(crate) struct TestBinary {
    /// The test target's name, e.g. `root_netns_safety` (`PKG-lib` for unit tests).
    pub(crate) name: String,
    pub(crate) exe: PathBuf,
    /// The crate's root: the working directory `cargo test` gives it.
    pub(crate) dir: PathBuf,
}

/// What the build produced.
#[derive(Debug, Default)]
pub(crate) struct Built {
    pub(crate) tests: Vec<TestBinary>,
    /// The packages' programs, by host path.
    pub(crate) programs: Vec<PathBuf>,
}

/// Builds the tests of [`PACKAGES`] and returns their executables.
pub(crate) fn build() -> anyhow::Result<Built> {
    let mut args = vec!["test", "--no-run", "--target", TARGET];
    for package in PACKAGES {
        args.extend(["--package", package]);
    }
    args.push("--message-format=json-render-diagnostics");
    eprintln!("xtask: building the test executables (static, {TARGET})");
    let mut cargo = cmd::cargo(&args);
    cargo.env(RUSTFLAGS_VAR, RUSTFLAGS).stdout(Stdio::piped());
    let shown = format!("{cargo:?}");
    let mut child = cargo
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let mut built = Built::default();
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read cargo's output")?;
        match artifact(&line)? {
            Some(Artifact::Test(test)) => built.tests.push(test),
            Some(Artifact::Program(path)) => built.programs.push(path),
            None => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    if built.tests.is_empty() {
        bail!("{shown} reported no test executable");
    }
    for exe in built.tests.iter().map(|t| &t.exe).chain(&built.programs) {
        let bytes = std::fs::read(exe).with_context(|| format!("read {}", exe.display()))?;
        if Elf::parse(&bytes)?.is_dynamic()? {
            bail!(
                "{} is dynamically linked (is RUSTFLAGS set? it overrides {RUSTFLAGS_VAR})",
                exe.display()
            );
        }
    }
    built.tests.sort_by(|a, b| a.name.cmp(&b.name));
    built.programs.sort();
    built.programs.dedup();
    Ok(built)
}

/// An executable cargo built.
#[derive(Debug)]
enum Artifact {
    Test(TestBinary),
    Program(PathBuf),
}

/// The executable in one line of cargo's JSON messages, if there is one.
fn artifact(line: &str) -> anyhow::Result<Option<Artifact>> {
    let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
        return Ok(None); // not JSON: cargo only prints JSON on stdout, but be lenient
    };
    let Some(exe) = msg["executable"]
        .as_str()
        .filter(|_| msg["reason"] == "compiler-artifact")
    else {
        return Ok(None);
    };
    if msg["profile"]["test"] != true {
        return Ok(Some(Artifact::Program(PathBuf::from(exe))));
    }
    let target = msg["target"]["name"]
        .as_str()
        .context("artifact without a target name")?;
    let is_lib = msg["target"]["kind"]
        .as_array()
        .is_some_and(|kinds| kinds.iter().any(|k| k == "lib"));
    let manifest = msg["manifest_path"]
        .as_str()
        .context("artifact without a manifest path")?;
    let dir = PathBuf::from(manifest)
        .parent()
        .context("manifest path without a parent")?
        .to_owned();
    Ok(Some(Artifact::Test(TestBinary {
        name: if is_lib {
            format!("{target}-lib")
        } else {
            target.to_owned()
        },
        exe: PathBuf::from(exe),
        dir,
    })))
}

#[cfg(test)]
mod tests {
    use super::{Artifact, artifact};

    #[test]
    fn picks_test_executables_from_cargo_json() {
        let test = r#"{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"root_a"},"profile":{"test":true},"executable":"/w/target/x/debug/deps/root_a-123"}"#;
        let Some(Artifact::Test(got)) = artifact(test).unwrap() else {
            panic!("not a test");
        };
        assert_eq!(
            (got.name.as_str(), got.exe.to_str(), got.dir.to_str()),
            (
                "root_a",
                Some("/w/target/x/debug/deps/root_a-123"),
                Some("/w/tests")
            )
        );
        let lib = r#"{"reason":"compiler-artifact","manifest_path":"/w/t/Cargo.toml","target":{"kind":["lib"],"name":"t"},"profile":{"test":false},"executable":null}"#;
        assert!(artifact(lib).unwrap().is_none());
        let bin = r#"{"reason":"compiler-artifact","manifest_path":"/w/t/Cargo.toml","target":{"kind":["bin"],"name":"b"},"profile":{"test":false},"executable":"/w/target/x/debug/b"}"#;
        assert!(
            matches!(artifact(bin).unwrap(), Some(Artifact::Program(p)) if p.to_str() == Some("/w/target/x/debug/b"))
        );
        assert!(
            artifact(r#"{"reason":"build-finished","success":true}"#)
                .unwrap()
                .is_none()
        );
    }
}
