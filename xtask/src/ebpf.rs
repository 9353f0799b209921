//! `./x build-ebpf`: the pinned nightly, bpf-linker built against that nightly's
//! own LLVM, and the eBPF object at [`OBJECT`], which netns-datapath embeds.
//!
//! All pins live here. A bpf-linker built for another nightly's LLVM fails with
//! "Invalid record"; the tool directory is keyed by both pins and stamped with
//! the nightly's exact commit and LLVM library, so a mismatch means a rebuild.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd;

/// The nightly that builds the eBPF programs (and bpf-linker).
pub(crate) const NIGHTLY: &str = "nightly-2026-10-29";
/// The bpf-linker release, from crates.io.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where the built object lands, relative to the workspace root. netns-datapath's
/// build script embeds it from here (or from `NETNS_EBPF_OBJECT`).
pub(crate) const OBJECT: &str = "target/ebpf/netns-ebpf.o";

/// Builds the eBPF object, installing what is missing first. Returns its path.
pub(crate) fn build() -> anyhow::Result<PathBuf> {
    ensure_nightly()?;
    let linker = ensure_bpf_linker()?;
    eprintln!("xtask: building the eBPF programs ({NIGHTLY}, bpfel-unknown-none)");
    let root = cmd::workspace_root();
    let target_dir = root.join("target/ebpf-build");
    let mut cargo = programs_cargo("build", &target_dir);
    cargo
        .env("PATH", prepend_path(&linker.bin))
        .env("LD_LIBRARY_PATH", &linker.llvm_lib)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    cmd::status(&mut cargo).context("building the eBPF programs")?;
    let built = target_dir.join("bpfel-unknown-none/release/netns-ebpf-programs");
    let object = root.join(OBJECT);
    copy_if_changed(&built, &object)?;
    Ok(object)
}

/// Clippy with `-D warnings` on the programs, for the BPF target (the
/// programs' own lint table mirrors the workspace's).
pub(crate) fn clippy() -> anyhow::Result<()> {
    ensure_nightly()?;
    let mut cargo = programs_cargo("clippy", &cmd::workspace_root().join("target/ebpf-clippy"));
    cargo.args(["--", "-D", "warnings"]);
    cmd::status(&mut cargo).context("clippy on the eBPF programs")
}

/// `cargo +NIGHTLY <subcommand>` on the programs crate, for the BPF target.
fn programs_cargo(subcommand: &str, target_dir: &Path) -> Command {
    let mut cargo = nightly("cargo");
    cargo
        .args([
            subcommand,
            "--quiet",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(cmd::workspace_root().join("netns-ebpf/programs/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    cargo
}

/// `rustup run NIGHTLY <tool>`, cleared of the variables the outer cargo set.
fn nightly(tool: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", NIGHTLY, tool]);
    for var in [
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn ensure_nightly() -> anyhow::Result<()> {
    let has_clippy = nightly("cargo")
        .args(["clippy", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let has_src = nightly("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").is_dir());
    if !(has_clippy && has_src) {
        eprintln!(
            "xtask: installing {NIGHTLY} with rust-src and clippy (builds and lints the eBPF programs)"
        );
        cmd::quiet(Command::new("rustup").args([
            "toolchain",
            "install",
            "--no-self-update",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy",
        ]))?;
        // An existing toolchain keeps its components: add any still missing.
        cmd::quiet(Command::new("rustup").args([
            "component",
            "add",
            "--toolchain",
            NIGHTLY,
            "rust-src",
            "clippy",
        ]))?;
    }
    Ok(())
}

struct Linker {
    bin: PathBuf,
    llvm_lib: PathBuf,
}

/// bpf-linker linked against the nightly's own libLLVM (no system LLVM here).
fn ensure_bpf_linker() -> anyhow::Result<Linker> {
    let verbose = capture(nightly("rustc").arg("-vV"))?;
    let field = |name: &str| {
        verbose
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("`rustc +{NIGHTLY} -vV` has no {name:?}"))
    };
    let llvm_major = field("LLVM version:")?
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let commit = field("commit-hash:")?;
    let sysroot = PathBuf::from(capture(nightly("rustc").args(["--print", "sysroot"]))?.trim());
    let libllvm = find_libllvm(&sysroot.join("lib"))?;

    let home = tools_home().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{NIGHTLY}"));
    let llvm_lib = home.join("llvm/lib");
    let bin = home.join("bin");
    let stamp = home.join("stamp");
    let want = format!("{commit} {}\n", libllvm.display());
    let works = || {
        Command::new(bin.join("bpf-linker"))
            .arg("--version")
            .env("LD_LIBRARY_PATH", &llvm_lib)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) && works() {
        return Ok(Linker { bin, llvm_lib });
    }

    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {NIGHTLY}'s LLVM {llvm_major} \
         into {} (about a minute, once)",
        home.display()
    );
    std::fs::create_dir_all(&llvm_lib).with_context(|| format!("create {}", llvm_lib.display()))?;
    let file_name = libllvm.file_name().context("libLLVM has a file name")?;
    for link in [llvm_lib.join("libLLVM.so"), llvm_lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("symlink {} -> {}", link.display(), libllvm.display()))?;
    }
    cmd::quiet(
        nightly("cargo")
            .args(["install", "--locked", "--force", "--no-default-features"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .arg("--features")
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(&home)
            .env("LLVM_PREFIX", home.join("llvm"))
            .env("LD_LIBRARY_PATH", &llvm_lib),
    )
    .context("building bpf-linker")?;
    if !works() {
        bail!("bpf-linker was built but `bpf-linker --version` fails");
    }
    std::fs::write(&stamp, want).with_context(|| format!("write {}", stamp.display()))?;
    Ok(Linker { bin, llvm_lib })
}

fn find_libllvm(lib: &Path) -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(lib).with_context(|| format!("read {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}: is {NIGHTLY} installed whole?",
        lib.display()
    )
}

/// Tools built once per machine: `$XDG_CACHE_HOME/netns`, `~/.cache/netns`,
/// or `/var/cache/netns` when neither variable is set.
pub(crate) fn tools_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("netns");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from("/var/cache/netns"),
        |home| PathBuf::from(home).join(".cache/netns"),
    )
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_owned()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).expect("PATH entries contain no ':'")
}

fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn copy_if_changed(from: &Path, to: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
    if std::fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(to, bytes).with_context(|| format!("write {}", to.display()))
}
