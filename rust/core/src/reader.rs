//! Reader: one open log file. `read()` into a reused buffer, memchr line split, a trailing
//! partial line carried until its newline arrives, lines over `max_line_bytes` emitted as
//! flagged pieces. EOF is learnt from a short read, never from `fstat`. What a file's path
//! means (rotation, truncation, deletion) is decided by the tailer, which tells the reader.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::counters::Counters;

/// A test-only regression on purpose: one `lseek` before every read, so the syscall budget's
/// test can show that an extra call per read fails it (set through the binding's
/// `_inject_regression("lseek")`; one relaxed load per read otherwise).
pub static INJECT_LSEEK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
use crate::discovery::Roots;
use crate::identity::{FileKey, Fingerprint, FINGERPRINT_MAX};
use crate::parser::{Format, Parser};

/// Open for reading without updating the access time: a log file is written between our
/// reads, so relatime would journal an atime update on almost every read. O_NOATIME needs the
/// file's owner (or CAP_FOWNER); elsewhere it is refused and a plain open is used.
/// A carried line's allocation up to this size is kept for the next partial line.
const KEEP_CARRY: usize = 64 * 1024;

/// Why a matched file was not opened: it resolves to this path, outside the allowed roots.
#[derive(Debug)]
pub struct OutsideRoots(pub PathBuf);

impl std::fmt::Display for OutsideRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "it resolves to {}, outside the allowed roots", self.0.display())
    }
}

impl std::error::Error for OutsideRoots {}

impl OutsideRoots {
    /// The target, when `e` is this refusal.
    pub fn of(e: &std::io::Error) -> Option<&Path> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<OutsideRoots>()).map(|o| o.0.as_path())
    }
}

pub fn open_noatime(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        other => other,
    }
}

/// Where records come from; shared by every record of one file.
#[derive(Debug)]
pub struct Source {
    pub key: FileKey,
    /// The path the file was discovered at (stays the same after it is rotated away), as the
    /// bytes the filesystem knows it by: records show it as text (`display`), lossily where it
    /// is not UTF-8, but it is looked for, compared and reopened by its bytes.
    pub path: PathBuf,
    /// The checkpoint epoch the records belong to (bumped at truncation).
    pub epoch: u32,
    /// The encoded attributes of this source, filled once by the batcher.
    pub encoded_attrs: std::sync::OnceLock<crate::batcher::SourceAttrs>,
}

impl Source {
    /// The directory part of `path` (`/` for a file at the root), as bytes: the key readers are
    /// indexed by for a look of a few directories (`Tailer::by_dir`).
    pub fn dir(&self) -> &[u8] {
        let p = self.path.as_os_str().as_encoded_bytes();
        match p.iter().rposition(|&b| b == b'/') {
            Some(0) => b"/",
            Some(i) => &p[..i],
            None => b".",
        }
    }
}

/// A container's output stream (`log.iostream`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What a record carries besides its body: flags exported as `tailrace.*` attributes, and what
/// the parser found in a container runtime's envelope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// A piece of a line (or merged message) longer than `max_line_bytes`.
    pub split: bool,
    /// A trailing partial line (or unfinished pieces) flushed without its end (idle, rotation,
    /// truncation).
    pub partial: bool,
    /// A line the parser could not read (shipped whole, as it is).
    pub parse_error: bool,
    /// The runtime's stream (`log.iostream`).
    pub stream: Option<Stream>,
    /// The runtime's timestamp (Unix ns; 0: none).
    pub time_ns: u64,
}

/// Receives records in file order. `end_offset` is the file position just past the record:
/// committing it means everything before it was delivered.
pub trait LineSink {
    fn record(&mut self, source: &Arc<Source>, body: &[u8], end_offset: u64, consumed: u64, flags: Flags);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// The file is at its discovered path.
    Active,
    /// Renamed away, deleted, or truncated-and-copied: drain to EOF, then close after
    /// `rotate_wait` without new bytes.
    Draining { since: Instant },
}

