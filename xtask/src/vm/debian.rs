//! Fetching `.deb` files from any Debian suite by package name, through a private
//! apt configuration per suite under the cache: its own sources list, package lists
//! and caches, signed by the archive keyring. `/etc/apt` and the host's package
//! lists are read for the mirror only and never written.
//!
//! Package lists are downloaded once and reused: a cached run needs no network.
//! `--refresh` (or a download that fails on stale lists) fetches them again.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

/// One suite (e.g. `bullseye`) with its private apt state under `cache/apt/SUITE`.
#[derive(Debug)]
pub(crate) struct Suite {
    name: String,
    dir: PathBuf,
    debs: PathBuf,
    refreshed: bool,
}

/// A concrete package version, as found in a suite's lists.
#[derive(Debug, Clone)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) version: String,
}

impl Suite {
    /// Sets up the private configuration for `name` (idempotent, no network).
    pub(crate) fn open(cache: &Path, name: &str, mirror: &str) -> anyhow::Result<Self> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("{name:?} is not a Debian suite name");
        }
        let dir = cache.join("apt").join(name);
        let debs = cache.join("debs");
        for d in [dir.join("lists/partial"), debs.clone()] {
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        }
        let sources = format!("deb [signed-by={KEYRING}] {mirror} {name} main\n");
        let path = dir.join("sources.list");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(sources.as_str()) {
            std::fs::write(&path, sources).with_context(|| format!("write {}", path.display()))?;
            // A new mirror or suite: old lists do not describe it.
            std::fs::remove_file(dir.join("updated")).ok();
        }
        Ok(Self {
            name: name.to_owned(),
            dir,
            debs,
            refreshed: false,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Downloads the package lists when missing, or always when `force`.
    pub(crate) fn update(&mut self, force: bool) -> anyhow::Result<()> {
        let stamp = self.dir.join("updated");
        if self.refreshed || (!force && stamp.exists()) {
            return Ok(());
        }
        eprintln!("xtask: apt-get update for {} (private lists)", self.name);
        cmd::status(self.apt("apt-get").args(["update", "-qq"]))
            .with_context(|| format!("update the package lists of {}", self.name))?;
        for entry in std::fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with("resolved-") {
                std::fs::remove_file(entry.path()).ok();
            }
        }
        std::fs::write(&stamp, "").with_context(|| format!("write {}", stamp.display()))?;
        self.refreshed = true;
        Ok(())
    }

    /// The concrete package behind `name`: a meta-package such as
    /// `linux-image-amd64` is followed to the `linux-image-*` package it depends on.
    /// The answer is remembered until the lists are next updated.
    pub(crate) fn resolve(&mut self, name: &str) -> anyhow::Result<Package> {
        self.update(false)?;
        let memo = self.dir.join(format!("resolved-{name}"));
        if let Some((name, version)) = std::fs::read_to_string(&memo).ok().and_then(|text| {
            text.trim()
                .split_once(' ')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        }) {
            return Ok(Package { name, version });
        }
        let package = self.resolve_in_lists(name)?;
        std::fs::write(&memo, format!("{} {}\n", package.name, package.version))
            .with_context(|| format!("write {}", memo.display()))?;
        Ok(package)
    }

    fn resolve_in_lists(&self, name: &str) -> anyhow::Result<Package> {
        let mut name = name.to_owned();
        for _ in 0..4 {
            let out = self
                .apt("apt-cache")
                .args(["show", "--no-all-versions", &name])
                .output()
                .with_context(|| format!("cannot start apt-cache for {name}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let version = field(&text, "Version");
            let (true, Some(version)) = (out.status.success(), version) else {
                bail!(
                    "package {name} not found in {} ({}); `--refresh` re-reads the lists",
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            };
            let image_dep = field(&text, "Depends")
                .into_iter()
                .flat_map(|deps| deps.split(','))
                .map(|dep| dep.split('|').next().unwrap_or("").trim())
                .filter_map(|dep| dep.split_whitespace().next())
                .find(|dep| dep.starts_with("linux-image-"))
                .map(str::to_owned);
            match image_dep {
                Some(next) if next != name => name = next,
                _ => {
                    return Ok(Package {
                        name,
                        version: version.to_owned(),
                    });
                }
            }
        }
        bail!("{name}: meta-packages nest too deep in {}", self.name)
    }

    /// Resolves `name` (see [`Suite::resolve`]) and returns its `.deb`, downloaded
    /// into `cache/debs` unless already there. When the download fails on lists
    /// that may be stale, they are refreshed and the name resolved again, once.
    pub(crate) fn fetch(&mut self, name: &str) -> anyhow::Result<(Package, PathBuf)> {
        let package = self.resolve(name)?;
        if let Some(found) = self.cached_deb(&package)? {
            return Ok((package, found));
        }
        match self.download(&package) {
            Ok(deb) => Ok((package, deb)),
            Err(err) if !self.refreshed => {
                eprintln!("xtask: {err:#}; refreshing the lists of {}", self.name);
                self.update(true)?;
                let package = self.resolve(name)?;
                let deb = self.download(&package)?;
                Ok((package, deb))
            }
            Err(err) => Err(err),
        }
    }

    fn download(&self, package: &Package) -> anyhow::Result<PathBuf> {
        let partial = self.debs.join(format!(".partial-{}", std::process::id()));
        std::fs::create_dir_all(&partial)?;
        let spec = format!("{}={}", package.name, package.version);
        eprintln!("xtask: apt-get download {spec} ({})", self.name);
        let result = cmd::status(
            self.apt("apt-get")
                .args(["download", "-qq", &spec])
                .current_dir(&partial),
        )
        .with_context(|| format!("download {spec} from {}", self.name))
        .and_then(|()| {
            let deb = std::fs::read_dir(&partial)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .with_context(|| format!("apt-get download {spec} left no .deb"))?;
            let dest = self.debs.join(deb.file_name().expect("a file"));
            std::fs::rename(&deb, &dest).with_context(|| format!("move {}", dest.display()))?;
            Ok(dest)
        });
        std::fs::remove_dir_all(&partial).ok();
        result
    }

    fn cached_deb(&self, package: &Package) -> anyhow::Result<Option<PathBuf>> {
        // apt names files NAME_VERSION_ARCH.deb with the epoch's colon escaped.
        let prefix = format!("{}_{}_", package.name, package.version.replace(':', "%3a"));
        for entry in std::fs::read_dir(&self.debs)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(&prefix) && path.extension().is_some_and(|e| e == "deb") {
                return Ok(Some(path));
            }
        }
        Ok(None)
    }

    /// The versions this suite offers (apt's candidates) for those of `names`
    /// it has.
    pub(crate) fn candidates(
        &mut self,
        names: &[String],
    ) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        self.update(false)?;
        let out = self
            .apt("apt-cache")
            .arg("policy")
            .args(names)
            .output()
            .context("cannot start apt-cache policy")?;
        let mut found = std::collections::BTreeMap::new();
        let mut current: Option<String> = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.starts_with(' ') {
                current = line.strip_suffix(':').map(str::to_owned);
            } else if let (Some(name), Some(version)) =
                (&current, line.trim().strip_prefix("Candidate:"))
            {
                let version = version.trim();
                if version != "(none)" {
                    found.insert(name.clone(), version.to_owned());
                }
            }
        }
        Ok(found)
    }

    /// `tool` (apt-get or apt-cache) reading this suite's private state only.
    pub(crate) fn apt(&self, tool: &str) -> Command {
        let dir = self.dir.display();
        let mut cmd = Command::new(tool);
        for opt in [
            format!("Dir::Etc::SourceList={dir}/sources.list"),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            "Dir::Etc::Preferences=/dev/null".to_owned(),
            "Dir::Etc::PreferencesParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={dir}/lists"),
            format!("Dir::Cache={dir}"),
            // Downloads land in our directories; no need to hand them to _apt.
            "APT::Sandbox::User=root".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
        ] {
            cmd.arg("-o").arg(opt);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }
}

