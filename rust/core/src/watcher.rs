//! Watcher: which files may have new bytes. The seam the watch modes plug into, so the reader
//! and tailer keep one shape whatever the mode:
//! - `poll`: every `poll_interval`, every open file is read once (a `read()` returning 0 is an
//!   idle file's whole cost; no stat).
//! - `inotify`: one inotify instance; file watches say which files were written, directory
//!   watches say when to look at paths (new files, rotation). The whole event queue is drained at
//!   each collect. Files that get no watch (limits, network and FUSE filesystems in `auto`) are
//!   polled instead.
//! - `naive` (`naive.rs`): Fluent Bit's event path, reproduced so the regression can be shown
//!   and guarded: one event per wakeup, and the fstat and fadvise calls Fluent Bit makes
//!   around its reads, through the read hooks below.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::counters::Counters;
use crate::identity::{FileKey, KeyMap};
use crate::reader::FileReader;

/// What a collect learnt besides dirty files.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct News {
    /// Paths changed (a file created, renamed, deleted, or its links changed): look at them.
    pub look: bool,
    /// The directories the changes were in (a look of those is enough), unless `everywhere`.
    pub dirs: Vec<PathBuf>,
    /// A look of every path is needed (the event queue overflowed, or a directory appeared).
    pub everywhere: bool,
    /// Directories that left (deleted, or moved away): what was read below them is gone with
    /// them. The tailer looks at those files' directories, or everywhere when one was on the
    /// way to a glob's base (see `Tailer::collect`).
    pub left: Vec<PathBuf>,
    /// Directories that appeared (made, or moved in): the globs are walked below them, watching
    /// what they cross, or everywhere when that is not enough (see `Tailer::collect`).
    pub appeared: Vec<PathBuf>,
    /// Problems to report once (a watch that could not be added).
    pub reports: Vec<String>,
}

/// Reads in a row, each after at least `STEADY_EVENTS` write events, before a file turns steady
/// (see `Watcher::set_steady`).
pub(crate) const STEADY_AFTER: u8 = 3;
/// Write events since the previous read that make a read count towards `STEADY_AFTER`. A steady
/// file costs one `pread` at every read pass, found something or not; a watched one costs its
/// events (~0.2 µs each to queue and drain) and a `pread` when written. At one event per pass
/// (thousands of files at a few lines a second each) a third of the passes find nothing, each
/// a cold `pread` (~1.6 µs at 5,000 files): such files are cheaper watched. From two, steady.
pub(crate) const STEADY_EVENTS: u16 = 2;
/// A steady file turns back when this many of its last eight reads found nothing (a file
/// written about once per pass), or at once when it was rotated away.
pub(crate) const STEADY_EMPTY: u32 = 4;

/// Whether a file is steady (read on the cadence, its write events off), decided from its
/// reads: the one place this rule lives. The tailer asks after each read of a pass that may
/// change it (`after_read`), tells the watcher, and records what the watcher did (`set`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steadiness {
    /// Steady now (mirrors the watcher's mask, which is set through `set`).
    pub on: bool,
    /// Reads in a row with new bytes after at least `STEADY_EVENTS` events (while not steady).
    streak: u8,
    /// The last eight reads while steady, one bit set for each that found nothing.
    empties: u8,
    /// Times this file turned back: each doubles the streak needed to turn steady again (up to
    /// 8×), so a file at the margin settles instead of flipping (two mask changes per flip,
    /// each a path lookup through `/proc/self/fd/N`).
    backoff: u8,
}

impl Steadiness {
    /// After a read that found new bytes (`bytes`) or not, `events` write events after the
    /// previous one: `Some(on)` when the file should change.
    pub fn after_read(&mut self, bytes: bool, events: u16, active: bool) -> Option<bool> {
        if self.on {
            self.empties = (self.empties << 1) | u8::from(!bytes);
            let back = (!active && !bytes) || self.empties.count_ones() >= STEADY_EMPTY;
            return back.then_some(false);
        }
        if bytes && events >= STEADY_EVENTS {
            self.streak = self.streak.saturating_add(1);
            (active && self.streak >= STEADY_AFTER << self.backoff).then_some(true)
        } else {
            self.streak = 0;
            None
        }
    }

