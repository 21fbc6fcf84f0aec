//! Rotation policy: what a path means at each look, and what follows a truncation. The rules
//! (the README's *Delivery, rotation and restarts*, in code):
//!
//! 1. A file is known by (device, inode) plus its head (`Fingerprint`, up to 1 KiB, compared by
//!    prefix while shorter): a reused inode with another head is another file.
//! 2. New at a matched path: read from its checkpoint if it has one whose head matches, else
//!    from 0 (or from its end with `read_from: end`, at the very first start only).
//! 3. Rotation by rename (the file left its path, the path exists): the old descriptor is
//!    drained, then closed after `rotate_wait`; the new file at the path is read from 0.
//! 4. Siblings of a path (`app.log.1`, …) no reader holds are read too: a checkpointed one from
//!    its offset, one never seen from 0 (rotated twice between two looks, or while tailrace was
//!    down). At the very first start the siblings already there are history: recorded as read
//!    to their end (`note_archives`), never shipped.
//! 5. Deletion (the file left its path, nothing is there): drained through the open
//!    descriptor, then closed.
//! 6. Truncation or copytruncate (shorter than our position, or its head changed): reading
//!    restarts at 0 under a new checkpoint epoch (late acknowledgements of the old bytes are
//!    refused). If the unread tail survives in a copy beside the path (a sibling never seen
//!    whose head holds everything emitted), the copy is drained from where we left off
//!    (`recover_copy`). Lines written between the copy and the truncate are gone from disk.
//! 7. A file truncated while no reader held it (its checkpoint's head no longer matches) is
//!    rule 6 at adoption.
//! 8. After a restart, files checkpointed at paths no longer matched are looked for among the
//!    siblings of those paths (rotated while we were down).
//! 9. Compressed siblings (the kubelet's `0.log.<time>.gz`) are read after a restart when they
//!    hold lines not read: a checkpointed file compressed while tailrace was down is finished
//!    from its checkpoint, one never seen and compressed since the last checkpoint is read whole.
//!
//! Every reading of a file starts in `register` (checkpoint entry and reader source
//! together). The checkpointer is locked once per look or truncation and passed down.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::checkpoints::{unix_ns, Checkpointer};
use crate::discovery::{self, Found};
use crate::identity::{FileKey, Fingerprint};
use crate::reader::{self, FileReader, FileState, OutsideRoots};
use crate::tailer::{ReadFrom, Tailer};

/// Start a reading of `r` at `offset`: its checkpoint entry (a new epoch) and the source its
/// records carry (`path`, that epoch). The one place both are set.
fn register(input: &str, cp: &mut Checkpointer, r: &mut FileReader, path: PathBuf, offset: u64) {
    let epoch = cp.register(input, r.key(), &r.fp, &path.to_string_lossy(), offset);
    r.start_at(offset);
    r.set_source(path, epoch);
}

