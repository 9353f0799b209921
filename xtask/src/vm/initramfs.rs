//! The guest's whole root file system, as one uncompressed initramfs: busybox
//! (from Debian's `busybox-static`), `/init` (init.sh), one kernel's modules, the
//! test binaries and the extra files they read (at their host paths, so that
//! paths baked in at build time hold), and the plan the init script follows:
//!
//! - `/netns-vm/modules.list`: `NAME FILE` per module, in load order;
//! - `/netns-vm/plan`: `NAME EXE DIR` per test binary (run from DIR, the crate
//!   root, as `cargo test` does);
//! - `/netns-vm/env`: shell code exporting the environment and setting `"$@"` to
//!   the arguments every test binary gets.

use std::fmt::Write as _;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::cpio::Writer;
use super::debian::Suite;
use super::hosttools::GuestFile;
use super::kernels::Kernel;
use super::testbins::TestBinary;
use crate::cmd;

const INIT: &str = include_str!("init.sh");

/// What every guest gets, whatever its kernel.
#[derive(Debug)]
pub(crate) struct Payload {
    pub(crate) busybox: PathBuf,
    pub(crate) tests: Vec<TestBinary>,
    /// Programs and files from the host: the packages' programs and the extra
    /// files at their host paths, the host tools and their libraries.
    pub(crate) files: Vec<GuestFile>,
    /// The guest environment of the test binaries.
    pub(crate) env: Vec<(String, String)>,
    /// Arguments for every test binary.
    pub(crate) args: Vec<String>,
}

/// Writes the initramfs for `kernel` to `out`; returns its size in bytes.
pub(crate) fn write(kernel: &Kernel, payload: &Payload, out: &Path) -> anyhow::Result<u64> {
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut cpio = Writer::new(BufWriter::new(file));
    fill(&mut cpio, kernel, payload).with_context(|| format!("write {}", out.display()))?;
    let (_, size) = cpio.finish()?;
    Ok(size)
}

fn fill(
    cpio: &mut Writer<BufWriter<File>>,
    kernel: &Kernel,
    payload: &Payload,
) -> anyhow::Result<()> {
    for dir in ["dev", "proc", "sys", "run", "tmp", "root", "etc", "bin"] {
        cpio.dir(dir)?;
    }
    // The kernel opens /dev/console for init before anything is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.file("init", 0o755, INIT.as_bytes())?;
    cpio.file("bin/busybox", 0o755, &read(&payload.busybox)?)?;

    let mut list = String::new();
    for (name, ko) in &kernel.modules {
        let file = format!("modules/{name}.ko");
        cpio.file(&format!("netns-vm/{file}"), 0o644, &read(ko)?)?;
        writeln!(list, "{name} {file}")?;
    }
    cpio.file("netns-vm/modules.list", 0o644, list.as_bytes())?;

    let mut plan = String::new();
    for test in &payload.tests {
        let exe = format!("/netns-vm/bin/{}", test.name);
        let dir = path_str(&test.dir)?;
        cpio.file(&exe, 0o755, &read(&test.exe)?)?;
        cpio.dir(dir)?;
        writeln!(plan, "{} {exe} {dir}", plain(&test.name)?)?;
    }
    cpio.file("netns-vm/plan", 0o644, plan.as_bytes())?;

    for file in &payload.files {
        if !file.guest.starts_with('/') {
            bail!("{}: guest paths must be absolute", file.guest);
        }
        cpio.file(&file.guest, file.mode, &read(&file.host)?)?;
    }

    let mut env = String::new();
    for (key, value) in &payload.env {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("environment variable name {key:?} cannot be passed to the guest");
        }
        writeln!(env, "export {key}={}", quote(value))?;
    }
    let args: Vec<String> = payload.args.iter().map(|a| quote(a)).collect();
    writeln!(env, "set -- {}", args.join(" "))?;
    cpio.file("netns-vm/env", 0o644, env.as_bytes())?;
    Ok(())
}

/// `bin/busybox` from Debian's `busybox-static` of `suite`, cached per version.
pub(crate) fn busybox(suite: &mut Suite, cache: &Path) -> anyhow::Result<PathBuf> {
    let package = suite.resolve("busybox-static")?;
    let path = cache
        .join("busybox")
        .join(package.version.replace(':', "%3a"))
        .join("busybox");
    if path.is_file() {
        return Ok(path);
    }
    let (_, deb) = suite.fetch("busybox-static")?;
    let scratch = cache
        .join("busybox")
        .join(format!(".scratch-{}", std::process::id()));
    std::fs::remove_dir_all(&scratch).ok();
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    cmd::status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&scratch))?;
    let dir = path.parent().expect("a parent");
    std::fs::create_dir_all(dir)?;
    let result = std::fs::rename(scratch.join("bin/busybox"), &path)
        .with_context(|| format!("no bin/busybox in {}", deb.display()));
    std::fs::remove_dir_all(&scratch).ok();
    result.map(|()| path)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// A path for the plan: absolute, and free of white space (the init script
/// splits on it).
fn path_str(path: &Path) -> anyhow::Result<&str> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    if !path.is_absolute() {
        bail!("{text}: guest paths must be absolute");
    }
    plain(text)
}

fn plain(text: &str) -> anyhow::Result<&str> {
    if text.is_empty() || text.chars().any(char::is_whitespace) {
        bail!("{text:?}: names and paths in the guest plan cannot hold white space");
    }
    Ok(text)
}

/// `text` as one single-quoted shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
