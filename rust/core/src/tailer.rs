//! Tailer: one input's files, end to end in the core. It owns the discoverer, the watcher, the
//! readers and the batcher, and runs them in `step(now)`, a fixed sequence of phases driven by
//! its owner's clock (no threads, no sleeping):
//!
//! 1. `look_if_due`: drain the watcher's events; look at paths when they ask for it or the
//!    rescan timer is due (what a path means is `rotation.rs`'s business);
//! 2. `files_to_read`: the files due to be read now (written files wait `read_delay`, so many
//!    writes become one read), draining files first;
//! 3. `read_files`: passes over them, each file within its budget, until every file is at EOF
//!    or backpressure stops reading;
//! 4. `timers`: partial lines flushed, drained files closed;
//! 5. `close_batches`: the open batch closes at its age limit;
//! 6. `drain_written`: events that arrived while reading, so the owner sleeps until they are due.
//!
//! Batches it hands out are opened in its `Ledger`, which turns acknowledgements into
//! checkpoints. Every option comes from `TailerConfig`, built by the owner from the
//! configuration (the one place defaults are written: `collector/flow/config.py`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::batcher::{Batch, BatchLimits, Batcher, Encodings, FileAttrs};
use crate::checkpoints::{unix_ns, Checkpointer};
use crate::counters::Counters;
use crate::discovery::{self, Discoverer};
use crate::error::{Error, Result};
use crate::identity::{FileKey, Fingerprint, KeyMap};
use crate::ledger::{FileEnd, Ledger};
use crate::naive::NaiveWatcher;
use crate::otlp::CodecChoice;
use crate::parser::{Format, Parser};
use crate::reader::{FileReader, FileState, ReadResult};
use crate::watcher::{InotifyWatcher, PollWatcher, Watcher};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    Poll,
    Inotify,
    /// Fluent Bit's event path (`naive.rs`), kept so the fstat regression can be shown and
    /// guarded against.
    Naive,
    /// inotify, with polling for files on filesystems whose events cannot be trusted.
    Auto,
}

impl WatchMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "poll" => Ok(WatchMode::Poll),
            "inotify" => Ok(WatchMode::Inotify),
            "naive" => Ok(WatchMode::Naive),
            "auto" => Ok(WatchMode::Auto),
            other => Err(Error::Config(format!("watch: {other:?} (auto, inotify, poll or naive)"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    Beginning,
    /// Only for files present at the very first start (no checkpoint file yet).
    End,
}

impl ReadFrom {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "beginning" => Ok(ReadFrom::Beginning),
            "end" => Ok(ReadFrom::End),
            other => Err(Error::Config(format!("read_from: {other:?} (beginning or end)"))),
        }
    }
}

/// Everything a tailer is told. There is no `Default`: the owner builds it from the
/// configuration, whose defaults are the only ones.
#[derive(Clone, Debug)]
pub struct TailerConfig {
    pub name: String,
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    /// Directories matched paths may resolve into besides the globs' fixed parts (see
    /// `discovery::Roots`).
    pub allowed_roots: Vec<String>,
    pub watch: WatchMode,
    pub poll_interval: Duration,
    /// Glob rescan and path check (new files, rotation, truncation), on its own timer.
    pub rescan_interval: Duration,
    pub read_from: ReadFrom,
    /// How lines become records (`parser.rs`).
    pub format: Format,
    /// The longest record body (a line, or a container's merged message); longer ones go out
    /// in flagged pieces.
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
    pub host: String,
    /// `k8s.node.name` of every resource, when known (the downward API's `K8S_NODE_NAME`).
    pub node_name: Option<String>,
    /// Which file attributes records carry (`log.file.name` by default; the path opt-in).
    pub file_attrs: FileAttrs,
    /// Stop reading in a step once this many batches are ready (backpressure).
    pub max_ready_batches: usize,
    /// How long files said to be written wait before they are read, so that many writes become
    /// one read: a fixed duration, or `None` (auto) for the open batch's `max_age`, shortened so
    /// the kernel's event queue cannot overflow meanwhile. Reading a line earlier than its batch
    /// closes gains no latency, and every wakeup costs CPU.
    pub coalesce: Option<Duration>,
    /// Outputs that acknowledge each batch (the ledger commits after the last of them).
    pub outputs: u32,
    /// Bytes all files together may hold for lines not finished yet (`memory.max_pending_bytes`;
    /// shared by every tailer of the process through `share_with`).
    pub max_pending_bytes: usize,
}

/// The memory bound across files (and across the tailers sharing it): bytes held for lines
/// not finished yet (carried partial lines, container pieces waiting for their end). Past it the
/// largest holders emit what they hold as flagged pieces (`FileReader::spill`), never drop it.
#[derive(Debug)]
pub struct PendingBudget {
    pub max: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl PendingBudget {
    pub fn new(max: usize) -> Self {
        PendingBudget { max, used: Default::default() }
    }

    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.max
    }

    /// A holder's total went from `old` to `new`.
    fn change(&self, old: usize, new: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if new > old {
            self.used.fetch_add(new - old, Relaxed);
        } else {
            self.used.fetch_sub(old - new, Relaxed);
        }
    }
}

/// Which input holds each file, across the tailers of a process (`share_with`): a file two
/// inputs match is read by both, and each of its lines shipped twice. Said once, not refused
/// (two inputs may mean it: other formats, other outputs).
/// Also the log files the tailers hold open, each tailer's count published at its looks: they
/// stop short of the descriptor limit by `FD_RESERVE`, which is left for what tailrace itself
/// needs (checkpoints, the spool, connections, the admin endpoint): log files taking every
/// descriptor left no checkpoint written and no admin answer.
#[derive(Debug, Default)]
pub struct Holders {
    inputs: Mutex<HashMap<FileKey, Vec<String>>>,
    open: std::sync::atomic::AtomicUsize,
}

/// Descriptors left to tailrace's own files and sockets (a quarter of the limit when lower).
const FD_RESERVE: u64 = 64;

impl Holders {
    /// A tailer's open log files went from `old` to `new`; the others' total after.
    fn publish_open(&self, old: usize, new: usize) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let before = if new >= old { self.open.fetch_add(new - old, Relaxed) } else { self.open.fetch_sub(old - new, Relaxed) };
        before.saturating_sub(old)
    }

    /// `input` holds `key` now: another input that holds it too, if any.
    fn claim(&self, key: FileKey, input: &str) -> Option<String> {
        let mut m = self.inputs.lock().expect("holders lock");
        let inputs = m.entry(key).or_default();
        if !inputs.iter().any(|i| i == input) {
            inputs.push(input.to_owned());
        }
        inputs.iter().find(|i| *i != input).cloned()
    }

    fn release(&self, key: FileKey, input: &str) {
        let mut m = self.inputs.lock().expect("holders lock");
        if let Some(inputs) = m.get_mut(&key) {
            inputs.retain(|i| i != input);
            if inputs.is_empty() {
                m.remove(&key);
            }
        }
    }
}

/// What the owner may read without the tailer: published by the binding after each step.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub counters: Counters,
    pub files_open: usize,
    pub files_tracked: usize,
    /// Records whose bytes were not valid UTF-8 (exported with replacement characters).
    pub invalid_utf8: u64,
    /// Files said to be written wait to be read (their events are drained): the owner sleeps
    /// until `next_wakeup` rather than waiting for the descriptor.
    pub waiting: bool,
    /// How long written files wait before they are read now (auto mode adapts it).
    pub read_delay: Duration,
    /// Bytes this tailer holds for unfinished lines.
    pub pending_bytes: usize,
    /// Files `auto`/`inotify` could not watch, polled instead.
    pub files_polled: usize,
}

pub struct Tailer {
    pub(crate) cfg: TailerConfig,
    pub(crate) discoverer: Discoverer,
    pub(crate) watcher: Box<dyn Watcher>,
    pub(crate) readers: KeyMap<FileKey, FileReader>,
    /// The readers by their file's directory (`Source::dir`), kept with `readers` (`hold`,
    /// `drop_reader`): a look of a few directories (a rotation, a pod created or deleted)
    /// visits the readers there, not every reader (~4 ms at 10,000 files).
    pub(crate) by_dir: HashMap<Box<[u8]>, Vec<FileKey>>,
    pub(crate) checkpoints: Arc<Mutex<Checkpointer>>,
    ledger: Arc<Ledger>,
    pub(crate) batcher: Batcher,
    codec: Arc<CodecChoice>,
    pending: Arc<PendingBudget>,
    holders: Arc<Holders>,
    /// This tailer's part of `pending.used` as last published.
    pending_mine: usize,
    pub counters: Counters,
    buf: Vec<u8>,
    pub(crate) looked: bool,
    next_look: Option<Instant>,
    /// Files whose last pass stopped at the budget, not at EOF (or found by a look).
    pub(crate) more: Vec<FileKey>,
    /// Files whose head grew since it was last handed to the ledger: handed with the first
    /// closed batch that holds their lines (`take_ready`), so that only they are looked up.
    grown: Vec<FileKey>,
    /// Problems to report once each (unreadable paths), drained by the owner.
    reports: Vec<String>,
    pub(crate) reported: HashSet<String>,
    /// Directory listings, valid for one look (cleared before and after each).
    pub(crate) dir_cache: discovery::DirCache,
    /// Paths whose steady file left during this look: the file found there next starts steady.
    pub(crate) steady_paths: HashSet<PathBuf>,
    /// Files found outside the allowed roots: never opened again.
    pub(crate) refused: HashSet<FileKey>,
    /// Paths that could not be opened or listed (permissions): retried at every look of
    /// their directory, and a chmod there asks for that look (`Watcher::watch_attribs`).
    pub(crate) unreadable: BTreeSet<PathBuf>,
    /// Files a look could not open for want of descriptors (EMFILE, ENFILE, or past the limit
    /// less `FD_RESERVE`): said once per look as one line, not a line each (thousands on a
    /// node past its limit).
    pub(crate) starved: Vec<PathBuf>,
    /// Log files this look may still open (see `Holders`), and how many this tailer last
    /// published as open.
    pub(crate) may_open: usize,
    open_published: usize,
    /// The open-files soft limit as the last look read it.
    pub(crate) nofile: u64,
    /// Files with a timer of their own: a carried partial line, or draining.
    timed: BTreeSet<FileKey>,
    /// Files said to be written, not read yet (they wait `read_delay` from `waiting_since`).
    waiting: Vec<FileKey>,
    waiting_since: Option<Instant>,
    /// Events drained since `waiting_since` (their rate bounds the next delay).
    waiting_events: u64,
    /// A look the watcher's events asked for, not made yet.
    look_scope: Option<Scope>,
    read_delay: Duration,
    /// The reader's cap on a framed line: `max_line_bytes`, plus room for a container
    /// runtime's envelope (the parser caps the message itself).
    line_cap: usize,
}