    /// The watcher turned the file steady (`on`) or back (or it starts so).
    pub fn set(&mut self, on: bool) {
        if !on && self.on {
            self.backoff = (self.backoff + 1).min(3);
        }
        *self = Steadiness { on, streak: 0, empties: 0, backoff: self.backoff };
    }
}

pub trait Watcher: Send {
    /// Append the files that may have new bytes (of `open`, the files with a descriptor).
    fn collect(&mut self, now: Instant, open: &mut dyn Iterator<Item = FileKey>, dirty: &mut Vec<FileKey>, c: &mut Counters) -> News;
    /// When `collect` next has something to say without the descriptor becoming readable.
    fn next_wakeup(&self) -> Option<Instant>;
    /// A descriptor that becomes readable when `collect` has news (inotify); none for polling.
    fn readiness_fd(&self) -> Option<RawFd> {
        None
    }
    /// Events say when a file was written: a read of 0 bytes after one may be a truncation.
    fn event_driven(&self) -> bool {
        false
    }
    /// Watch a file's writes, with its write events off from the start when `steady` (a busy
    /// file's successor). Returns whether it starts steady, or the problem to report (the file
    /// is polled instead).
    fn watch(&mut self, _key: FileKey, _path: &Path, _steady: bool) -> Result<bool, String> {
        Ok(false)
    }
    fn unwatch(&mut self, _key: FileKey) {}
    /// Watch a directory for new and renamed files (idempotent).
    fn watch_dir(&mut self, _dir: &Path) {}
    /// Say attribute changes (chmod, chown) of what is in these watched directories, and only
    /// these (the set replaces the last one), as news of the directory: the directories of
    /// paths that could not be opened or listed, so one made readable is read at once, not at
    /// the next rescan. No directory pays for this while nothing in it is refused.
    fn watch_attribs(&mut self, _dirs: &BTreeSet<PathBuf>, _c: &mut Counters) {}
    /// Stop (`steady` true) or resume write events for a watched file, through its open
    /// descriptor (the path may name another file by now). A steady file is read on the
    /// tailer's cadence instead: it was written several times between reads, so its events
    /// cost and say nothing (`Steadiness` decides). Returns whether the mask changed.
    fn set_steady(&mut self, _key: FileKey, _fd: RawFd, _steady: bool, _c: &mut Counters) -> bool {
        false
    }
    /// Files whose write events are off (read on the cadence).
    fn steady_files(&self) -> Vec<FileKey> {
        Vec::new()
    }
    fn has_steady(&self) -> bool {
        false
    }
    /// Files an event-driven watcher could not watch (limits, untrusted filesystems): polled.
    fn polled_fallback(&self) -> usize {
        0
    }
    /// Events the kernel queues before it overflows (inotify): how long reads may wait is
    /// bounded by it, since events are drained when files are read.
    fn queue_limit(&self) -> Option<u64> {
        None
    }
    /// Written files may wait (`coalesce`) before they are read. Polling already waits its
    /// interval; `naive` reads at once, as Fluent Bit does.
    fn defers_reads(&self) -> bool {
        self.event_driven()
    }
    /// One read per file per step, even with more to read (`naive`: a chunk per event).
    fn one_pass(&self) -> bool {
        false
    }
    /// Called before and after each read of a file, and once after a step's reads with every
    /// file held. Only `naive` does work here (the syscalls Fluent Bit makes around its reads).
    fn before_read(&self, _r: &FileReader, _c: &mut Counters) {}
    fn after_read(&self, _r: &FileReader, _c: &mut Counters) {}
    fn after_reads(&self, _held: &mut dyn Iterator<Item = &FileReader>, _c: &mut Counters) {}
    /// Test seam: make the kernel's limits bite (inotify only).
    #[cfg(test)]
    fn simulate(&mut self, _s: Simulate) {}
}

/// What a test makes happen in a watcher.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub enum Simulate {
    /// `max_user_watches` reached after this many file watches (ENOSPC).
    WatchLimit(usize),
    /// The event queue overflowed (`IN_Q_OVERFLOW`) before the next collect.
    Overflow,
}

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
    fn collect(&mut self, now: Instant, open: &mut dyn Iterator<Item = FileKey>, dirty: &mut Vec<FileKey>, _c: &mut Counters) -> News {
        if self.next_tick.is_none_or(|t| now >= t) {
            dirty.extend(open);
            self.next_tick = Some(now + self.interval);
        }
        News::default()
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.next_tick
    }
}