impl Tailer {
    /// Look at the paths (every one, or those directly in `dirs`): new files, rotation,
    /// truncation, deletion, inactive files that grew. A look of directories costs what is in
    /// them, not what the input tails: a rotation on a node of 10,000 files lists one
    /// directory and touches the readers of that directory only. (A directory appearing asks
    /// for a look everywhere, `News::everywhere`; one leaving, for a look of the directories
    /// its files were read in, `News::left`.)
    pub(crate) fn look(&mut self, now: Instant, dirs: Option<&BTreeSet<PathBuf>>) {
        let checkpoints = self.checkpoints.clone();
        let mut cp = checkpoints.lock().expect("checkpointer lock");
        self.dir_cache.clear();
        let first = !self.looked;
        self.looked = true;
        self.count_open(false);
        let dirs = dirs.filter(|_| !first);
        let scan = match dirs {
            None => {
                self.unreadable.clear(); // what is still refused says so again below
                self.scan()
            }
            Some(d) => {
                self.counters.scoped_looks += 1;
                self.discoverer.scan_dirs(d.iter(), &mut self.dir_cache, &mut self.counters.syscalls)
            }
        };
        let at_path: HashMap<&Path, FileKey> = scan.files.iter().map(|f| (f.path.as_path(), f.key)).collect();
        let mut looked_at = self.look_moved(&mut cp, &at_path, dirs, now);
        let wall = SystemTime::now();
        let history = first && !cp.existed();
        // What was checkpointed before this start, as it was (adoption below may register a
        // reused inode over an entry): the compressed files are matched against it.
        let before = if first { cp.entries_for(&self.cfg.name) } else { Vec::new() };
        for f in &scan.files {
            if self.refused.contains(&f.key) {
                continue; // outside the allowed roots: reported when first found
            }
            looked_at.push(f.key);
            if self.readers.contains_key(&f.key) {
                self.look_held(&mut cp, f, wall, now);
                continue;
            }
            let from_end = history && self.cfg.read_from == ReadFrom::End;
            let inherit = self.steady_paths.remove(&f.path);
            if let Some(resumed) = self.adopt(&mut cp, f, from_end.then_some(f.size), FileState::Active, inherit, now) {
                if history {
                    self.note_archives(&mut cp, &f.path); // rule 4: history, not ours to ship
                } else if !resumed {
                    self.adopt_siblings(&mut cp, &f.path, now); // rule 4: a predecessor rotated unseen
                }
            }
        }
        self.steady_paths.clear();
        if first {
            self.look_for_checkpointed(&mut cp, &before, now);
        }
        self.count_open(true);
        if self.starved.is_empty() {
            self.clear_report("nofile");
        } else {
            let (n, first) = (self.starved.len(), self.starved[0].display().to_string());
            self.starved.clear();
            let msg = format!(
                "cannot open {n} files (the first: {first}): too many open files (this process may hold {}, some kept for its own files and sockets); raise the limit (LimitNOFILE=, ulimit -n); they are tried again at each look",
                self.nofile
            );
            self.report("nofile".into(), msg);
        }
        // (A refused path that left stays in `unreadable` until the next look everywhere.)
        let attrib: BTreeSet<PathBuf> = self.unreadable.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
        self.watcher.watch_attribs(&attrib, &mut self.counters);
        // Every reader at a look everywhere; at a look of directories, those it looked at
        // (readers it created were timed as they were held).
        if dirs.is_none() {
            looked_at = self.readers.keys().copied().collect();
            looked_at.sort_unstable(); // the journal in key order, whatever the map's
        }
        let ns = unix_ns(wall);
        for k in &looked_at {
            cp.touch(&self.cfg.name, *k, ns);
        }
        drop(cp);
        self.dir_cache.clear();
        if dirs.is_none() {
            self.close_inactive(now);
        }
        for k in looked_at {
            self.retime(k);
        }
    }

    /// Expand the globs, watch every directory a file could appear in, report what could not
    /// be read.
    fn scan(&mut self) -> discovery::Scan {
        // Each directory watched before it is listed: a file created after its listing is then
        // an event, not missed until the next look.
        let watcher = &mut self.watcher;
        let scan = self.discoverer.scan_watching(&mut self.dir_cache, &mut self.counters.syscalls, &mut |d| watcher.watch_dir(d));
        for (path, err) in &scan.errors {
            self.unreadable.insert(PathBuf::from(path));
            let key = format!("scan:{path}");
            if !self.reported.contains(&key) {
                self.counters.open_errors += 1; // once per path, as it is reported
            }
            self.report(key, format!("cannot read {path}: {err}"));
        }
        for pattern in &scan.unmatched {
            let msg = format!("input {}: no file matches {pattern} (yet)", self.cfg.name);
            self.report(format!("unmatched:{pattern}"), msg);
        }
        scan
    }

