//! Model-based test of the reader and tailer: random sequences of writes, partial writes,
//! rename rotations (also twice between two looks), copytruncate, truncation, deletion and
//! restarts, run against real files and against an in-memory model. Property: every complete
//! line the model says is observable is delivered exactly once, in order per file; lines no
//! tailer can see (written between a copytruncate's copy and its truncate, or into a file that
//! is truncated or deleted before any look) are never delivered as complete lines; a cut
//! partial line appears at most once, flagged `tailrace.partial`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tailrace_core::batcher::BatchLimits;
use tailrace_core::{Batch, Checkpointer, CodecChoice, Encodings, ReadFrom, Tailer, TailerConfig, WatchMode};

#[derive(Clone, Debug)]
enum Action {
    WriteLine(usize),
    WritePartial(usize),
    Step,
    Rotate,
    /// Two rename rotations with a line written in between, no look in between.
    RotateTwice,
    /// Copy, then `n` lines written before the truncate (no tailer can see those).
    CopyTruncate(usize),
    Truncate,
    Delete,
    Restart,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (0usize..40).prop_map(Action::WriteLine),
        2 => (1usize..30).prop_map(Action::WritePartial),
        6 => Just(Action::Step),
        2 => Just(Action::Rotate),
        1 => Just(Action::RotateTwice),
        1 => (0usize..3).prop_map(Action::CopyTruncate),
        1 => Just(Action::Truncate),
        1 => Just(Action::Delete),
        1 => Just(Action::Restart),
    ]
}

/// What happened to each line, by id.
#[derive(Default)]
struct Model {
    next_id: u64,
    generation: u64,
    /// Complete lines in the current `app.log`, in order (ids).
    current: Vec<u64>,
    /// The current file's trailing partial line (id), if any.
    partial: Option<(u64, Vec<u8>)>,
    /// Lines whose complete form may be delivered (exactly once).
    observable: BTreeSet<u64>,
    /// Lines no tailer can see as complete.
    lost: BTreeSet<u64>,
    /// Lines in files rotated away before the first look: archives from before tailrace
    /// started, which it may or may not read (at most once).
    archived: BTreeSet<u64>,
    /// Partial lines cut by a file boundary: at most once, flagged partial, as a prefix.
    cut: BTreeMap<u64, Vec<u8>>,
    /// The current app.log existed with at least one byte at the last look (head known).
    head_known: bool,
    /// The current app.log was created since the last look.
    created_since_look: bool,
    /// A tailer holds the current app.log open (it looked since it was created, no restart).
    held: bool,
    /// A tailer has looked at least once (before that, a rotated file is an archive).
    ever_looked: bool,
    /// Lines completed in the current file since the last look.
    since_look: Vec<u64>,
    exists: bool,
    /// Lines of a deleted file still held open, not yet read: a restart closes it.
    deleted_unread: Vec<u64>,
    /// Every line's full text, by id.
    texts: BTreeMap<u64, Vec<u8>>,
}

struct Harness {
    dir: tempfile::TempDir,
    log: PathBuf,
    cp: Arc<Mutex<Checkpointer>>,
    tailer: Option<Tailer>,
    now: Instant,
    next_batch: u64,
    delivered: Vec<(String, bool, bool)>,
    max_line: usize,
    watch: WatchMode,
    deferred: bool,
}

/// `deferred`: written files wait `coalesce` (10 ms) before they are read, and files written at
/// every read turn steady (read on the cadence, without write events).
fn cfg(dir: &Path, max_line: usize, watch: WatchMode, deferred: bool) -> TailerConfig {
    TailerConfig {
        name: "model".into(),
        paths: vec![format!("{}/*.log", dir.display())],
        watch,
        poll_interval: Duration::ZERO,
        // Event-driven modes look at paths only when their events say so.
        rescan_interval: if watch == WatchMode::Poll { Duration::ZERO } else { Duration::from_secs(1 << 20) },
        read_budget: 1 << 30,
        buffer_size: 4096,
        max_line_bytes: max_line,
        partial_flush: Duration::from_secs(3600),
        rotate_wait: Duration::from_secs(5),
        close_inactive: Duration::from_secs(3600),
        batch: BatchLimits { max_bytes: 1 << 20, max_records: 7, max_age: Duration::ZERO },
        coalesce: Some(if deferred { Duration::from_millis(10) } else { Duration::ZERO }),
        exclude: vec![],
        allowed_roots: vec![],
        read_from: ReadFrom::Beginning,
        format: tailrace_core::parser::Format::Plain,
        encodings: Encodings { proto: false, json: true },
        host: "localhost".into(),
        node_name: None,
        file_attrs: Default::default(),
        max_ready_batches: 4,
        outputs: 1,
        max_pending_bytes: usize::MAX,
    }
}