/// The first value of `name:` in a deb822 stanza.
fn field<'t>(stanza: &'t str, name: &str) -> Option<&'t str> {
    stanza.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The Debian mirror the host's apt uses for its own release (so that a proxy or
/// local mirror set up for the machine is used here too), `NETNS_VM_MIRROR` if set.
pub(crate) fn host_mirror() -> String {
    if let Some(mirror) = std::env::var_os("NETNS_VM_MIRROR") {
        return mirror.to_string_lossy().into_owned();
    }
    let mut texts = Vec::new();
    for path in ["/etc/apt/sources.list", "/etc/apt/sources.list.d"] {
        collect_sources(Path::new(path), &mut texts);
    }
    texts
        .iter()
        .find_map(|(deb822, text)| mirror_in(text, *deb822))
        .unwrap_or_else(|| FALLBACK_MIRROR.to_owned())
}

fn collect_sources(path: &Path, out: &mut Vec<(bool, String)>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for entry in entries {
            collect_sources(&entry, out);
        }
    } else if let Ok(text) = std::fs::read_to_string(path) {
        match path.extension().and_then(|e| e.to_str()) {
            Some("sources") => out.push((true, text)),
            Some("list") => out.push((false, text)),
            _ => {}
        }
    }
}

/// A URI serving Debian's main archive (not -security) in a sources file.
fn mirror_in(text: &str, deb822: bool) -> Option<String> {
    let is_archive = |uri: &str, suites: &str| {
        !uri.contains("security")
            && uri.trim_end_matches('/').ends_with("/debian")
            && !suites.contains("-security")
    };
    if deb822 {
        text.split("\n\n").find_map(|stanza| {
            let uri = field(stanza, "URIs")?.split_whitespace().next()?;
            let suites = field(stanza, "Suites")?;
            let enabled = field(stanza, "Enabled").is_none_or(|v| v != "no");
            (enabled && is_archive(uri, suites)).then(|| uri.trim_end_matches('/').to_owned())
        })
    } else {
        text.lines().find_map(|line| {
            // Drop the `[option=value ...]` block.
            let line = match (line.find('['), line.find(']')) {
                (Some(open), Some(close)) if open < close => {
                    format!("{} {}", &line[..open], &line[close + 1..])
                }
                _ => line.to_owned(),
            };
            let mut words = line.split_whitespace();
            if words.next()? != "deb" {
                return None;
            }
            let uri = words.next()?;
            let suite = words.next()?;
            is_archive(uri, suite).then(|| uri.trim_end_matches('/').to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::mirror_in;

    #[test]
    fn finds_the_archive_mirror_not_security() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb\n# comment\nURIs: http://deb.debian.org/debian/\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(deb822, true).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let list =
            "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_in(list, false).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_in("deb https://packages.example/apt x main", false),
            None
        );
    }
}
