//! Naive: Fluent Bit's inotify event path (5.x, `../REFERENCE-fluentbit-tail.md` in the design
//! notes), reproduced as a watcher strategy so the fstat regression can be shown and guarded
//! against. It is never a production choice: `check-config` warns about it.
//! - one event per wakeup (the inotify watcher reading one `inotify_event` per collect);
//! - `fstat` before each read (size and truncation check), `posix_fadvise(DONTNEED)` over the
//!   whole file before the chunk is read (`file_cache_advise on`), `fstat` after it;
//! - after the reads, an `fstat` of every held file that is caught up (the pending-data
//!   handler's walk, which makes the cost per event grow with the number of files);
//! - one chunk per file per wakeup, read at once (no coalescing).

use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::counters::Counters;
use crate::identity::FileKey;
use crate::reader::FileReader;
use crate::watcher::{InotifyWatcher, News, Watcher};

pub struct NaiveWatcher {
    inner: InotifyWatcher,
}

impl NaiveWatcher {
    pub fn new(poll_interval: Duration) -> std::io::Result<Self> {
        Ok(NaiveWatcher { inner: InotifyWatcher::new(poll_interval, true, false)? })
    }
}

impl Watcher for NaiveWatcher {
    fn collect(&mut self, now: Instant, open: &mut dyn Iterator<Item = FileKey>, dirty: &mut Vec<FileKey>, c: &mut Counters) -> News {
        self.inner.collect(now, open, dirty, c)
    }
    fn next_wakeup(&self) -> Option<Instant> {
        self.inner.next_wakeup()
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        self.inner.readiness_fd()
    }
    fn event_driven(&self) -> bool {
        true
    }
    fn watch(&mut self, key: FileKey, path: &Path, steady: bool) -> Result<bool, String> {
        self.inner.watch(key, path, steady)
    }
    fn unwatch(&mut self, key: FileKey) {
        self.inner.unwatch(key)
    }
    fn polled_fallback(&self) -> usize {
        self.inner.polled_fallback()
    }
    fn watch_dir(&mut self, dir: &Path) {
        self.inner.watch_dir(dir)
    }
    fn defers_reads(&self) -> bool {
        false
    }
    fn one_pass(&self) -> bool {
        true
    }
    fn before_read(&self, r: &FileReader, c: &mut Counters) {
        r.fstat(c);
        r.fadvise_dontneed(c);
    }
    fn after_read(&self, r: &FileReader, c: &mut Counters) {
        r.fstat(c);
    }
    fn after_reads(&self, held: &mut dyn Iterator<Item = &FileReader>, c: &mut Counters) {
        for r in held.filter(|r| r.is_open() && r.eof) {
            r.fstat(c);
        }
    }
}
