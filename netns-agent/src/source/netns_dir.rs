//! Pods from a directory of namespace files, watched with inotify.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::mpsc::Sender;

use super::{PodEvent, PodSource, SourceTask};

/// Watches `dir`: every file in it is a pod candidate. Files present at start
/// count, a burst that overflows the inotify queue triggers a full listing,
/// and the directory is listed again every `resync` in any case.
#[derive(Debug, Clone)]
pub struct NetnsDir {
    dir: PathBuf,
    resync: Duration,
}

impl NetnsDir {
    /// A source for `dir` (created if missing, as `ip netns add` does).
    #[must_use]
    pub fn new(dir: PathBuf, resync: Duration) -> NetnsDir {
        NetnsDir { dir, resync }
    }
}

/// The files in `dir`, sorted (symlinks included: the agent refuses them).
pub(crate) fn list(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        paths.push(
            entry
                .with_context(|| format!("list {}", dir.display()))?
                .path(),
        );
    }
    paths.sort();
    Ok(paths)
}

impl PodSource for NetnsDir {
    fn clone_box(&self) -> Box<dyn PodSource> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "netns-dir"
    }

    fn run(self: Box<Self>, events: Sender<PodEvent>) -> SourceTask {
        Box::pin(async move {
            let dir = self.dir.clone();
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let inotify = Inotify::init().context("inotify_init")?;
            inotify
                .watches()
                .add(
                    &dir,
                    WatchMask::CREATE
                        | WatchMask::DELETE
                        | WatchMask::MOVED_FROM
                        | WatchMask::MOVED_TO
                        | WatchMask::ATTRIB
                        | WatchMask::DELETE_SELF
                        | WatchMask::MOVE_SELF,
                )
                .with_context(|| format!("watch {} with inotify", dir.display()))?;
            let mut stream = inotify
                .into_event_stream(vec![0u8; 64 * 1024])
                .context("inotify event stream")?;
            // Watching first, then listing: nothing can fall between the two.
            if events.send(PodEvent::Present(list(&dir)?)).await.is_err() {
                return Ok(());
            }
            let mut resync = tokio::time::interval(self.resync);
            resync.tick().await;
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = resync.tick() => {
                        if events.send(PodEvent::Present(list(&dir)?)).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                };
                let Some(event) = event else {
                    anyhow::bail!("the inotify watch on {} ended", dir.display());
                };
                let event =
                    event.with_context(|| format!("read inotify events for {}", dir.display()))?;
                if event
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED)
                {
                    // Gone or renamed: the agent starts this source again,
                    // which waits for (or makes) the directory and lists it.
                    anyhow::bail!(
                        "{} was removed or moved away ({:?})",
                        dir.display(),
                        event.mask
                    );
                }
                let report = if event.mask.contains(EventMask::Q_OVERFLOW) {
                    tracing::warn!(dir = %dir.display(), "inotify queue overflowed: listing the directory again");
                    PodEvent::Present(list(&dir)?)
                } else if let Some(name) = event.name {
                    let path = dir.join(name);
                    if event
                        .mask
                        .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
                    {
                        PodEvent::Gone(path)
                    } else {
                        PodEvent::Appeared(path)
                    }
                } else {
                    continue;
                };
                if events.send(report).await.is_err() {
                    return Ok(());
                }
            }
        })
    }
}
