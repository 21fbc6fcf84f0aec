//! Tailer: one input's files, end to end in the core. It owns the discoverer, the watcher, the
//! readers and the batcher; it decides what a path means at each look (new file, rename
//! rotation, copytruncate, truncation, deletion), and it turns acknowledgements into
//! checkpoints. It is driven by its owner's clock (`step(now)`): no threads, no sleeping.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::batcher::{Batch, BatchLimits, Batcher, Encodings};
use crate::checkpoints::{unix_ns, Checkpointer};
use crate::counters::Counters;
use crate::discovery::{self, Discoverer, Found};
use crate::identity::{FileKey, Fingerprint};
use crate::reader::{FileReader, FileState};
use crate::watcher::{InotifyWatcher, PollWatcher, Watcher};

/// Reads in a row that found new bytes before a file turns steady (see `Watcher::set_steady`).
const STEADY_AFTER: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    Poll,
    Inotify,
    /// Fluent Bit's event path (one event per wakeup, fstat around every read and of every
    /// caught-up file), kept so the fstat regression can be shown and guarded against.
    Naive,
    /// inotify, with polling for files on filesystems whose events cannot be trusted.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    Beginning,
    /// Only for files present at the very first start (no checkpoint file yet).
    End,
}

#[derive(Clone, Debug)]
pub struct TailerConfig {
    pub name: String,
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub watch: WatchMode,
    pub poll_interval: Duration,
    /// Glob rescan and path check (new files, rotation, truncation), on its own timer.
    pub rescan_interval: Duration,
    pub read_from: ReadFrom,
    pub max_line_bytes: usize,
    /// Bytes read from one file per pass, so one hot file cannot starve the others.
    pub read_budget: usize,
    pub buffer_size: usize,
    /// A trailing partial line is flushed (flagged) after this long without its newline.
    pub partial_flush: Duration,
    /// A rotated or deleted file is closed after this long at EOF without new bytes.
    pub rotate_wait: Duration,
    /// An idle file's descriptor is closed after this long; reopened when it grows.
    pub close_inactive: Duration,
    pub batch: BatchLimits,
    pub encodings: Encodings,
    /// Compress each protobuf batch as it closes (the main output's codec and level).
    pub compression: Option<(crate::otlp::Compression, i32)>,
    pub host: String,
    /// Stop reading in a step once this many batches are ready (backpressure).
    pub max_ready_batches: usize,
    /// How long files said to be written wait before they are read, so that many writes become
    /// one read: a fixed duration, or `None` (auto) for the open batch's `max_age`, shortened so
    /// the kernel's event queue cannot overflow meanwhile. Reading a line earlier than its batch
    /// closes gains no latency, and every wakeup costs CPU.
    pub coalesce: Option<Duration>,
}

impl Default for TailerConfig {
    fn default() -> Self {
        TailerConfig {
            name: "default".into(),
            paths: vec![],
            exclude: vec![],
            watch: WatchMode::Poll,
            poll_interval: Duration::from_millis(250),
            rescan_interval: Duration::from_secs(1),
            read_from: ReadFrom::Beginning,
            max_line_bytes: 1 << 20,
            read_budget: 256 * 1024,
            buffer_size: 64 * 1024,
            partial_flush: Duration::from_secs(5),
            rotate_wait: Duration::from_secs(5),
            close_inactive: Duration::from_secs(300),
            batch: BatchLimits::default(),
            encodings: Encodings { proto: false, json: true },
            compression: None,
            host: "localhost".into(),
            max_ready_batches: 4,
            coalesce: Some(Duration::ZERO),
        }
    }
}

struct Pending {
    id: u64,
    offsets: Vec<(FileKey, u32, u64)>,
    acked: bool,
}

pub struct Tailer {
    cfg: TailerConfig,
    discoverer: Discoverer,
    watcher: Box<dyn Watcher>,
    readers: BTreeMap<FileKey, FileReader>,
    checkpoints: Arc<Mutex<Checkpointer>>,
    batcher: Batcher,
    pub counters: Counters,
    buf: Vec<u8>,
    pending: VecDeque<Pending>,
    looked: bool,
    next_look: Option<Instant>,
    /// Files whose last pass stopped at the budget, not at EOF.
    more: Vec<FileKey>,
    /// Problems to report once each (unreadable paths), drained by the owner.
    reports: Vec<String>,
    reported: HashSet<String>,
    /// Directory listings, valid for one look (cleared before and after each).
    dir_cache: discovery::DirCache,
    /// Files with a timer of their own: a carried partial line, or draining.
    timed: std::collections::BTreeSet<FileKey>,
    /// Files said to be written, not read yet (they wait `read_delay` from `waiting_since`).
    waiting: Vec<FileKey>,
    waiting_since: Option<Instant>,
    /// Events drained since `waiting_since` (their rate bounds the next delay).
    waiting_events: u64,
    read_delay: Duration,
}