/// Whether a reader needs a timer of its own (a carried partial line, or draining), kept in
/// `timed` so that only those files are visited by `timers`. The one place this is decided.
fn retime(timed: &mut BTreeSet<FileKey>, key: FileKey, r: &mut FileReader) {
    let want = r.holds() || matches!(r.state, FileState::Draining { .. });
    if want != r.timed {
        r.timed = want;
        if want {
            timed.insert(key);
        } else {
            timed.remove(&key);
        }
    }
}

/// Where a look looks.
pub(crate) enum Scope {
    /// Every path the globs match.
    Everywhere,
    /// The files directly in these directories (their events asked for it): a rotation costs
    /// a listing of its directory and a stat of the names there, not of every path.
    Dirs(BTreeSet<PathBuf>),
}

/// Files to read, each with the write events drained for it since its last read (the steady
/// rule weighs them; files in `more` and steady ones raise none).
type Pass = Vec<(FileKey, u16)>;

/// What reading one file found.
enum Outcome {
    /// Bytes were read (or none); `true` when some were.
    Read(bool),
    /// Truncated or replaced in place (`true`: bytes were read before it was found): rotation
    /// policy decides what follows.
    Truncated(bool),
    /// Not held any more, or the read failed (reported).
    Skipped,
}

impl Tailer {
    pub fn new(cfg: TailerConfig, checkpoints: Arc<Mutex<Checkpointer>>, first_batch_id: u64, codec: Arc<CodecChoice>) -> Result<Self> {
        if cfg.max_line_bytes == 0 || cfg.read_budget == 0 {
            return Err(Error::Config("max_line_bytes and read_budget must be positive".into()));
        }
        let discoverer = Discoverer::new(&cfg.paths, &cfg.exclude, &cfg.allowed_roots)?;
        let no_inotify = |e| Error::io("watch: cannot create an inotify instance", e);
        let watcher: Box<dyn Watcher> = match cfg.watch {
            WatchMode::Poll => Box::new(PollWatcher::new(cfg.poll_interval)),
            WatchMode::Inotify => Box::new(InotifyWatcher::new(cfg.poll_interval, false, false).map_err(no_inotify)?),
            WatchMode::Naive => Box::new(NaiveWatcher::new(cfg.poll_interval).map_err(no_inotify)?),
            WatchMode::Auto => Box::new(InotifyWatcher::new(cfg.poll_interval, false, true).map_err(no_inotify)?),
        };
        let mut batcher = Batcher::with_compression(cfg.batch.clone(), cfg.encodings, &cfg.host, cfg.node_name.as_deref(), first_batch_id, codec.clone());
        batcher.set_file_attrs(cfg.file_attrs);
        let ledger = Arc::new(Ledger::new(&cfg.name, cfg.outputs, checkpoints.clone()));
        let buf = vec![0u8; cfg.buffer_size.max(4096)];
        let mut t = Tailer {
            cfg,
            discoverer,
            watcher,
            readers: KeyMap::default(),
            by_dir: HashMap::new(),
            checkpoints,
            ledger,
            batcher,
            codec,
            pending: Arc::new(PendingBudget::new(0)),
            holders: Arc::new(Holders::default()),
            pending_mine: 0,
            counters: Counters::default(),
            buf,
            looked: false,
            next_look: None,
            more: Vec::new(),
            grown: Vec::new(),
            reports: Vec::new(),
            reported: HashSet::new(),
            dir_cache: discovery::DirCache::default(),
            steady_paths: HashSet::new(),
            refused: HashSet::new(),
            unreadable: BTreeSet::new(),
            starved: Vec::new(),
            may_open: usize::MAX,
            open_published: 0,
            nofile: u64::MAX,
            timed: BTreeSet::new(),
            waiting: Vec::new(),
            waiting_since: None,
            waiting_events: 0,
            look_scope: None,
            read_delay: Duration::ZERO,
            line_cap: 0,
        };
        t.line_cap = match t.cfg.format {
            Format::Plain => t.cfg.max_line_bytes,
            _ => t.cfg.max_line_bytes.saturating_add(64 * 1024),
        };
        t.read_delay = t.max_read_delay();
        t.pending = Arc::new(PendingBudget::new(t.cfg.max_pending_bytes));
        Ok(t)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The ledger acknowledgements go to (shared: they arrive while a step runs).
    pub fn ledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    /// The codec batches are compressed with as they close (the owner changes it).
    pub fn codec(&self) -> Arc<CodecChoice> {
        self.codec.clone()
    }

    pub fn status(&self) -> Status {
        Status {
            counters: self.counters,
            files_open: self.readers.values().filter(|r| r.is_open()).count(),
            files_tracked: self.readers.len(),
            invalid_utf8: self.batcher.invalid_utf8,
            waiting: self.has_waiting(),
            read_delay: self.read_delay,
            pending_bytes: self.pending_mine,
            files_polled: self.watcher.polled_fallback(),
        }
    }

    pub fn read_delay(&self) -> Duration {
        self.read_delay
    }

    pub fn has_waiting(&self) -> bool {
        self.waiting_since.is_some()
    }

    pub fn take_reports(&mut self) -> Vec<String> {
        std::mem::take(&mut self.reports)
    }

    pub(crate) fn report(&mut self, key: String, msg: String) {
        if self.reported.insert(key) {
            self.reports.push(msg);
        }
    }

    pub(crate) fn clear_report(&mut self, key: &str) {
        self.reported.remove(key);
    }

    /// The descriptor to wait on for news (inotify modes), if any.
    pub fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        self.watcher.readiness_fd()
    }

    /// One pass: the phases of the module doc, in order. Returns the batches closed.
    pub fn step(&mut self, now: Instant) -> Vec<Batch> {
        self.counters.steps += 1;
        self.look_if_due(now);
        let read = self.files_to_read(now).map(|(files, since)| (since, self.read_files(files, now)));
        self.timers(now);
        if self.pending_mine > 0 {
            let held = self.held_bytes(); // flushed partial lines gave memory back
            self.publish_held(held);
        }
        if let Some((Some(since), _)) = read {
            // The lines just read were waiting in their files since `since`: their batch's age
            // counts from then, so deferring the read adds no latency.
            self.batcher.backdate(since);
        }
        self.batcher.close_if_due(now, false);
        if let Some((_, bytes)) = read {
            self.drain_written(now, bytes);
        }
        #[cfg(test)]
        self.check_by_dir();
        self.take_ready()
    }

    /// `by_dir` holds every reader once, under its directory, and nothing else (the unit tests
    /// check it after every step).
    #[cfg(test)]
    fn check_by_dir(&self) {
        let mut indexed: Vec<(FileKey, &[u8])> = self.by_dir.iter().flat_map(|(d, ks)| ks.iter().map(move |k| (*k, &d[..]))).collect();
        let mut held: Vec<(FileKey, &[u8])> = self.readers.iter().map(|(k, r)| (*k, r.source.dir())).collect();
        indexed.sort_unstable();
        held.sort_unstable();
        assert_eq!(indexed, held, "by_dir out of step with readers");
        assert!(self.by_dir.values().all(|ks| !ks.is_empty()));
    }

    /// Close the open batch now (shutdown) and return every batch not yet handed out.
    pub fn flush(&mut self, now: Instant) -> Vec<Batch> {
        self.batcher.close_if_due(now, true);
        self.take_ready()
    }

    /// Acknowledge batch `id` for one output (see `Ledger::ack`). Returns whether it was pending.
    pub fn commit(&mut self, id: u64) -> bool {
        self.ledger.ack(id).is_some()
    }

    // ---- phase 1: events and looks ----

    /// Look everywhere when the rescan timer is due (or the events were lost), else where the
    /// events asked.
    fn look_if_due(&mut self, now: Instant) {
        self.collect(now);
        let due = self.next_look.is_none_or(|t| now >= t);
        match self.look_scope.take() {
            Some(Scope::Dirs(dirs)) if !due => self.look(now, Some(&dirs)),
            None if !due => {}
            _ => {
                self.look(now, None);
                self.next_look = Some(now + self.cfg.rescan_interval);
            }
        }
    }