    /// Rules 3 and 5: files that left their path (renamed away or deleted) are drained; then
    /// siblings this tailer never saw are read (a file rotated twice between two looks). A
    /// steady file's successor at its path starts steady (`steady_paths`): a busy container's
    /// new log is as busy. Returns the files that left.
    fn look_moved(&mut self, cp: &mut Checkpointer, at_path: &HashMap<&Path, FileKey>, dirs: Option<&BTreeSet<PathBuf>>, now: Instant) -> Vec<FileKey> {
        // The readers of the directories looked at, from `by_dir` (a pass over every reader was
        // most of a look of one directory at 10,000 files); every reader at a look everywhere.
        let left_its_path = |r: &FileReader| r.state == FileState::Active && at_path.get(r.source.path.as_path()) != Some(&r.key());
        let mut moved: Vec<FileKey> = match dirs {
            None => self.readers.values().filter(|r| left_its_path(r)).map(|r| r.key()).collect(),
            Some(d) => d
                .iter()
                .filter_map(|p| self.by_dir.get(p.as_os_str().as_encoded_bytes()))
                .flatten()
                .filter(|k| self.readers.get(k).is_some_and(left_its_path))
                .copied()
                .collect(),
        };
        moved.sort_unstable(); // in key order, whatever the map's
        for &key in &moved {
            let r = self.readers.get_mut(&key).expect("listed above");
            r.state = FileState::Draining { since: now };
            if !r.is_open() {
                let _ = r.reopen(&mut self.counters);
            }
            let path = r.source.path.clone();
            // What is at the path now was found by this look (a regular file the globs match).
            if at_path.contains_key(path.as_path()) {
                self.counters.rotations += 1;
                if r.steady.on {
                    self.steady_paths.insert(path.clone());
                }
            } else {
                self.counters.deletions += 1;
            }
            if r.replaced(&mut self.counters) {
                // Truncated (copytruncate) and then rotated before we looked.
                self.truncated_in(cp, key, now);
            }
            self.adopt_siblings(cp, &path, now);
        }
        moved
    }

    /// A held file still at its path: truncated or rewritten since the last look (rule 6), or
    /// closed as inactive and grown since.
    fn look_held(&mut self, cp: &mut Checkpointer, f: &Found, wall: SystemTime, now: Instant) {
        let r = self.readers.get_mut(&f.key).expect("held");
        if r.state != FileState::Active {
            return;
        }
        let mut replaced = f.size < r.pos;
        // Changed since the last look (size, mtime, or an mtime too recent for its coarse clock
        // to tell): check the head is still the same content (truncated and rewritten past our
        // offset between two looks). Idle files cost nothing here.
        let changed = f.size != r.look_size || f.mtime != r.look_mtime || f.mtime + Duration::from_secs(1) >= r.look_wall;
        if !replaced && changed && !r.fp.bytes.is_empty() && r.is_open() {
            // Through our own descriptor: the path may already name another file.
            replaced = r.head_changed(&mut self.counters);
        }
        r.look_size = f.size;
        r.look_mtime = f.mtime;
        r.look_wall = wall;
        if replaced {
            self.truncated_in(cp, f.key, now);
        } else if !r.is_open() && f.size > r.pos {
            self.more.push(f.key);
            if let Err(e) = r.reopen(&mut self.counters) {
                self.counters.open_errors += 1;
                self.unreadable.insert(f.path.clone());
                let msg = format!("cannot reopen {}: {e}", f.path.display());
                self.report(format!("open:{}", f.path.display()), msg);
            } else {
                self.unreadable.remove(&f.path);
            }
        }
    }

    /// Rules 8 and 9: files checkpointed before a restart that are no longer at a matched path
    /// are looked for in their directories (rotated while we were down), with anything newer;
    /// then the compressed files there.
    fn look_for_checkpointed(&mut self, cp: &mut Checkpointer, before: &[(FileKey, crate::checkpoints::Entry)], now: Instant) {
        let mut dirs_done = HashSet::new();
        for (key, e) in cp.entries_for(&self.cfg.name) {
            if self.readers.contains_key(&key) || !dirs_done.insert(e.path.clone()) {
                continue;
            }
            self.adopt_siblings(cp, Path::new(&e.path), now);
        }
        // Grouped by directory once: each compressed file is compared with the heads checkpointed
        // and held in its own directory, not with every file of the input (10,000 on a node).
        let mut by_path: BTreeMap<&str, Vec<&crate::checkpoints::Entry>> = BTreeMap::new();
        for (_, e) in before {
            by_path.entry(&e.path).or_default().push(e);
        }
        let mut entries_in: HashMap<&Path, Vec<&crate::checkpoints::Entry>> = HashMap::new();
        for (_, e) in before {
            entries_in.entry(Path::new(&e.path).parent().unwrap_or(Path::new(""))).or_default().push(e);
        }
        let mut held_in: HashMap<PathBuf, Vec<Fingerprint>> = HashMap::new();
        for r in self.readers.values().filter(|r| r.fp.is_evidence()) {
            held_in.entry(r.source.path.parent().unwrap_or(Path::new("")).to_path_buf()).or_default().push(r.fp.clone());
        }
        for path in by_path.keys() {
            let dir = Path::new(path).parent().unwrap_or(Path::new(""));
            let entries = entries_in.get(dir).map(Vec::as_slice).unwrap_or(&[]);
            let held = held_in.get(dir).map(Vec::as_slice).unwrap_or(&[]);
            self.recover_compressed(cp, entries, held, Path::new(path), now);
        }
    }

