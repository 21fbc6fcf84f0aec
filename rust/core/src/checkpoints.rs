//! Checkpointer: identity → committed offset for every input, in one versioned file written
//! tmp + fsync + rename (+ fsync of the directory), so a crash leaves the old state or the new
//! one, never half of either. Offsets advance only through `commit`; entries of files gone for
//! `forget_after` are dropped when the file is written.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::{FileKey, Fingerprint, KeyMap};

pub const VERSION: u32 = 1;
const FILE_NAME: &str = "checkpoints.json";

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
    entries: Vec<FileEntry>,
}

pub struct Checkpointer {
    path: PathBuf,
    /// input → identity → entry (nested so lookups by `&str` allocate nothing).
    entries: HashMap<String, KeyMap<FileKey, Entry>>,
    existed: bool,
    written_ns: u64,
    pub forget_after: Duration,
    pub writes: u64,
}

pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Checkpointer {
    /// Load `state_dir/checkpoints.json` if present. A file of another version or that does not
    /// parse is an error that names it: guessing offsets would lose or repeat data.
    pub fn open(state_dir: &Path, forget_after: Duration) -> Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|e| Error::io(format!("state_dir {}", state_dir.display()), e))?;
        let path = state_dir.join(FILE_NAME);
        let mut cp = Checkpointer { path, entries: HashMap::new(), existed: false, written_ns: 0, forget_after, writes: 0 };
        let text = match std::fs::read(&cp.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cp),
            Err(e) => return Err(Error::io(cp.path.display().to_string(), e)),
        };
        let at = cp.path.clone();
        let corrupt = move |detail: String| Error::CorruptState { path: at.clone(), detail };
        let f: FileFormat = serde_json::from_slice(&text).map_err(|e| corrupt(format!("not a checkpoint file: {e}")))?;
        if f.version != VERSION {
            return Err(corrupt(format!("checkpoint version {} (this tailrace reads {VERSION})", f.version)));
        }
        cp.existed = true;
        cp.written_ns = f.written_unix_ns;
        for e in f.entries {
            let fp = Fingerprint::from_hex(&e.fingerprint).ok_or_else(|| corrupt(format!("bad fingerprint of {}", e.path)))?;
            cp.entries.entry(e.input).or_default().insert(
                FileKey { dev: e.dev, ino: e.ino },
                Entry { fp, offset: e.offset, path: e.path, seen_ns: e.seen_unix_ns, epoch: 0, hex: e.fingerprint },
            );
        }
        Ok(cp)
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

    pub fn entries_for(&self, input: &str) -> Vec<(FileKey, Entry)> {
        self.entries.get(input).map(|m| m.iter().map(|(k, e)| (*k, e.clone())).collect()).unwrap_or_default()
    }

    /// Start tracking a file at `offset` (a new file, or one resumed/replaced at a known offset).
    /// Returns the epoch that acknowledgements must carry from now on.
    pub fn register(&mut self, input: &str, key: FileKey, fp: &Fingerprint, path: &str, offset: u64) -> u32 {
        let now = unix_ns(SystemTime::now());
        if !self.entries.contains_key(input) {
            self.entries.insert(input.to_string(), KeyMap::default());
        }
        let e = self.entries.get_mut(input).expect("inserted above").entry(key).or_insert_with(|| Entry {
            fp: fp.clone(),
            offset,
            path: path.to_string(),
            seen_ns: now,
            epoch: 0,
            hex: String::new(),
        });
        // A new reading of the file starts here: acknowledgements of batches read before
        // (a truncated file's old bytes) must not move it.
        e.epoch += 1;
        if e.fp != *fp {
            e.fp = fp.clone();
            e.hex.clear();
        }
        e.offset = offset;
        e.seen_ns = now;
        e.epoch
    }

    /// Advance a file's committed offset (acknowledged batches only).
    pub fn commit(&mut self, input: &str, key: FileKey, epoch: u32, offset: u64, fp: Option<&Fingerprint>) {
        self.commit_all(input, std::iter::once((key, epoch, offset)), |_| fp);
    }

    /// `commit` for every file of a batch: the input's entries are looked up once, and a file's
    /// current fingerprint (`fp_of`) only while the stored one is not full yet.
    pub fn commit_all<'a>(&mut self, input: &str, items: impl Iterator<Item = (FileKey, u32, u64)>, fp_of: impl Fn(FileKey) -> Option<&'a Fingerprint>) {
        let Some(m) = self.entries.get_mut(input) else { return };
        for (key, epoch, offset) in items {
            let Some(e) = m.get_mut(&key) else { continue };
            if e.epoch == epoch && offset >= e.offset {
                e.offset = offset;
                if !e.fp.is_full() {
                    if let Some(fp) = fp_of(key) {
                        if fp.bytes.len() > e.fp.bytes.len() {
                            e.fp = fp.clone();
                            e.hex.clear();
                        }
                    }
                }
            }
        }
    }

    pub fn touch(&mut self, input: &str, key: FileKey, now_ns: u64) {
        if let Some(e) = self.get_mut(input, key) {
            e.seen_ns = now_ns;
        }
    }

    /// Write the file atomically. Returns the number of entries written.
    pub fn write(&mut self) -> std::io::Result<usize> {
        let now = unix_ns(SystemTime::now());
        let forget = self.forget_after.as_nanos() as u64;
        for m in self.entries.values_mut() {
            m.retain(|_, e| now.saturating_sub(e.seen_ns) < forget);
        }
        // Written by hand rather than through serde: the hex needs no escaping, and scanning
        // 2 KiB of it per file for escapes was most of the cost.
        let mut entries: Vec<(&String, &FileKey, &mut Entry)> =
            self.entries.iter_mut().flat_map(|(input, m)| m.iter_mut().map(move |(k, e)| (input, k, e))).collect();
        entries.sort_by(|a, b| (a.0, &a.2.path, a.1.ino).cmp(&(b.0, &b.2.path, b.1.ino)));
        let n = entries.len();
        let mut body = Vec::with_capacity(64 + n * (2 * crate::identity::FINGERPRINT_MAX + 200));
        write!(body, "{{\"version\":{VERSION},\"written_unix_ns\":{now},\"entries\":[")?;
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
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.written_ns = now;
        self.writes += 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_epochs_and_versions() {
        let d = tempfile::tempdir().unwrap();
        let k = FileKey { dev: 1, ino: 9 };
        let fp = Fingerprint { bytes: b"abc".to_vec() };
        let mut c = Checkpointer::open(d.path(), Duration::from_secs(3600)).unwrap();
        assert!(!c.existed());
        let e0 = c.register("in", k, &fp, "/a.log", 0);
        c.commit("in", k, e0, 40, None);
        let e1 = c.register("in", k, &Fingerprint::default(), "/a.log", 0); // truncated
        assert_ne!(e0, e1);
        c.commit("in", k, e0, 80, None); // a late ack from before the truncation
        assert_eq!(c.get("in", k).unwrap().offset, 0);
        c.commit("in", k, e1, 10, Some(&fp));
        assert_eq!(c.write().unwrap(), 1);
        let c2 = Checkpointer::open(d.path(), Duration::from_secs(3600)).unwrap();
        assert!(c2.existed());
        let e = c2.lookup("in", k, &Fingerprint { bytes: b"abcd".to_vec() }).unwrap();
        assert_eq!((e.offset, e.path.as_str()), (10, "/a.log"));
        assert!(c2.lookup("in", k, &Fingerprint { bytes: b"x".to_vec() }).is_none());
        std::fs::write(d.path().join(FILE_NAME), r#"{"version":99,"written_unix_ns":0,"entries":[]}"#).unwrap();
        let err = Checkpointer::open(d.path(), Duration::from_secs(1)).err().unwrap();
        assert!(matches!(&err, Error::CorruptState { path, .. } if path.ends_with(FILE_NAME)), "{err}");
        assert!(err.to_string().contains("checkpoint version 99"), "{err}");
    }
}