pub struct FileReader {
    pub source: Arc<Source>,
    pub fp: Fingerprint,
    file: Option<File>,
    /// Next read position in the file.
    pub pos: u64,
    /// The byte at `pos - 1` as this reader read it (`None` when the position came from
    /// elsewhere: a checkpoint, a copy, a restart at 0). The overlapping first read past the
    /// fingerprint compares it: another byte there means the file was rewritten under us.
    last_byte: Option<u8>,
    /// End of the last emitted record; `pos - emitted` bytes are carried.
    pub emitted: u64,
    carry: Vec<u8>,
    carry_split: bool,
    carry_since: Option<Instant>,
    pub state: FileState,
    pub last_data: Instant,
    /// The last read stopped at EOF (a short read).
    pub eof: bool,
    /// Size, mtime and wall time at the tailer's last look at the path.
    pub look_size: u64,
    pub look_mtime: SystemTime,
    pub look_wall: SystemTime,
    /// In the tailer's set of files with a timer of their own (mirrored, so that checking
    /// costs no set lookup).
    pub timed: bool,
    /// Lines → records (container runtime envelopes; pieces held until their end).
    pub parser: Parser,
    /// Length of the fingerprint last handed to the ledger (which stores longer heads in the
    /// checkpoint as their batches are acknowledged).
    pub fp_sent: usize,
    /// In the tailer's list of files whose head grew since it was handed over (mirrored, so
    /// that a read checks a flag, not the list).
    pub head_queued: bool,
    /// The parser's cap on a (merged) message; the reader's own cap on a line is larger for
    /// container formats (their envelope).
    pub max_message: usize,
    /// Whether the file is read on the cadence without write events, and what decides it.
    pub steady: crate::watcher::Steadiness,
}

pub struct ReadResult {
    pub bytes: usize,
    pub eof: bool,
    /// The head no longer matches, or the file is shorter than our position: truncated.
    pub replaced: bool,
    /// Past the fingerprint: the file is shorter than our position (the first read of the call
    /// overlapped our last byte and found nothing there). Truncated, if nothing else explains it.
    pub shrunk: bool,
}