    /// Rule 9: compressed siblings of `path` (the kubelet's `0.log.<time>.gz`) hold lines
    /// tailrace may not have read: a file checkpointed but compressed (and unlinked) while
    /// tailrace was down is finished from its checkpoint; one never seen, compressed after the
    /// last checkpoint write, is read whole. A compressed file whose head is that of a file
    /// still held is skipped (the kubelet unlinks the original after the rename; `held`: the
    /// heads held in this directory, `entries`: those checkpointed there). Each is
    /// decompressed into a memory file and drained as a rotated file is; counted
    /// (`recovered_from_gzip`).
    fn recover_compressed(&mut self, cp: &mut Checkpointer, entries: &[&crate::checkpoints::Entry], held: &[Fingerprint], path: &Path, now: Instant) {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let gzs = discovery::compressed_siblings(path, &mut self.dir_cache, &mut self.counters.syscalls);
        for gz in gzs {
            self.counters.syscalls.open += 1;
            let Ok(f) = reader::open_noatime(&gz) else { continue };
            if self.discoverer.roots.outside(std::os::fd::AsRawFd::as_raw_fd(&f), &mut self.counters.syscalls).is_some() {
                continue; // a compressed sibling is read only inside the roots, as any file
            }
            self.counters.syscalls.fstat += 1;
            let Ok(meta) = f.metadata() else { continue };
            let mut head = Vec::new();
            let mut dec = flate2::read::GzDecoder::new(f);
            if (&mut dec).take(crate::identity::FINGERPRINT_MAX as u64).read_to_end(&mut head).is_err() {
                continue;
            }
            let head_fp = Fingerprint { bytes: head };
            if !head_fp.is_evidence() || held.iter().any(|fp| fp.compatible(&head_fp)) {
                continue;
            }
            // Known by its head (checkpointed before this start, or recovered from before), or
            // compressed since the last checkpoint write: never seen. It is tracked under its
            // own identity (the original's inode may have been reused by now).
            let key = FileKey { dev: meta.dev(), ino: meta.ino() };
            let matches = |e: &crate::checkpoints::Entry| e.fp.is_evidence() && e.fp.compatible(&head_fp);
            let own = cp.get(&self.cfg.name, key).filter(|e| matches(e)).map(|e| (e.offset, PathBuf::from(&e.path)));
            let known = own.or_else(|| entries.iter().find(|e| matches(e)).map(|e| (e.offset, PathBuf::from(&e.path))));
            let compressed_ns = meta.mtime().max(0) as u64 * 1_000_000_000 + meta.mtime_nsec().max(0) as u64;
            let (offset, src_path) = match known {
                Some(k) => k,
                None if compressed_ns > cp.written_ns() => (0, gz.with_extension("")),
                None => continue,
            };
            if self.readers.contains_key(&key) {
                continue;
            }
            let Some((file, size)) = self.unread_in_memory(&gz, head_fp.bytes, &mut dec, offset, RECOVER_HELD_MAX) else { continue };
            let Ok((mut r, _)) = FileReader::with_file(file, key, src_path.clone(), size, SystemTime::now(), 0, now, &mut self.counters) else { continue };
            register(&self.cfg.name, cp, &mut r, src_path, offset);
            r.state = FileState::Draining { since: now };
            self.hold(key, r);
            self.counters.recovered_from_gzip += 1;
        }
    }


