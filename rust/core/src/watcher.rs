//! Watcher: which files may have new bytes. The seam the watch modes plug into: `poll` here;
//! the inotify modes implement the same trait and expose a descriptor the owner can wait on,
//! so the reader and tailer do not change shape between modes.

use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::counters::Counters;
use crate::identity::FileKey;

pub trait Watcher: Send {
    /// Append the files that may have new bytes (of `open`, the files with a descriptor).
    fn collect(&mut self, now: Instant, open: &mut dyn Iterator<Item = FileKey>, dirty: &mut Vec<FileKey>);
    /// When `collect` next has something to say without an external wakeup.
    fn next_wakeup(&self) -> Option<Instant>;
    /// A descriptor that becomes readable when `collect` has news (inotify); none for polling.
    fn readiness_fd(&self) -> Option<RawFd> {
        None
    }
    fn watch(&mut self, _key: FileKey, _path: &Path, _c: &mut Counters) {}
    fn unwatch(&mut self, _key: FileKey) {}
}

/// `poll`: every `interval`, every open file is read once; a read returning 0 is the whole cost
/// of an idle file. No stat on the read path: rotation is the tailer's look, on its own timer.
pub struct PollWatcher {
    interval: Duration,
    next_tick: Option<Instant>,
}

impl PollWatcher {
    pub fn new(interval: Duration) -> Self {
        PollWatcher { interval, next_tick: None }
    }
}

impl Watcher for PollWatcher {
    fn collect(&mut self, now: Instant, open: &mut dyn Iterator<Item = FileKey>, dirty: &mut Vec<FileKey>) {
        if self.next_tick.is_some_and(|t| now < t) {
            return;
        }
        dirty.extend(open);
        self.next_tick = Some(now + self.interval);
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.next_tick
    }
}