impl Harness {
    fn new(max_line: usize, watch: WatchMode, deferred: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let cp = Arc::new(Mutex::new(Checkpointer::open(&dir.path().join("state"), Duration::from_secs(3600)).unwrap()));
        let tailer = Tailer::new(cfg(dir.path(), max_line, watch, deferred), cp.clone(), 1, Arc::new(CodecChoice::default())).unwrap();
        Harness { dir, log, cp, tailer: Some(tailer), now: Instant::now(), next_batch: 1, delivered: vec![], max_line, watch, deferred }
    }

    fn deliver(&mut self, batches: Vec<Batch>) {
        for b in batches {
            let v: serde_json::Value = serde_json::from_slice(&b.json).unwrap();
            for rec in v["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().unwrap() {
                let body = rec["body"]["stringValue"].as_str().unwrap().to_string();
                let flag = |k: &str| rec["attributes"].as_array().unwrap().iter().any(|a| a["key"] == k);
                self.delivered.push((body, flag("tailrace.partial"), flag("tailrace.split")));
            }
            self.next_batch = b.id + 1;
            assert!(self.tailer.as_mut().unwrap().commit(b.id));
        }
    }

    fn step(&mut self, dt: Duration) {
        self.now += dt;
        let batches = self.tailer.as_mut().unwrap().step(self.now);
        self.deliver(batches);
        if self.deferred {
            // Once more when the files written are due (10 ms later): the model's "step" is
            // the owner's wakeup that reads.
            self.now += Duration::from_millis(10);
            let batches = self.tailer.as_mut().unwrap().step(self.now);
            self.deliver(batches);
        }
        // Every descriptor opened and closed is counted: the open count the descriptor limit
        // is checked against (`count_open`) is the files actually open.
        let s = self.tailer.as_ref().unwrap().status();
        assert_eq!(s.counters.files_opened - s.counters.files_closed, s.files_open as u64, "{:?}", s.counters);
    }

    fn restart(&mut self) {
        let now = self.now;
        let batches = self.tailer.as_mut().unwrap().flush(now);
        self.deliver(batches);
        self.tailer = None;
        self.cp.lock().unwrap().write().unwrap();
        self.cp = Arc::new(Mutex::new(Checkpointer::open(&self.dir.path().join("state"), Duration::from_secs(3600)).unwrap()));
        self.tailer = Some(Tailer::new(cfg(self.dir.path(), self.max_line, self.watch, self.deferred), self.cp.clone(), self.next_batch, Arc::new(CodecChoice::default())).unwrap());
    }

    fn append(&self, bytes: &[u8]) {
        OpenOptions::new().create(true).append(true).open(&self.log).unwrap().write_all(bytes).unwrap();
    }

    fn rename_rotate(&self) {
        let gen = |n: u32| self.dir.path().join(format!("app.log.{n}"));
        for n in (1..20).rev() {
            if gen(n).exists() {
                std::fs::rename(gen(n), gen(n + 1)).unwrap();
            }
        }
        if self.log.exists() {
            std::fs::rename(&self.log, gen(1)).unwrap();
        }
    }
}

fn line(id: u64, generation: u64, pad: usize) -> Vec<u8> {
    format!("L{id:06} g{generation:04} {}", "x".repeat(pad)).into_bytes()
}

impl Model {
    /// A new file replaces `app.log`: its partial line is cut, its lines stay observable.
    fn new_file(&mut self) {
        if let Some((id, bytes)) = self.partial.take() {
            self.cut.insert(id, bytes);
        }
        self.current.clear();
        self.since_look.clear();
        self.generation += 1;
        self.head_known = false;
        self.created_since_look = true;
        self.held = false;
    }

    /// Lines of the current file become history from before the first start.
    fn archive_unseen(&mut self) {
        for id in self.since_look.drain(..) {
            self.observable.remove(&id);
            self.archived.insert(id);
        }
    }

    /// Lines of the current file that no tailer will see are lost.
    fn lose_unseen(&mut self) {
        for id in self.since_look.drain(..) {
            self.observable.remove(&id);
            self.lost.insert(id);
        }
    }
}

/// Every sequence runs three times: polled (every step looks at every path), through inotify
/// (paths are looked at only when events say so), and through inotify with reads deferred
/// (`coalesce`) and steady files read on the cadence.
fn run(actions: Vec<Action>, max_line: usize) {
    run_in(actions.clone(), max_line, WatchMode::Poll);
    run_in(actions.clone(), max_line, WatchMode::Inotify);
    run_deferred(actions, max_line);
}

fn run_in(actions: Vec<Action>, max_line: usize, watch: WatchMode) {
    run_with(actions, max_line, watch, false);
}

fn run_deferred(actions: Vec<Action>, max_line: usize) {
    run_with(actions, max_line, WatchMode::Inotify, true);
}