    /// Drain the watcher's news: files said to be written join `waiting`; files created,
    /// renamed or deleted ask for a look (`look_scope`).
    fn collect(&mut self, now: Instant) {
        let before = self.counters.inotify_events;
        let mut dirty = Vec::new();
        let mut news = {
            let mut open = self.readers.iter().filter(|(_, r)| r.is_open()).map(|(k, _)| *k);
            self.watcher.collect(now, &mut open, &mut dirty, &mut self.counters)
        };
        for msg in std::mem::take(&mut news.reports) {
            self.report(msg.clone(), msg);
        }
        if !dirty.is_empty() && self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        self.waiting.append(&mut dirty);
        self.waiting_events += self.counters.inotify_events - before;
        if news.look {
            // A directory that left (a pod deleted, a directory moved away): a look of the
            // directories its files were read in sees them gone; a look everywhere (which
            // lists every directory of the input: ~0.4 s of CPU at 10,000 files) is needed
            // only where it was on the way to a glob's base.
            for gone in std::mem::take(&mut news.left) {
                if self.discoverer.leads_to_a_base(&gone) {
                    news.everywhere = true;
                    continue;
                }
                // The directories of readers at or below it (`by_dir`'s keys, by their bytes).
                let g = gone.as_os_str().as_encoded_bytes();
                let below = self.by_dir.keys().filter(|d| d.starts_with(g) && matches!(d.get(g.len()), None | Some(b'/')));
                news.dirs.extend(below.map(|d| PathBuf::from(OsStr::from_bytes(d))));
                news.dirs.push(gone);
            }
            // A directory that appeared: the globs walked below it (each directory watched, then
            // listed), and a look of the directories where its files may be; a look everywhere
            // (every directory of the input listed) only where that walk cannot say.
            for new in std::mem::take(&mut news.appeared) {
                let watcher = &mut self.watcher;
                match self.discoverer.dirs_under(&new, &mut self.dir_cache, &mut self.counters.syscalls, &mut |d| watcher.watch_dir(d)) {
                    Some(dirs) => news.dirs.extend(dirs),
                    None => news.everywhere = true,
                }
            }
            self.look_scope = match (self.look_scope.take(), news.everywhere) {
                (Some(Scope::Everywhere), _) | (_, true) => Some(Scope::Everywhere),
                (Some(Scope::Dirs(mut d)), false) => {
                    d.extend(news.dirs);
                    Some(Scope::Dirs(d))
                }
                (None, false) => Some(Scope::Dirs(news.dirs.into_iter().collect())),
            };
            // A look of directories waits with the written files: it is made by the step that
            // reads them, not by a step of its own (a rotated file is drained through its
            // descriptor meanwhile; its successor's lines wait as written lines do).
            if matches!(self.look_scope, Some(Scope::Dirs(_))) && !self.read_delay.is_zero() && self.waiting_since.is_none() {
                self.waiting_since = Some(now);
            }
        }
    }

    // ---- phase 2: which files to read ----

    /// The longest written files may wait: `coalesce`, or in auto mode the batch's age limit
    /// (modes that do not defer reads: none).
    fn max_read_delay(&self) -> Duration {
        match self.cfg.coalesce {
            _ if !self.watcher.defers_reads() => Duration::ZERO,
            Some(d) => d,
            None => self.cfg.batch.max_age,
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

    /// Steady files are read on the cadence (they raise no write events).
    fn steady_mode(&self) -> bool {
        self.watcher.event_driven() && !self.read_delay.is_zero()
    }

    /// The files to read now, draining ones first, and since when they waited; `None` when no
    /// read is due (written files wait `read_delay` unless there is a backlog or a look found
    /// files).
    fn files_to_read(&mut self, now: Instant) -> Option<(Pass, Option<Instant>)> {
        let due = self.waiting_since.is_some_and(|t| now >= t + self.read_delay);
        if !due && self.more.is_empty() {
            return None;
        }
        self.counters.read_passes += 1;
        let since = self.waiting_since.take();
        if let Some(since) = since {
            let events = std::mem::take(&mut self.waiting_events);
            self.adapt_read_delay(now.saturating_duration_since(since), events);
        }
        // `waiting` holds a file once per write event; steady files and `more` raise none.
        let mut files: Pass = self.waiting.drain(..).map(|k| (k, 1)).collect();
        if self.steady_mode() {
            files.extend(self.watcher.steady_files().into_iter().map(|k| (k, 0)));
        }
        files.extend(self.more.drain(..).map(|k| (k, 0)));
        files.sort_unstable();
        files.dedup_by(|a, b| {
            let same = a.0 == b.0;
            if same {
                b.1 = b.1.saturating_add(a.1);
            }
            same
        });
        // Files rotated away first: their lines were written before those of their successors.
        // Only draining files have a timer: without one, there is nothing to put first.
        if !self.timed.is_empty() {
            let (draining, active): (Vec<_>, Vec<_>) =
                files.into_iter().partition(|(k, _)| self.readers.get(k).is_none_or(|r| r.state != FileState::Active));
            files = draining;
            files.extend(active);
        }
        Some((files, since))
    }

    // ---- phase 3: reads ----

    fn backpressure(&self) -> bool {
        self.batcher.ready_len() >= self.cfg.max_ready_batches
    }

    /// Passes over the files with more to read, each within its per-file budget (so one hot
    /// file cannot starve the others), until every file is at EOF or enough batches are ready:
    /// a step carries megabytes when there is a backlog, not one budget's worth.
    /// Returns whether any bytes were read.
    fn read_files(&mut self, mut pass: Pass, now: Instant) -> bool {
        self.batcher.set_clock(now, unix_ns(SystemTime::now()));
        let mut steady = self.steady_mode();
        // What unfinished lines hold, kept current as files are read (the memory bound).
        let mut held = self.held_bytes();
        self.publish_held(held);
        let mut any = false;
        loop {
            let mut progress = false;
            let mut i = 0;
            while i < pass.len() {
                if self.backpressure() {
                    self.more.extend(pass[i..].iter().map(|(k, _)| *k));
                    break;
                }
                let (key, events) = pass[i];
                i += 1;
                // One lookup of the reader per file in the common case: it says what it held
                // before and after its read (a truncation or a contained panic looks again).
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read_file(key, now, steady.then_some(events))));
                let (outcome, before, mut after) = match read {
                    Ok(read) => read,
                    Err(panic) => {
                        // What the reader held before is unknown now: count every holder again.
                        let outcome = self.contain_panic(key, panic.as_ref());
                        held = self.held_bytes();
                        self.publish_held(held);
                        (outcome, 0, Some(0))
                    }
                };
                match outcome {
                    Outcome::Read(bytes) => progress |= bytes,
                    Outcome::Truncated(bytes) => {
                        progress |= bytes;
                        self.truncated(key, now);
                        pass.extend(self.more.drain(..).map(|k| (k, 0))); // the copy, if any, then the file from 0: now
                        after = None;
                    }
                    Outcome::Skipped => {}
                }
                let after = after.unwrap_or_else(|| self.readers.get(&key).map_or(0, FileReader::held_bytes));
                held = (held + after).saturating_sub(before);
                if after != before {
                    self.publish_held(held);
                    if self.pending.over() {
                        held = self.spill_largest(now);
                    }
                }
            }
            any |= progress;
            steady = false; // a file's streak counts steps, not passes
            if self.watcher.one_pass() || !progress || self.more.is_empty() || self.backpressure() {
                break;
            }
            pass = self.more.drain(..).map(|k| (k, 0)).collect();
        }
        self.watcher.after_reads(&mut self.readers.values(), &mut self.counters);
        self.dir_cache.clear(); // listings made by truncations in this step are not reused
        any
    }

    /// Bytes this tailer holds for unfinished lines (only files with a timer hold any).
    fn held_bytes(&self) -> usize {
        self.timed.iter().filter_map(|k| self.readers.get(k)).map(FileReader::held_bytes).sum()
    }

    fn publish_held(&mut self, mine: usize) {
        self.pending.change(self.pending_mine, mine);
        self.pending_mine = mine;
    }

    /// Over the memory bound: the largest holders spill what they hold until it is met again.
    /// Returns what this tailer holds after.
    fn spill_largest(&mut self, now: Instant) -> usize {
        let mut holders: Vec<(usize, FileKey)> =
            self.timed.iter().filter_map(|k| self.readers.get(k).map(|r| (r.held_bytes(), *k))).filter(|(n, _)| *n > 0).collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        let mut mine = self.pending_mine;
        for (n, key) in holders {
            if !self.pending.over() {
                break;
            }
            let r = self.readers.get_mut(&key).expect("timed readers are held");
            r.spill(now, &mut self.batcher, &mut self.counters);
            retime(&mut self.timed, key, r);
            self.counters.memory_spills += 1;
            mine -= n;
            self.publish_held(mine);
        }
        mine
    }

    /// Make this tailer count its unfinished lines against `other`'s memory bound (one bound
    /// for the process, however many inputs), and say the files `other`'s input reads too.
    pub fn share_with(&mut self, other: &Tailer) {
        self.publish_held(0);
        self.pending = other.pending.clone();
        self.leave_holders();
        self.holders = other.holders.clone();
        let keys: Vec<FileKey> = self.readers.keys().copied().collect();
        for key in keys {
            self.claim(key);
        }
    }

