//! The kernels to test on (`xtask/vm-kernels.txt`, one `SUITE PACKAGE` a line)
//! and their preparation: the image package is fetched from its suite, unpacked
//! with `dpkg-deb -x`, and reduced to what a boot needs, kept under
//! `CACHE/kernels/PACKAGE_VERSION/`: the bzImage, the ELF `vmlinux` extracted
//! from it (faster to boot under TCG), the config, and the wanted modules with
//! their dependencies, decompressed, in load order (listed in `kernel.txt`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::debian::{Package, Suite};
use super::{bzimage, modules};
use crate::cmd;

/// Bumped when the layout of a prepared kernel directory changes.
const LAYOUT: &str = "1";

/// One line of the kernel list.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) suite: String,
    pub(crate) package: String,
}

/// A kernel ready to boot.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub(crate) suite: String,
    pub(crate) package: String,
    pub(crate) version: String,
    /// `uname -r`, e.g. `6.1.0-50-amd64`.
    pub(crate) release: String,
    /// The `vmlinux` (PVH) when it could be extracted, else the bzImage.
    pub(crate) image: PathBuf,
    /// Modules in load order: (name, decompressed `.ko`).
    pub(crate) modules: Vec<(String, PathBuf)>,
    /// Wanted modules that are built in.
    pub(crate) builtin: Vec<String>,
}

/// Reads the kernel list: `SUITE PACKAGE` per line, `#` comments.
pub(crate) fn load_list(path: &Path) -> anyhow::Result<Vec<Spec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut specs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [suite, package] = words[..] else {
            bail!(
                "{}:{}: expected `SUITE PACKAGE`, got {line:?}",
                path.display(),
                i + 1
            );
        };
        specs.push(Spec {
            suite: suite.to_owned(),
            package: package.to_owned(),
        });
    }
    if specs.is_empty() {
        bail!("{} lists no kernel", path.display());
    }
    Ok(specs)
}

/// Fetches and prepares the kernel of `spec` with the `wanted` modules, reusing
/// the cache when it already holds this package version with these modules.
pub(crate) fn prepare(
    spec: &Spec,
    suite: &mut Suite,
    cache: &Path,
    wanted: &[&str],
) -> anyhow::Result<Kernel> {
    let what = format!("{} {}", spec.suite, spec.package);
    let package = suite.resolve(&spec.package).with_context(|| what.clone())?;
    let dir = kernel_dir(cache, &package);
    let stamp = format!("layout {LAYOUT}\nwanted {}\n", wanted.join(","));
    if let Some(kernel) = load(&dir, &stamp, spec) {
        return Ok(kernel);
    }
    let (package, deb) = suite.fetch(&spec.package).with_context(|| what.clone())?;
    let dir = kernel_dir(cache, &package);
    eprintln!("xtask: preparing {} {}", package.name, package.version);
    let scratch = cache
        .join("kernels")
        .join(format!(".scratch-{}", std::process::id()));
    std::fs::remove_dir_all(&scratch).ok();
    let result = unpack(&deb, &scratch, &dir, &stamp, wanted);
    std::fs::remove_dir_all(&scratch).ok();
    result.with_context(|| format!("prepare {what} ({})", deb.display()))?;
    load(&dir, &stamp, spec).with_context(|| format!("{}: prepared but unreadable", dir.display()))
}

/// Where the kernel of `package` is kept, prepared.
fn kernel_dir(cache: &Path, package: &Package) -> PathBuf {
    cache
        .join("kernels")
        .join(format!("{}_{}", package.name, package.version))
}

/// Unpacks `deb` in `scratch` and moves the reduced kernel to `dir`.
fn unpack(
    deb: &Path,
    scratch: &Path,
    dir: &Path,
    stamp: &str,
    wanted: &[&str],
) -> anyhow::Result<()> {
    let root = scratch.join("root");
    let out = scratch.join("out");
    std::fs::create_dir_all(out.join("modules"))?;
    cmd::status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;

    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("{} has no /boot", deb.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no /boot/vmlinuz-* in the package")?;
    let release =
        vmlinuz.file_name().expect("a file").to_string_lossy()["vmlinuz-".len()..].to_owned();
    std::fs::copy(&vmlinuz, out.join("vmlinuz"))?;
    std::fs::copy(boot.join(format!("config-{release}")), out.join("config")).ok();

    let mut manifest = format!("{stamp}release {release}\n");
    match bzimage::extract_vmlinux(&vmlinuz, &scratch.join("payload"), &out.join("vmlinux")) {
        Ok(()) => manifest.push_str("image vmlinux\n"),
        Err(err) => {
            eprintln!("xtask: {release}: booting the bzImage ({err:#})");
            manifest.push_str("image vmlinuz\n");
        }
    }

    let tree = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| root.join(base).join(&release))
        .find(|p| p.is_dir())
        .with_context(|| format!("no lib/modules/{release} in the package"))?;
    let plan = modules::Tree::open(&tree)?.plan(wanted)?;
    for module in &plan.load {
        let file = format!("modules/{}.ko", module.name);
        std::fs::write(out.join(&file), &module.bytes)?;
        writeln!(manifest, "module {} {file}", module.name)?;
    }
    for name in &plan.builtin {
        writeln!(manifest, "builtin {name}")?;
    }
    // The manifest is written last: a directory without it is incomplete.
    std::fs::write(out.join("kernel.txt"), manifest)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::rename(&out, dir).with_context(|| format!("move to {}", dir.display()))
}

/// The prepared kernel in `dir`, if complete and prepared for `stamp`.
fn load(dir: &Path, stamp: &str, spec: &Spec) -> Option<Kernel> {
    let manifest = std::fs::read_to_string(dir.join("kernel.txt")).ok()?;
    let rest = manifest.strip_prefix(stamp)?;
    let (name, version) = dir.file_name()?.to_str()?.split_once('_')?;
    let mut kernel = Kernel {
        suite: spec.suite.clone(),
        package: name.to_owned(),
        version: version.to_owned(),
        release: String::new(),
        image: PathBuf::new(),
        modules: Vec::new(),
        builtin: Vec::new(),
    };
    for line in rest.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("release"), Some(release), None) => release.clone_into(&mut kernel.release),
            (Some("image"), Some(file), None) => kernel.image = dir.join(file),
            (Some("module"), Some(name), Some(file)) => {
                kernel.modules.push((name.to_owned(), dir.join(file)));
            }
            (Some("builtin"), Some(name), None) => kernel.builtin.push(name.to_owned()),
            _ => return None,
        }
    }
    let complete = !kernel.release.is_empty()
        && kernel.image.is_file()
        && kernel.modules.iter().all(|(_, f)| f.is_file());
    complete.then_some(kernel)
}