impl Tailer {
    pub fn new(cfg: TailerConfig, checkpoints: Arc<Mutex<Checkpointer>>, first_batch_id: u64) -> Result<Self, String> {
        let discoverer = Discoverer::new(&cfg.paths, &cfg.exclude)?;
        let inotify = |one_event, check_fs| {
            InotifyWatcher::new(cfg.poll_interval, one_event, check_fs).map_err(|e| format!("watch: cannot create an inotify instance: {e}"))
        };
        let watcher: Box<dyn Watcher> = match cfg.watch {
            WatchMode::Poll => Box::new(PollWatcher::new(cfg.poll_interval)),
            WatchMode::Inotify => Box::new(inotify(false, false)?),
            WatchMode::Naive => Box::new(inotify(true, false)?),
            WatchMode::Auto => Box::new(inotify(false, true)?),
        };
        let batcher = Batcher::with_compression(cfg.batch.clone(), cfg.encodings, &cfg.host, first_batch_id, cfg.compression);
        let buf = vec![0u8; cfg.buffer_size.max(4096)];
        Ok(Tailer {
            cfg,
            discoverer,
            watcher,
            readers: BTreeMap::new(),
            checkpoints,
            batcher,
            counters: Counters::default(),
            buf,
            pending: VecDeque::new(),
            looked: false,
            next_look: None,
            more: Vec::new(),
            reports: Vec::new(),
            reported: HashSet::new(),
            dir_cache: discovery::DirCache::default(),
            timed: std::collections::BTreeSet::new(),
            waiting: Vec::new(),
            waiting_since: None,
            waiting_events: 0,
            read_delay: Duration::ZERO,
        }
        .with_initial_delay())
    }

    fn with_initial_delay(mut self) -> Self {
        self.read_delay = self.max_read_delay();
        self
    }

    /// The longest files may wait: `coalesce`, or in auto mode the batch's age limit (`naive`
    /// reads at once, as Fluent Bit does; polling already waits `poll_interval`).
    fn max_read_delay(&self) -> Duration {
        match (self.cfg.watch, self.cfg.coalesce) {
            (WatchMode::Naive | WatchMode::Poll, _) => Duration::ZERO,
            (_, Some(d)) => d,
            (_, None) => self.cfg.batch.max_age,
        }
    }

    /// After a read: in auto mode the next delay keeps the events expected meanwhile (at the
    /// rate just seen) under a quarter of the kernel's queue.
    fn adapt_read_delay(&mut self, waited: Duration, events: u64) {
        let max = self.max_read_delay();
        self.read_delay = match (self.cfg.coalesce, self.watcher.queue_limit()) {
            (None, Some(limit)) if events > 0 && !waited.is_zero() => {
                let rate = events as f64 / waited.as_secs_f64();
                max.min(Duration::from_secs_f64((limit / 4) as f64 / rate))
            }
            _ => max,
        };
    }

    /// The read delay in use now (auto mode adapts it to the event rate).
    pub fn read_delay(&self) -> Duration {
        self.read_delay
    }