    /// Forget, in the shared `Holders`, every file this tailer holds (it leaves them).
    fn leave_holders(&mut self) {
        for &key in self.readers.keys() {
            self.holders.release(key, &self.cfg.name);
        }
        self.holders.publish_open(self.open_published, 0);
        self.open_published = 0;
    }

    /// At a look: how many log files it may open, from the descriptor limit less `FD_RESERVE`
    /// and what every tailer of the process holds open. At its end (`done`): what it holds now.
    pub(crate) fn count_open(&mut self, done: bool) {
        // Every close is counted (`hold` closes a reader it replaces): O(1), so a look of one
        // directory still costs what is in it.
        let mine = usize::try_from(self.counters.files_opened.saturating_sub(self.counters.files_closed)).unwrap_or(usize::MAX);
        let others = self.holders.publish_open(self.open_published, mine);
        self.open_published = mine;
        if !done {
            // Read at every look: an operator may raise it on the running process (`prlimit`).
            self.nofile = discovery::nofile_limit().map_or(u64::MAX, |(soft, _)| soft);
            let cap = self.nofile.saturating_sub(FD_RESERVE.min(self.nofile / 4));
            self.may_open = usize::try_from(cap).unwrap_or(usize::MAX).saturating_sub(others + mine);
        }
    }

    /// Say once when another input of the process reads `key` too.
    fn claim(&mut self, key: FileKey) {
        if let Some(other) = self.holders.claim(key, &self.cfg.name) {
            let path = self.readers.get(&key).map(|r| r.source.path.display().to_string()).unwrap_or_default();
            let msg = format!("{path} is read by input {other} too: each of its lines is shipped twice (exclude it from one of them)");
            self.report(format!("twice:{path}"), msg);
        }
    }

    /// Bytes held for unfinished lines by every tailer sharing this one's bound.
    pub fn pending_bytes(&self) -> usize {
        self.pending.used()
    }

    /// A bug hit while reading `key` is contained to that file: it is dropped (its checkpoint
    /// stays at what was acknowledged, so a restart reads it again), reported once and
    /// counted (`panics`); every other file keeps flowing.
    fn contain_panic(&mut self, key: FileKey, panic: &(dyn std::any::Any + Send)) -> Outcome {
        let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
        self.counters.panics += 1;
        if let Some(mut r) = self.drop_reader(key) {
            self.holders.release(key, &self.cfg.name);
            let path = r.source.path.display().to_string();
            r.close(&mut self.counters);
            self.watcher.unwatch(key);
            self.timed.remove(&key);
            self.refused.insert(key);
            self.report(format!("panic:{path}"), format!("internal error reading {path} ({what}): that file is no longer read until a restart; please report it"));
        }
        Outcome::Skipped
    }

    /// Read one file within its budget (files with more to read join `more`); returns the
    /// outcome with the bytes its reader held for unfinished lines before the read and after it
    /// (one lookup of the reader: this runs for every file at every pass).
    /// `steady`: the write events drained for the file since its last read, at the pass that
    /// may change its steadiness (`None` at the others).
    fn read_file(&mut self, key: FileKey, now: Instant, steady: Option<u16>) -> (Outcome, usize, Option<usize>) {
        let Some(r) = self.readers.get_mut(&key) else { return (Outcome::Skipped, 0, Some(0)) };
        let before = r.held_bytes();
        self.watcher.before_read(r, &mut self.counters);
        let res = r.read(&mut self.buf, self.cfg.read_budget, self.line_cap, now, &mut self.batcher, &mut self.counters);
        self.watcher.after_read(r, &mut self.counters);
        if !r.head_queued && r.fp.bytes.len() > r.fp_sent {
            r.head_queued = true;
            self.grown.push(key);
        }
        if let (Some(events), Ok(res)) = (steady, &res) {
            update_steady(self.watcher.as_mut(), &mut self.counters, key, r, res, events);
        }
        retime(&mut self.timed, key, r);
        let outcome = match res {
            Ok(res) if res.replaced => Outcome::Truncated(res.bytes > 0),
            Ok(res) if !res.eof => {
                self.more.push(key);
                Outcome::Read(res.bytes > 0)
            }
            // An event said "written" (or the file is steady), there was nothing to read, and
            // the file is now shorter than our position: truncated. (Nothing to read is usually
            // just an event for bytes an earlier read already took; the read itself tells, see
            // `FileReader::read`, without a stat or an lseek.)
            Ok(res) if res.shrunk && self.watcher.event_driven() && r.state == FileState::Active => {
                Outcome::Truncated(false)
            }
            Ok(res) => Outcome::Read(res.bytes > 0),
            Err(e) => {
                self.counters.read_errors += 1;
                let msg = format!("read {}: {e}", r.source.path.display());
                r.close(&mut self.counters);
                let after = r.held_bytes();
                self.report(format!("read:{}", key.ino), msg);
                return (Outcome::Skipped, before, Some(after));
            }
        };
        (outcome, before, Some(r.held_bytes()))
    }

    // ---- phase 4: timers of single files ----

    /// Hold a new reading of a file (replacing any reader of it, and its timer) and queue it to
    /// be read.
    pub(crate) fn hold(&mut self, key: FileKey, mut r: FileReader) {
        r.parser = Parser::new(self.cfg.format);
        r.max_message = self.cfg.max_line_bytes;
        let dir: Box<[u8]> = r.source.dir().into();
        if let Some(mut replaced) = self.drop_reader(key) {
            replaced.close(&mut self.counters); // counted, as every close (`count_open`)
        }
        self.readers.insert(key, r);
        self.by_dir.entry(dir).or_default().push(key);
        self.claim(key);
        self.timed.remove(&key);
        self.retime(key);
        self.more.push(key);
    }

    /// Take `key`'s reader out of `readers` and `by_dir`.
    fn drop_reader(&mut self, key: FileKey) -> Option<FileReader> {
        let r = self.readers.remove(&key)?;
        if let Some(keys) = self.by_dir.get_mut(r.source.dir()) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.by_dir.remove(r.source.dir());
            }
        }
        Some(r)
    }

    /// Track whether a reader has a timer of its own (for callers without the reader at hand).
    pub(crate) fn retime(&mut self, key: FileKey) {
        match self.readers.get_mut(&key) {
            Some(r) => retime(&mut self.timed, key, r),
            None => {
                self.timed.remove(&key);
            }
        }
    }

    /// Flush idle partial lines, close drained files. Only the files with such a timer are
    /// visited, not every file at every step.
    fn timers(&mut self, now: Instant) {
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
            retime(&mut self.timed, key, r);
        }
        for k in closed {
            self.drop_reader(k);
            self.holders.release(k, &self.cfg.name);
            self.timed.remove(&k);
            self.watcher.unwatch(k);
        }
    }

    /// Close the descriptors of files idle for `close_inactive` (checked at each look).
    pub(crate) fn close_inactive(&mut self, now: Instant) {
        for r in self.readers.values_mut() {
            let idle = now.saturating_duration_since(r.last_data);
            if r.state == FileState::Active && r.is_open() && r.eof && !r.holds() && idle >= self.cfg.close_inactive {
                r.close(&mut self.counters);
            }
        }
    }

    // ---- phase 6: events that came in while reading ----

    /// Writes made while this step read: drained now, so the owner sleeps until they are due
    /// rather than waking once more for the descriptor. (They count from the step's clock, a
    /// few ms early: the owner's clock is the only one the core reads.) After a read that found
    /// bytes (or with steady files) the next read is due one period on whatever comes: the
    /// owner sleeps through the period instead of waking at the first write event to start it
    /// (a wakeup costs more than a line; an idle period costs one step that finds nothing).
    fn drain_written(&mut self, now: Instant, bytes: bool) {
        if self.read_delay.is_zero() || !self.watcher.event_driven() {
            return;
        }
        self.collect(now); // a look asked for is made at the next step (`next_wakeup`: now)
        if (bytes || self.watcher.has_steady()) && self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
    }

    /// Hand out the closed batches, opening each in the ledger with the heads of files not yet
    /// fingerprinted in full (a commit stores the longer head).
    fn take_ready(&mut self) -> Vec<Batch> {
        let mut out = Vec::new();
        while let Some(b) = self.batcher.pop_ready() {
            self.counters.batches += 1;
            out.push(b);
        }
        if !out.is_empty() {
            let heads = self.grown_heads(&out);
            let ids: Vec<(u64, &[FileEnd])> = out.iter().map(|b| (b.id, b.offsets.as_slice())).collect();
            self.ledger.open(&ids, heads);
        }
        out
    }

    /// A head grows as its file is read (to FINGERPRINT_MAX): each growth is handed over once,
    /// with a closed batch holding the file's lines, and stored with the first acknowledgement
    /// after it. Only the files whose head grew are looked up (none once every head is full);
    /// those not in these batches stay queued.
    fn grown_heads(&mut self, out: &[Batch]) -> Vec<(FileKey, Fingerprint)> {
        let mut heads = Vec::new();
        if self.grown.is_empty() {
            return heads;
        }
        let mut grown = std::mem::take(&mut self.grown);
        grown.sort_unstable();
        grown.dedup();
        let mut held = vec![false; grown.len()];
        for (key, _, _) in out.iter().flat_map(|b| &b.offsets) {
            if let Ok(i) = grown.binary_search(key) {
                held[i] = true;
            }
        }
        for (key, held) in grown.into_iter().zip(held) {
            let Some(r) = self.readers.get_mut(&key) else { continue }; // gone: nothing to hand
            if !held {
                r.head_queued = true; // a reader made since it was queued is queued as well
                self.grown.push(key);
                continue;
            }
            r.head_queued = false;
            if r.fp.bytes.len() > r.fp_sent {
                r.fp_sent = r.fp.bytes.len();
                heads.push((key, r.fp.clone()));
            }
        }
        heads
    }

    /// When `step` next has work without new input: the watcher's tick, the next look, the open
    /// batch's age limit, written files due, a partial line's flush, a drained file's close.
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        let look_now = match self.look_scope {
            Some(Scope::Everywhere) => true,
            Some(Scope::Dirs(_)) => self.read_delay.is_zero(), // else due with the reads (`collect`)
            None => false,
        };
        if !self.more.is_empty() || self.batcher.ready_len() > 0 || look_now {
            return now;
        }
        let mut t = self.next_look.unwrap_or(now);
        let read = self.waiting_since.map(|s| s + self.read_delay);
        for c in [self.watcher.next_wakeup(), self.batcher.deadline(), read].into_iter().flatten() {
            t = t.min(c);
        }
        for r in self.timed.iter().filter_map(|k| self.readers.get(k)) {
            if let Some(since) = r.pending_since() {
                t = t.min(since + self.cfg.partial_flush);
            }
            if let FileState::Draining { since } = r.state {
                t = t.min(since.max(r.last_data) + self.cfg.rotate_wait);
            }
        }
        t.max(now)
    }
}

