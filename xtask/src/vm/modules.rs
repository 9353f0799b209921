//! Which kernel modules to load in the guest, and in what order.
//!
//! Debian's image packages ship no `modules.dep` (depmod writes it at install
//! time), so this builds the same information: `modules.order` maps a module
//! name to its file, each module's `.modinfo` section lists its direct
//! dependencies (`depends=`, which is what depmod turns into `modules.dep`),
//! and `modules.builtin` says what needs no loading at all. Compressed modules
//! are decompressed here, since busybox's `insmod` cannot.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::elf::Elf;
use super::unpack::{self, Format};

/// A module to load, decompressed, with its dependencies before it in the list.
#[derive(Debug)]
pub(crate) struct Module {
    pub(crate) name: String,
    pub(crate) bytes: Vec<u8>,
}

/// The modules of one kernel tree (`.../lib/modules/RELEASE`).
#[derive(Debug)]
pub(crate) struct Tree {
    root: PathBuf,
    files: HashMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// What the wanted modules resolve to.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Loadable modules in load order (dependencies first).
    pub(crate) load: Vec<Module>,
    /// Wanted modules the kernel has built in.
    pub(crate) builtin: Vec<String>,
}

impl Tree {
    pub(crate) fn open(root: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let path = root.join(name);
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
        };
        let mut files = HashMap::new();
        for line in read("modules.order")?.lines().map(str::trim) {
            let Some(name) = module_name(line) else {
                continue;
            };
            // modules.order names `x.ko`; the file may be `x.ko.xz` and so on.
            let found = ["", ".xz", ".zst", ".gz"]
                .iter()
                .map(|ext| root.join(format!("{line}{ext}")))
                .find(|p| p.exists());
            if let Some(path) = found {
                files.insert(name, path);
            }
        }
        let builtin = read("modules.builtin")?
            .lines()
            .filter_map(|l| module_name(l.trim()))
            .collect();
        Ok(Self {
            root: root.to_owned(),
            files,
            builtin,
        })
    }

    /// The modules to load for `wanted`, dependencies first, each once.
    pub(crate) fn plan(&self, wanted: &[&str]) -> anyhow::Result<Plan> {
        let mut plan = Plan::default();
        let mut done = BTreeSet::new();
        for name in wanted {
            let name = normalize(name);
            if self.builtin.contains(&name) {
                plan.builtin.push(name);
            } else {
                self.visit(&name, &mut done, &mut Vec::new(), &mut plan.load)?;
            }
        }
        Ok(plan)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        load: &mut Vec<Module>,
    ) -> anyhow::Result<()> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
        }
        let file = self.files.get(name).with_context(|| {
            format!(
                "module {name} is neither built in nor in {}",
                self.root.join("modules.order").display()
            )
        })?;
        let bytes = read_module(file)?;
        let depends = depends(&bytes).with_context(|| format!("{}", file.display()))?;
        path.push(name.to_owned());
        for dep in depends {
            self.visit(&dep, done, path, load)?;
        }
        path.pop();
        done.insert(name.to_owned());
        load.push(Module {
            name: name.to_owned(),
            bytes,
        });
        Ok(())
    }
}

fn read_module(file: &Path) -> anyhow::Result<Vec<u8>> {
    let name = file.to_string_lossy();
    match Format::from_name(&name) {
        Some(format) => unpack::decompress(file, format),
        None => std::fs::read(file).with_context(|| format!("read {name}")),
    }
}

/// The `depends=` list of a module's `.modinfo` (NUL-separated `key=value`).
fn depends(module: &[u8]) -> anyhow::Result<Vec<String>> {
    let elf = Elf::parse(module)?;
    let info = elf
        .section(".modinfo")?
        .context("module has no .modinfo section")?;
    Ok(info
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .map(normalize)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect())
}

/// `kernel/net/sched/cls_bpf.ko` -> `cls_bpf`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file
        .split(".ko")
        .next()
        .filter(|s| !s.is_empty() && file.contains(".ko"))?;
    Some(normalize(stem))
}

/// The kernel treats `-` and `_` in module names alike.
fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::module_name;

    #[test]
    fn names_from_paths() {
        assert_eq!(
            module_name("kernel/net/sched/cls_bpf.ko").as_deref(),
            Some("cls_bpf")
        );
        assert_eq!(
            module_name("kernel/drivers/net/veth.ko.xz").as_deref(),
            Some("veth")
        );
        assert_eq!(
            module_name("kernel/fs/fat/vfat-x.ko").as_deref(),
            Some("vfat_x")
        );
        assert_eq!(module_name("kernel/Makefile"), None);
    }
}