    /// Files are waiting to be read (their events are drained): the owner sleeps until
    /// `next_wakeup` rather than waiting for the descriptor.
    pub fn has_waiting(&self) -> bool {
        self.waiting_since.is_some()
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn files_open(&self) -> usize {
        self.readers.values().filter(|r| r.is_open()).count()
    }

    pub fn files_tracked(&self) -> usize {
        self.readers.len()
    }

    /// Records whose bytes were not valid UTF-8 (exported with replacement characters).
    pub fn invalid_utf8(&self) -> u64 {
        self.batcher.invalid_utf8
    }

    pub fn pending_batches(&self) -> usize {
        self.pending.len()
    }

    pub fn take_reports(&mut self) -> Vec<String> {
        std::mem::take(&mut self.reports)
    }

    fn report(&mut self, key: String, msg: String) {
        if self.reported.insert(key) {
            self.reports.push(msg);
        }
    }

    /// One pass: look at paths if due, read the files that may have new bytes (each within its
    /// budget), flush idle partial lines, close drained files, and return the batches closed.
    pub fn step(&mut self, now: Instant) -> Vec<Batch> {
        self.counters.steps += 1;
        if self.collect(now) || self.next_look.is_none_or(|t| now >= t) {
            self.look(now);
            self.next_look = Some(now + self.cfg.rescan_interval);
        }
        // Written files wait for `read_delay` (many writes, one read) unless a read is due anyway:
        // a backlog, or files found by a look.
        let due = self.waiting_since.is_some_and(|t| now >= t + self.read_delay);
        if !due && self.more.is_empty() {
            self.housekeep(now);
            self.batcher.close_if_due(now, false);
            return self.take_ready();
        }
        self.counters.read_passes += 1;
        let since = self.waiting_since.take();
        if let Some(since) = since {
            let waited = now.saturating_duration_since(since);
            let events = std::mem::take(&mut self.waiting_events);
            self.adapt_read_delay(waited, events);
        }
        let mut dirty = std::mem::take(&mut self.waiting);
        // Steady files are read on the cadence: they raise no write events.
        let steady_mode = self.watcher.event_driven() && !self.read_delay.is_zero();
        if steady_mode {
            dirty.extend(self.watcher.steady_files());
        }
        self.batcher.set_clock(now, unix_ns(SystemTime::now()));
        dirty.append(&mut self.more);
        dirty.sort_unstable();
        dirty.dedup();
        let naive = self.cfg.watch == WatchMode::Naive;
        let event_driven = self.watcher.event_driven();
        // Files rotated away first: their lines were written before those of their successors.
        // (A stable partition: one lookup per file, not one per comparison.)
        // Draining files all have a timer: without one, there is nothing to put first.
        if !self.timed.is_empty() {
            let (first, active): (Vec<FileKey>, Vec<FileKey>) =
                dirty.into_iter().partition(|k| self.readers.get(k).is_none_or(|r| r.state != FileState::Active));
            dirty = first;
            dirty.extend(active);
        }
        // Passes over the files with more to read, each within its per-file budget (so one hot
        // file cannot starve the others), until every file is at EOF or enough batches are
        // ready: a step carries megabytes when there is a backlog, not one budget's worth.
        let mut touched: Vec<FileKey> = Vec::new();
        let mut pass = dirty;
        let mut first_pass = true;
        loop {
            let mut progress = false;
            let mut i = 0;
            while i < pass.len() {
                if self.batcher.ready_len() >= self.cfg.max_ready_batches {
                    self.more.extend_from_slice(&pass[i..]);
                    break;
                }
                let key = pass[i];
                i += 1;
                let Some(r) = self.readers.get_mut(&key) else { continue };
                if naive {
                    r.fstat(&mut self.counters); // size and truncation check before the read
                    r.fadvise_dontneed(&mut self.counters); // file_cache_advise, before the chunk read
                }
                let res = r.read(&mut self.buf, self.cfg.read_budget, self.cfg.max_line_bytes, now, &mut self.batcher, &mut self.counters);
                if naive {
                    r.fstat(&mut self.counters); // counters after the read
                }
                if steady_mode && first_pass {
                    // A file with new bytes at STEADY_AFTER reads in a row turns steady (no write
                    // events, read on the cadence); the first read that finds nothing turns it back.
                    if let (Ok(res), Some(fd)) = (&res, r.raw_fd()) {
                        if res.bytes > 0 {
                            r.streak = r.streak.saturating_add(1);
                            if r.streak == STEADY_AFTER && r.state == FileState::Active && self.watcher.set_steady(key, fd, true, &mut self.counters) {
                                self.counters.steady_on += 1;
                            }
                        } else {
                            // Only a file that may be steady asks the watcher: one that reached
                            // the streak, or a fresh reader (0) of a file that was.
                            let was = std::mem::take(&mut r.streak);
                            if (was == 0 || was >= STEADY_AFTER) && self.watcher.set_steady(key, fd, false, &mut self.counters) {
                                self.counters.steady_off += 1;
                            }
                        }
                    }
                }
                // A timer of its own (a carried partial line, or draining): tracked here, where
                // the reader is at hand, rather than by a lookup per file after the step.
                let want = r.carried() > 0 || matches!(r.state, FileState::Draining { .. });
                if want != r.timed {
                    r.timed = want;
                    if want {
                        self.timed.insert(key);
                    } else {
                        self.timed.remove(&key);
                    }
                }
                progress |= res.as_ref().is_ok_and(|res| res.bytes > 0);
                match res {
                    Ok(res) if res.replaced => {
                        touched.push(key);
                        self.truncated(key, now);
                        pass.append(&mut self.more); // the copy, if any, then the file from 0: now
                    }
                    Ok(res) if !res.eof => self.more.push(key),
                    Ok(res) if res.bytes == 0 && event_driven && r.state == FileState::Active && r.shrunk(&mut self.counters) => {
                        // An event said "written", there was nothing to read, and the file is now
                        // shorter than our position: truncated. (Nothing to read is usually just an
                        // event for bytes an earlier read already took; lseek tells, without a stat.)
                        touched.push(key);
                        self.truncated(key, now);
                        pass.append(&mut self.more);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.counters.read_errors += 1;
                        let msg = format!("read {}: {e}", r.source.path);
                        r.close(&mut self.counters);
                        self.report(format!("read:{}", key.ino), msg);
                    }
                }
            }
            first_pass = false;
            if naive || !progress || self.more.is_empty() || self.batcher.ready_len() >= self.cfg.max_ready_batches {
                break;
            }
            pass = std::mem::take(&mut self.more);
        }
        if naive {
            // Fluent Bit's pending-data handler: an fstat of every watched file caught up.
            for r in self.readers.values() {
                if r.is_open() && r.eof {
                    r.fstat(&mut self.counters);
                }
            }
        }
        self.dir_cache.clear(); // listings made by truncations in this step are not reused
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            self.retime(key);
        }
        self.housekeep(now);
        if let Some(since) = since {
            // The lines just read were waiting in their files since `since`: their batch's age
            // counts from then, so deferring the read adds no latency.
            self.batcher.backdate(since);
        }
        self.batcher.close_if_due(now, false);
        if !self.read_delay.is_zero() && self.watcher.event_driven() {
            // Writes made while this step read: drained now, so the owner sleeps until they are
            // due rather than waking once more for the descriptor. (They count from the step's
            // clock, a few ms early: the owner's clock is the only one the core reads.)
            if self.collect(now) {
                self.next_look = Some(now);
            }
            if self.watcher.has_steady() && self.waiting_since.is_none() {
                self.waiting_since = Some(now); // the steady files' next read
            }
        }
        self.take_ready()
    }

    /// Drain the watcher's news: files said to be written join `waiting`. Returns whether the
    /// paths need a look (files created, renamed or deleted).
    fn collect(&mut self, now: Instant) -> bool {
        let before = self.counters.inotify_events;
        let mut dirty = Vec::new();
        let news = {
            let readers = &self.readers;
            let mut open = readers.iter().filter(|(_, r)| r.is_open()).map(|(k, _)| *k);
            self.watcher.collect(now, &mut open, &mut dirty, &mut self.counters)
        };
        for msg in news.reports {
            self.report(msg.clone(), msg);
        }
        if !dirty.is_empty() && self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        self.waiting.append(&mut dirty);
        self.waiting_events += self.counters.inotify_events - before;
        news.look
    }