fn run_with(actions: Vec<Action>, max_line: usize, watch: WatchMode, deferred: bool) {
    let mut h = Harness::new(max_line, watch, deferred);
    let mut m = Model::default();
    let write_line = |h: &mut Harness, m: &mut Model, pad: usize| {
        if !m.exists {
            m.new_file();
            m.exists = true;
        }
        let (id, bytes) = match m.partial.take() {
            Some((id, prefix)) => {
                let full = line(id, m.generation, 40);
                // The rest of the line, after the prefix already written.
                h.append(&full[prefix.len()..]);
                let _ = pad;
                (id, full)
            }
            None => {
                let id = m.next_id;
                m.next_id += 1;
                let full = line(id, m.generation, pad);
                h.append(&full);
                (id, full)
            }
        };
        m.texts.insert(id, bytes);
        h.append(b"\n");
        m.current.push(id);
        m.since_look.push(id);
        m.observable.insert(id);
    };
    for a in actions {
        match a {
            Action::WriteLine(pad) => write_line(&mut h, &mut m, pad),
            Action::WritePartial(n) => {
                if !m.exists {
                    m.new_file();
                    m.exists = true;
                }
                if m.partial.is_none() {
                    let id = m.next_id;
                    m.next_id += 1;
                    let full = line(id, m.generation, 40);
                    let n = n.min(full.len());
                    h.append(&full[..n]);
                    m.texts.insert(id, full.clone());
                    m.partial = Some((id, full[..n].to_vec()));
                }
            }
            Action::Step => {
                h.step(Duration::from_millis(10));
                m.since_look.clear();
                m.created_since_look = false;
                m.held = m.exists;
                m.ever_looked = true;
                m.deleted_unread.clear();
                // A head is known by its fingerprint; one shorter than a line proves nothing.
                m.head_known = m.exists && !m.current.is_empty();
            }
            Action::Rotate | Action::RotateTwice => {
                if !m.ever_looked {
                    m.archive_unseen();
                }
                h.rename_rotate();
                m.exists = false;
                m.new_file();
                m.exists = true;
                h.append(b"");
                if matches!(a, Action::RotateTwice) {
                    write_line(&mut h, &mut m, 3);
                    if !m.ever_looked {
                        m.archive_unseen();
                    }
                    h.rename_rotate();
                    m.new_file();
                    h.append(b"");
                }
            }
            Action::CopyTruncate(between) => {
                if !m.exists {
                    continue;
                }
                h.rename_rotate_copies_only();
                std::fs::copy(&h.log, h.dir.path().join("app.log.1")).unwrap();
                if !m.ever_looked {
                    m.archive_unseen();
                } else if !(m.head_known || m.created_since_look) {
                    // The tailer saw this file empty (or before a truncate): nothing tells it
                    // now that a copy holds lines it never read; a later rotation may.
                    m.archive_unseen();
                }
                if let Some((id, bytes)) = m.partial.take() {
                    m.cut.insert(id, bytes);
                }
                for _ in 0..between {
                    write_line(&mut h, &mut m, 1);
                    let id = m.current.pop().unwrap();
                    m.observable.remove(&id);
                    m.lost.insert(id);
                }
                std::fs::OpenOptions::new().write(true).open(&h.log).unwrap().set_len(0).unwrap();
                m.current.clear();
                m.since_look.clear();
                m.head_known = false;
                // The copy and the truncated original are read as two files: order is kept
                // within each.
                m.generation += 1;
            }
            Action::Truncate => {
                if !m.exists {
                    continue;
                }
                std::fs::OpenOptions::new().write(true).open(&h.log).unwrap().set_len(0).unwrap();
                m.lose_unseen();
                if let Some((id, bytes)) = m.partial.take() {
                    m.cut.insert(id, bytes);
                }
                m.current.clear();
                m.head_known = false;
            }
            Action::Delete => {
                if !m.exists {
                    continue;
                }
                std::fs::remove_file(&h.log).unwrap();
                if !m.held {
                    m.lose_unseen();
                } else {
                    m.deleted_unread.append(&mut m.since_look);
                }
                m.exists = false;
                m.new_file();
                m.created_since_look = false;
            }
            Action::Restart => {
                h.restart();
                m.held = false;
                for id in m.deleted_unread.drain(..) {
                    m.observable.remove(&id);
                    m.lost.insert(id);
                }
            }
        }
    }
    // The application keeps logging (a file at the path is what leads to its rotated siblings),
    // then drain: several looks, then past rotate_wait so drained files close and flush.
    write_line(&mut h, &mut m, 0);
    for _ in 0..3 {
        h.step(Duration::from_millis(10));
    }
    h.step(Duration::from_secs(6));
    h.step(Duration::from_secs(6));

    if std::env::var("MODEL_DEBUG").is_ok() { eprintln!("{:?}", h.delivered); }
    let mut seen = BTreeSet::new();
    let mut last_in_gen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut partial_seen = BTreeSet::new();
    // Longer partial bodies first: they are the most specific prefixes.
    let mut records = h.delivered.clone();
    records.sort_by_key(|(body, partial, _)| if *partial { std::cmp::Reverse(body.len()) } else { std::cmp::Reverse(usize::MAX) });
    for (body, partial, split) in &records {
        if *partial {
            // A line cut by a file boundary, or the carried head of a line lost to a truncation.
            let id = m
                .cut
                .keys()
                .chain(m.lost.iter())
                .chain(m.archived.iter())
                .find(|id| !body.is_empty() && m.texts[id].starts_with(body.as_bytes()) && !partial_seen.contains(*id))
                .unwrap_or_else(|| panic!("unexpected partial {body:?}"));
            partial_seen.insert(*id);
            continue;
        }
        assert!(!*split, "split line {body:?} below max_line_bytes");
        let id: u64 = body[1..7].parse().unwrap_or_else(|_| panic!("bad body {body:?}"));
        assert!(m.observable.contains(&id) || m.archived.contains(&id), "line {id} delivered but the model says {}", if m.lost.contains(&id) { "lost" } else { "unknown" });
        assert!(seen.insert(id), "line {id} delivered twice");
        let gen: u64 = body[9..13].parse().unwrap();
        if let Some(prev) = last_in_gen.insert(gen, id) {
            assert!(prev < id, "out of order in generation {gen}: {prev} then {id}");
        }
    }
    let missing: Vec<_> = m.observable.difference(&seen).collect();
    assert!(missing.is_empty(), "missing lines {missing:?}");
}