    /// Start reading a file (rule 2): at its checkpoint if known, else at `start` or 0. Returns
    /// whether it resumed from a checkpoint, or `None` when it could not be opened.
    /// `steady`: its write events start off (see `look_moved`).
    fn adopt(&mut self, cp: &mut Checkpointer, f: &Found, start: Option<u64>, state: FileState, steady: bool, now: Instant) -> Option<bool> {
        if self.may_open == 0 {
            // The descriptors left are tailrace's own (`FD_RESERVE`): tried again at the next look.
            self.counters.open_errors += 1;
            self.starved.push(f.path.clone());
            return None;
        }
        let (mut r, _) = match FileReader::open(f.path.clone(), f.key, 0, now, &self.discoverer.roots, &mut self.counters) {
            Ok(x) => x,
            Err(e) if OutsideRoots::of(&e).is_some() => {
                // Not read, reported once with both paths; never opened again (`refused`).
                self.counters.outside_roots += 1;
                self.refused.insert(f.key);
                let msg = format!("not reading {}: {e}", f.path.display());
                self.report(format!("outside:{}", f.path.display()), msg);
                return None;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                self.counters.open_errors += 1;
                self.starved.push(f.path.clone());
                return None;
            }
            Err(e) => {
                self.counters.open_errors += 1;
                self.unreadable.insert(f.path.clone());
                let msg = format!("cannot open {}: {e}", f.path.display());
                self.report(format!("open:{}", f.path.display()), msg);
                return None;
            }
        };
        let stale = cp.get(&self.cfg.name, f.key).filter(|e| e.fp.is_evidence() && (!e.fp.compatible(&r.fp) || e.offset > f.size));
        if let Some((fp, offset, was_at)) = stale.map(|e| (e.fp.clone(), e.offset, e.path.clone())) {
            // Rule 7: known identity, other content: truncated (or copytruncated) while no
            // reader held it. A copy, if any, lies beside the path the file had then.
            self.counters.truncations += 1;
            self.recover_copy(cp, Path::new(&was_at), &fp, offset, 0, now);
        }
        // An entry whose head is shorter than a line proves nothing about identity (an inode
        // reused); its offset can only be 0 or a flushed partial, so it is not resumed. Nor
        // does a file's head shorter than a line (the file an entry describes has that line).
        let entry = cp.lookup(&self.cfg.name, f.key, &r.fp).filter(|e| e.offset <= f.size && e.fp.is_evidence() && r.fp.is_evidence());
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
        let resumed = resume.is_some();
        // A file resumed at a rotated path keeps the path it was discovered at.
        let path = resume.map(|(_, p)| PathBuf::from(p)).filter(|_| state != FileState::Active).unwrap_or_else(|| f.path.clone());
        register(&self.cfg.name, cp, &mut r, path, offset);
        r.state = state;
        r.look_size = f.size;
        r.look_mtime = f.mtime;
        match self.watcher.watch(f.key, &f.path, steady) {
            Err(msg) => self.report(format!("watch:{}", f.path.display()), msg),
            Ok(true) => r.steady.set(true),
            Ok(false) => {}
        }
        self.hold(f.key, r);
        self.may_open -= 1;
        self.clear_report(&format!("open:{}", f.path.display()));
        self.unreadable.remove(&f.path);
        Some(resumed)
    }

    /// Rule 4: siblings of `path` (`app.log.1`, ...) that no reader holds: a checkpointed one
    /// resumes at its offset (usually its end); one never seen is read from 0.
    fn adopt_siblings(&mut self, cp: &mut Checkpointer, path: &Path, now: Instant) {
        let ns = unix_ns(SystemTime::now());
        for s in discovery::rotated_siblings(path, &mut self.dir_cache, &mut self.counters.syscalls) {
            if self.readers.contains_key(&s.key) {
                continue;
            }
            cp.touch(&self.cfg.name, s.key, ns);
            // Even a sibling read to its end is opened: its head tells whether it is still the
            // file we read (rotations are rare; this is not the read path).
            self.adopt(cp, &s, None, FileState::Draining { since: now }, false, now);
        }
    }

