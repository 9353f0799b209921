//! `netns-cni install` / `uninstall`: put the plugin at the end of the
//! node's CNI network config and take it out again, what the `DaemonSet`'s
//! container runs.
//!
//! - The node's network is the first file of the config directory, in name
//!   order, ending in `.conflist`, `.conf` or `.json` (how the runtimes pick
//!   it). A `.conflist` gets our entry appended to `plugins`; a single-plugin
//!   `.conf`/`.json` becomes a `.conflist` of the same stem with its plugin
//!   and ours.
//! - Every write is atomic: a hidden temporary file in the same directory
//!   (the runtimes ignore names without those endings), then `rename(2)`.
//!   Nothing is written when our entry is already there as wanted.
//! - `--watch` keeps it so: the directory is watched with inotify (not
//!   rewritten in a loop); when another component rewrites the config
//!   without our entry, it is put back. SIGTERM or SIGINT uninstall and exit.
//! - The plugin binary is copied into the CNI bin directory the same way.

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The `type` of our entry.
pub const PLUGIN_TYPE: &str = "netns-cni";

/// What to install where.
#[derive(Debug, Clone)]
pub struct Install {
    /// The CNI config directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The CNI bin directory (`/opt/cni/bin`); `None`: leave binaries alone.
    pub bin_dir: Option<PathBuf>,
    /// Our entry in the chain (`type` is [`PLUGIN_TYPE`]).
    pub entry: Value,
}

impl Install {
    /// Our entry for an agent at `agent_socket`, with the ADD policy when it
    /// is unreachable (`fail` or `allow`) and the Kubernetes namespaces whose
    /// pods are never meshed.
    #[must_use]
    pub fn entry(
        agent_socket: &Path,
        agent_unreachable: &str,
        exclude_namespaces: &[String],
    ) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "agentSocket": agent_socket,
            "agentUnreachable": agent_unreachable,
            "excludeNamespaces": exclude_namespaces,
        })
    }
}

/// The node's network config file: the first config file by name.
pub fn primary_config(conf_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("list {}", conf_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_config(p) && p.is_file())
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

fn is_config(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    !hidden
        && path
            .extension()
            .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
}

/// Installs once: binary (if `bin_dir`), then our entry at the end of the
/// node's network config. Returns the config file when it was changed,
/// `None` when it already had our entry as wanted. Fails when the
/// directory has no network config yet (the node's network plugin writes it).
pub fn install(cfg: &Install, binary: &Path) -> anyhow::Result<Option<PathBuf>> {
    if let Some(bin_dir) = &cfg.bin_dir {
        install_binary(binary, bin_dir)?;
    }
    let Some(file) = primary_config(&cfg.conf_dir)? else {
        bail!(
            "{} has no network config (*.conflist, *.conf, *.json) yet: install the node's network plugin first",
            cfg.conf_dir.display()
        );
    };
    let conf = read_json(&file)?;
    let is_list = file.extension().is_some_and(|e| e == "conflist");
    let mut list = if is_list {
        conf
    } else {
        // A single plugin's config: the same network as a list.
        let mut plugin = conf.clone();
        let obj = plugin
            .as_object_mut()
            .with_context(|| format!("{} is not a JSON object", file.display()))?;
        obj.remove("cniVersion");
        obj.remove("name");
        json!({
            "cniVersion": conf.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
            "name": conf.get("name").cloned().unwrap_or(json!("netns")),
            "plugins": [plugin],
        })
    };
    let plugins = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{}: no \"plugins\" list", file.display()))?;
    let ours: Vec<usize> = plugins
        .iter()
        .enumerate()
        .filter(|(_, p)| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE))
        .map(|(i, _)| i)
        .collect();
    if is_list
        && !plugins.is_empty()
        && ours == [plugins.len() - 1]
        && plugins[plugins.len() - 1] == cfg.entry
    {
        return Ok(None);
    }
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    plugins.push(cfg.entry.clone());
    let target = file.with_extension("conflist");
    write_atomic(&target, &list)?;
    if target != file {
        std::fs::remove_file(&file).with_context(|| format!("remove {}", file.display()))?;
    }
    Ok(Some(target))
}

/// Takes our entry out of every network config in `conf_dir` (and the
/// binary out of `bin_dir`). Returns the files changed.
pub fn uninstall(conf_dir: &Path, bin_dir: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("list {}", conf_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conflist") && !is_hidden(p))
        .collect();
    for file in files {
        let mut list = read_json(&file)?;
        let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
            continue;
        };
        let before = plugins.len();
        plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
        if plugins.len() != before {
            write_atomic(&file, &list)?;
            changed.push(file);
        }
    }
    if let Some(bin_dir) = bin_dir {
        let binary = bin_dir.join(PLUGIN_TYPE);
        match std::fs::remove_file(&binary) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("remove {}", binary.display()));
            }
            _ => {}
        }
    }
    Ok(changed)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Installs, then keeps it installed until SIGTERM or SIGINT, then
/// uninstalls. Woken only by changes in `conf_dir` (inotify) and signals.
pub fn watch(cfg: &Install, binary: &Path) -> anyhow::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::SignalFd;

    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("block SIGTERM and SIGINT")?;
    let signal_fd = SignalFd::new(&signals).context("signalfd")?;
    let mut inotify = inotify::Inotify::init().context("inotify")?;
    inotify
        .watches()
        .add(
            &cfg.conf_dir,
            inotify::WatchMask::CLOSE_WRITE
                | inotify::WatchMask::MOVED_TO
                | inotify::WatchMask::MOVED_FROM
                | inotify::WatchMask::CREATE
                | inotify::WatchMask::DELETE,
        )
        .with_context(|| format!("watch {}", cfg.conf_dir.display()))?;
    report(install(cfg, binary), &cfg.conf_dir);
    let mut buffer = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
        ];
        poll(&mut fds, PollTimeout::NONE).context("poll")?;
        let signalled = fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let changed = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if signalled {
            let signal = signal_fd.read_signal().ok().flatten().map(|s| s.ssi_signo);
            eprintln!("netns-cni: signal {signal:?}: uninstalling");
            let changed = uninstall(&cfg.conf_dir, cfg.bin_dir.as_deref())?;
            for file in changed {
                eprintln!("netns-cni: removed from {}", file.display());
            }
            return Ok(());
        }
        if changed {
            // Drain the queue; one look at the directory covers them all.
            let _ = inotify.read_events(&mut buffer);
            report(install(cfg, binary), &cfg.conf_dir);
        }
    }
}

fn report(result: anyhow::Result<Option<PathBuf>>, conf_dir: &Path) {
    match result {
        Ok(Some(file)) => eprintln!("netns-cni: installed in {}", file.display()),
        Ok(None) => {}
        // Not fatal while watching: the network plugin may write its config later.
        Err(e) => eprintln!("netns-cni: not installed in {}: {e:#}", conf_dir.display()),
    }
}

fn install_binary(binary: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    let target = bin_dir.join(PLUGIN_TYPE);
    let bytes = std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    if std::fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::create_dir_all(bin_dir).with_context(|| format!("create {}", bin_dir.display()))?;
    let tmp = bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
    std::fs::write(&tmp, &bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("rename to {}", target.display()))
}

fn read_json(file: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", file.display()))
}

fn write_atomic(file: &Path, value: &Value) -> anyhow::Result<()> {
    let dir = file.parent().context("a config file has a directory")?;
    let name = file
        .file_name()
        .context("a config file has a name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.netns-cni.tmp"));
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("rename to {}", file.display()))
}