impl Harness {
    /// Shift rotated generations only (copytruncate keeps `app.log` in place).
    fn rename_rotate_copies_only(&self) {
        let gen = |n: u32| self.dir.path().join(format!("app.log.{n}"));
        for n in (1..20).rev() {
            if gen(n).exists() {
                std::fs::rename(gen(n), gen(n + 1)).unwrap();
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn reader_matches_model(actions in proptest::collection::vec(action(), 1..40)) {
        run(actions, 1 << 20);
    }
}

#[test]
fn rotate_twice_between_looks_is_lossless() {
    use Action::*;
    run(vec![WriteLine(1), Step, WriteLine(2), Rotate, WriteLine(3), Rotate, WriteLine(4), Step, WriteLine(5)], 1 << 20);
}

#[test]
fn copytruncate_recovers_unread_tail_from_the_copy() {
    use Action::*;
    run(vec![WriteLine(1), Step, WriteLine(2), WritePartial(5), CopyTruncate(2), WriteLine(3), Step], 1 << 20);
}

#[test]
fn first_look_after_rotation() {
    use Action::*;
    run(vec![WriteLine(0), Rotate, WriteLine(0), WriteLine(0)], 1 << 20);
}

#[test]
fn truncate_with_carried_partial_then_restart() {
    use Action::*;
    run(vec![WritePartial(1), Step, Truncate, Step, Restart, WriteLine(0)], 1 << 20);
}

#[test]
fn deleted_partial_file_inode_reused_after_restart() {
    use Action::*;
    run(vec![WritePartial(1), Step, Delete, Restart, WriteLine(0), Step, Restart, CopyTruncate(0)], 1 << 20);
}

#[test]
fn truncated_then_regrown_then_copytruncated_inotify() {
    use Action::*;
    run_in(vec![WriteLine(0), Step, Truncate, WriteLine(0), Step, CopyTruncate(0)], 1 << 20, WatchMode::Inotify);
}

#[test]
fn copytruncate_then_restart_delivers_the_copy_once() {
    use Action::*;
    run(vec![WriteLine(0), WriteLine(0), Step, CopyTruncate(0), WriteLine(0), Step, Restart, WriteLine(0)], 1 << 20);
}

#[test]
fn rotate_unread_then_restart_reads_the_rotated_file() {
    // A line written and rotated away unread, then a restart: found among the siblings.
    use Action::*;
    run(vec![Step, WriteLine(0), Rotate, Restart], 4096);
}

#[test]
fn a_partial_line_copied_then_truncated_and_deleted_unseen_is_delivered_once() {
    // Found by the random sequences (CI): a file deleted and its inode reused by a new one
    // holding a partial line `L`, carried; copytruncate, then a delete before the next look.
    // The copy (`L`) looked known by its inode's old entry (head `L000000 …`, compatible with
    // `L`), so the carry went out and the copy was read again from 0: `L` twice.
    use Action::*;
    let seq = vec![WriteLine(0), Restart, WriteLine(0), Step, Delete, Step, Restart, WritePartial(1), Step, CopyTruncate(0), Delete];
    run(seq, 1 << 20);
}