impl FileReader {
    /// Open `path`, check it is still `key`, take its fingerprint, and position at `offset`
    /// (clamped to 0 when the file is now shorter: truncated while we were away).
    /// A file resolving outside `roots` is refused before a byte of it is read
    /// (`OutsideRoots`).
    pub fn open(
        path: PathBuf,
        key: FileKey,
        offset: u64,
        now: Instant,
        roots: &Roots,
        c: &mut Counters,
    ) -> std::io::Result<(FileReader, bool)> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        c.syscalls.open += 1;
        let file = open_noatime(&path)?;
        if let Some(target) = roots.outside(file.as_raw_fd(), &mut c.syscalls) {
            c.syscalls.close += 1;
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, OutsideRoots(target)));
        }
        c.syscalls.fstat += 1;
        let meta = file.metadata()?;
        let actual = FileKey { dev: meta.dev(), ino: meta.ino() };
        if actual != key {
            c.syscalls.close += 1;
            return Err(std::io::Error::other("file replaced while opening"));
        }
        Self::with_file(file, key, path, meta.size(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), offset, now, c)
    }

    /// A reader of an open `file` standing for the file known as `key` (for a file recovered
    /// from its compressed copy: a memory file holding its bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn with_file(file: File, key: FileKey, path: PathBuf, size: u64, mtime: SystemTime, offset: u64, now: Instant, c: &mut Counters) -> std::io::Result<(FileReader, bool)> {
        let fp = Fingerprint::read(&file, &mut c.syscalls)?;
        let truncated = size < offset;
        let offset = if truncated { 0 } else { offset };
        c.files_opened += 1;
        let reader = FileReader {
            source: Arc::new(Source { key, path, epoch: 0, encoded_attrs: Default::default() }),
            fp,
            file: Some(file),
            pos: offset,
            last_byte: None,
            emitted: offset,
            carry: Vec::new(),
            carry_split: false,
            carry_since: None,
            state: FileState::Active,
            last_data: now,
            eof: false,
            look_size: size,
            look_mtime: mtime,
            look_wall: SystemTime::now(),
            timed: false,
            parser: Parser::new(Format::Plain),
            fp_sent: 0,
            head_queued: false,
            max_message: usize::MAX,
            steady: Default::default(),
        };
        Ok((reader, truncated))
    }

    pub fn key(&self) -> FileKey {
        self.source.key
    }

    /// Records from now on carry this path and checkpoint epoch.
    pub fn set_source(&mut self, path: PathBuf, epoch: u32) {
        self.source = Arc::new(Source { key: self.source.key, path, epoch, encoded_attrs: Default::default() });
    }

    /// Position a freshly opened file at a resume offset (checkpoint or copy). Reads are
    /// preads at `pos`: no lseek, nothing that can fail.
    pub fn start_at(&mut self, offset: u64) {
        self.pos = offset;
        self.last_byte = None;
        self.emitted = offset;
    }

    /// `posix_fadvise(fd, 0, 0, DONTNEED)` over the whole file, as Fluent Bit's default
    /// `file_cache_advise on` does before every read: it forces writeback of the writer's dirty
    /// pages. Only `naive` calls it, to reproduce that cost.
    pub fn fadvise_dontneed(&self, c: &mut Counters) {
        use std::os::fd::AsRawFd;
        if let Some(f) = self.file.as_ref() {
            c.syscalls.fadvise += 1;
            // SAFETY: plain syscall on a descriptor we own; advice only.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }

    /// One `fstat` of the descriptor (the size), as Fluent Bit makes around its reads.
    pub fn fstat(&self, c: &mut Counters) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        c.syscalls.fstat += 1;
        self.file.as_ref()?.metadata().ok().map(|m| m.size())
    }

    /// Through the descriptor: is the file now shorter than our position, or does its head no
    /// longer match the fingerprint (truncated, then rewritten)? One fstat, one pread.
    pub fn replaced(&self, c: &mut Counters) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(f) = self.file.as_ref() else { return false };
        c.syscalls.fstat += 1;
        match f.metadata() {
            Ok(m) if m.size() < self.pos => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        self.head_changed(c)
    }

    /// Does the file's head (read through our descriptor) still match the fingerprint?
    pub fn head_changed(&self, c: &mut Counters) -> bool {
        match self.file.as_ref() {
            Some(f) if !self.fp.bytes.is_empty() => Fingerprint::read(f, &mut c.syscalls).is_ok_and(|fp| !fp.compatible(&self.fp)),
            _ => false,
        }
    }

    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.file.as_ref().map(|f| f.as_raw_fd())
    }

    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    pub fn close(&mut self, c: &mut Counters) {
        if self.file.take().is_some() {
            c.syscalls.close += 1;
            c.files_closed += 1;
        }
    }

    /// Reopen a file closed by `close_inactive` at its read position.
    pub fn reopen(&mut self, c: &mut Counters) -> std::io::Result<()> {
        c.syscalls.open += 1;
        let f = open_noatime(&self.source.path)?;
        c.files_opened += 1;
        self.file = Some(f);
        self.eof = false;
        Ok(())
    }

    /// The file was truncated (or replaced in place): forget the carried bytes and start at 0.
    /// The caller decides whether the carry was recovered elsewhere (a copytruncate copy).
    pub fn restart_at_zero(&mut self) {
        self.parser.reset();
        self.fp_sent = 0; // a new head, handed over again as it grows
        self.carry.clear();
        self.carry_split = false;
        self.carry_since = None;
        self.pos = 0;
        self.last_byte = None;
        self.emitted = 0;
        self.fp = Fingerprint::default();
        self.eof = false;
    }

    /// Since when a partial line has been carried, or pieces held by the parser, if any.
    pub fn pending_since(&self) -> Option<Instant> {
        let carry = if self.carry.is_empty() { None } else { self.carry_since };
        match (carry, self.parser.held_since()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A partial line is carried or pieces are held (the file has a flush timer).
    pub fn holds(&self) -> bool {
        !self.carry.is_empty() || self.parser.held_since().is_some()
    }

    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Memory held for lines not finished yet: the carried partial line's allocation and the
    /// parser's pieces waiting for their end.
    pub fn held_bytes(&self) -> usize {
        let carry = if self.carry.is_empty() { 0 } else { self.carry.capacity() };
        carry + self.parser.held_bytes()
    }

    /// Emit what is held now, as flagged pieces (`tailrace.split`), and free it: the memory
    /// bound across files (`memory.max_pending_bytes`) was reached. The line goes on in later
    /// pieces, flagged too. Pieces the parser held came first in the file: they go first.
    pub fn spill(&mut self, now: Instant, sink: &mut dyn LineSink, c: &mut Counters) {
        self.parser.spill(&self.source, sink, c);
        if self.carry.is_empty() {
            return;
        }
        let body = std::mem::take(&mut self.carry);
        if !self.carry_split {
            c.split_lines += 1;
        }
        let end = self.emitted + body.len() as u64;
        self.emit(&body, end, Flags { split: true, ..Flags::default() }, now, sink, c);
        self.carry_split = true;
        self.carry_since = None;
    }

    /// Read up to `budget` bytes (whole buffers; at least one read), emitting every complete line.
    ///
    /// Reads are `pread`s at our own position. While that position is within the fingerprint
    /// (a small file), the first read starts at 0 instead: the same one syscall also checks that
    /// the head is still ours, so a truncation followed by new writes past our offset (between
    /// two reads) is caught as `replaced` instead of read from the middle of a line. Past the
    /// fingerprint, the first read starts one byte early, at the last byte already read: a read
    /// that returns nothing at all says the file is now shorter than our position (`shrunk`),
    /// where an `lseek` per empty read used to ask (one per line for files written about once
    /// per read period); another byte there than the one read says it was rewritten
    /// (`replaced`: truncated, then written past our position before this read).
    pub fn read(
        &mut self,
        buf: &mut [u8],
        budget: usize,
        max_line: usize,
        now: Instant,
        sink: &mut dyn LineSink,
        c: &mut Counters,
    ) -> std::io::Result<ReadResult> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        #[cfg(test)]
        if self.source.path.as_os_str().as_encoded_bytes().ends_with(b"panic.log") {
            panic!("a test's bug");
        }
        let mut total = 0usize;
        let mut eof = false;
        let mut head_check = !self.fp.bytes.is_empty() && (self.pos as usize) < FINGERPRINT_MAX && buf.len() >= FINGERPRINT_MAX;
        let mut overlap = !head_check && self.pos > 0 && buf.len() > 1;
        while total < budget.max(1) {
            let Some(file) = self.file.as_ref() else { break };
            c.syscalls.read += 1;
            if INJECT_LSEEK.load(std::sync::atomic::Ordering::Relaxed) {
                c.syscalls.lseek += 1;
                // SAFETY: an lseek on a descriptor we own; the result is not used (preads ignore it).
                unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_CUR) };
            }
            let at = if head_check { 0 } else if overlap { self.pos - 1 } else { self.pos };
            let n = match file.read_at(buf, at) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut data = &buf[..n];
            if head_check {
                head_check = false;
                let k = self.fp.bytes.len().min(n);
                if (n as u64) < self.pos || data[..k] != self.fp.bytes[..k] {
                    self.eof = true;
                    return Ok(ReadResult { bytes: total, eof: true, replaced: true, shrunk: false });
                }
                data = &data[self.pos as usize..];
                if n == buf.len() && data.is_empty() {
                    continue;
                }
            } else if overlap {
                overlap = false;
                if n == 0 {
                    self.eof = true;
                    return Ok(ReadResult { bytes: 0, eof: true, replaced: false, shrunk: true });
                }
                if self.last_byte.is_some_and(|b| b != data[0]) {
                    // Not the byte we read there: truncated and written past our position
                    // again between two reads (copytruncate racing a busy writer). Read from
                    // the middle of someone else's line, this would lose the new head.
                    self.eof = true;
                    return Ok(ReadResult { bytes: 0, eof: true, replaced: true, shrunk: false });
                }
                data = &data[1..];
            }
            if data.is_empty() {
                eof = true;
                break;
            }
            let start = self.pos;
            if !self.fp.is_full() {
                self.fp.extend_from(start, data);
            }
            let len = data.len();
            self.pos += len as u64;
            self.last_byte = Some(data[len - 1]);
            total += len;
            self.split(data, start, max_line, now, sink, c);
            if n < buf.len() {
                eof = true;
                break;
            }
        }
        if total > 0 {
            self.last_data = now;
        }
        self.eof = eof;
        Ok(ReadResult { bytes: total, eof, replaced: false, shrunk: false })
    }

    fn split(&mut self, data: &[u8], start: u64, max_line: usize, now: Instant, sink: &mut dyn LineSink, c: &mut Counters) {
        let mut from = 0usize;
        for nl in memchr::memchr_iter(b'\n', data) {
            if self.carry.is_empty() && !self.carry_split {
                self.emit_line(&data[from..nl], start + nl as u64 + 1, max_line, false, now, sink, c);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&data[from..nl]);
                let was_split = self.carry_split;
                self.carry_split = false;
                self.emit_line(&line, start + nl as u64 + 1, max_line, was_split, now, sink, c);
                if line.capacity() <= KEEP_CARRY {
                    line.clear();
                    self.carry = line; // keep a small allocation; a long line's is given back
                }
            }
            self.carry_since = None;
            from = nl + 1;
        }
        if from < data.len() {
            if self.carry.is_empty() {
                self.carry_since = Some(now);
            }
            self.carry.extend_from_slice(&data[from..]);
            while self.carry.len() > max_line {
                // A line longer than max_line_bytes: emit its head as a flagged piece.
                let end = self.emitted + max_line as u64;
                let piece: Vec<u8> = self.carry.drain(..max_line).collect();
                if !self.carry_split {
                    c.split_lines += 1;
                }
                self.emit(&piece, end, Flags { split: true, ..Flags::default() }, now, sink, c);
                self.carry_split = true;
            }
        }
    }

    /// Emit one complete line (without its newline) ending at `end_offset`.
    #[allow(clippy::too_many_arguments)]
    fn emit_line(&mut self, line: &[u8], end_offset: u64, max_line: usize, split: bool, now: Instant, sink: &mut dyn LineSink, c: &mut Counters) {
        if line.len() <= max_line {
            self.emit(line, end_offset, Flags { split, ..Flags::default() }, now, sink, c);
            return;
        }
        if !split {
            c.split_lines += 1;
        }
        let mut rest = line;
        while rest.len() > max_line {
            let end = self.emitted + max_line as u64;
            self.emit(&rest[..max_line], end, Flags { split: true, ..Flags::default() }, now, sink, c);
            rest = &rest[max_line..];
        }
        self.emit(rest, end_offset, Flags { split: true, ..Flags::default() }, now, sink, c);
    }

    /// One framed line (or piece of one) to the parser, which hands records to the sink.
    fn emit(&mut self, body: &[u8], end_offset: u64, flags: Flags, now: Instant, sink: &mut dyn LineSink, c: &mut Counters) {
        let consumed = end_offset - self.emitted;
        c.lines += 1;
        c.bytes += consumed;
        self.emitted = end_offset;
        self.parser.line(&self.source, body, end_offset, consumed, flags, self.max_message, now, sink, c);
    }

    /// Flush the carried partial line if it has waited `idle` (or unconditionally when `idle`
    /// is `None`: the file is being closed).
    pub fn flush_partial(&mut self, now: Instant, idle: Option<std::time::Duration>, sink: &mut dyn LineSink, c: &mut Counters) -> bool {
        // Held pieces came before the carried line in the file: they go first.
        let held = self.parser.flush(&self.source, now, idle, sink, c);
        if self.carry.is_empty() {
            return held;
        }
        if let (Some(idle), Some(since)) = (idle, self.carry_since) {
            if now.saturating_duration_since(since) < idle {
                return held;
            }
        }
        let body = std::mem::take(&mut self.carry);
        let split = self.carry_split;
        self.carry_split = false;
        self.carry_since = None;
        c.partial_flushes += 1;
        let end = self.pos;
        self.emit(&body, end, Flags { split, partial: true, ..Flags::default() }, now, sink, c);
        true
    }
}

