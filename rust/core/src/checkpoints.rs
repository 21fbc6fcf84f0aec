//! Checkpointer: identity → committed offset for every input. Two files in `state_dir`:
//!
//! - `checkpoints.json`, the snapshot: every entry, written tmp + fsync + rename (+ fsync of the
//!   directory), so a crash leaves the old snapshot or the new one, never half of either;
//! - `checkpoints.journal`, what changed since that snapshot, appended as it happens: one
//!   `write` per acknowledged batch (the page cache outlives a killed process, so `kill -9`
//!   repeats only batches in flight), fsync'ed by `write` every `checkpoint_interval` (what a
//!   power loss can cost). Records are length-prefixed and CRC-checked: a torn last record (a
//!   crash mid-append) is where reading stops, and the journal is cut there.
//!
//! The journal's header names the snapshot generation it follows: a journal of another
//! generation (a crash between a compaction's two renames) holds nothing the snapshot lacks and
//! is discarded. Compaction (a new snapshot, an empty journal) happens when the journal outgrows
//! the snapshot and what a new one would be (and at least `COMPACT_MIN`), once an hour when
//! anything changed, and at shutdown: bytes written grow with the files whose offsets moved, not
//! with the files tracked; a head that grows is journaled as the bytes it gained.
//! `seen_ns` (for `forget_after`) is kept in memory and saved with the snapshot only.
//!
//! Offsets advance only through `commit`; entries of files gone for `forget_after` are dropped
//! at compaction. Version 1 state (a snapshot rewritten whole at every interval) is migrated on
//! open.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::{FileKey, Fingerprint, KeyMap};
use crate::otlp::put_varint;

pub const VERSION: u32 = 2;
/// The snapshot's and the journal's names in `state_dir` (the binding's `CHECKPOINT_FILES`).
pub const FILE_NAME: &str = "checkpoints.json";
pub const JOURNAL_NAME: &str = "checkpoints.journal";
const JOURNAL_MAGIC: &[u8; 8] = b"TRJOURN1";
/// The journal is compacted once it is larger than the snapshot and than this.
pub const COMPACT_MIN: u64 = 1 << 20;
/// ... or when it is not empty and the snapshot is older than this (so `seen_ns` is saved).
const COMPACT_EVERY: Duration = Duration::from_secs(3600);
const REC_ENTRY: u8 = 1;
/// One file's offset (written by earlier versions; read still).
const REC_OFFSET: u8 = 2;
/// The offsets an acknowledgement moved, one record for all of them (see `offsets_record`).
const REC_OFFSETS: u8 = 3;
/// A file's head grew: its offset and only the bytes added to its fingerprint (see
/// `head_record`). A head grows a line or a few at a time up to 1 KiB: the whole head at each
/// growth was ~4.5 KB of journal per file at a start (23 MB for 5,000 files).
const REC_HEAD: u8 = 4;

#[derive(Clone, Debug)]
pub struct Entry {
    pub fp: Fingerprint,
    pub offset: u64,
    pub path: String,
    /// Last time a reader held the file or it was found at a path (Unix ns).
    pub seen_ns: u64,
    /// Bumped at each truncation so that acknowledgements of older batches are ignored.
    pub epoch: u32,
    /// `fp` as hex, kept between writes (cleared whenever `fp` is replaced): a full fingerprint
    /// is 2 KiB of text per file, written every `checkpoint_interval`.
    hex: String,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    input: String,
    dev: u64,
    ino: u64,
    fingerprint: String,
    offset: u64,
    path: String,
    seen_unix_ns: u64,
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    written_unix_ns: u64,
    /// The journal that follows this snapshot carries the same number (version 2).
    #[serde(default)]
    generation: u64,
    entries: Vec<FileEntry>,
}

/// Entries of an input no longer configured, handed over (`adopt_renamed`): to one input, or,
/// when `to` names several, left where they were because each of those inputs matches them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adoption {
    pub from: String,
    pub to: Vec<String>,
    pub files: usize,
}

/// Bytes written to the state directory, by kind (a test reads them; `/metrics` shows them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// `write` calls appending to the journal, and their bytes.
    pub journal_writes: u64,
    pub journal_bytes: u64,
    pub fsyncs: u64,
    /// Snapshots written (compactions), and their bytes.
    pub snapshots: u64,
    pub snapshot_bytes: u64,
}

/// What reading the state found besides its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Journal records replayed.
    pub records: u64,
    /// Bytes after the last record read (a crash mid-append, or `unread_kind`), cut off.
    pub torn_bytes: u64,
    /// The kind of a whole record (its CRC holds) that this version does not read — written by
    /// a newer tailrace that crashed before its shutdown snapshot — where reading stopped; 0:
    /// none (what was cut was torn). Cut off like a torn one: the offsets it and those after it
    /// held fall back to the ones before (lines read again, none lost).
    pub unread_kind: u8,
    /// A journal of an older generation (a crash mid-compaction) was discarded.
    pub stale_journal: bool,
    /// The state was version 1 and was migrated.
    pub migrated: bool,
}

/// Journal records kept in memory while they cannot be written (a full disk) before they are
/// given up for a snapshot (`must_compact`).
const PENDING_MAX: usize = 4 << 20;

pub struct Checkpointer {
    path: PathBuf,
    journal_path: PathBuf,
    /// Open for appending (`None` until the first write, and for a read-only view).
    journal: Option<File>,
    journal_len: u64,
    snapshot_len: u64,
    snapshot_at: SystemTime,
    generation: u64,
    /// Records not yet written (registrations wait for the next acknowledgement or `write`).
    pending: Vec<u8>,
    /// The journal could not be written for so long that its records were given up (past
    /// `PENDING_MAX`): nothing is appended until a snapshot of the entries is written.
    must_compact: bool,
    unsynced: bool,
    /// input → identity → entry (nested so lookups by `&str` allocate nothing).
    entries: HashMap<String, KeyMap<FileKey, Entry>>,
    existed: bool,
    written_ns: u64,
    pub forget_after: Duration,
    pub writes: u64,
    pub stats: WriteStats,
    pub loaded: Loaded,
}

pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Checkpointer {
    /// Load the state of `state_dir` (the snapshot, then the journal's records) and open the
    /// journal for appending: a torn tail is cut off, a stale journal replaced, version 1 state
    /// migrated. A snapshot of another version, or that does not parse, is an error that names
    /// it: guessing offsets would lose or repeat data.
    pub fn open(state_dir: &Path, forget_after: Duration) -> Result<Self> {
        {
            use std::os::unix::fs::DirBuilderExt;
            let mut dirs = std::fs::DirBuilder::new();
            dirs.recursive(true).mode(0o700);
            dirs.create(state_dir).map_err(|e| Error::io(format!("state_dir {}", state_dir.display()), e))?;
        }
        let mut cp = Self::read(state_dir, forget_after)?;
        // What a crash in the middle of writing a snapshot or a new journal left: never read,
        // rewritten by the next one; until then it holds room a full disk may need.
        for tmp in [cp.path.with_extension("json.tmp"), cp.journal_path.with_extension("journal.tmp")] {
            let _ = std::fs::remove_file(tmp);
        }
        let io = |what: &Path, e: std::io::Error| Error::io(what.display().to_string(), e);
        if cp.loaded.migrated {
            cp.compact().map_err(|e| io(&cp.path, e))?;
        } else if cp.loaded.stale_journal || !cp.journal_path.exists() {
            cp.new_journal().map_err(|e| io(&cp.journal_path, e))?;
        } else {
            let f = std::fs::OpenOptions::new().append(true).open(&cp.journal_path).map_err(|e| io(&cp.journal_path, e))?;
            if cp.loaded.torn_bytes > 0 {
                // Appends go on after the last whole record.
                f.set_len(cp.journal_len).and_then(|()| f.sync_all()).map_err(|e| io(&cp.journal_path, e))?;
            }
            cp.journal = Some(f);
        }
        Ok(cp)
    }

    /// The state of `state_dir` as `open` reads it, without writing anything (tools, tests).
    pub fn read(state_dir: &Path, forget_after: Duration) -> Result<Self> {
        let path = state_dir.join(FILE_NAME);
        let journal_path = state_dir.join(JOURNAL_NAME);
        let mut cp = Checkpointer {
            path,
            journal_path,
            journal: None,
            journal_len: 0,
            snapshot_len: 0,
            snapshot_at: SystemTime::now(),
            generation: 0,
            pending: Vec::new(),
            must_compact: false,
            unsynced: false,
            entries: HashMap::new(),
            existed: false,
            written_ns: 0,
            forget_after,
            writes: 0,
            stats: WriteStats::default(),
            loaded: Loaded::default(),
        };
        cp.read_snapshot()?;
        cp.read_journal()?;
        Ok(cp)
    }

    fn read_snapshot(&mut self) -> Result<()> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(self.path.display().to_string(), e)),
        };
        let at = self.path.clone();
        let corrupt = move |detail: String| Error::CorruptState { path: at.clone(), detail };
        let f: FileFormat = serde_json::from_slice(&text).map_err(|e| corrupt(format!("not a checkpoint file: {e}")))?;
        if f.version != VERSION && f.version != 1 {
            return Err(corrupt(format!("checkpoint version {} (this tailrace reads 1 and {VERSION})", f.version)));
        }
        self.loaded.migrated = f.version == 1;
        self.existed = true;
        self.written_ns = f.written_unix_ns;
        self.generation = f.generation;
        self.snapshot_len = text.len() as u64;
        self.snapshot_at = UNIX_EPOCH + Duration::from_nanos(f.written_unix_ns);
        for e in f.entries {
            let fp = Fingerprint::from_hex(&e.fingerprint).ok_or_else(|| corrupt(format!("bad fingerprint of {}", e.path)))?;
            self.entries.entry(e.input).or_default().insert(
                FileKey { dev: e.dev, ino: e.ino },
                Entry { fp, offset: e.offset, path: e.path, seen_ns: e.seen_unix_ns, epoch: 0, hex: e.fingerprint },
            );
        }
        Ok(())
    }

    /// Replay the journal's whole records over the snapshot (none when it follows another
    /// generation, or the state is version 1).
    fn read_journal(&mut self) -> Result<()> {
        let data = match std::fs::read(&self.journal_path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(self.journal_path.display().to_string(), e)),
        };
        if data.len() < 16 || &data[..8] != JOURNAL_MAGIC {
            let detail = "not a checkpoint journal (its header is missing or wrong)".to_string();
            return Err(Error::CorruptState { path: self.journal_path.clone(), detail });
        }
        let generation = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        if generation != self.generation || self.loaded.migrated {
            self.loaded.stale_journal = true;
            return Ok(());
        }
        let mut at = 16;
        while let Some((payload, next)) = whole_record(&data, at) {
            if let Err(kind) = self.apply(payload) {
                self.loaded.unread_kind = kind;
                break;
            }
            self.loaded.records += 1;
            at = next;
        }
        self.loaded.torn_bytes = (data.len() - at) as u64;
        self.journal_len = at as u64;
        if self.loaded.records > 0 {
            self.existed = true;
            let mtime = std::fs::metadata(&self.journal_path).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
            self.written_ns = self.written_ns.max(unix_ns(mtime));
        }
        Ok(())
    }

    /// Apply one journal record. `Err(kind)`: read no further — a kind this version does not
    /// know (a newer version's), or 0 when the record does not decode (torn: an empty record is
    /// the zeros a crash can leave past the last write).
    fn apply(&mut self, p: &[u8]) -> std::result::Result<(), u8> {
        const TORN: u8 = 0;
        let mut r = Fields(p);
        let kind = r.u8().ok_or(TORN)?;
        match kind {
            REC_OFFSETS => {
                let input = r.str().ok_or(TORN)?;
                let m = self.entries.entry(input.to_string()).or_default();
                let mut key = FileKey { dev: 0, ino: 0 };
                while !r.0.is_empty() {
                    let (Some(dev), Some(ino), Some(offset)) = (r.varint(), r.varint(), r.varint()) else { return Err(TORN) };
                    key = FileKey { dev: key.dev.wrapping_add(unzigzag(dev)), ino: key.ino.wrapping_add(unzigzag(ino)) };
                    if let Some(e) = m.get_mut(&key) {
                        e.offset = offset;
                    }
                }
            }
            REC_OFFSET | REC_HEAD | REC_ENTRY => {
                let (Some(input), Some(dev), Some(ino), Some(offset)) = (r.str(), r.u64(), r.u64(), r.u64()) else { return Err(TORN) };
                let key = FileKey { dev, ino };
                let m = self.entries.entry(input.to_string()).or_default();
                match kind {
                    REC_OFFSET => {
                        if let Some(e) = m.get_mut(&key) {
                            e.offset = offset;
                        }
                    }
                    REC_HEAD => {
                        let (Some(from), Some(more)) = (r.varint(), r.bytes()) else { return Err(TORN) };
                        if let Some(e) = m.get_mut(&key) {
                            e.offset = offset;
                            // Grown from the head this entry has (else the record is not about it:
                            // the shorter head stays, still a valid prefix).
                            if e.fp.bytes.len() as u64 == from && e.fp.bytes.len() + more.len() <= crate::identity::FINGERPRINT_MAX {
                                e.fp.bytes.extend_from_slice(more);
                                e.hex.clear();
                            }
                        }
                    }
                    _ => {
                        let (Some(path), Some(fp)) = (r.str(), r.bytes()) else { return Err(TORN) };
                        let seen_ns = unix_ns(SystemTime::now());
                        let fp = Fingerprint { bytes: fp.to_vec() };
                        m.insert(key, Entry { fp, offset, path: path.to_string(), seen_ns, epoch: 0, hex: String::new() });
                    }
                }
            }
            _ => return Err(kind),
        }
        Ok(())
    }

    /// A checkpoint file existed at start (so `read_from: end` no longer applies).
    pub fn existed(&self) -> bool {
        self.existed
    }

    /// When the checkpoint file was last written (Unix ns; 0 when there was none).
    pub fn written_ns(&self) -> u64 {
        self.written_ns
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// About the bytes a snapshot of every entry would take now (its heads as hex, the path,
    /// ~110 bytes of keys and numbers): counted only when the journal has outgrown the snapshot.
    fn snapshot_estimate(&self) -> u64 {
        self.entries.values().flat_map(|m| m.values()).map(|e| (2 * e.fp.bytes.len() + e.path.len() + 110) as u64).sum()
    }

    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, input: &str, key: FileKey) -> Option<&Entry> {
        self.entries.get(input)?.get(&key)
    }

    fn get_mut(&mut self, input: &str, key: FileKey) -> Option<&mut Entry> {
        self.entries.get_mut(input)?.get_mut(&key)
    }

    /// The entry for this identity if its fingerprint matches (an inode reused by another file
    /// does not).
    pub fn lookup(&self, input: &str, key: FileKey, fp: &Fingerprint) -> Option<&Entry> {
        self.get(input, key).filter(|e| e.fp.compatible(fp))
    }

    /// Every entry of every input.
    pub fn all_entries(&self) -> Vec<(String, FileKey, Entry)> {
        self.entries.iter().flat_map(|(input, m)| m.iter().map(move |(k, e)| (input.clone(), *k, e.clone()))).collect()
    }

    pub fn entries_for(&self, input: &str) -> Vec<(FileKey, Entry)> {
        self.entries.get(input).map(|m| m.iter().map(|(k, e)| (*k, e.clone())).collect()).unwrap_or_default()
    }

    /// Hand the entries of inputs no longer configured (`names` are the configured ones) to the
    /// input that reads their files now: an input renamed would otherwise find no checkpoint
    /// under its new name and ship its files again. An entry goes to the one configured input
    /// whose globs match its path (`matches(i, path)`); one matched by none (a rotated name)
    /// follows the others when they all went to one input; one matched by several stays, and
    /// is reported (which input's is it?). An input that has an entry for the file already
    /// keeps its own. Nothing is written: the caller writes a snapshot before any reading
    /// (`compact`), so the move and what is journaled after it cannot be torn apart.
    pub fn adopt_renamed(&mut self, names: &[&str], matches: impl Fn(usize, &Path) -> bool) -> Vec<Adoption> {
        let mut orphans: Vec<String> = self.entries.keys().filter(|n| !names.contains(&n.as_str())).cloned().collect();
        orphans.sort();
        let mut out = Vec::new();
        for from in orphans {
            let mut left = self.entries.remove(&from).unwrap_or_default();
            let hits: Vec<(FileKey, Vec<usize>)> =
                left.iter().map(|(k, e)| (*k, (0..names.len()).filter(|&i| matches(i, Path::new(&e.path))).collect())).collect();
            let mut sole: Vec<usize> = hits.iter().filter(|(_, h)| h.len() == 1).map(|(_, h)| h[0]).collect();
            sole.sort_unstable();
            sole.dedup();
            let mut moved = vec![0usize; names.len()];
            let mut several: Vec<usize> = Vec::new();
            let mut unclear = 0;
            for (key, h) in hits {
                let to = match h.as_slice() {
                    [one] => *one,
                    [] if sole.len() == 1 => sole[0],
                    [] => continue,
                    _ => {
                        several.extend(h);
                        unclear += 1;
                        continue;
                    }
                };
                let m = self.entries.entry(names[to].to_string()).or_default();
                if let std::collections::hash_map::Entry::Vacant(slot) = m.entry(key) {
                    slot.insert(left.remove(&key).expect("listed above"));
                    moved[to] += 1;
                }
            }
            for (i, n) in moved.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                out.push(Adoption { from: from.clone(), to: vec![names[i].to_string()], files: n });
            }
            if unclear > 0 {
                several.sort_unstable();
                several.dedup();
                out.push(Adoption { from: from.clone(), to: several.iter().map(|&i| names[i].to_string()).collect(), files: unclear });
            }
            if !left.is_empty() {
                self.entries.insert(from, left);
            }
        }
        out
    }

    /// Start tracking a file at `offset` (a new file, or one resumed/replaced at a known offset).
    /// Returns the epoch that acknowledgements must carry from now on.
    pub fn register(&mut self, input: &str, key: FileKey, fp: &Fingerprint, path: &str, offset: u64) -> u32 {
        let now = unix_ns(SystemTime::now());
        if !self.entries.contains_key(input) {
            self.entries.insert(input.to_string(), KeyMap::default());
        }
        let mut fresh = false;
        let e = self.entries.get_mut(input).expect("inserted above").entry(key).or_insert_with(|| {
            fresh = true;
            Entry { fp: fp.clone(), offset, path: path.to_string(), seen_ns: now, epoch: 0, hex: String::new() }
        });
        // A new reading of the file starts here: acknowledgements of batches read before
        // (a truncated file's old bytes) must not move it.
        e.epoch += 1;
        let changed = fresh || e.fp != *fp || e.offset != offset;
        if e.fp != *fp {
            e.fp = fp.clone();
            e.hex.clear();
        }
        e.offset = offset;
        e.seen_ns = now;
        if changed {
            // Journaled with the next acknowledgement (or `write`): a registration lost to a
            // crash only means reading that file again from what the journal says.
            entry_record(&mut self.pending, input, key, offset, &e.path, &e.fp.bytes);
        }
        e.epoch
    }

    /// Advance a file's committed offset (acknowledged batches only).
    pub fn commit(&mut self, input: &str, key: FileKey, epoch: u32, offset: u64, fp: Option<&Fingerprint>) {
        self.commit_all(input, std::iter::once((key, epoch, offset)), |_| fp);
    }

    /// `commit` for every file of a batch: the input's entries are looked up once, and a file's
    /// current fingerprint (`fp_of`) only while the stored one is not full yet.
    /// The changes are journaled with one `write` (with the registrations waiting).
    pub fn commit_all<'a>(&mut self, input: &str, items: impl Iterator<Item = (FileKey, u32, u64)>, fp_of: impl Fn(FileKey) -> Option<&'a Fingerprint>) {
        let Some(m) = self.entries.get_mut(input) else { return };
        let mut moved_to = Vec::new();
        for (key, epoch, offset) in items {
            let Some(e) = m.get_mut(&key) else { continue };
            if e.epoch == epoch && offset >= e.offset {
                let moved = offset > e.offset;
                e.offset = offset;
                // The head grew: from how many bytes it had (None: not a prefix of the new one,
                // which a reading of one epoch never makes; then the whole entry again).
                let mut grew = None;
                if !e.fp.is_full() {
                    if let Some(fp) = fp_of(key) {
                        if fp.bytes.len() > e.fp.bytes.len() {
                            grew = Some(fp.bytes.starts_with(&e.fp.bytes).then_some(e.fp.bytes.len()));
                            e.fp = fp.clone();
                            e.hex.clear();
                        }
                    }
                }
                match grew {
                    Some(Some(from)) => head_record(&mut self.pending, input, key, offset, &e.fp.bytes, from),
                    Some(None) => entry_record(&mut self.pending, input, key, offset, &e.path, &e.fp.bytes),
                    None if moved => moved_to.push((key, offset)),
                    None => {}
                }
            }
        }
        if !moved_to.is_empty() {
            offsets_record(&mut self.pending, input, &moved_to);
        }
        // A failed append is retried with the next one (the records stay pending); `write`
        // reports it.
        let _ = self.append();
    }

    /// Write the records waiting (one `write`).
    fn append(&mut self) -> std::io::Result<()> {
        if self.must_compact {
            self.pending.clear(); // the snapshot `write` makes next holds them
            return Ok(());
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.journal.is_none() {
            self.new_journal()?;
        }
        let f = self.journal.as_mut().expect("opened above");
        if let Err(e) = f.write_all(&self.pending) {
            // Part of it may be written (a full disk): cut it off, so the retry appends whole
            // records after the last whole one, not after a torn one that would end the
            // reading of every record behind it.
            let _ = f.set_len(self.journal_len);
            if self.pending.len() > PENDING_MAX {
                // Memory stays bounded on a disk that stays full: the entries hold all of it.
                self.pending = Vec::new();
                self.must_compact = true;
            }
            return Err(e);
        }
        self.stats.journal_writes += 1;
        self.stats.journal_bytes += self.pending.len() as u64;
        self.journal_len += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        Ok(())
    }

    /// A new, empty journal following the current generation (tmp + fsync + rename).
    fn new_journal(&mut self) -> std::io::Result<()> {
        let tmp = self.journal_path.with_extension("journal.tmp");
        written_whole(&tmp, |f| {
            f.write_all(JOURNAL_MAGIC)?;
            f.write_all(&self.generation.to_le_bytes())
        })?;
        std::fs::rename(&tmp, &self.journal_path)?;
        sync_dir(&self.journal_path)?;
        self.stats.fsyncs += 2;
        self.journal = Some(std::fs::OpenOptions::new().append(true).open(&self.journal_path)?);
        self.journal_len = 16;
        Ok(())
    }

    pub fn touch(&mut self, input: &str, key: FileKey, now_ns: u64) {
        if let Some(e) = self.get_mut(input, key) {
            e.seen_ns = now_ns;
        }
    }

    /// Make what was journaled durable (`fsync`, every `checkpoint_interval`), compacting when
    /// due (see the module doc). Returns the number of entries.
    pub fn write(&mut self) -> std::io::Result<usize> {
        if self.must_compact {
            return self.compact();
        }
        self.append()?;
        // The journal has outgrown the snapshot, and a new one would be smaller than it (at a
        // start the first snapshot predates the files: their registrations alone are most of
        // what a new one would hold, so rewriting it then saves nothing).
        let due = (self.journal_len > COMPACT_MIN.max(self.snapshot_len) && self.journal_len > self.snapshot_estimate())
            || (self.journal_len > 16 && self.snapshot_at.elapsed().unwrap_or_default() >= COMPACT_EVERY);
        // The first write makes a snapshot even of nothing: that tailrace ran here before is
        // state too (files found at a later start are not history).
        if due || self.snapshot_len == 0 {
            return self.compact();
        }
        if self.unsynced {
            if let Some(f) = &self.journal {
                f.sync_data()?;
                self.stats.fsyncs += 1;
            }
            self.unsynced = false;
        }
        self.written_ns = unix_ns(SystemTime::now());
        self.writes += 1;
        Ok(self.len())
    }

    /// A new snapshot of every entry (the forgotten dropped), then an empty journal after it.
    /// Returns the number of entries written.
    pub fn compact(&mut self) -> std::io::Result<usize> {
        let now = unix_ns(SystemTime::now());
        let forget = self.forget_after.as_nanos() as u64;
        for m in self.entries.values_mut() {
            m.retain(|_, e| now.saturating_sub(e.seen_ns) < forget);
        }
        let generation = self.generation + 1;
        // Written by hand rather than through serde: the hex needs no escaping, and scanning
        // 2 KiB of it per file for escapes was most of the cost.
        let mut entries: Vec<(&String, &FileKey, &mut Entry)> =
            self.entries.iter_mut().flat_map(|(input, m)| m.iter_mut().map(move |(k, e)| (input, k, e))).collect();
        entries.sort_by(|a, b| (a.0, &a.2.path, a.1.ino).cmp(&(b.0, &b.2.path, b.1.ino)));
        let n = entries.len();
        let mut body = Vec::with_capacity(64 + n * (2 * crate::identity::FINGERPRINT_MAX + 200));
        write!(body, "{{\"version\":{VERSION},\"written_unix_ns\":{now},\"generation\":{generation},\"entries\":[")?;
        for (i, (input, k, e)) in entries.into_iter().enumerate() {
            if e.hex.len() != 2 * e.fp.bytes.len() {
                e.hex = e.fp.to_hex();
            }
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"input\":");
            serde_json::to_writer(&mut body, input)?;
            write!(body, ",\"dev\":{},\"ino\":{},\"fingerprint\":\"", k.dev, k.ino)?;
            body.extend_from_slice(e.hex.as_bytes());
            write!(body, "\",\"offset\":{},\"path\":", e.offset)?;
            serde_json::to_writer(&mut body, &e.path)?;
            write!(body, ",\"seen_unix_ns\":{}}}", e.seen_ns)?;
        }
        body.extend_from_slice(b"]}");
        let tmp = self.path.with_extension("json.tmp");
        written_whole(&tmp, |f| f.write_all(&body))?;
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)?;
        // A crash here leaves the new snapshot with the old journal: its generation tells it
        // apart, and everything it holds is in the snapshot. The old journal is not appended
        // to again: if the new one cannot be made now, the next append makes it.
        self.generation = generation;
        self.pending.clear();
        self.must_compact = false;
        self.journal = None;
        self.new_journal()?;
        self.stats.snapshots += 1;
        self.stats.snapshot_bytes += body.len() as u64;
        self.stats.fsyncs += 2;
        self.snapshot_len = body.len() as u64;
        self.snapshot_at = SystemTime::now();
        self.unsynced = false;
        self.written_ns = now;
        self.writes += 1;
        Ok(n)
    }
}

