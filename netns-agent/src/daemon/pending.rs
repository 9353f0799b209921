//! Namespace files that are not namespaces *yet*: `ip netns add` creates an
//! empty file and bind-mounts the namespace on it a moment later. The pod
//! worker keeps them here and tries each again with a growing pause (from
//! 50 µs, doubling to 5 ms), serving other pod events meanwhile, until it
//! becomes a namespace or its settle time runs out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_micros(50);
const LONGEST_PAUSE: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
struct Entry {
    first_seen: Instant,
    next_try: Instant,
    pause: Duration,
}

/// The files waiting to become namespaces.
#[derive(Debug, Default)]
pub(super) struct Pending(BTreeMap<PathBuf, Entry>);

impl Pending {
    /// When `path` was first seen: now, unless it is already waiting.
    pub(super) fn first_seen(&self, path: &Path) -> Instant {
        self.0.get(path).map_or_else(Instant::now, |e| e.first_seen)
    }

    /// `path`, first seen at `first_seen`, is not a namespace yet: try again
    /// after a pause twice as long as the last one.
    pub(super) fn wait(&mut self, path: PathBuf, first_seen: Instant) {
        let pause = self
            .0
            .get(&path)
            .map_or(FIRST_PAUSE, |e| (e.pause * 2).min(LONGEST_PAUSE));
        self.0.insert(
            path,
            Entry {
                first_seen,
                next_try: Instant::now() + pause,
                pause,
            },
        );
    }

    /// `path` is settled (a namespace, skipped, or gone).
    pub(super) fn done(&mut self, path: &Path) {
        self.0.remove(path);
    }

    /// How long until the next try is due (`None`: nothing waits).
    pub(super) fn next_due(&self) -> Option<Duration> {
        self.0
            .values()
            .map(|e| e.next_try.saturating_duration_since(Instant::now()))
            .min()
    }

    /// The files whose try is due, with when each was first seen.
    pub(super) fn due(&self) -> Vec<(PathBuf, Instant)> {
        let now = Instant::now();
        self.0
            .iter()
            .filter(|(_, e)| e.next_try <= now)
            .map(|(p, e)| (p.clone(), e.first_seen))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_first_seen_is_kept() {
        let mut pending = Pending::default();
        let path = PathBuf::from("/run/netns/pod");
        let t0 = pending.first_seen(&path);
        pending.wait(path.clone(), t0);
        assert!(pending.next_due().unwrap() <= FIRST_PAUSE);
        assert_eq!(pending.0[&path].pause, FIRST_PAUSE);
        pending.wait(path.clone(), pending.first_seen(&path));
        assert_eq!(pending.0[&path].pause, FIRST_PAUSE * 2, "doubles");
        for _ in 0..10 {
            pending.wait(path.clone(), pending.first_seen(&path));
        }
        assert_eq!(pending.first_seen(&path), t0);
        // The pause itself, not the time left until it ends: a slow machine
        // (an emulated guest) may spend the whole pause between two calls.
        assert_eq!(pending.0[&path].pause, LONGEST_PAUSE, "capped");
        assert!(pending.next_due().unwrap() <= LONGEST_PAUSE);
        std::thread::sleep(LONGEST_PAUSE);
        assert_eq!(pending.due(), vec![(path.clone(), t0)]);
        pending.done(&path);
        assert!(pending.next_due().is_none());
    }
}
