//! Host programs the tests call by name (iproute2's `ip` and `tc`, `bpftool`, tmux,
//! iptables-legacy, the reference CNI plugins), copied into the guest with the shared libraries and the
//! loader `ldd` names, at the same paths, and iptables' extensions (loaded
//! with dlopen, so `ldd` does not name them). The programs land in `/usr/local/sbin`, ahead of busybox's
//! smaller applets of the same name in the guest's `PATH`.
//!
//! python3 is not among them (its standard library is a tree, not a file): tests
//! that need it say so through the skip protocol (see the parent module).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::apt;

/// (program, Debian package that installs it on the host).
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ss", "iproute2"),
    ("bpftool", "bpftool"),
    // `netns-agent top` is read off a tmux pane (root_agent_top.rs).
    ("tmux", "tmux"),
    // One multi-call binary under each name: it dispatches on argv[0].
    ("iptables-legacy", "iptables"),
    ("iptables-legacy-restore", "iptables"),
    ("iptables-legacy-save", "iptables"),
    ("ip6tables-legacy", "iptables"),
    ("ip6tables-legacy-restore", "iptables"),
    ("ip6tables-legacy-save", "iptables"),
];
/// The reference CNI plugins the CNI tests chain before netns-cni (Debian
/// containernetworking-plugins), copied to the same path in the guest.
const CNI_DIR: &str = "/usr/lib/cni";
const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];
/// Where iptables finds its match and target extensions.
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// The character classes of glibc's C.UTF-8 locale (Debian's libc-bin):
/// tmux refuses to start without a UTF-8 `LC_CTYPE`, and tries this one
/// whatever the environment says.
const UTF8_CTYPE: &str = "/usr/lib/locale/C.utf8/LC_CTYPE";
const HOST_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
const GUEST_DIR: &str = "/usr/local/sbin";

/// A host file and where it goes in the guest.
#[derive(Debug, Clone)]
pub(crate) struct GuestFile {
    pub(crate) guest: String,
    pub(crate) host: PathBuf,
    pub(crate) mode: u32,
}

impl GuestFile {
    /// `host` at the same path in the guest.
    pub(crate) fn same_path(host: &Path, mode: u32) -> anyhow::Result<Self> {
        let guest = host
            .to_str()
            .with_context(|| format!("{} is not UTF-8", host.display()))?
            .to_owned();
        Ok(Self {
            guest,
            host: host.to_owned(),
            mode,
        })
    }
}

/// The tools and everything they load, each file once.
pub(crate) fn collect() -> anyhow::Result<Vec<GuestFile>> {
    let mut packages: Vec<&str> = TOOLS.iter().map(|(_, package)| *package).collect();
    packages.push("containernetworking-plugins");
    apt::ensure(&packages, "tests call them; the guests get copies")?;
    let mut files: Vec<GuestFile> = Vec::new();
    for plugin in CNI_PLUGINS {
        let host = Path::new(CNI_DIR).join(plugin);
        files.push(GuestFile::same_path(&host, 0o755)?);
        for library in libraries(&host)? {
            if !files.iter().any(|f| f.host == library) {
                files.push(GuestFile::same_path(&library, 0o755)?);
            }
        }
    }
    for (tool, package) in TOOLS {
        let host = HOST_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .find(|p| p.is_file())
            .with_context(|| format!("{tool} (Debian {package}) is not in {HOST_DIRS:?}"))?;
        files.push(GuestFile {
            guest: format!("{GUEST_DIR}/{tool}"),
            host: host.clone(),
            mode: 0o755,
        });
        for library in libraries(&host)? {
            if !files.iter().any(|f| f.host == library) {
                files.push(GuestFile::same_path(&library, 0o755)?);
            }
        }
    }
    for entry in std::fs::read_dir(XTABLES_DIR).with_context(|| format!("read {XTABLES_DIR}"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "so") {
            files.push(GuestFile::same_path(&path, 0o644)?);
        }
    }
    files.push(GuestFile::same_path(Path::new(UTF8_CTYPE), 0o644)?);
    Ok(files)
}

/// The shared objects `program` loads, the dynamic loader included, per `ldd`.
fn libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("cannot start ldd {}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static programs need nothing ("not a dynamic executable").
        if text.contains("not a dynamic")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed ({})", program.display(), out.status);
    }
    Ok(parse_ldd(&text))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` give a path; the vDSO does not.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line.split_once("=>").map_or(line, |(_, rest)| rest.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_ldd;

    #[test]
    fn reads_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007f70becf3000)\n\
                    \tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f70beb93000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f70becf5000)\n";
        let paths: Vec<_> = parse_ldd(text)
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libbpf.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