/// `tmp` created private, written by `write` and synced; removed when any of it fails (a full
/// disk: what was written of it would take the room the journal needs).
fn written_whole(tmp: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> std::io::Result<()> {
    let done = create_private(tmp).and_then(|mut f| write(&mut f).and_then(|()| f.sync_all()));
    if done.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    done
}

/// A new file only tailrace may read (`0600`): offsets and paths of every tailed file.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Journal records: `u32` payload length, `u32` CRC-32 of the payload, the payload (a kind
/// byte, then the input; an entry adds the identity, the offset, the path and the head; the
/// offsets of an acknowledgement, see `offsets_record`).
fn record(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    body(out);
    let payload = &out[start + 8..];
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    let (len, sum) = (payload.len() as u32, crc.sum());
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn head(out: &mut Vec<u8>, kind: u8, input: &str, key: FileKey, offset: u64) {
    out.push(kind);
    put_bytes(out, input.as_bytes());
    for n in [key.dev, key.ino, offset] {
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// The offsets one acknowledgement moved, in one record: the input once, then for each file
/// its device and inode as the difference from the file before (zigzag LEB128: files read in
/// one pass are mostly neighbours, 1-2 bytes) and its offset (LEB128, 3-5 bytes). At 5,000
/// busy files a record per file (45 bytes each) was ~1 MB a second of journal.
fn offsets_record(out: &mut Vec<u8>, input: &str, moved: &[(FileKey, u64)]) {
    record(out, |o| {
        o.push(REC_OFFSETS);
        put_bytes(o, input.as_bytes());
        let mut prev = FileKey { dev: 0, ino: 0 };
        for (key, offset) in moved {
            put_varint(o, zigzag(key.dev.wrapping_sub(prev.dev)));
            put_varint(o, zigzag(key.ino.wrapping_sub(prev.ino)));
            put_varint(o, *offset);
            prev = *key;
        }
    });
}

/// A difference as an unsigned number, small either way (`unzigzag` undoes it).
fn zigzag(d: u64) -> u64 {
    (d << 1) ^ ((d as i64 >> 63) as u64)
}

fn unzigzag(z: u64) -> u64 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

fn entry_record(out: &mut Vec<u8>, input: &str, key: FileKey, offset: u64, path: &str, fp: &[u8]) {
    record(out, |o| {
        head(o, REC_ENTRY, input, key, offset);
        put_bytes(o, path.as_bytes());
        put_bytes(o, fp);
    });
}

/// A head grown from its first `from` bytes to `fp`: the offset, `from` (LEB128) and the bytes
/// added. Read back only onto an entry whose head is `from` bytes long.
fn head_record(out: &mut Vec<u8>, input: &str, key: FileKey, offset: u64, fp: &[u8], from: usize) {
    record(out, |o| {
        head(o, REC_HEAD, input, key, offset);
        put_varint(o, from as u64);
        put_bytes(o, &fp[from..]);
    });
}

/// The payload of the whole record at `at`, and where the next starts; `None` at the end or at
/// a torn or damaged record.
fn whole_record(data: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(data.get(at + 4..at + 8)?.try_into().ok()?);
    let payload = data.get(at + 8..(at + 8).checked_add(len)?)?;
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    (crc.sum() == sum).then_some((payload, at + 8 + len))
}

/// Reading a record's fields in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(d: &Path) -> Checkpointer {
        Checkpointer::open(d, Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn roundtrip_epochs_and_versions() {
        let d = tempfile::tempdir().unwrap();
        let k = FileKey { dev: 1, ino: 9 };
        let fp = Fingerprint { bytes: b"abc".to_vec() };
        let mut c = open(d.path());
        assert!(!c.existed());
        let e0 = c.register("in", k, &fp, "/a.log", 0);
        c.commit("in", k, e0, 40, None);
        let e1 = c.register("in", k, &Fingerprint::default(), "/a.log", 0); // truncated
        assert_ne!(e0, e1);
        c.commit("in", k, e0, 80, None); // a late ack from before the truncation
        assert_eq!(c.get("in", k).unwrap().offset, 0);
        c.commit("in", k, e1, 10, Some(&fp));
        assert_eq!(c.compact().unwrap(), 1);
        let c2 = open(d.path());
        assert!(c2.existed());
        let e = c2.lookup("in", k, &Fingerprint { bytes: b"abcd".to_vec() }).unwrap();
        assert_eq!((e.offset, e.path.as_str()), (10, "/a.log"));
        assert!(c2.lookup("in", k, &Fingerprint { bytes: b"x".to_vec() }).is_none());
        std::fs::write(d.path().join(FILE_NAME), r#"{"version":99,"written_unix_ns":0,"entries":[]}"#).unwrap();
        let err = Checkpointer::open(d.path(), Duration::from_secs(1)).err().unwrap();
        assert!(matches!(&err, Error::CorruptState { path, .. } if path.ends_with(FILE_NAME)), "{err}");
        assert!(err.to_string().contains("checkpoint version 99"), "{err}");
    }

    /// A renamed input finds its files' offsets under its new name; what is unclear stays.
    #[test]
    fn entries_of_an_input_no_longer_configured_go_to_the_one_that_reads_their_files() {
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        let fp = Fingerprint { bytes: b"head".to_vec() };
        let add = |c: &mut Checkpointer, input: &str, ino: u64, path: &str, offset: u64| {
            let k = FileKey { dev: 1, ino };
            let e = c.register(input, k, &fp, path, 0);
            c.commit(input, k, e, offset, None);
        };
        add(&mut c, "web", 1, "/logs/web/a.log", 100);
        add(&mut c, "web", 2, "/logs/web/b.log", 200);
        add(&mut c, "web", 3, "/logs/web/a.log.1", 300); // rotated: no glob matches it now
        add(&mut c, "web", 4, "/logs/web/c.log", 400);
        add(&mut c, "nginx", 4, "/logs/web/c.log", 450); // the new name's own entry is kept
        add(&mut c, "old", 5, "/logs/both/x.log", 500); // two inputs read /logs/both
        add(&mut c, "db", 6, "/logs/db/d.log", 600); // still configured: untouched
        add(&mut c, "gone", 7, "/elsewhere/e.log", 700); // nothing reads it now
        let names = ["nginx", "db", "both1", "both2"];
        let globs = ["/logs/web/", "/logs/db/", "/logs/both/", "/logs/both/"];
        let moved = c.adopt_renamed(&names, |i, p| p.to_str().unwrap().starts_with(globs[i]) && p.extension().is_some_and(|e| e == "log"));
        let a = |from: &str, to: &[&str], files| Adoption { from: from.into(), to: to.iter().map(|s| s.to_string()).collect(), files };
        assert_eq!(moved, vec![a("old", &["both1", "both2"], 1), a("web", &["nginx"], 3)]);
        c.compact().unwrap();
        let c = open(d.path());
        let at = |input: &str, ino| c.get(input, FileKey { dev: 1, ino }).map(|e| e.offset);
        // Taken over with their offsets: the rotated one with its siblings.
        assert_eq!([at("nginx", 1), at("nginx", 2), at("nginx", 3), at("nginx", 4)], [Some(100), Some(200), Some(300), Some(450)]);
        // The duplicate stays under the old name (forgotten in time), the unclear and the
        // unread too; a configured input's entries move nowhere.
        assert_eq!([at("web", 4), at("old", 5), at("gone", 7), at("db", 6)], [Some(400), Some(500), Some(700), Some(600)]);
        assert_eq!([at("web", 1), at("both1", 5), at("both2", 5), at("nginx", 7)], [None; 4]);
        assert_eq!(c.len(), 8);
    }

    /// `n` files registered and committed to `offset` (each with a full 1 KiB head).
    fn files(c: &mut Checkpointer, n: u64, offset: u64) -> Vec<(FileKey, u32)> {
        (0..n)
            .map(|i| {
                let k = FileKey { dev: 1, ino: i };
                let fp = Fingerprint { bytes: format!("file {i}\n").repeat(200).into_bytes()[..1024].to_vec() };
                let e = c.register("in", k, &fp, &format!("/logs/{i}.log"), 0);
                c.commit("in", k, e, offset, None);
                (k, e)
            })
            .collect()
    }

    #[test]
    fn every_commit_is_appended_at_once_and_read_back_without_a_write() {
        // A killed process never calls `write`: what it acknowledged is in the journal.
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        let keys = files(&mut c, 3, 100);
        let appends = c.stats.journal_writes;
        assert_eq!(appends, 3, "one append per acknowledged group");
        c.commit("in", keys[1].0, keys[1].1, 250, None);
        c.commit("in", keys[1].0, keys[1].1, 250, None); // no change: nothing written
        assert_eq!(c.stats.journal_writes, appends + 1);
        drop(c);
        let r = open(d.path());
        assert!(r.existed());
        assert_eq!(r.loaded.records, 3 + 3 + 1, "3 entries, 3 offsets, 1 offset");
        let offsets: Vec<u64> = keys.iter().map(|(k, _)| r.get("in", *k).unwrap().offset).collect();
        assert_eq!(offsets, [100, 250, 100]);
        assert_eq!(r.get("in", keys[2].0).unwrap().fp.bytes.len(), 1024);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_appends_go_on_after_the_last_whole_one() {
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        let keys = files(&mut c, 2, 100);
        c.commit("in", keys[0].0, keys[0].1, 200, None);
        let whole = std::fs::metadata(d.path().join(JOURNAL_NAME)).unwrap().len();
        c.commit("in", keys[0].0, keys[0].1, 300, None);
        drop(c);
        // The last append torn by a crash: every cut of its bytes reads up to the record before.
        let full = std::fs::read(d.path().join(JOURNAL_NAME)).unwrap();
        for cut in whole as usize..full.len() {
            std::fs::write(d.path().join(JOURNAL_NAME), &full[..cut]).unwrap();
            let r = Checkpointer::read(d.path(), Duration::from_secs(3600)).unwrap();
            assert_eq!((r.get("in", keys[0].0).unwrap().offset, r.loaded.torn_bytes), (200, (cut as u64) - whole), "cut at {cut}");
        }
        // A damaged byte inside the last record: the same.
        let mut bad = full.clone();
        *bad.last_mut().unwrap() ^= 0xff;
        std::fs::write(d.path().join(JOURNAL_NAME), &bad).unwrap();
        let mut c = open(d.path());
        assert_eq!((c.get("in", keys[0].0).unwrap().offset, c.loaded.torn_bytes), (200, full.len() as u64 - whole));
        // Opening cut the journal at the last whole record: what follows is read back.
        let e = c.register("in", keys[0].0, &c.get("in", keys[0].0).unwrap().fp.clone(), "/logs/0.log", 200);
        c.commit("in", keys[0].0, e, 400, None);
        drop(c);
        let r = open(d.path());
        assert_eq!((r.get("in", keys[0].0).unwrap().offset, r.get("in", keys[1].0).unwrap().offset, r.loaded.torn_bytes), (400, 100, 0));
    }

    /// Runs `name` (an ignored test of this module) in a child process of its own: for what may
    /// not touch the other tests running beside it (a file-size limit is the process's).
    fn in_child(name: &str) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("checkpoints::tests::{name}"), "--ignored", "--test-threads=1", "--nocapture"])
            .env("TAILRACE_IN_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }

    /// Writes past `bytes` fail in this process (EFBIG, as on a full disk); `None` lifts it.
    fn file_size_limit(bytes: Option<u64>) {
        let lim = bytes.unwrap_or(libc::RLIM_INFINITY);
        // SAFETY: plain syscalls; SIGXFSZ ignored so the write fails instead of killing us.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &libc::rlimit { rlim_cur: lim, rlim_max: libc::RLIM_INFINITY }), 0);
        }
    }

    #[test]
    fn a_full_disk_leaves_no_torn_record_and_no_partial_snapshot_behind() {
        in_child("full_disk_in_a_child");
    }

    #[test]
    #[ignore = "run by a_full_disk_leaves_no_torn_record_and_no_partial_snapshot_behind in a child"]
    fn full_disk_in_a_child() {
        assert_eq!(std::env::var("TAILRACE_IN_CHILD").as_deref(), Ok("1"), "run through in_child");
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        let keys = files(&mut c, 2, 100);
        c.write().unwrap();
        let journal = d.path().join(JOURNAL_NAME);
        let whole = std::fs::metadata(&journal).unwrap().len();
        // Room for 5 more bytes: the next append is written in part and fails. It is cut off,
        // and retried whole with the next one once there is room.
        file_size_limit(Some(whole + 5));
        c.commit("in", keys[0].0, keys[0].1, 200, None);
        assert_eq!(c.write().unwrap_err().raw_os_error(), Some(libc::EFBIG));
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), whole, "the torn bytes are cut off");
        // A snapshot that does not fit: no partial file left to take the journal's room, and
        // the state as it was.
        assert_eq!(c.compact().unwrap_err().raw_os_error(), Some(libc::EFBIG));
        assert!(!d.path().join("checkpoints.json.tmp").exists());
        // What a crash mid-write leaves (a kill -9 between the write and the rename) is removed
        // at the next start.
        std::fs::write(d.path().join("checkpoints.json.tmp"), b"{\"partial").unwrap();
        std::fs::write(d.path().join("checkpoints.journal.tmp"), b"TRJ").unwrap();
        drop(open(d.path()));
        assert!(!d.path().join("checkpoints.json.tmp").exists() && !d.path().join("checkpoints.journal.tmp").exists());
        file_size_limit(None);
        c.commit("in", keys[1].0, keys[1].1, 300, None);
        drop(c); // a kill -9: no write, no compaction
        let r = open(d.path());
        let offsets: Vec<u64> = keys.iter().map(|(k, _)| r.get("in", *k).unwrap().offset).collect();
        assert_eq!((offsets, r.loaded.torn_bytes), (vec![200, 300], 0));
        // A disk that stays full: the records waiting stay under PENDING_MAX (then a snapshot
        // is owed and nothing is appended), and once there is room the snapshot holds every
        // offset acknowledged meanwhile.
        let mut c = open(d.path());
        let epochs: Vec<u32> = keys.iter().map(|(k, _)| c.get("in", *k).unwrap().epoch).collect();
        file_size_limit(Some(std::fs::metadata(&journal).unwrap().len()));
        let mut most = 0;
        for off in 301..300_000u64 {
            c.commit("in", keys[0].0, epochs[0], off, None);
            most = most.max(c.pending.len());
        }
        assert!(c.must_compact && most <= PENDING_MAX + 64, "{most}");
        assert_eq!(c.write().unwrap_err().raw_os_error(), Some(libc::EFBIG));
        file_size_limit(None);
        c.write().unwrap();
        assert!(!c.must_compact);
        c.commit("in", keys[1].0, epochs[1], 400, None); // appended to the new journal
        drop(c);
        let r = open(d.path());
        let offsets: Vec<u64> = keys.iter().map(|(k, _)| r.get("in", *k).unwrap().offset).collect();
        assert_eq!((offsets, r.loaded.torn_bytes), (vec![299_999, 400], 0));
    }

    #[test]
    fn a_crash_between_a_compactions_renames_leaves_the_new_snapshot_and_ignores_the_old_journal() {
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        let keys = files(&mut c, 2, 100);
        let old_journal = std::fs::read(d.path().join(JOURNAL_NAME)).unwrap();
        c.commit("in", keys[0].0, keys[0].1, 150, None);
        c.compact().unwrap();
        // The new snapshot is in place; the journal is still the one before it.
        std::fs::write(d.path().join(JOURNAL_NAME), &old_journal).unwrap();
        let r = open(d.path());
        assert!(r.loaded.stale_journal);
        assert_eq!((r.get("in", keys[0].0).unwrap().offset, r.get("in", keys[1].0).unwrap().offset), (150, 100));
    }

    #[test]
    fn the_state_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let mut c = open(&state);
        files(&mut c, 1, 10);
        c.compact().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&state), mode(&state.join(FILE_NAME)), mode(&state.join(JOURNAL_NAME))), (0o700, 0o600, 0o600));
    }

    #[test]
    fn version_1_state_is_migrated() {
        let d = tempfile::tempdir().unwrap();
        let v1 = r#"{"version":1,"written_unix_ns":5,"entries":[{"input":"in","dev":1,"ino":2,"fingerprint":"61620a","offset":3,"path":"/a.log","seen_unix_ns":SEEN}]}"#;
        let now = unix_ns(SystemTime::now());
        std::fs::write(d.path().join(FILE_NAME), v1.replace("SEEN", &now.to_string())).unwrap();
        let c = open(d.path());
        assert!(c.loaded.migrated && c.existed());
        assert_eq!(c.get("in", FileKey { dev: 1, ino: 2 }).unwrap().offset, 3);
        let text = std::fs::read_to_string(d.path().join(FILE_NAME)).unwrap();
        assert!(text.starts_with(r#"{"version":2,"#), "{text}");
        assert!(d.path().join(JOURNAL_NAME).exists());
        let again = open(d.path());
        assert!(!again.loaded.migrated);
        assert_eq!(again.get("in", FileKey { dev: 1, ino: 2 }).unwrap().offset, 3);
    }

    #[test]
    fn bytes_written_grow_with_the_files_that_moved_not_with_the_files_tracked() {
        // 10,000 files tracked (full heads), 5 of them acknowledged 100 times: what is written
        // is the same as with 10 files tracked, and the snapshot is not rewritten.
        let mut written = Vec::new();
        for n in [10u64, 10_000] {
            let d = tempfile::tempdir().unwrap();
            let mut c = open(d.path());
            let keys = files(&mut c, n, 100);
            c.compact().unwrap();
            let before = c.stats;
            for round in 1..=100u64 {
                for (k, e) in &keys[..5] {
                    c.commit("in", *k, *e, 100 + round * 10, None);
                }
                if round % 10 == 0 {
                    c.write().unwrap();
                }
            }
            let after = c.stats;
            assert_eq!(after.snapshots, before.snapshots, "{n} files: no compaction");
            assert_eq!((after.journal_writes - before.journal_writes, after.fsyncs - before.fsyncs), (500, 10));
            written.push(after.journal_bytes - before.journal_bytes);
        }
        // Each offsets record: 8 (length, CRC) + 1 (kind) + 4 + 2 ("in") + 1 + 1 + 2 (the
        // device and inode as differences from 0, both < 64; the offset, 130-1100; the first
        // two rounds' 110 and 120 take one byte).
        assert_eq!(written, [500 * 19 - 5 * 2, 500 * 19 - 5 * 2]);
    }

    #[test]
    fn a_growing_head_is_journaled_as_the_bytes_it_gained() {
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        let full: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
        let fp = |n: usize| Fingerprint { bytes: full[..n].to_vec() };
        let (a, b) = (FileKey { dev: 7, ino: 9 }, FileKey { dev: 7, ino: 10 });
        let e = c.register("in", a, &fp(200), "/logs/a.log", 0);
        let eb = c.register("in", b, &fp(100), "/logs/b.log", 0);
        c.commit("in", a, e, 200, None);
        c.commit("in", b, eb, 100, None);
        let before = c.stats.journal_bytes;
        for (n, offset) in [(400, 400), (600, 600), (1024, 1100)] {
            c.commit("in", a, e, offset, Some(&fp(n)));
        }
        // Each growth: 8 (length, CRC) + 1 (kind) + 6 ("in") + 24 (device, inode, offset) + the
        // length it grew from (200, 400, 600: 2 bytes each, LEB128) + 4 + the bytes gained. The
        // whole entry each time (path and head) was 3 × 58 + 400 + 600 + 1024 = 2,198 bytes.
        assert_eq!(c.stats.journal_bytes - before, 3 * (8 + 1 + 6 + 24 + 2 + 4) + (200 + 200 + 424));
        drop(c);
        // A growth record that does not start where b's head ends (50, not 100) is not applied to
        // it (its offset is).
        let mut stray = Vec::new();
        head_record(&mut stray, "in", b, 150, &full[..60], 50);
        let mut j = std::fs::OpenOptions::new().append(true).open(d.path().join(JOURNAL_NAME)).unwrap();
        j.write_all(&stray).unwrap();
        drop(j);
        let r = open(d.path());
        let (ra, rb) = (r.get("in", a).unwrap(), r.get("in", b).unwrap());
        assert_eq!((&ra.fp.bytes[..], ra.offset, &rb.fp.bytes[..], rb.offset), (&full[..], 1100, &full[..100], 150));
    }

    #[test]
    fn the_snapshot_is_rewritten_only_when_the_journal_outgrows_what_it_would_be() {
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        c.write().unwrap(); // the first write: a snapshot of nothing
        assert_eq!(c.stats.snapshots, 1);
        // 1,100 files registered with 1 KiB heads: ~1.2 MB of journal, past 1 MiB and the empty
        // snapshot, but a snapshot of them would be ~2.4 MB (heads as hex): not rewritten.
        let keys = files(&mut c, 1100, 10);
        c.write().unwrap();
        let (registered, estimate) = (c.journal_len, c.snapshot_estimate());
        assert!(registered > COMPACT_MIN && registered < estimate, "{registered} {estimate}");
        assert_eq!(c.stats.snapshots, 1);
        // Acknowledgements until the journal outgrows that: the next write rewrites it.
        let mut offset = 10;
        while c.journal_len <= estimate {
            offset += 1;
            c.commit_all("in", keys.iter().map(|(k, e)| (*k, *e, offset)), |_| None);
        }
        c.write().unwrap();
        assert_eq!((c.stats.snapshots, c.journal_len), (2, 16));
    }

    #[test]
    fn a_whole_record_this_version_does_not_read_is_told_from_a_torn_one() {
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        let keys = files(&mut c, 1, 100);
        c.commit("in", keys[0].0, keys[0].1, 200, None);
        drop(c);
        let whole = std::fs::metadata(d.path().join(JOURNAL_NAME)).unwrap().len();
        // A newer version's record (kind 9), then one of a kind this version reads after it.
        let mut newer = Vec::new();
        record(&mut newer, |o| {
            o.push(9);
            o.extend_from_slice(b"whatever comes next");
        });
        record(&mut newer, |o| head(o, REC_OFFSET, "in", keys[0].0, 300));
        let mut j = std::fs::OpenOptions::new().append(true).open(d.path().join(JOURNAL_NAME)).unwrap();
        j.write_all(&newer).unwrap();
        drop(j);
        let r = open(d.path());
        // Reading stops at it (what follows may depend on it), says which kind it was, and the
        // journal is cut there as for a torn record.
        assert_eq!((r.get("in", keys[0].0).unwrap().offset, r.loaded.unread_kind, r.loaded.torn_bytes), (200, 9, newer.len() as u64));
        assert_eq!(std::fs::metadata(d.path().join(JOURNAL_NAME)).unwrap().len(), whole);
        // A torn record is not a foreign one, nor are zeros past the last write (they read as
        // an empty record whose CRC holds).
        drop(r);
        for tail in [&newer[..5], &[0u8; 24][..]] {
            let mut j = std::fs::OpenOptions::new().append(true).open(d.path().join(JOURNAL_NAME)).unwrap();
            j.write_all(tail).unwrap();
            drop(j);
            let r = open(d.path());
            assert_eq!((r.loaded.unread_kind, r.loaded.torn_bytes), (0, tail.len() as u64));
        }
    }

    #[test]
    fn an_acknowledgement_is_one_record_of_a_few_bytes_per_file_and_older_records_still_read() {
        let d = tempfile::tempdir().unwrap();
        let mut c = open(d.path());
        let fp = Fingerprint { bytes: b"a head\n".to_vec() };
        let keys = [(2049, 1000), (2049, 1001), (2049, 998), (7, 5)].map(|(dev, ino)| FileKey { dev, ino });
        let epochs: Vec<u32> = keys.iter().map(|k| c.register("in", *k, &fp, "/logs/a.log", 0)).collect();
        let before = c.stats;
        let offsets = [100, 5_000_000_000, 127, 128];
        let fps = |_| Some(&fp);
        c.commit_all("in", keys.iter().zip(&epochs).zip(offsets).map(|((k, e), o)| (*k, *e, o)), fps);
        let after = c.stats;
        // The registrations (4 entry records) and the offsets (1 record), in one write. The
        // offsets record: 8 (length, CRC) + 1 (kind) + 6 ("in"), then per file the device and
        // inode as zigzag differences from the file before and the offset, LEB128:
        // 2049 → 2 bytes, 1000 → 2, 100 → 1; 0, +1, 5·10⁹ → 1, 1, 5; 0, -3, 127 → 1, 1, 1;
        // -2042 → 2, -993 → 2, 128 → 2.
        let entries: u64 = 4 * (8 + 1 + 6 + 24 + 4 + 11 + 4 + 7);
        assert_eq!((after.journal_writes - before.journal_writes, after.journal_bytes - before.journal_bytes), (1, entries + 15 + 5 + 7 + 3 + 6));
        // An offset record of the earlier format, appended by hand (a journal begun by the
        // version before an upgrade), is read too.
        let mut old = Vec::new();
        record(&mut old, |o| head(o, REC_OFFSET, "in", keys[3], 129));
        drop(c);
        let mut j = std::fs::OpenOptions::new().append(true).open(d.path().join(JOURNAL_NAME)).unwrap();
        j.write_all(&old).unwrap();
        drop(j);
        let r = open(d.path());
        assert_eq!((r.loaded.records, r.loaded.torn_bytes), (4 + 1 + 1, 0));
        let read: Vec<u64> = keys.iter().map(|k| r.get("in", *k).unwrap().offset).collect();
        assert_eq!(read, [100, 5_000_000_000, 127, 129]);
    }
}