    /// Rule 4 at the very first start: the siblings present are recorded as seen to their end,
    /// so a later rotation does not mistake them for lines rotated away unseen.
    fn note_archives(&mut self, cp: &mut Checkpointer, path: &Path) {
        for s in discovery::rotated_siblings(path, &mut self.dir_cache, &mut self.counters.syscalls) {
            if self.readers.contains_key(&s.key) {
                continue;
            }
            let Ok((mut r, _)) = FileReader::open(s.path.clone(), s.key, 0, Instant::now(), &self.discoverer.roots, &mut self.counters) else { continue };
            if cp.get(&self.cfg.name, s.key).is_none() {
                cp.register(&self.cfg.name, s.key, &r.fp, &s.path.display().to_string(), s.size);
            }
            r.close(&mut self.counters);
        }
    }

    /// Rule 6: after a copytruncate the bytes past `emitted` survive in a copy beside `path`
    /// whose head matches `fp`: drain that copy from `emitted`, as if it were the file rotated
    /// away. Returns whether a copy was found.
    fn recover_copy(&mut self, cp: &mut Checkpointer, path: &Path, fp: &Fingerprint, emitted: u64, carried: usize, now: Instant) -> bool {
        if fp.bytes.is_empty() {
            return false;
        }
        let mut copies: Vec<Found> = discovery::rotated_siblings(path, &mut self.dir_cache, &mut self.counters.syscalls)
            .into_iter()
            .filter(|s| !self.readers.contains_key(&s.key) && s.size >= emitted)
            .collect();
        copies.sort_by_key(|s| std::cmp::Reverse(s.mtime));
        for s in copies {
            let Ok((mut copy, _)) = FileReader::open(s.path.clone(), s.key, 0, now, &self.discoverer.roots, &mut self.counters) else { continue };
            // A copy is a file never seen before: known siblings are older rotations (an entry
            // whose head differs is an inode reused, not a file seen). Known takes evidence on
            // both sides: a copy holding only a partial line (`L`) is compatible with any entry
            // whose head starts with it, such as a deleted file's whose inode it reuses.
            let known = copy.fp.is_evidence() && cp.lookup(&self.cfg.name, s.key, &copy.fp).is_some_and(|e| e.fp.is_evidence());
            // Nothing emitted yet but a partial line carried: the copy must start with it.
            let carry_copy = emitted == 0 && carried > 0 && carried <= fp.bytes.len() && copy.fp.bytes.starts_with(&fp.bytes[..carried]);
            if known || (!carry_copy && copy_offset(fp, emitted, &copy.fp, s.size) != Some(emitted)) {
                copy.close(&mut self.counters);
                continue;
            }
            register(&self.cfg.name, cp, &mut copy, path.to_path_buf(), emitted);
            copy.state = FileState::Draining { since: now };
            if let Err(msg) = self.watcher.watch(s.key, &s.path, false) {
                self.report(format!("watch:{}", s.path.display()), msg);
            }
            self.hold(s.key, copy);
            return true;
        }
        false
    }

    /// Rule 6 from the read path: the file was found truncated or replaced in place.
    pub(crate) fn truncated(&mut self, key: FileKey, now: Instant) {
        let checkpoints = self.checkpoints.clone();
        let mut cp = checkpoints.lock().expect("checkpointer lock");
        self.truncated_in(&mut cp, key, now);
    }