#[derive(Clone, Debug)]
enum Target {
    /// A file, and the directory it was found in.
    File(FileKey, Arc<PathBuf>),
    Dir(PathBuf),
}

const FILE_MASK: u32 = libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_MOVE_SELF | libc::IN_ATTRIB | libc::IN_DELETE_SELF;
/// A steady file: no write events (it is read on the cadence), the rest as before.
const STEADY_MASK: u32 = libc::IN_MOVE_SELF | libc::IN_ATTRIB | libc::IN_DELETE_SELF;
const DIR_MASK: u32 = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_ONLYDIR;
const EVENT_HEADER: usize = std::mem::size_of::<libc::inotify_event>();

/// Filesystems whose inotify events cannot be trusted (changes made by other hosts or by a
/// userspace server do not raise them): `auto` polls files there (`tailrace doctor` says which).
pub fn untrusted_fs(path: &Path) -> Option<&'static str> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the struct we pass; the path is NUL-terminated.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    match s.f_type as u32 {
        0x6969 => Some("nfs"),
        0x6573_5546 => Some("fuse"),
        0x794c_7630 => Some("overlay"),
        0xff53_4d42 => Some("cifs"),
        0xfe53_4d42 => Some("smb2"),
        0x00c3_6400 => Some("ceph"),
        0x0102_1997 => Some("9p"),
        _ => None,
    }
}

pub struct InotifyWatcher {
    fd: OwnedFd,
    targets: KeyMap<i32, Target>,
    by_key: KeyMap<FileKey, i32>,
    dirs: HashMap<PathBuf, i32>,
    /// Files without a watch, read every `poll_interval`.
    polled: BTreeSet<FileKey>,
    poll_interval: Duration,
    next_poll: Option<Instant>,
    /// `naive`: one event per collect, as Fluent Bit reads them.
    one_event: bool,
    /// `auto`: poll files on filesystems whose events cannot be trusted.
    check_fs: bool,
    buf: Vec<u64>,
    queue_limit: u64,
    steady: BTreeSet<FileKey>,
    /// Directories whose watch also says attribute changes (`watch_attribs`).
    attrib_dirs: BTreeSet<PathBuf>,
    /// Test seams: a watch limit lower than the kernel's, an overflow at the next collect.
    watch_limit: Option<usize>,
    overflow_next: bool,
}