impl Drop for Tailer {
    fn drop(&mut self) {
        self.publish_held(0); // a shared bound forgets what this tailer held
        self.leave_holders();
    }
}

/// After a read of a pass that may change steadiness (see `Steadiness`): the watcher is told.
fn update_steady(watcher: &mut dyn Watcher, c: &mut Counters, key: FileKey, r: &mut FileReader, res: &ReadResult, events: u16) {
    let Some(fd) = r.raw_fd() else { return };
    let Some(on) = r.steady.after_read(res.bytes > 0, events, r.state == FileState::Active) else { return };
    if watcher.set_steady(key, fd, on, c) {
        r.steady.set(on);
        if on {
            c.steady_on += 1;
        } else {
            c.steady_off += 1;
        }
    } else {
        r.steady.set(false); // refused (not watched, or not steady for the watcher): start over
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watcher::STEADY_EMPTY;
    use std::io::Write;
    use std::path::Path;

    /// A poll tailer reading at once, with batches that close at every step (each test
    /// changes what it is about).
    fn tailer(dir: &Path, f: impl FnOnce(&mut TailerConfig)) -> Tailer {
        let cp = Arc::new(Mutex::new(Checkpointer::open(&dir.join("state"), Duration::from_secs(3600)).unwrap()));
        let mut cfg = TailerConfig {
            name: "t".into(),
            paths: vec![format!("{}/*.log", dir.display())],
            exclude: vec![],
            allowed_roots: vec![],
            max_pending_bytes: usize::MAX,
            watch: WatchMode::Poll,
            poll_interval: Duration::ZERO,
            rescan_interval: Duration::ZERO,
            read_from: ReadFrom::Beginning,
            format: Format::Plain,
            max_line_bytes: 1 << 20,
            read_budget: 256 * 1024,
            buffer_size: 64 * 1024,
            partial_flush: Duration::from_secs(5),
            rotate_wait: Duration::from_secs(5),
            close_inactive: Duration::from_secs(300),
            batch: BatchLimits { max_bytes: 1 << 30, max_records: 1 << 30, max_age: Duration::ZERO },
            encodings: Encodings { proto: false, json: true },
            host: "localhost".into(),
            node_name: None,
            file_attrs: FileAttrs { name: true, path: true },
            max_ready_batches: 4,
            coalesce: Some(Duration::ZERO),
            outputs: 1,
        };
        f(&mut cfg);
        Tailer::new(cfg, cp, 1, Arc::new(CodecChoice::default())).unwrap()
    }

    fn records(batches: &[Batch]) -> u64 {
        batches.iter().map(|b| b.records).sum()
    }

    #[test]
    fn a_file_two_inputs_read_is_said_once_by_the_second() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("both.log"), "x\n").unwrap();
        std::fs::create_dir(d.path().join("only")).unwrap();
        std::fs::write(d.path().join("only/u.log"), "y\n").unwrap();
        let mut t = tailer(d.path(), |_| {});
        let mut u = tailer(d.path(), |c| {
            c.name = "u".into();
            c.paths.push(format!("{}/only/*.log", d.path().display()));
        });
        u.share_with(&t);
        t.step(Instant::now());
        assert_eq!(t.take_reports(), Vec::<String>::new());
        // Both read it (two inputs may mean it): said once, by the input that came second.
        assert_eq!(records(&u.step(Instant::now())), 2);
        let both = d.path().join("both.log").display().to_string();
        assert_eq!(u.take_reports(), vec![format!("{both} is read by input t too: each of its lines is shipped twice (exclude it from one of them)")]);
        std::fs::write(d.path().join("both.log"), "x\nx\n").unwrap();
        u.step(Instant::now());
        assert_eq!(u.take_reports(), Vec::<String>::new());
        // The first input gone, the file is the second's alone: a third input reading it is
        // told about `u`.
        drop(t);
        let mut v = tailer(d.path(), |c| c.name = "v".into());
        v.share_with(&u);
        v.step(Instant::now());
        assert_eq!(v.take_reports(), vec![format!("{both} is read by input u too: each of its lines is shipped twice (exclude it from one of them)")]);
    }

    /// A pod deleted (or a directory moved away) on a node of many files is a look of the
    /// directories its files were read in, not of every directory: a look everywhere at 10,000
    /// files was ~0.4 s of CPU, and a deletion made one to three of them. Its files are drained
    /// and closed; what was written before is read; the rest of the node is not listed.
    #[test]
    fn a_directory_that_leaves_is_a_look_of_its_files_directories_not_of_every_one() {
        let d = tempfile::tempdir().unwrap();
        let pods = d.path().join("pods");
        let container = |p: usize, c: usize| pods.join(format!("ns_pod{p}_uid{p}")).join(format!("c{c}"));
        for p in 0..100 {
            for c in 0..2 {
                std::fs::create_dir_all(container(p, c)).unwrap();
                std::fs::write(container(p, c).join("0.log"), "x\n").unwrap();
            }
        }
        let mut t = tailer(d.path(), |c| {
            c.paths = vec![format!("{}/*/*/*.log", pods.display())];
            c.watch = WatchMode::Inotify;
            c.rescan_interval = Duration::from_secs(3600);
            c.rotate_wait = Duration::ZERO;
        });
        assert_eq!(records(&t.step(Instant::now())), 200);
        // Written, then deleted before it was read; then one moved out of the tree.
        std::fs::OpenOptions::new().append(true).open(container(0, 0).join("0.log")).unwrap().write_all(b"last\n").unwrap();
        std::fs::remove_dir_all(pods.join("ns_pod0_uid0")).unwrap();
        std::fs::rename(pods.join("ns_pod1_uid1"), d.path().join("away")).unwrap();
        let before = t.counters;
        let mut read = 0;
        for _ in 0..50 {
            read += records(&t.step(Instant::now()));
            if t.counters.files_closed - before.files_closed == 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (c, b) = (&t.counters, &before);
        assert_eq!((read, c.deletions - b.deletions, c.files_closed - b.files_closed), (1, 4, 4));
        // The four containers' directories (and the two pods') listed, not the 200 others; no
        // stat of the 196 files left.
        assert!(c.syscalls.readdir - b.syscalls.readdir <= 12, "{} listings", c.syscalls.readdir - b.syscalls.readdir);
        let stats = c.syscalls.stat_family() - b.syscalls.stat_family();
        assert!(stats <= 8, "{stats} stats");
        assert!(c.scoped_looks > b.scoped_looks);
        // A new pod is still found at once (a directory that appears asks for a look everywhere).
        std::fs::create_dir_all(container(200, 0)).unwrap();
        std::fs::write(container(200, 0).join("0.log"), "new\n").unwrap();
        let mut read = 0;
        for _ in 0..50 {
            read += records(&t.step(Instant::now()));
            if read == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(read, 1);
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
    fn a_grown_head_is_handed_over_with_the_first_batch_holding_its_file() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.log"), d.path().join("b.log"));
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let key = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            FileKey { dev: m.dev(), ino: m.ino() }
        };
        let (ka, kb) = (key(&a), key(&b));
        let mut t = tailer(d.path(), |c| c.partial_flush = Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(records(&t.step(t0)), 0); // discovery: both heads empty
        // a gets a line, b a partial one: b's head grew, but no closed batch holds b.
        std::fs::write(&a, "x\n").unwrap();
        std::fs::write(&b, "partial").unwrap();
        let first = t.step(t0 + Duration::from_millis(10));
        assert_eq!((first.len(), records(&first)), (1, 1));
        let ledger = t.ledger();
        assert_eq!(ledger.heads_waiting(), [ka], "only the head of a file in the batch");
        assert!(t.commit(first[0].id));
        // The partial line is flushed by its timer (no read grows the head again): the batch
        // holding it hands b's head over, and its acknowledgement stores it.
        let second = t.step(t0 + Duration::from_millis(200));
        assert_eq!((second.len(), records(&second)), (1, 1));
        assert_eq!(ledger.heads_waiting(), [kb]);
        assert!(t.commit(second[0].id));
        assert!(ledger.heads_waiting().is_empty());
        let cp = t.checkpoints.lock().unwrap();
        assert_eq!((&cp.get("t", ka).unwrap().fp.bytes[..], &cp.get("t", kb).unwrap().fp.bytes[..]), (&b"x\n"[..], &b"partial"[..]));
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
        // One pass of writes: `writes` writes, each an event (the events are drained between
        // them, as the kernel merges a write's event into an identical one queued last), read
        // `coalesce` after the first, or after the previous read when that one found bytes (the
        // next read is due one period on). Returns the records read.
        let pass = |t: &mut Tailer, f: &mut std::fs::File, now: &mut Instant, writes: usize, after_bytes: bool| {
            let first = *now + ms(10);
            let due = if after_bytes { *now + ms(100) } else { first + ms(100) };
            let mut n = 0;
            for w in 0..writes {
                f.write_all(b"x\n").unwrap();
                *now += ms(10);
                // Written, but not due: the events are drained, nothing is read yet.
                let reads = t.counters.syscalls.read;
                n += records(&t.step(*now));
                if w == 0 && t.counters.steady_on == t.counters.steady_off {
                    assert_eq!(t.counters.syscalls.read, reads, "read before coalesce");
                    assert!(t.has_waiting());
                    assert_eq!(t.next_wakeup(*now), due);
                }
            }
            *now = due;
            n + records(&t.step(*now))
        };
        // Written once per read (one event each): watched, however many reads in a row find
        // bytes (an empty read on the cadence would cost more than the event).
        for round in 1..=6u64 {
            total += pass(&mut t, &mut f, &mut now, 1, round > 1);
            assert_eq!(total, round, "round {round}");
        }
        assert_eq!((t.counters.steady_on, t.counters.syscalls.inotify_remask), (0, 0));
        // Written twice per read, three reads in a row: steady (one mask change), read on the
        // cadence with no write events at all.
        for round in 1..=3u64 {
            total += pass(&mut t, &mut f, &mut now, 2, true);
            assert_eq!(total, 6 + 2 * round, "round {round}");
            assert_eq!(t.counters.steady_on, u64::from(round == 3), "round {round}");
        }
        assert_eq!(t.counters.syscalls.inotify_remask, 1);
        let events = t.counters.inotify_events;
        f.write_all(b"z\n").unwrap();
        now += ms(100);
        assert_eq!(records(&t.step(now)), 1);
        assert_eq!(t.counters.inotify_events, events);
        // Reads that find nothing keep it steady until four of its last eight did (a file
        // written about once per period would flap otherwise): three, then one with bytes,
        // then the fourth empty one turns it back, not in a row.
        let empty_read = |t: &mut Tailer, now: &mut Instant| {
            *now += ms(100);
            assert_eq!(records(&t.step(*now)), 0);
        };
        for _ in 1..STEADY_EMPTY {
            empty_read(&mut t, &mut now);
            assert_eq!((t.counters.steady_off, t.counters.syscalls.inotify_remask), (0, 1));
        }
        f.write_all(b"v\n").unwrap();
        now += ms(100);
        assert_eq!(records(&t.step(now)), 1);
        assert_eq!(t.counters.inotify_events, events);
        empty_read(&mut t, &mut now);
        assert_eq!((t.counters.steady_off, t.counters.syscalls.inotify_remask), (1, 2));
        assert!(!t.has_waiting());
        // Back to watched, and a file that turned back needs twice the streak: five passes of
        // two writes leave it watched, the sixth turns it steady.
        total = 0;
        for round in 1..=6u64 {
            total += pass(&mut t, &mut f, &mut now, 2, round > 1);
            assert_eq!(total, 2 * round, "round {round}");
            assert_eq!(t.counters.steady_on, 1 + u64::from(round == 6), "round {round}");
        }
        assert!(t.counters.inotify_events >= events + 12);
        assert_eq!(t.counters.syscalls.inotify_remask, 3);
    }

    #[test]
    fn a_steady_files_successor_starts_steady_and_its_rotation_waits_for_the_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        std::fs::write(&p, "").unwrap();
        let mut t = tailer(d.path(), |c| {
            c.paths = vec![format!("{}/*.log", d.path().display())];
            c.watch = WatchMode::Inotify;
            c.rescan_interval = Duration::from_secs(3600);
            c.coalesce = Some(Duration::from_millis(100));
        });
        let ms = |n: u64| Duration::from_millis(n);
        let mut now = Instant::now();
        assert_eq!(records(&t.step(now)), 0); // discovery
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        for _ in 0..3 {
            let first = now + ms(10);
            for _ in 0..2 {
                f.write_all(b"x\n").unwrap(); // two events: the second drained apart
                now += ms(10);
                assert_eq!(records(&t.step(now)), 0); // written: the read waits `coalesce`
            }
            now = first + ms(100);
            assert_eq!(records(&t.step(now)), 2);
        }
        assert_eq!((t.counters.steady_on, t.counters.syscalls.inotify_remask), (1, 1));
        // The kubelet's rotation: renamed, the runtime reopens the path and goes on writing.
        std::fs::rename(&p, d.path().join("0.log.20261201-101500")).unwrap();
        let mut g = std::fs::OpenOptions::new().create(true).append(true).open(&p).unwrap();
        // The rotation's events, drained between two reads, ask for a look: it is made by the
        // step that reads (due `coalesce` after the last), not by a step of its own.
        let last = now;
        now += ms(10);
        t.collect(now);
        assert!(t.look_scope.is_some());
        assert_eq!((t.counters.rotations, t.next_wakeup(now)), (0, last + ms(100)));
        now = last + ms(100);
        assert_eq!(records(&t.step(now)), 0);
        assert_eq!(t.counters.rotations, 1);
        // The new file started steady, and its first read (before its first line) did not turn
        // it back: no mask change for it (the one change after the first is the drained file
        // turning back, its first read finding nothing); its writes raise no event; it is read
        // on the cadence.
        assert_eq!((t.counters.steady_on, t.counters.syscalls.inotify_remask), (1, 2));
        let events = t.counters.inotify_events;
        for _ in 0..3 {
            g.write_all(b"z\n").unwrap();
            now += ms(100);
            assert_eq!(records(&t.step(now)), 1);
        }
        assert_eq!(t.counters.inotify_events, events);
        assert_eq!(t.counters.syscalls.inotify_remask, 2);
    }

    #[test]
    fn a_file_truncated_and_written_past_our_position_between_two_reads_is_read_from_its_start() {
        // copytruncate racing a busy writer: by the next read the file is longer than our
        // offset again, so neither its size nor an empty read tells. The byte before our offset
        // does: the first read past the fingerprint overlaps it. Catches reading on from the
        // middle of the new content (a broken line, the new head lost).
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let (old, new) = crate::reader::rewrite_fixture();
        std::fs::write(&p, &old).unwrap();
        // Through inotify, with no look in between (a poll's look would see the new head).
        let mut t = tailer(d.path(), |c| {
            c.watch = WatchMode::Inotify;
            c.rescan_interval = Duration::from_secs(3600);
        });
        let mut now = Instant::now();
        let mut got = bodies(&t.step(now));
        assert_eq!(got.len(), 200);
        std::fs::write(&p, &new).unwrap(); // O_TRUNC, then 3,900 bytes
        for _ in 0..3 {
            now += Duration::from_millis(10);
            got.extend(bodies(&t.step(now)));
        }
        got.extend(bodies(&t.flush(now)));
        let want: Vec<(String, String)> =
            old.lines().chain(new.lines()).map(|l| (l.to_string(), String::new())).collect();
        assert_eq!(got, want);
        assert_eq!(t.counters.truncations, 1);
    }

    /// (body, flags as a string) of every record of `batches`, from their OTLP/JSON.
    fn bodies(batches: &[Batch]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for b in batches {
            let doc: serde_json::Value = serde_json::from_slice(&b.json).unwrap();
            for rl in doc["resourceLogs"].as_array().unwrap() {
                for rec in rl["scopeLogs"][0]["logRecords"].as_array().unwrap() {
                    let flags: Vec<&str> = rec["attributes"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|kv| kv["key"].as_str()).filter(|k| k.starts_with("tailrace.")).collect())
                        .unwrap_or_default();
                    out.push((rec["body"]["stringValue"].as_str().unwrap().to_string(), flags.join(",")));
                }
            }
        }
        out
    }

    #[test]
    fn a_symlink_out_of_the_allowed_roots_is_not_read_and_is_reported_once() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "root:x:0:0\n").unwrap();
        std::fs::write(outside.path().join("ok.log"), "allowed\n").unwrap();
        std::fs::write(d.path().join("a.log"), "mine\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), d.path().join("evil.log")).unwrap();
        let mut t = tailer(d.path(), |c| c.rescan_interval = Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(bodies(&t.step(t0)), [("mine".to_string(), String::new())]);
        let reports = t.take_reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        let want = format!("not reading {}/evil.log: it resolves to {}/passwd, outside the allowed roots", d.path().display(), outside.path().display());
        assert_eq!(reports[0], want);
        assert_eq!(t.counters.outside_roots, 1);
        // Looked at again and again: never opened again, never reported again.
        let opens = t.counters.syscalls.open;
        for i in 1..=3 {
            assert_eq!(records(&t.step(t0 + Duration::from_millis(i))), 0);
        }
        assert_eq!((t.counters.syscalls.open, t.counters.outside_roots, t.take_reports().len()), (opens, 1, 0));
        // A directory named in allowed_roots may be where a link leads.
        let d2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("ok.log"), d2.path().join("ok.log")).unwrap();
        let allowed = outside.path().display().to_string();
        let mut t = tailer(d2.path(), |c| c.allowed_roots = vec![allowed]);
        assert_eq!(bodies(&t.step(t0)), [("allowed".to_string(), String::new())]);
        assert_eq!(t.counters.outside_roots, 0);
    }

    #[test]
    fn fifos_sockets_directories_and_symlink_loops_matched_by_the_glob_are_skipped_and_reported_once() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("a.log"), "mine\n").unwrap();
        let fifo = std::ffi::CString::new(p("fifo.log").to_str().unwrap()).unwrap();
        // SAFETY: a plain libc call on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let _sock = std::os::unix::net::UnixListener::bind(p("sock.log")).unwrap();
        std::fs::create_dir(p("dir.log")).unwrap();
        std::os::unix::fs::symlink(p("loop.log"), p("loop.log")).unwrap();
        let mut t = tailer(d.path(), |c| c.rescan_interval = Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(bodies(&t.step(t0)), [("mine".to_string(), String::new())]);
        for i in 1..=3 {
            assert_eq!(records(&t.step(t0 + Duration::from_millis(i))), 0); // looked at again
        }
        let mut reports = t.take_reports();
        reports.sort();
        let at = d.path().display();
        assert_eq!(
            reports,
            [
                format!("cannot read {at}/dir.log: a directory, not a regular file: skipped"),
                format!("cannot read {at}/fifo.log: a FIFO, not a regular file: skipped"),
                format!("cannot read {at}/loop.log: Too many levels of symbolic links (os error 40)"),
                format!("cannot read {at}/sock.log: a socket, not a regular file: skipped"),
            ]
        );
        assert_eq!(t.counters.open_errors, 4);
    }

    /// Lines `from..to` of file `i` in `dir` (appended).
    fn append_lines(dir: &Path, i: usize, from: usize, to: usize) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("f{i}.log"))).unwrap();
        for n in from..to {
            writeln!(f, "file {i} line {n}").unwrap();
        }
    }

    /// Steps (10 ms apart from `*now`) until `want` records came, at most 500 steps.
    fn step_until(t: &mut Tailer, now: &mut Instant, want: usize) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..500 {
            *now += Duration::from_millis(10);
            got.extend(bodies(&t.step(*now)).into_iter().map(|(b, _)| b));
            if got.len() >= want {
                break;
            }
        }
        got.sort();
        got
    }

    fn expected(files: usize, from: usize, to: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..files).flat_map(|i| (from..to).map(move |n| format!("file {i} line {n}"))).collect();
        v.sort();
        v
    }

    #[test]
    fn past_the_inotify_watch_limit_files_are_polled_and_nothing_is_lost() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            append_lines(d.path(), i, 0, 10);
        }
        let mut t = tailer(d.path(), |c| {
            c.watch = WatchMode::Inotify;
            c.poll_interval = Duration::from_millis(50);
            c.rescan_interval = Duration::from_secs(3600);
        });
        t.watcher.simulate(crate::watcher::Simulate::WatchLimit(2));
        let mut now = Instant::now();
        assert_eq!(step_until(&mut t, &mut now, 50), expected(5, 0, 10));
        let reports = t.take_reports();
        assert_eq!(reports.iter().filter(|r| r.contains("polled instead")).count(), 3, "{reports:?}");
        // Written again: the two watched files by their events, the three others by polling.
        for i in 0..5 {
            append_lines(d.path(), i, 10, 20);
        }
        assert_eq!(step_until(&mut t, &mut now, 50), expected(5, 10, 20));
    }

    #[test]
    fn an_inotify_queue_overflow_is_a_look_everywhere_and_a_read_of_every_file() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..3 {
            append_lines(d.path(), i, 0, 5);
        }
        let mut t = tailer(d.path(), |c| {
            c.watch = WatchMode::Inotify;
            c.rescan_interval = Duration::from_secs(3600);
        });
        let mut now = Instant::now();
        assert_eq!(step_until(&mut t, &mut now, 15), expected(3, 0, 5));
        // Writes whose events the kernel dropped (the queue overflowed), and a file created
        // meanwhile: all found by the look everywhere and the read of every file it causes.
        for i in 0..4 {
            append_lines(d.path(), i, 5, 10);
        }
        t.watcher.simulate(crate::watcher::Simulate::Overflow);
        assert_eq!(step_until(&mut t, &mut now, 20), expected(4, 5, 10));
        assert_eq!(t.counters.inotify_overflows, 1);
    }

    #[test]
    fn a_bug_while_reading_one_file_is_contained_to_it() {
        let d = tempfile::tempdir().unwrap();
        append_lines(d.path(), 0, 0, 5);
        std::fs::write(d.path().join("panic.log"), "never read\n").unwrap();
        let mut t = tailer(d.path(), |_| {});
        let mut now = Instant::now();
        assert_eq!(step_until(&mut t, &mut now, 5), expected(1, 0, 5));
        assert_eq!(t.counters.panics, 1);
        let reports = t.take_reports();
        assert_eq!(reports.len(), 1);
        assert!(reports[0].starts_with(&format!("internal error reading {}/panic.log (a test's bug)", d.path().display())), "{reports:?}");
        // The others keep flowing; the file is not tried again.
        append_lines(d.path(), 0, 5, 10);
        assert_eq!(step_until(&mut t, &mut now, 5), expected(1, 5, 10));
        assert_eq!(t.counters.panics, 1);
    }

    #[test]
    fn unfinished_lines_across_files_are_bounded_by_spilling_the_largest_as_flagged_pieces() {
        let d = tempfile::tempdir().unwrap();
        // Three files end in lines without their newline: 6, 4 and 2 KiB.
        for (name, kib) in [("a", 6), ("b", 4), ("c", 2)] {
            std::fs::write(d.path().join(format!("{name}.log")), format!("{name} done\n{}", name.repeat(kib * 1024))).unwrap();
        }
        let mut t = tailer(d.path(), |c| c.max_pending_bytes = 8 * 1024);
        let t0 = Instant::now();
        let got = bodies(&t.step(t0));
        // 12 KiB held is over 8 KiB: the largest (a, 6 KiB) spilled, which was enough.
        let mut spilled: Vec<_> = got.iter().filter(|(_, f)| f == "tailrace.split").map(|(b, _)| (b.len(), b.chars().next().unwrap())).collect();
        spilled.sort();
        assert_eq!(spilled, [(6 * 1024, 'a')]);
        assert_eq!(got.iter().filter(|(_, f)| f.is_empty()).count(), 3, "the three complete lines");
        assert_eq!((t.counters.memory_spills, t.status().pending_bytes, t.pending_bytes()), (1, 6 * 1024, 6 * 1024));
        // The spilled line goes on in pieces flagged too; every byte is shipped once.
        std::fs::OpenOptions::new().append(true).open(d.path().join("a.log")).unwrap().write_all(b"aa end\n").unwrap();
        let got = bodies(&t.step(t0 + Duration::from_millis(1)));
        assert_eq!(got, [("aa end".to_string(), "tailrace.split".to_string())]);
        assert_eq!(t.counters.bytes, (7 + 6 * 1024 + 7) + 7 + 7, "a: its first line, the spilled piece, the rest; b and c: their first lines");
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
        assert_eq!(t.status().files_open, 1);
        assert_eq!(records(&t.step(t0 + Duration::from_secs(61))), 0);
        assert_eq!(t.status().files_open, 0);
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(records(&t.step(t0 + Duration::from_secs(62))), 1);
        assert_eq!(t.status().files_open, 1);
        assert_eq!((t.counters.files_opened, t.counters.files_closed), (2, 1));
    }

    #[test]
    fn a_file_whose_name_is_not_utf8_is_followed_like_any_other() {
        // Its path is known by its bytes: a look does not take it for deleted (its name as text
        // is not where it is), and it is reopened by its real name after closing as inactive.
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(std::ffi::OsStr::from_bytes(b"a\xff.log"));
        std::fs::write(&p, "one\n").unwrap();
        let mut t = tailer(d.path(), |c| c.close_inactive = Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(records(&t.step(t0)), 1);
        for i in 1..4 {
            std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"more\n").unwrap();
            assert_eq!(records(&t.step(t0 + Duration::from_secs(i))), 1); // each step a look everywhere
        }
        assert_eq!((t.counters.deletions, t.counters.rotations), (0, 0));
        assert!(t.readers.values().all(|r| r.state == FileState::Active));
        assert_eq!(records(&t.step(t0 + Duration::from_secs(65))), 0);
        assert_eq!(t.status().files_open, 0);
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"after\n").unwrap();
        assert_eq!(records(&t.step(t0 + Duration::from_secs(66))), 1);
        assert_eq!((t.counters.files_opened, t.counters.files_closed, t.counters.open_errors), (2, 1, 0));
        assert_eq!(t.counters.deletions, 0);
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

    #[test]
    fn a_rotation_or_a_new_directory_costs_a_look_of_its_directories_and_a_rescan_lists_each_once() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::create_dir_all(d.path().join(format!("pod{i}/c"))).unwrap();
            std::fs::write(d.path().join(format!("pod{i}/c/0.log")), "a\n").unwrap();
        }
        let mut t = tailer(d.path(), |c| {
            c.paths = vec![format!("{}/*/c/*.log", d.path().display())];
            c.watch = WatchMode::Inotify;
            c.rescan_interval = Duration::from_secs(3600);
        });
        let t0 = Instant::now();
        assert_eq!(records(&t.step(t0)), 20);
        let log = d.path().join("pod3/c/0.log");
        std::fs::rename(&log, d.path().join("pod3/c/0.log.20261201-101500")).unwrap();
        std::fs::write(&log, "b\n").unwrap();
        let before = t.counters.syscalls;
        assert_eq!(records(&t.step(t0 + Duration::from_millis(10))), 1);
        // One listing of pod3/c; stats: the name matching the glob, and the rotated sibling
        // (once, though both the old file's drain and the new file's adoption ask for it). Not
        // one of the other 19 paths.
        let after = t.counters.syscalls;
        assert_eq!((after.readdir - before.readdir, after.stat - before.stat, t.counters.scoped_looks), (1, 2, 1));
        assert_eq!(t.counters.rotations, 1);
        // A new pod's directory: the globs walked below it (`pod20/c` stat'ed, watched), then a
        // look of the base (the event's directory) and of `pod20/c`: two listings and a stat,
        // not the look everywhere's 44 stats and 22 listings below. Its first file is then
        // found as soon as it appears (a look of its directory), without the rescan timer.
        std::fs::create_dir_all(d.path().join("pod20/c")).unwrap();
        let before = t.counters.syscalls;
        assert_eq!(records(&t.step(t0 + Duration::from_millis(20))), 0);
        assert_eq!(t.counters.scoped_looks, 2, "a new directory is a look of its directories");
        assert_eq!((t.counters.syscalls.readdir - before.readdir, t.counters.syscalls.stat - before.stat), (2, 1));
        std::fs::write(d.path().join("pod20/c/0.log"), "new\n").unwrap();
        assert_eq!(records(&t.step(t0 + Duration::from_millis(30))), 1);
        assert_eq!(t.counters.scoped_looks, 3, "the new file: a look of its directory");
        // The rescan (a look everywhere): every path the globs match stat'ed (21), and the
        // walk's stats of the literal level `c` under each of the 22 directories `*` names (21
        // pods and `state`) and of the base; each directory listed once: the base and the 21
        // `c` directories (one walk for the watches and the files both; it was two walks and a
        // third of the base, and a stat of every entry to tell the directories).
        let before = t.counters.syscalls;
        t.step(t0 + Duration::from_secs(7200));
        assert_eq!(t.counters.scoped_looks, 3);
        assert_eq!((t.counters.syscalls.readdir - before.readdir, t.counters.syscalls.stat - before.stat), (1 + 21, 21 + 22 + 1));
    }

    /// `n` numbered lines of 101 bytes from `from`.
    fn numbered(from: usize, n: usize) -> String {
        (from..from + n).map(|i| format!("line {i:05} {}\n", "x".repeat(89))).collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn a_file_compressed_while_down_is_finished_from_its_checkpoint_exactly() {
        // Read and committed to line 2,000 of 3,000, then rotated, gzip-compressed and
        // unlinked while tailrace was down (the kubelet's `0.log.<time>.gz`), a new `0.log`
        // begun: a restart reads lines 2,000-2,999 from the .gz and the new file's, each once,
        // in order. Catches the .gz read from its start (2,000 duplicates) or not at all, or
        // resumed at a wrong offset (a broken line).
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        std::fs::write(&p, numbered(0, 2000)).unwrap();
        let now = Instant::now();
        {
            let mut t = tailer(d.path(), |_| {});
            let b = t.step(now);
            assert_eq!(records(&b), 2000);
            for batch in &b {
                assert!(t.commit(batch.id));
            }
            t.checkpoints.lock().unwrap().write().unwrap();
        }
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(numbered(2000, 1000).as_bytes()).unwrap();
        std::fs::write(d.path().join("0.log.20261202-120000.gz"), gzip(&std::fs::read(&p).unwrap())).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, numbered(5000, 3)).unwrap();
        let mut t = tailer(d.path(), |_| {});
        let mut got = bodies(&t.step(now));
        got.extend(bodies(&t.flush(now)));
        let mut want: Vec<String> = numbered(2000, 1000).lines().map(String::from).collect();
        want.extend(numbered(5000, 3).lines().map(String::from));
        got.sort();
        assert_eq!(got, want.into_iter().map(|l| (l, String::new())).collect::<Vec<_>>());
        assert_eq!(t.counters.recovered_from_gzip, 1);
    }

    #[test]
    fn a_compressed_file_is_held_in_memory_from_its_checkpoint_on_only() {
        // Decompressed into a memory file: its head, then what is unread at its place, nothing
        // between (bytes already read are dropped, not held). Catches the whole file held
        // (twice, with a copy), and bytes put at the wrong place. Past the limit what came
        // before is kept and the rest is reported by name.
        use std::io::Read;
        use std::os::unix::fs::{FileExt, MetadataExt};
        let d = tempfile::tempdir().unwrap();
        let data = numbered(0, 30_000); // 3,030,000 bytes
        let gz = d.path().join("0.log.20261202-120000.gz");
        std::fs::write(&gz, gzip(data.as_bytes())).unwrap();
        let mut t = tailer(d.path(), |_| {});
        let offset = 101 * 29_000;
        // Opened as recovery opens it: the head read first.
        let open = |gz: &Path| {
            let mut dec = flate2::read::GzDecoder::new(std::fs::File::open(gz).unwrap());
            let mut head = Vec::new();
            (&mut dec).take(crate::identity::FINGERPRINT_MAX as u64).read_to_end(&mut head).unwrap();
            (head, dec)
        };
        let (head, mut dec) = open(&gz);
        let (f, size) = t.unread_in_memory(&gz, head, &mut dec, offset, crate::rotation::RECOVER_HELD_MAX).unwrap();
        assert_eq!((size, f.metadata().unwrap().len()), (data.len() as u64, data.len() as u64));
        // Pages of memory: the head's and the unread 101,000 bytes' (26 pages with rounding),
        // not the 740 of the whole file.
        assert!(f.metadata().unwrap().blocks() * 512 <= 4096 * 27, "{} bytes held", f.metadata().unwrap().blocks() * 512);
        let mut back = vec![0u8; data.len() - offset as usize];
        f.read_exact_at(&mut back, offset).unwrap();
        assert_eq!(back, &data.as_bytes()[offset as usize..]);
        let mut first = vec![0u8; 1024];
        f.read_exact_at(&mut first, 0).unwrap();
        assert_eq!(first, &data.as_bytes()[..1024]);
        assert!(t.take_reports().is_empty());
        // At the checkpoint's end: nothing to read. Past the limit: the first bytes, reported.
        let (head, mut dec) = open(&gz);
        assert!(t.unread_in_memory(&gz, head, &mut dec, data.len() as u64, 1 << 20).is_none());
        let (head, mut dec) = open(&gz);
        let (_, size) = t.unread_in_memory(&gz, head, &mut dec, offset, 50_000).unwrap();
        assert_eq!(size, offset + 50_000);
        let reports = t.take_reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(reports[0].contains(&gz.display().to_string()) && reports[0].contains(&format!("up to byte {size}")), "{reports:?}");
        // A damaged .gz (its last 8 bytes, the CRC and size, cut off): what decompressed is
        // read, the damage reported by name; damaged before the checkpoint, nothing is read.
        let whole = gzip(data.as_bytes());
        let cut = d.path().join("1.log.20261202-120000.gz");
        std::fs::write(&cut, &whole[..whole.len() - 8]).unwrap();
        let (head, mut dec) = open(&cut);
        let (f, size) = t.unread_in_memory(&cut, head, &mut dec, offset, 1 << 30).unwrap();
        assert_eq!(size, f.metadata().unwrap().len());
        let mut back = vec![0u8; (size - offset) as usize];
        f.read_exact_at(&mut back, offset).unwrap();
        assert_eq!(back, &data.as_bytes()[offset as usize..size as usize]);
        let reports = t.take_reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(reports[0].contains(&cut.display().to_string()), "{reports:?}");
    }

    #[test]
    fn a_file_empty_when_found_is_checkpointed_with_its_full_head() {
        // The head grows after the file is found: the checkpoint must store it as its batches are
        // acknowledged, or a restart cannot tell the file from another and reads it again.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, "").unwrap();
        let mut t = tailer(d.path(), |_| {});
        let t0 = Instant::now();
        assert_eq!(records(&t.step(t0)), 0);
        std::fs::write(&p, "x".repeat(100) + "\n").unwrap();
        let b = t.step(t0);
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(("y".repeat(2000) + "\n").as_bytes()).unwrap();
        let c = t.step(t0);
        for batch in b.iter().chain(&c) {
            assert!(t.commit(batch.id));
        }
        let cp = t.checkpoints.lock().unwrap();
        let (_, e) = cp.entries_for("t").pop().unwrap();
        assert_eq!((e.offset, e.fp.bytes.len()), (2102, crate::identity::FINGERPRINT_MAX));
    }
}