/// A test's file rewritten under its reader: 2,000 bytes of 10-byte lines, then the 3,900 bytes
/// of 13-byte lines that replace them (byte 1,999 a digit where the old content had a newline).
#[cfg(test)]
pub(crate) fn rewrite_fixture() -> (String, String) {
    let old = (0..200).map(|i| format!("old {i:05}\n")).collect();
    let new = (0..300).map(|i| format!("renewed {i:04}\n")).collect();
    (old, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Default)]
    struct Collect(Vec<(Vec<u8>, u64, Flags)>);
    impl LineSink for Collect {
        fn record(&mut self, _s: &Arc<Source>, body: &[u8], end: u64, _n: u64, flags: Flags) {
            self.0.push((body.to_vec(), end, flags));
        }
    }

    fn open(path: &std::path::Path, c: &mut Counters) -> FileReader {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        FileReader::open(path.to_path_buf(), FileKey { dev: m.dev(), ino: m.ino() }, 0, Instant::now(), &Roots::new(&[], &["/".into()]), c).unwrap().0
    }

    #[test]
    fn lines_partials_and_long_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"one\ntw").unwrap();
        let mut c = Counters::default();
        let mut r = open(&p, &mut c);
        let mut buf = vec![0u8; 4];
        let mut sink = Collect::default();
        let now = Instant::now();
        r.read(&mut buf, 1 << 20, 5, now, &mut sink, &mut c).unwrap();
        assert_eq!(sink.0, vec![(b"one".to_vec(), 4, Flags::default())]);
        assert_eq!((r.pos, r.emitted, r.carried()), (6, 4, 2));
        f.write_all(b"o\n0123456789ab\nxyz").unwrap();
        r.read(&mut buf, 1 << 20, 5, now, &mut sink, &mut c).unwrap();
        let split = Flags { split: true, ..Flags::default() };
        assert_eq!(
            sink.0[1..],
            [(b"two".to_vec(), 8, Flags::default()), (b"01234".to_vec(), 13, split), (b"56789".to_vec(), 18, split), (b"ab".to_vec(), 21, split)]
        );
        assert_eq!(c.split_lines, 1);
        assert!(!r.flush_partial(now, Some(std::time::Duration::from_secs(1)), &mut sink, &mut c));
        assert!(r.flush_partial(now + std::time::Duration::from_secs(2), Some(std::time::Duration::from_secs(1)), &mut sink, &mut c));
        assert_eq!(sink.0.last().unwrap(), &(b"xyz".to_vec(), 24, Flags { partial: true, ..Flags::default() }));
        assert_eq!(r.emitted, 24);
        assert_eq!(c.bytes, 24);
    }

    #[test]
    fn a_line_keeps_every_byte_but_its_newline() {
        // A `\r` before the newline and spaces at either end are the line's (the README's
        // choice, as Vector's; Fluent Bit drops the `\r`, the Collector trims by default).
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, b" crlf \r\n\ttab \n\n").unwrap();
        let mut c = Counters::default();
        let mut r = open(&p, &mut c);
        let mut sink = Collect::default();
        r.read(&mut [0u8; 64], 1 << 20, 1024, Instant::now(), &mut sink, &mut c).unwrap();
        let lines: Vec<&[u8]> = sink.0.iter().map(|(l, _, _)| l.as_slice()).collect();
        assert_eq!(lines, [&b" crlf \r"[..], b"\ttab ", b""]);
    }

    #[test]
    fn budget_limits_one_pass_and_short_read_means_eof() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, "x\n".repeat(100)).unwrap();
        let mut c = Counters::default();
        let mut r = open(&p, &mut c);
        let mut buf = vec![0u8; 64];
        let mut sink = Collect::default();
        let res = r.read(&mut buf, 128, 1024, Instant::now(), &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, res.eof, sink.0.len()), (128, false, 64));
        let reads = c.syscalls.read;
        let res = r.read(&mut buf, 1 << 20, 1024, Instant::now(), &mut sink, &mut c).unwrap();
        // 72 bytes left: one full read of 64, one short read of 8, and no read returning 0.
        assert_eq!((res.bytes, res.eof, sink.0.len()), (72, true, 100));
        assert_eq!(c.syscalls.read - reads, 2);
    }

    #[test]
    fn an_empty_read_past_the_fingerprint_tells_a_shrunk_file_without_lseek() {
        // Past the fingerprint a read starts at the last byte already read: nothing at all
        // there means the file is shorter than our position. Catches an overlap byte emitted
        // twice or lost, a shrink missed, and an lseek (or stat) back on the empty read.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let body: String = (0..100).map(|i| format!("line {i:04}\n")).collect(); // 1,000 bytes
        std::fs::write(&p, format!("{body}{body}")).unwrap();
        let mut c = Counters::default();
        let mut r = open(&p, &mut c);
        let mut buf = vec![0u8; FINGERPRINT_MAX];
        let mut sink = Collect::default();
        let now = Instant::now();
        let res = r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, res.eof, res.shrunk, sink.0.len(), r.pos), (2000, true, false, 200, 2000));
        let res = r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, res.eof, res.replaced, res.shrunk), (0, true, false, false), "at EOF, not shrunk");
        // One more byte, then one more line: each read exactly once, the overlap never emitted.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"x").unwrap();
        let res = r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, r.pos, r.carried(), sink.0.len()), (1, 2001, 1, 200));
        f.write_all(b"y\n").unwrap();
        r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap();
        assert_eq!(sink.0.last().unwrap(), &(b"xy".to_vec(), 2003, Flags::default()));
        // A buffer's worth and more past our position: the overlap is only the first read's.
        let more = "z".repeat(3000) + "\n";
        f.write_all(more.as_bytes()).unwrap();
        let res = r.read(&mut buf, 1 << 20, 1 << 20, now, &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, r.pos), (3001, 5004));
        assert_eq!(sink.0.last().unwrap(), &(more.trim_end().as_bytes().to_vec(), 5004, Flags::default()));
        // Truncated below our position: the empty read says so, with no lseek and no stat.
        f.set_len(1500).unwrap();
        let (lseeks, stats) = (c.syscalls.lseek, c.syscalls.fstat + c.syscalls.stat);
        let res = r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, res.eof, res.shrunk), (0, true, true));
        assert_eq!((c.syscalls.lseek - lseeks, c.syscalls.fstat + c.syscalls.stat - stats), (0, 0));
        // Cut to exactly our position is not shorter.
        r.pos = 1500;
        let res = r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, res.shrunk), (0, false));
    }

    #[test]
    fn another_byte_before_our_position_says_the_file_was_rewritten() {
        // Past the fingerprint the first read overlaps the last byte read: a different byte
        // there is a file truncated and written past our position again between two reads.
        // Catches reading on from the middle of the new content, and a false alarm on a
        // position that came from a checkpoint (whose byte this reader never saw).
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let (old, new) = rewrite_fixture();
        std::fs::write(&p, &old).unwrap();
        let mut c = Counters::default();
        let mut r = open(&p, &mut c);
        let mut buf = vec![0u8; FINGERPRINT_MAX];
        let mut sink = Collect::default();
        let now = Instant::now();
        assert_eq!(r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap().bytes, 2000);
        std::fs::write(&p, &new).unwrap();
        let res = r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, res.eof, res.replaced, res.shrunk, sink.0.len(), r.pos), (0, true, true, false, 200, 2000));
        // Resumed at a checkpointed offset: no byte to compare, the read goes on from there.
        let mut r = open(&p, &mut c);
        r.start_at(2002); // 2,002 = 154 lines of 13 bytes
        let res = r.read(&mut buf, 1 << 20, 1024, now, &mut sink, &mut c).unwrap();
        assert_eq!((res.bytes, res.replaced, sink.0.len()), (3900 - 2002, false, 200 + 146));
        assert_eq!(sink.0[200].0, b"renewed 0154".to_vec());
    }
}