impl InotifyWatcher {
    /// `one_event`: read one event per collect (the `naive` strategy); `check_fs`: poll files on
    /// filesystems whose events cannot be trusted (`auto`).
    pub fn new(poll_interval: Duration, one_event: bool, check_fs: bool) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(InotifyWatcher {
            // SAFETY: fd was just returned by inotify_init1 and is ours alone.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            targets: KeyMap::default(),
            by_key: KeyMap::default(),
            dirs: HashMap::new(),
            polled: BTreeSet::new(),
            poll_interval,
            next_poll: None,
            one_event,
            check_fs,
            buf: vec![0u64; 8192],
            // The per-instance limit (fs.inotify.max_queued_events, 16384 by default).
            queue_limit: std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(16384),
            steady: BTreeSet::new(),
            attrib_dirs: BTreeSet::new(),
            watch_limit: None,
            overflow_next: false,
        })
    }

    fn add_watch(&self, path: &Path, mask: u32) -> Result<i32, std::io::Error> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: the descriptor is ours, the path NUL-terminated.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(wd)
        }
    }

    pub fn polled_files(&self) -> usize {
        self.polled.len()
    }

    /// One `read()` of the queue. Returns the bytes read (0: empty).
    fn read_events(&mut self, c: &mut Counters, len: usize) -> std::io::Result<usize> {
        c.syscalls.inotify_read += 1;
        let buf = self.buf.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: buf holds at least `len` bytes (len ≤ 64 KiB), the descriptor is ours.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf, len) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    fn handle(&mut self, n: usize, dirty: &mut Vec<FileKey>, news: &mut News, overflow: &mut bool, events: &mut u64) {
        // SAFETY: the kernel wrote `n` bytes of whole events into buf (8-byte aligned).
        let bytes = unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const u8, n) };
        let mut off = 0;
        while off + EVENT_HEADER <= n {
            // SAFETY: an event header lies at `off`; read_unaligned copes with any alignment.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(bytes[off..].as_ptr() as *const libc::inotify_event) };
            // A directory's event names the entry (NUL-padded).
            let name = &bytes[(off + EVENT_HEADER).min(n)..(off + EVENT_HEADER + ev.len as usize).min(n)];
            let name = std::ffi::OsStr::from_bytes(&name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())]);
            off += EVENT_HEADER + ev.len as usize;
            *events += 1;
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                *overflow = true;
                continue;
            }
            let Some(target) = self.targets.get(&ev.wd) else { continue };
            match target.clone() {
                Target::File(key, dir) => {
                    if ev.mask & (libc::IN_MODIFY | libc::IN_CLOSE_WRITE) != 0 {
                        dirty.push(key);
                    }
                    if ev.mask & (libc::IN_ATTRIB | libc::IN_MOVE_SELF | libc::IN_DELETE_SELF) != 0 {
                        news.look = true;
                        news.dirs.push((*dir).clone());
                        dirty.push(key);
                    }
                    if ev.mask & libc::IN_IGNORED != 0 {
                        self.targets.remove(&ev.wd);
                        if self.by_key.get(&key) == Some(&ev.wd) {
                            self.by_key.remove(&key);
                        }
                    }
                }
                Target::Dir(path) => {
                    if ev.mask & libc::IN_ATTRIB != 0 {
                        // Only where something could not be opened or listed (`watch_attribs`):
                        // a look of the directory retries it; a directory made readable may hold
                        // what the globs match deeper down.
                        news.look = true;
                        news.dirs.push(path.clone());
                        news.everywhere |= ev.mask & libc::IN_ISDIR != 0;
                    }
                    if ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                        // The watched directory itself left (for a glob's base directory, whose
                        // parent no other watch sees, the only word of it). A moved one's watch
                        // follows it elsewhere: dropped, so the path can be watched again.
                        news.look = true;
                        news.left.push(path.clone());
                        if ev.mask & libc::IN_MOVE_SELF != 0 {
                            self.targets.remove(&ev.wd);
                            self.dirs.remove(&path);
                            // SAFETY: plain syscall on our descriptor; a stale wd only yields EINVAL.
                            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), ev.wd) };
                        }
                    }
                    if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE) != 0 {
                        news.look = true;
                        news.dirs.push(path.clone());
                        if ev.mask & libc::IN_ISDIR != 0 {
                            if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                                // A directory appeared (a new pod's, a new container's): what
                                // matches may be deeper, and it needs a watch.
                                news.appeared.push(path.join(name));
                            } else {
                                // One left (a pod deleted): nothing new can be found by it.
                                news.left.push(path.join(name));
                            }
                        }
                    }
                    if ev.mask & libc::IN_IGNORED != 0 {
                        self.targets.remove(&ev.wd);
                        self.dirs.remove(&path);
                    }
                }
            }
        }
    }
}

impl Watcher for InotifyWatcher {
    fn collect(&mut self, now: Instant, open: &mut dyn Iterator<Item = FileKey>, dirty: &mut Vec<FileKey>, c: &mut Counters) -> News {
        let mut news = News::default();
        let mut overflow = std::mem::take(&mut self.overflow_next);
        if overflow {
            // The simulated overflow loses what was queued, as the kernel's does.
            while matches!(self.read_events(c, self.buf.len() * 8), Ok(n) if n > 0) {}
        }
        if self.one_event {
            // Fluent Bit reads one event per wakeup: a buffer of one header (file watches carry
            // no name); a directory event with a name needs a larger one.
            let mut n = self.read_events(c, EVENT_HEADER);
            if matches!(&n, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
                n = self.read_events(c, EVENT_HEADER + libc::FILENAME_MAX as usize + 1);
            }
            if let Ok(n) = n {
                self.handle(n, dirty, &mut news, &mut overflow, &mut c.inotify_events);
            }
        } else {
            // Drain the whole queue now: reads may wait (coalesce), the kernel queue must not.
            let len = self.buf.len() * 8;
            while let Ok(n) = self.read_events(c, len) {
                if n == 0 {
                    break;
                }
                self.handle(n, dirty, &mut news, &mut overflow, &mut c.inotify_events);
                if n < len / 2 {
                    break; // the queue is (almost certainly) empty: skip the read returning EAGAIN
                }
            }
        }
        if overflow {
            c.inotify_overflows += 1;
            news.look = true;
            news.everywhere = true;
            dirty.extend(open);
        } else if !self.polled.is_empty() && self.next_poll.is_none_or(|t| now >= t) {
            let open: BTreeSet<FileKey> = open.collect();
            dirty.extend(self.polled.intersection(&open).copied());
            self.next_poll = Some(now + self.poll_interval);
        }
        news
    }