    /// The descriptor to wait on for news (inotify modes), if any.
    pub fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        self.watcher.readiness_fd()
    }

    /// Close the open batch now (shutdown) and return every batch not yet handed out.
    pub fn flush(&mut self, now: Instant) -> Vec<Batch> {
        self.batcher.close_if_due(now, true);
        self.take_ready()
    }

    fn take_ready(&mut self) -> Vec<Batch> {
        let mut out = Vec::new();
        while let Some(b) = self.batcher.pop_ready() {
            self.counters.batches += 1;
            self.pending.push_back(Pending { id: b.id, offsets: b.offsets.clone(), acked: false });
            out.push(b);
        }
        out
    }

    /// When `step` next has work without new input: the watcher's tick, the next look, the open
    /// batch's age limit, a partial line's flush, a drained file's close.
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        if !self.more.is_empty() || self.batcher.ready_len() > 0 {
            return now;
        }
        let mut t = self.next_look.unwrap_or(now);
        let read = self.waiting_since.map(|s| s + self.read_delay);
        for c in [self.watcher.next_wakeup(), self.batcher.deadline(), read].into_iter().flatten() {
            t = t.min(c);
        }
        // Timers of their own: a partial line's flush, a drained file's close.
        for r in self.timed.iter().filter_map(|k| self.readers.get(k)) {
            if let Some(since) = r.carry_since() {
                t = t.min(since + self.cfg.partial_flush);
            }
            if let FileState::Draining { since } = r.state {
                t = t.min(since.max(r.last_data) + self.cfg.rotate_wait);
            }
        }
        t.max(now)
    }

    /// The batch was delivered (or deliberately dropped) by every output. Checkpoints advance to
    /// the end of the longest run of acknowledged batches, in order.
    pub fn commit(&mut self, id: u64) -> bool {
        let Some(p) = self.pending.iter_mut().find(|p| p.id == id) else { return false };
        p.acked = true;
        let mut cp = self.checkpoints.lock().expect("checkpointer lock");
        while self.pending.front().is_some_and(|p| p.acked) {
            let p = self.pending.pop_front().expect("front exists");
            let readers = &self.readers;
            cp.commit_all(&self.cfg.name, p.offsets.into_iter(), |key| readers.get(&key).map(|r| &r.fp));
        }
        true
    }

    /// Track whether a reader has a timer of its own (a carried partial line, or draining).
    fn retime(&mut self, key: FileKey) {
        let want = match self.readers.get_mut(&key) {
            Some(r) => {
                let want = r.carried() > 0 || matches!(r.state, FileState::Draining { .. });
                if want == r.timed {
                    return;
                }
                r.timed = want;
                want
            }
            None => false,
        };
        if want {
            self.timed.insert(key);
        } else {
            self.timed.remove(&key);
        }
    }

    /// Timers of single files: flush idle partial lines, close drained files. Only the files
    /// with such a timer are visited, not every file at every step.
    fn housekeep(&mut self, now: Instant) {
        let mut closed = Vec::new();
        let timed: Vec<FileKey> = self.timed.iter().copied().collect();
        for key in timed {
            let Some(r) = self.readers.get_mut(&key) else {
                self.timed.remove(&key);
                continue;
            };
            r.flush_partial(now, Some(self.cfg.partial_flush), &mut self.batcher, &mut self.counters);
            let idle = now.saturating_duration_since(r.last_data);
            if let FileState::Draining { since } = r.state {
                if r.eof && idle >= self.cfg.rotate_wait && now.saturating_duration_since(since) >= self.cfg.rotate_wait {
                    r.flush_partial(now, None, &mut self.batcher, &mut self.counters);
                    r.close(&mut self.counters);
                    closed.push(key);
                }
            }
            self.retime(key);
        }
        for k in closed {
            self.readers.remove(&k);
            self.timed.remove(&k);
            self.watcher.unwatch(k);
        }
    }

    /// Close the descriptors of files idle for `close_inactive` (checked at each look).
    fn close_inactive(&mut self, now: Instant) {
        for r in self.readers.values_mut() {
            let idle = now.saturating_duration_since(r.last_data);
            if r.state == FileState::Active && r.is_open() && r.eof && r.carried() == 0 && idle >= self.cfg.close_inactive {
                r.close(&mut self.counters);
            }
        }
    }

    /// Look at every path: new files, rotation, truncation, deletion, inactive files that grew.
    fn look(&mut self, now: Instant) {
        self.dir_cache.clear();
        self.look_inner(now);
        self.dir_cache.clear();
        self.close_inactive(now);
        let keys: Vec<FileKey> = self.readers.keys().copied().collect();
        for k in keys {
            self.retime(k);
        }
    }

    fn look_inner(&mut self, now: Instant) {
        let first = !self.looked;
        self.looked = true;
        let scan = self.discoverer.scan(&mut self.counters.syscalls);
        for dir in self.discoverer.base_dirs() {
            self.watcher.watch_dir(&dir, &mut self.counters);
        }
        for (path, err) in &scan.errors {
            self.counters.open_errors += 1;
            let msg = format!("cannot read {path}: {err}");
            self.report(format!("scan:{path}"), msg);
        }
        for pattern in &scan.unmatched {
            let msg = format!("input {}: no file matches {pattern} (yet)", self.cfg.name);
            self.report(format!("unmatched:{pattern}"), msg);
        }
        let at_path: HashMap<&Path, FileKey> = scan.files.iter().map(|f| (f.path.as_path(), f.key)).collect();
        let wall = SystemTime::now();

        // Files that left their path: renamed away or deleted. Drain them, then look for
        // rotated siblings this tailer never saw (a file rotated twice between two looks).
        let moved: Vec<FileKey> = self
            .readers
            .values()
            .filter(|r| r.state == FileState::Active && at_path.get(Path::new(&r.source.path)) != Some(&r.key()))
            .map(|r| r.key())
            .collect();
        for key in moved {
            let path = {
                let r = self.readers.get_mut(&key).expect("listed above");
                r.state = FileState::Draining { since: now };
                if !r.is_open() {
                    let _ = r.reopen(&mut self.counters);
                }
                PathBuf::from(&r.source.path)
            };
            if path.exists() {
                self.counters.rotations += 1;
            } else {
                self.counters.deletions += 1;
            }
            if self.readers[&key].replaced(&mut self.counters) {
                // Truncated (copytruncate) and then rotated before we looked.
                self.truncated(key, now);
            }
            self.adopt_siblings(&path, now);
        }

        let known_ckpt = self.checkpoints.lock().expect("checkpointer lock").existed();
        for f in &scan.files {
            if let Some(r) = self.readers.get_mut(&f.key) {
                if r.state != FileState::Active {
                    continue;
                }
                let mut replaced = f.size < r.pos;
                // Changed since the last look (size, mtime, or an mtime too recent for its coarse
                // clock to tell): check the head is still the same content (truncated and
                // rewritten past our offset between two looks). Idle files cost nothing here.
                let changed = f.size != r.look_size || f.mtime != r.look_mtime || f.mtime + Duration::from_secs(1) >= r.look_wall;
                if !replaced && changed && !r.fp.bytes.is_empty() && r.is_open() {
                    // Through our own descriptor: the path may already name another file.
                    replaced = r.head_changed(&mut self.counters);
                }
                r.look_size = f.size;
                r.look_mtime = f.mtime;
                r.look_wall = wall;
                if replaced {
                    self.truncated(f.key, now);
                } else if !r.is_open() && f.size > r.pos {
                    self.more.push(f.key);
                    if let Err(e) = r.reopen(&mut self.counters) {
                        self.counters.open_errors += 1;
                        let msg = format!("cannot reopen {}: {e}", f.path.display());
                        self.report(format!("open:{}", f.path.display()), msg);
                    }
                }
                continue;
            }
            let from_end = first && !known_ckpt && self.cfg.read_from == ReadFrom::End;
            if let Some(resumed) = self.adopt(f, if from_end { Some(f.size) } else { None }, FileState::Active, now) {
                if first && !known_ckpt {
                    // Very first start: what lies beside the file is history, not ours to ship.
                    self.note_archives(&f.path);
                } else if !resumed {
                    // A new file at a matched path: its predecessor may have been rotated away
                    // (even twice) while no reader held it; read siblings never seen.
                    self.adopt_siblings(&f.path, now);
                }
            }
        }

        if first {
            // Files checkpointed before a restart that are no longer at a matched path: look in
            // their directories for them (rotated while we were down) and anything newer.
            let entries = self.checkpoints.lock().expect("checkpointer lock").entries_for(&self.cfg.name);
            let mut dirs_done = HashSet::new();
            for (key, e) in entries {
                if self.readers.contains_key(&key) || !dirs_done.insert(e.path.clone()) {
                    continue;
                }
                self.adopt_siblings(Path::new(&e.path), now);
            }
        }
        let ns = unix_ns(wall);
        let mut cp = self.checkpoints.lock().expect("checkpointer lock");
        for k in self.readers.keys() {
            cp.touch(&self.cfg.name, *k, ns);
        }
    }

    /// Start reading a file: at its checkpoint if known, else at `start` or 0. Returns whether
    /// it resumed from a checkpoint, or `None` when it could not be opened.
    fn adopt(&mut self, f: &Found, start: Option<u64>, state: FileState, now: Instant) -> Option<bool> {
        let (mut r, _) = match FileReader::open(f.path.clone(), f.key, 0, now, &mut self.counters) {
            Ok(x) => x,
            Err(e) => {
                self.counters.open_errors += 1;
                let msg = format!("cannot open {}: {e}", f.path.display());
                self.report(format!("open:{}", f.path.display()), msg);
                return None;
            }
        };
        let mut cp = self.checkpoints.lock().expect("checkpointer lock");
        let stale = cp.get(&self.cfg.name, f.key).filter(|e| e.fp.is_evidence() && (!e.fp.compatible(&r.fp) || e.offset > f.size)).map(|e| (e.fp.clone(), e.offset, e.path.clone()));
        if let Some((fp, offset, was_at)) = stale {
            // Known identity, other content: truncated (or copytruncated) while no reader held
            // it. A copy, if any, lies beside the path the file had then.
            drop(cp);
            self.counters.truncations += 1;
            self.recover_copy(Path::new(&was_at), &fp, offset, 0, now);
            cp = self.checkpoints.lock().expect("checkpointer lock");
        }
        // An entry whose head is shorter than a line proves nothing about identity (an inode
        // reused); its offset can only be 0 or a flushed partial, so it is not resumed.
        let entry = cp.lookup(&self.cfg.name, f.key, &r.fp).filter(|e| e.offset <= f.size && e.fp.is_evidence());
        let same_file = entry.is_some();
        let resume = entry.map(|e| (e.offset, e.path.clone()));
        let offset = match &resume {
            Some((off, _)) => *off,
            None if state != FileState::Active => {
                // A sibling never seen whose head is that of a file we read: a copy of it
                // (copytruncate seen only after a rotation). Its bytes up to what we emitted
                // from the original were delivered already.
                let held = self.readers.values().filter_map(|o| copy_offset(&o.fp, o.emitted, &r.fp, f.size)).max();
                let ckpt = cp.entries_for(&self.cfg.name).into_iter().filter(|(k, _)| *k != f.key).filter_map(|(_, e)| copy_offset(&e.fp, e.offset, &r.fp, f.size)).max();
                held.max(ckpt).unwrap_or(0)
            }
            None => start.unwrap_or(0),
        };
        // A file resumed at a rotated path keeps the path it was discovered at.
        let resumed = same_file;
        let path = resume.map(|(_, p)| p).filter(|_| state != FileState::Active).unwrap_or_else(|| f.path.display().to_string());
        let epoch = cp.register(&self.cfg.name, f.key, &r.fp, &path, offset);
        drop(cp);
        if offset > 0 && r.seek_to(offset, &mut self.counters).is_err() {
            return None;
        }
        r.set_source(path, epoch);
        r.state = state;
        r.look_size = f.size;
        r.look_mtime = f.mtime;
        if let Some(msg) = self.watcher.watch(f.key, &f.path, &mut self.counters) {
            self.report(format!("watch:{}", f.path.display()), msg);
        }
        self.more.push(f.key);
        self.readers.insert(f.key, r);
        self.timed.remove(&f.key); // a reader it replaces may have had a timer
        self.clear_report(&f.path);
        Some(resumed)
    }

    fn clear_report(&mut self, path: &Path) {
        let k = format!("open:{}", path.display());
        self.reported.remove(&k);
    }

    /// Siblings of `path` (`app.log.1`, ...) that no reader holds: a checkpointed one resumes at
    /// its offset (usually its end); one never seen was rotated away before any look (rotated
    /// twice between two looks, or while tailrace was down) and is read from 0.
    fn adopt_siblings(&mut self, path: &Path, now: Instant) {
        let ns = unix_ns(SystemTime::now());
        for s in discovery::rotated_siblings(path, &mut self.dir_cache, &mut self.counters.syscalls) {
            if self.readers.contains_key(&s.key) {
                continue;
            }
            self.checkpoints.lock().expect("checkpointer lock").touch(&self.cfg.name, s.key, ns);
            // Even a sibling read to its end is opened: its head tells whether it is still the
            // file we read (rotations are rare; this is not the read path).
            self.adopt(&s, None, FileState::Draining { since: now }, now);
        }
    }

    /// Record the siblings present at the very first start as seen to their end, so a later
    /// rotation does not mistake them for lines rotated away unseen.
    fn note_archives(&mut self, path: &Path) {
        for s in discovery::rotated_siblings(path, &mut self.dir_cache, &mut self.counters.syscalls) {
            if self.readers.contains_key(&s.key) {
                continue;
            }
            let Ok((mut r, _)) = FileReader::open(s.path.clone(), s.key, 0, Instant::now(), &mut self.counters) else { continue };
            let mut cp = self.checkpoints.lock().expect("checkpointer lock");
            if cp.get(&self.cfg.name, s.key).is_none() {
                cp.register(&self.cfg.name, s.key, &r.fp, &s.path.display().to_string(), s.size);
            }
            drop(cp);
            r.close(&mut self.counters);
        }
    }

    /// After a copytruncate the bytes past `emitted` survive in a copy beside `path` whose head
    /// matches `fp`: drain that copy from `emitted`, as if it were the file rotated away.
    fn recover_copy(&mut self, path: &Path, fp: &Fingerprint, emitted: u64, carried: usize, now: Instant) -> bool {
        if fp.bytes.is_empty() {
            return false;
        }
        let mut copies: Vec<Found> = discovery::rotated_siblings(path, &mut self.dir_cache, &mut self.counters.syscalls)
            .into_iter()
            .filter(|s| !self.readers.contains_key(&s.key) && s.size >= emitted)
            .collect();

        copies.sort_by_key(|s| std::cmp::Reverse(s.mtime));
        for s in copies {
            let Ok((mut copy, _)) = FileReader::open(s.path.clone(), s.key, 0, now, &mut self.counters) else { continue };
            // A copy is a file never seen before: known siblings are older rotations (an entry
            // whose head differs is an inode reused, not a file seen).
            if self.checkpoints.lock().expect("checkpointer lock").lookup(&self.cfg.name, s.key, &copy.fp).is_some_and(|e| e.fp.is_evidence()) {
                copy.close(&mut self.counters);
                continue;
            }
            // Nothing emitted yet but a partial line carried: the copy must start with it.
            let carry_copy = emitted == 0 && carried > 0 && carried <= fp.bytes.len() && copy.fp.bytes.starts_with(&fp.bytes[..carried]);
            if !carry_copy && copy_offset(fp, emitted, &copy.fp, s.size) != Some(emitted) {
                copy.close(&mut self.counters);
                continue;
            }
            let path = path.display().to_string();
            let epoch = self.checkpoints.lock().expect("checkpointer lock").register(&self.cfg.name, s.key, &copy.fp, &path, emitted);
            if copy.seek_to(emitted, &mut self.counters).is_err() {
                continue;
            }
            copy.set_source(path, epoch);
            copy.state = FileState::Draining { since: now };
            if let Some(msg) = self.watcher.watch(s.key, &s.path, &mut self.counters) {
                self.report(format!("watch:{}", s.path.display()), msg);
            }
            self.readers.insert(s.key, copy);
            self.timed.remove(&s.key); // a reader it replaces may have had a timer
            self.retime(s.key);
            self.more.push(s.key);
            return true;
        }
        false
    }

    /// The file at its path was truncated or replaced in place. Bytes we had not yet emitted may
    /// survive in a copy (copytruncate): drain that copy from our offset. Then restart at 0.
    fn truncated(&mut self, key: FileKey, now: Instant) {
        self.counters.truncations += 1;
        let (path, emitted, fp, carried) = {
            let r = &self.readers[&key];
            (PathBuf::from(&r.source.path), r.emitted, r.fp.clone(), r.carried())
        };
        let recovered = self.recover_copy(&path, &fp, emitted, carried, now);
        let r = self.readers.get_mut(&key).expect("truncated file is held");
        if !recovered && carried > 0 {
            r.flush_partial(now, None, &mut self.batcher, &mut self.counters);
        }
        if r.restart_at_zero(&mut self.counters).is_err() {
            r.close(&mut self.counters);
        }
        let path = path.display().to_string();
        let epoch = self.checkpoints.lock().expect("checkpointer lock").register(&self.cfg.name, key, &Fingerprint::default(), &path, 0);
        r.set_source(path, epoch);
        self.more.push(key); // read again from 0 in this step (or the next, from the read loop)
    }
}