    /// Rule 6: bytes we had not yet emitted may survive in a copy (copytruncate): drain that
    /// copy from our offset. Then restart at 0, under a new epoch.
    fn truncated_in(&mut self, cp: &mut Checkpointer, key: FileKey, now: Instant) {
        self.counters.truncations += 1;
        let (path, emitted, fp, carried) = {
            let r = &self.readers[&key];
            (r.source.path.clone(), r.emitted, r.fp.clone(), r.carried())
        };
        let recovered = self.recover_copy(cp, &path, &fp, emitted, carried, now);
        let r = self.readers.get_mut(&key).expect("truncated file is held");
        if !recovered {
            r.flush_partial(now, None, &mut self.batcher, &mut self.counters);
        } else {
            // The copy resumes at what the reader emitted; pieces the parser still held were
            // emitted by the reader already: they go out now, flagged partial.
            let source = r.source.clone();
            r.parser.flush(&source, now, None, &mut self.batcher, &mut self.counters);
        }
        r.restart_at_zero();
        register(&self.cfg.name, cp, r, path, 0);
        self.retime(key);
        self.more.push(key); // read again from 0 in this step (or the next, from the read loop)
    }
}

/// At most this many decompressed bytes past a checkpoint are held in memory per compressed
/// file (a rotated container log is bounded by the kubelet's containerLogMaxSize, 10 MiB by
/// default); past it the rest is not read, and that is reported.
pub(crate) const RECOVER_HELD_MAX: u64 = 1 << 30;

impl Tailer {
    /// The decompressed `gz` (`head` already read from `dec`) as a memory file read as files
    /// are, and its size: its head at 0, the bytes from `offset` on at their place, and
    /// nothing in between (a hole: bytes already read are decompressed and dropped, so memory
    /// holds what is still to read, never the whole file twice). `None` when nothing is left
    /// past `offset`. Past `held_max` unread bytes (`RECOVER_HELD_MAX`), or at a decompression
    /// error, what came before is read and the rest reported (named by file).
    pub(crate) fn unread_in_memory(&mut self, gz: &Path, head: Vec<u8>, dec: &mut impl std::io::Read, offset: u64, held_max: u64) -> Option<(std::fs::File, u64)> {
        use std::io::{Read, Seek, Write};
        let kept = head.len() as u64;
        let from = offset.max(kept);
        match std::io::copy(&mut dec.take(from - kept), &mut std::io::sink()) {
            Ok(n) if n == from - kept => {}
            Ok(_) => return None, // ends before the checkpoint: nothing unread
            Err(e) => {
                self.report_unread(gz, &format!("{e} before byte {from}"), offset);
                return None;
            }
        }
        let made = memory_file().and_then(|mut f| {
            f.write_all(&head)?;
            f.seek(std::io::SeekFrom::Start(from))?;
            Ok(f)
        });
        let mut file = match made {
            Ok(f) => f,
            Err(e) => {
                self.report_unread(gz, &format!("cannot hold it in memory: {e}"), offset);
                return None;
            }
        };
        // Copied by hand: at an error, what was written before it is known and kept.
        let (mut copied, mut buf, mut error) = (0u64, vec![0u8; 64 * 1024], None);
        while copied < held_max {
            let want = buf.len().min((held_max - copied) as usize);
            match dec.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = file.write_all(&buf[..n]) {
                        error = Some(format!("cannot hold it in memory: {e}")); // (memory file full)
                        break;
                    }
                    copied += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        let size = from + copied;
        let _ = file.set_len(size); // a write cut short leaves no bytes past what is counted
        let what = error.or_else(|| {
            (copied == held_max && dec.read(&mut [0u8]).is_ok_and(|more| more > 0))
                .then(|| format!("more than {held_max} bytes past the checkpoint, more than is held in memory"))
        });
        if let Some(what) = what {
            self.report_unread(gz, &what, size);
        }
        (size > offset).then_some((file, size))
    }

    /// A compressed file recovered in part: what stopped it, and up to where its lines are
    /// read (before this start, or now); reported once per file.
    fn report_unread(&mut self, gz: &Path, what: &str, upto: u64) {
        let msg = format!("compressed file {}: {what}: its lines up to byte {upto} are read, the rest is not", gz.display());
        self.report(format!("gz:{}", gz.display()), msg);
    }
}

/// An empty anonymous memory file (a decompressed rotated file is read from one as files are).
fn memory_file() -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; the name is NUL-terminated; the descriptor is owned below.
    let fd = unsafe { libc::memfd_create(c"tailrace-gz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is ours alone.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
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