    fn next_wakeup(&self) -> Option<Instant> {
        if self.polled.is_empty() {
            None
        } else {
            Some(self.next_poll.unwrap_or_else(Instant::now))
        }
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn event_driven(&self) -> bool {
        true
    }

    fn queue_limit(&self) -> Option<u64> {
        Some(self.queue_limit)
    }

    fn set_steady(&mut self, key: FileKey, fd: RawFd, steady: bool, c: &mut Counters) -> bool {
        if self.one_event || !self.by_key.contains_key(&key) || self.steady.contains(&key) == steady {
            return false;
        }
        c.syscalls.inotify_remask += 1;
        let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        match self.add_watch(&path, if steady { STEADY_MASK } else { FILE_MASK }) {
            Ok(wd) if self.by_key.get(&key) == Some(&wd) => {
                if steady {
                    self.steady.insert(key);
                } else {
                    self.steady.remove(&key);
                }
                true
            }
            Ok(wd) => {
                // The watch of `key` is on another inode (its path was replaced as it was
                // added): undo what this did to the descriptor's inode.
                match self.targets.get(&wd) {
                    Some(Target::File(other, _)) => {
                        let mask = if self.steady.contains(other) { STEADY_MASK } else { FILE_MASK };
                        let _ = self.add_watch(&path, mask);
                    }
                    Some(Target::Dir(_)) => {}
                    // SAFETY: plain syscall on our inotify descriptor; the watch is new.
                    None => unsafe {
                        libc::inotify_rm_watch(self.fd.as_raw_fd(), wd);
                    },
                }
                false
            }
            Err(_) => false,
        }
    }

    fn steady_files(&self) -> Vec<FileKey> {
        self.steady.iter().copied().collect()
    }

    #[cfg(test)]
    fn simulate(&mut self, s: Simulate) {
        match s {
            Simulate::WatchLimit(n) => self.watch_limit = Some(n),
            Simulate::Overflow => self.overflow_next = true,
        }
    }

    fn has_steady(&self) -> bool {
        !self.steady.is_empty()
    }

    fn polled_fallback(&self) -> usize {
        self.polled.len()
    }

    fn watch(&mut self, key: FileKey, path: &Path, steady: bool) -> Result<bool, String> {
        if self.by_key.contains_key(&key) || self.polled.contains(&key) {
            return Ok(self.steady.contains(&key));
        }
        if self.check_fs {
            if let Some(fs) = untrusted_fs(path) {
                self.polled.insert(key);
                return Err(format!("{} is on {fs}: polled, as inotify events there cannot be trusted", path.display()));
            }
        }
        if let Some(dir) = path.parent() {
            self.watch_dir(dir);
        }
        let steady = steady && !self.one_event;
        let added = match self.watch_limit {
            Some(max) if self.by_key.len() >= max => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => self.add_watch(path, if steady { STEADY_MASK } else { FILE_MASK }),
        };
        match added {
            Ok(wd) => {
                let dir = Arc::new(path.parent().map(Path::to_path_buf).unwrap_or_default());
                self.targets.insert(wd, Target::File(key, dir));
                self.by_key.insert(key, wd);
                if steady {
                    self.steady.insert(key);
                }
                Ok(steady)
            }
            Err(e) => {
                // ENOSPC (max_user_watches) or EMFILE: this file is polled; nothing is lost.
                self.polled.insert(key);
                Err(format!("no inotify watch for {} ({e}): polled instead", path.display()))
            }
        }
    }

    fn unwatch(&mut self, key: FileKey) {
        self.polled.remove(&key);
        self.steady.remove(&key);
        if let Some(wd) = self.by_key.remove(&key) {
            self.targets.remove(&wd);
            // SAFETY: plain syscall on our descriptor; a stale wd only yields EINVAL.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
        }
    }

    fn watch_dir(&mut self, dir: &Path) {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        // Asked every time (at looks everywhere): the directory watched answers with its own
        // watch; one deleted and made again at this path answers with a new one. (The old
        // one's IN_IGNORED may never come: a file still open in the deleted directory, being
        // drained, keeps it alive, and with it a watch that would hide the new directory.)
        let mask = if self.attrib_dirs.contains(dir) { DIR_MASK | libc::IN_ATTRIB } else { DIR_MASK };
        if let Ok(wd) = self.add_watch(dir, mask) {
            self.targets.insert(wd, Target::Dir(dir.to_path_buf()));
            if let Some(old) = self.dirs.insert(dir.to_path_buf(), wd).filter(|&old| old != wd) {
                self.targets.remove(&old);
                // SAFETY: plain syscall on our descriptor; a stale wd only yields EINVAL.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), old) };
            }
        }
    }

    fn watch_attribs(&mut self, dirs: &BTreeSet<PathBuf>, c: &mut Counters) {
        if *dirs == self.attrib_dirs {
            return;
        }
        let on: Vec<PathBuf> = dirs.difference(&self.attrib_dirs).cloned().collect();
        let off: Vec<PathBuf> = self.attrib_dirs.difference(dirs).cloned().collect();
        for (dir, mask) in on.iter().map(|d| (d, DIR_MASK | libc::IN_ATTRIB)).chain(off.iter().map(|d| (d, DIR_MASK))) {
            // A directory not watched (gone, or never listed) has no mask to change; the
            // rescan still retries what is in it.
            if self.dirs.contains_key(dir) {
                c.syscalls.inotify_remask += 1;
                // The same wd: a mask for an inode already watched replaces its mask.
                let _ = self.add_watch(dir, mask);
            }
        }
        self.attrib_dirs.clone_from(dirs);
    }
}

/// When the owner's wait for a tailer ends, as descriptors: `timer` becomes readable at the
/// tailer's next wakeup (a timerfd armed after every call that changes it), `either` when the
/// timer or the readiness descriptor (inotify) is. The event loop waits on one of them with no
/// deadline of its own: in trio a deadline wakes a task by cancelling a scope, ~120-150 µs of
/// CPU more per wakeup on a VM than a descriptor becoming readable (five wakeups a second).
pub struct WakeFds {
    timer: OwnedFd,
    either: OwnedFd,
}

impl WakeFds {
    pub fn new(readiness: Option<RawFd>) -> std::io::Result<WakeFds> {
        fn fd(r: RawFd) -> std::io::Result<OwnedFd> {
            // SAFETY: a descriptor just returned by the kernel, owned by nothing else.
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(r) }) }
        }
        // SAFETY: plain syscalls with constant flags.
        let timer = fd(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) })?;
        // SAFETY: as above.
        let either = fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        for member in [Some(timer.as_raw_fd()), readiness].into_iter().flatten() {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: member as u64 };
            // SAFETY: both descriptors are open; `ev` outlives the call.
            if unsafe { libc::epoll_ctl(either.as_raw_fd(), libc::EPOLL_CTL_ADD, member, &mut ev) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(WakeFds { timer, either })
    }

    /// Readable `after` from now (at once for zero: a zero timer would be a disarmed one).
    pub fn arm(&self, after: Duration) {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: after.as_secs() as libc::time_t, tv_nsec: after.subsec_nanos() as libc::c_long },
        };
        // SAFETY: our timerfd, a valid itimerspec; the old value is not asked for.
        unsafe { libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    pub fn either_fd(&self) -> RawFd {
        self.either.as_raw_fd()
    }

    /// Consume an expiry, so the descriptors are readable again only at the next one.
    pub fn drain(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from our non-blocking timerfd.
        unsafe { libc::read(self.timer.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
    }
}


#[cfg(test)]
mod wake_tests {
    use super::WakeFds;
    use std::os::fd::{AsRawFd, RawFd};
    use std::time::{Duration, Instant};

    /// Whether `fd` is readable within `ms` (0: now).
    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    #[test]
    fn the_wake_descriptors_become_readable_at_the_armed_time_or_at_news() {
        let (r, w) = std::io::pipe().unwrap();
        let wake = WakeFds::new(Some(r.as_raw_fd())).unwrap();
        // Armed 50 ms ahead: not readable now, readable within the deadline, both descriptors.
        let t0 = Instant::now();
        wake.arm(Duration::from_millis(50));
        assert_eq!((readable(wake.timer_fd(), 0), readable(wake.either_fd(), 0)), (false, false));
        assert!(readable(wake.timer_fd(), 5_000));
        assert!(t0.elapsed() >= Duration::from_millis(50), "{:?}", t0.elapsed());
        assert!(readable(wake.either_fd(), 0));
        // Drained: neither is readable until the next expiry (a drain that consumes nothing
        // would leave them readable, and the event loop spinning).
        wake.drain();
        assert_eq!((readable(wake.timer_fd(), 0), readable(wake.either_fd(), 0)), (false, false));
        // Due now: readable at once (a zero `it_value` would disarm the timer instead).
        wake.arm(Duration::ZERO);
        assert!(readable(wake.timer_fd(), 5_000));
        wake.drain();
        // News on the readiness descriptor wakes `either`, not the timer; re-arming far ahead
        // replaces an earlier arming.
        wake.arm(Duration::from_secs(3600));
        assert!(!readable(wake.either_fd(), 0));
        std::io::Write::write_all(&mut &w, b"x").unwrap();
        assert_eq!((readable(wake.either_fd(), 0), readable(wake.timer_fd(), 0)), (true, false));
    }

    #[test]
    fn without_a_readiness_descriptor_either_is_the_timer() {
        let wake = WakeFds::new(None).unwrap();
        assert!(!readable(wake.either_fd(), 0));
        wake.arm(Duration::ZERO);
        assert!(readable(wake.either_fd(), 5_000));
    }
}

#[cfg(test)]
mod attrib_tests {
    use super::{InotifyWatcher, Watcher};
    use crate::counters::Counters;
    use std::collections::BTreeSet;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    fn chmod(p: &std::path::Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_chmod_is_news_only_in_the_directories_asked_for() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for dir in [&a, &b] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("x.log"), b"x\n").unwrap();
        }
        std::fs::create_dir(a.join("sub")).unwrap();
        let mut w = InotifyWatcher::new(Duration::from_secs(1), false, false).unwrap();
        let mut c = Counters::default();
        w.watch_dir(&a);
        w.watch_dir(&b);
        let collect = |w: &mut InotifyWatcher, c: &mut Counters| w.collect(Instant::now(), &mut std::iter::empty(), &mut Vec::new(), c);
        // Not asked for: a chmod in either directory is no news (nothing pays for it).
        chmod(&a.join("x.log"), 0o600);
        chmod(&b.join("x.log"), 0o600);
        let n = collect(&mut w, &mut c);
        assert_eq!((n.look, n.dirs.len()), (false, 0));
        // Asked for `a`: a chmod of a file there is a look of `a`; of a directory there, a look
        // everywhere (what the globs match may be inside); `b` still says nothing. One mask
        // change for `a`, none for `b`.
        w.watch_attribs(&BTreeSet::from([a.clone()]), &mut c);
        assert_eq!(c.syscalls.inotify_remask, 1);
        chmod(&a.join("x.log"), 0o644);
        chmod(&b.join("x.log"), 0o644);
        let n = collect(&mut w, &mut c);
        assert_eq!((n.look, n.dirs, n.everywhere), (true, vec![a.clone()], false));
        chmod(&a.join("sub"), 0o700);
        let n = collect(&mut w, &mut c);
        assert_eq!((n.look, n.dirs, n.everywhere), (true, vec![a.clone()], true));
        // The same set again changes nothing; an empty one turns `a` back.
        w.watch_attribs(&BTreeSet::from([a.clone()]), &mut c);
        assert_eq!(c.syscalls.inotify_remask, 1);
        w.watch_attribs(&BTreeSet::new(), &mut c);
        assert_eq!(c.syscalls.inotify_remask, 2);
        chmod(&a.join("x.log"), 0o600);
        let n = collect(&mut w, &mut c);
        assert_eq!((n.look, n.dirs.len()), (false, 0));
        // Creating a file is news whatever the set (the directory mask is kept).
        std::fs::write(a.join("y.log"), b"y\n").unwrap();
        assert_eq!(collect(&mut w, &mut c).dirs, vec![a.clone()]);
    }
}