/// If `copy` (a file of `copy_size` bytes with head `copy_fp`) is a copy of a file whose head is
/// `orig_fp` and of which `orig_offset` bytes were emitted, the offset to resume the copy at.
/// The evidence must cover what was emitted: the copy's head holds every emitted byte up to
/// the fingerprint's length, ending at a line end (a short shared prefix proves nothing).
pub fn copy_offset(orig_fp: &Fingerprint, orig_offset: u64, copy_fp: &Fingerprint, copy_size: u64) -> Option<u64> {
    if orig_offset == 0 || orig_fp.bytes.is_empty() || !orig_fp.compatible(copy_fp) || copy_size < orig_offset {
        return None;
    }
    let n = orig_offset as usize;
    if n <= orig_fp.bytes.len() {
        (copy_fp.bytes.len() >= n && orig_fp.bytes[n - 1] == b'\n').then_some(orig_offset)
    } else {
        (orig_fp.is_full() && copy_fp.is_full()).then_some(orig_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tailer(dir: &Path, f: impl FnOnce(&mut TailerConfig)) -> Tailer {
        let cp = Arc::new(Mutex::new(Checkpointer::open(&dir.join("state"), Duration::from_secs(3600)).unwrap()));
        let mut cfg = TailerConfig {
            name: "t".into(),
            paths: vec![format!("{}/*.log", dir.display())],
            poll_interval: Duration::ZERO,
            rescan_interval: Duration::ZERO,
            batch: BatchLimits { max_bytes: 1 << 30, max_records: 1 << 30, max_age: Duration::ZERO },
            ..TailerConfig::default()
        };
        f(&mut cfg);
        Tailer::new(cfg, cp, 1).unwrap()
    }

    fn records(batches: &[Batch]) -> u64 {
        batches.iter().map(|b| b.records).sum()
    }

    #[test]
    fn one_hot_file_does_not_starve_the_others() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("hot.log"), "h\n".repeat(100_000)).unwrap();
        std::fs::write(d.path().join("quiet.log"), "q\n").unwrap();
        let mut t = tailer(d.path(), |c| {
            c.read_budget = 8192;
            c.buffer_size = 4096;
        });
        let b = t.step(Instant::now());
        // The first pass takes at most the hot file's budget, then the quiet file's line; later
        // passes of the same step go on with the hot file (a backlog makes big steps).
        let json: Vec<u8> = b.iter().flat_map(|x| x.json.clone()).collect();
        let text = String::from_utf8(json).unwrap();
        let q = text.find(r#""stringValue":"q""#).expect("the quiet line is in the first step");
        // (Files are taken in inode order: the quiet one may come first.)
        let before = text[..q].matches(r#""stringValue":"h""#).count();
        assert!(before == 0 || before == 4096, "{before} hot lines before the quiet one");
        assert!(records(&b) > 4096 + 1);
        let mut total = records(&b);
        for _ in 0..100 {
            total += records(&t.step(Instant::now()));
        }
        assert_eq!(total, 100_001);
    }

    #[test]
    fn reads_wait_for_coalesce_and_steady_files_need_no_events() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, "").unwrap();
        let mut t = tailer(d.path(), |c| {
            c.watch = WatchMode::Inotify;
            c.rescan_interval = Duration::from_secs(3600);
            c.coalesce = Some(Duration::from_millis(100));
        });
        let ms = |n: u64| Duration::from_millis(n);
        let t0 = Instant::now();
        assert_eq!(records(&t.step(t0)), 0); // discovery
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        let mut now = t0;
        let mut total = 0;
        for round in 1..=5u64 {
            f.write_all(b"x\ny\n").unwrap();
            now += ms(10);
            // Written, but not due: the events are drained, nothing is read yet.
            let reads = t.counters.syscalls.read;
            total += records(&t.step(now));
            if round <= 3 {
                assert_eq!(t.counters.syscalls.read, reads, "round {round}: read before coalesce");
                assert!(t.has_waiting());
                assert_eq!(t.next_wakeup(now), now + ms(100));
            }
            now += ms(100);
            total += records(&t.step(now));
            assert_eq!(total, 2 * round, "round {round}");
        }
        // Three reads in a row found bytes: the file turned steady (one mask change) and is
        // read on the cadence with no write events at all.
        assert_eq!((t.counters.steady_on, t.counters.syscalls.inotify_remask), (1, 1));
        let events = t.counters.inotify_events;
        f.write_all(b"z\n").unwrap();
        now += ms(100);
        assert_eq!(records(&t.step(now)), 1);
        assert_eq!(t.counters.inotify_events, events);
        // The first read that finds nothing turns it back; then a write is an event again.
        now += ms(100);
        assert_eq!(records(&t.step(now)), 0);
        assert_eq!((t.counters.steady_off, t.counters.syscalls.inotify_remask), (1, 2));
        assert!(!t.has_waiting());
        f.write_all(b"w\n").unwrap();
        now += ms(10);
        assert_eq!(records(&t.step(now)), 0);
        assert!(t.counters.inotify_events > events);
        now += ms(100);
        assert_eq!(records(&t.step(now)), 1);
    }

    #[test]
    fn auto_read_delay_is_the_batch_age_bounded_by_the_event_queue() {
        let d = tempfile::tempdir().unwrap();
        let mut t = tailer(d.path(), |c| {
            c.watch = WatchMode::Inotify;
            c.coalesce = None;
            c.batch.max_age = Duration::from_millis(200);
        });
        assert_eq!(t.read_delay(), Duration::from_millis(200));
        let limit = t.watcher.queue_limit().unwrap();
        // Events at `rate` per second: the wait keeps rate × wait under a quarter of the queue.
        let rate = 200_000u64;
        t.adapt_read_delay(Duration::from_secs(1), rate);
        let want = Duration::from_secs_f64((limit / 4) as f64 / rate as f64).min(Duration::from_millis(200));
        assert_eq!(t.read_delay(), want);
        assert!(t.read_delay() < Duration::from_millis(200) || limit >= 4 * 40_000);
        // A slow rate: back to the batch age.
        t.adapt_read_delay(Duration::from_secs(1), 100);
        assert_eq!(t.read_delay(), Duration::from_millis(200));
        // A fixed coalesce is not adapted; naive reads at once.
        let fixed = tailer(d.path(), |c| {
            c.watch = WatchMode::Inotify;
            c.coalesce = Some(Duration::from_millis(5));
        });
        assert_eq!(fixed.read_delay(), Duration::from_millis(5));
        let naive = tailer(d.path(), |c| {
            c.watch = WatchMode::Naive;
            c.coalesce = None;
        });
        assert_eq!(naive.read_delay(), Duration::ZERO);
    }

    #[test]
    fn inactive_files_close_and_reopen_when_they_grow() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, "one\n").unwrap();
        let mut t = tailer(d.path(), |c| c.close_inactive = Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(records(&t.step(t0)), 1);
        assert_eq!(t.files_open(), 1);
        assert_eq!(records(&t.step(t0 + Duration::from_secs(61))), 0);
        assert_eq!(t.files_open(), 0);
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(records(&t.step(t0 + Duration::from_secs(62))), 1);
        assert_eq!(t.files_open(), 1);
        assert_eq!((t.counters.files_opened, t.counters.files_closed), (2, 1));
    }

    #[test]
    fn idle_partial_line_is_flushed_flagged() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.log"), "no newline yet").unwrap();
        let mut t = tailer(d.path(), |c| c.partial_flush = Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(records(&t.step(t0)), 0);
        let b = t.step(t0 + Duration::from_secs(6));
        assert_eq!(records(&b), 1);
        let text = String::from_utf8(b[0].json.clone()).unwrap();
        assert!(text.contains(r#""stringValue":"no newline yet""#) && text.contains("tailrace.partial"));
        assert_eq!(t.counters.partial_flushes, 1);
    }

    #[test]
    fn poll_reads_without_stat_in_steady_state() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, "x\n").unwrap();
        let mut t = tailer(d.path(), |c| c.rescan_interval = Duration::from_secs(3600));
        let t0 = Instant::now();
        t.step(t0);
        let before = t.counters.syscalls;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        for i in 0..100 {
            f.write_all(b"y\n").unwrap();
            t.step(t0 + Duration::from_millis(i));
        }
        let after = t.counters.syscalls;
        assert_eq!(after.stat_family() - before.stat_family(), 0);
        assert_eq!(after.read - before.read, 100, "one short read per pass, none returning 0 after it");
        assert_eq!(t.counters.lines, 101);
    }
}
