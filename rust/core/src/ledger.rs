//! Ledger: acknowledgements → committed offsets, for one input. It is the one home of the
//! delivery rule:
//! - a batch is acknowledged when each of its `outputs` acknowledged it once (in any order,
//!   from any thread: outputs have several batches in flight);
//! - a file's committed offset is the end of the longest run of its batches, in the order they
//!   were read, that are all acknowledged; a later batch acknowledged first waits for the
//!   earlier ones (committing it would skip their bytes after a crash);
//! - runs are per file, so a slow batch of one file does not hold back the others;
//! - every offset carries the file's epoch (bumped by the checkpointer at each truncation):
//!   the checkpointer refuses offsets of an older epoch, so a late acknowledgement of bytes
//!   read before a truncation cannot move the new reading.
//!
//! `Runs` is the pure bookkeeping (property-tested against a model); `Ledger` shares it
//! between the tailer (which opens batches as they close) and the owner's acknowledgements,
//! and applies what they commit to the `Checkpointer`, under one lock order: runs, then
//! checkpoints.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::checkpoints::Checkpointer;
use crate::identity::{FileKey, Fingerprint, KeyMap};

/// Where a batch ends in one file: `(key, epoch, offset just past its last record there)`.
pub type FileEnd = (FileKey, u32, u64);

/// A file's offset that became committed: `(key, epoch, offset)`.
pub type Commit = FileEnd;

/// A batch not yet committed in full, in read order.
struct Pending {
    id: u64,
    acks_left: u32,
    /// Per file, the offset just past its last record in this batch.
    ends: Vec<FileEnd>,
    /// Which of `ends` were committed already (out of order: before the batch ahead of it).
    done: Vec<bool>,
}

/// Pending batches in read order (no locks, no I/O).
///
/// The common case is the cheap one: acknowledgements arrive in read order, so the batch
/// acknowledged is the oldest pending and none after it is complete; each of its files'
/// offsets commits as it stands, with no per-file lookup (a map of per-file runs cost two hash
/// lookups and a queue per file per batch: 6 % of the CPU at 5,000 files). Out of order,
/// the pending batches are walked in read order: a file is held back by the first incomplete
/// batch that holds it, and every complete batch's files not held back commit.
pub struct Runs {
    outputs: u32,
    order: VecDeque<Pending>,
    /// Complete batches still in `order` (behind an incomplete one).
    complete_behind: usize,
}

impl Runs {
    pub fn new(outputs: u32) -> Self {
        Runs { outputs: outputs.max(1), order: VecDeque::new(), complete_behind: 0 }
    }

    /// A batch closed holding, per file, the offset just past its last record (in read order;
    /// ids grow).
    pub fn open(&mut self, id: u64, offsets: &[FileEnd]) {
        debug_assert!(self.order.back().is_none_or(|p| p.id < id), "batches open in read order");
        self.order.push_back(Pending { id, acks_left: self.outputs, ends: offsets.to_vec(), done: Vec::new() });
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.order.binary_search_by_key(&id, |p| p.id).ok()
    }

    /// One output acknowledged batch `id`. `None`: not a pending batch (unknown, or already
    /// acknowledged by every output). `Some(commits)`: the offsets that became committed
    /// (empty until the last output acknowledged it, or while earlier batches are pending).
    pub fn ack(&mut self, id: u64) -> Option<Vec<Commit>> {
        let i = self.position(id)?;
        let b = &mut self.order[i];
        if b.acks_left == 0 {
            return None;
        }
        b.acks_left -= 1;
        if b.acks_left > 0 {
            return Some(Vec::new());
        }
        if i == 0 && self.complete_behind == 0 {
            // In order: every file of the oldest batch commits at its end in it.
            return Some(self.order.pop_front().expect("found at 0").ends);
        }
        self.complete_behind += 1;
        Some(self.walk())
    }

    /// Out of order: commit what no incomplete batch ahead holds back (a file's last such end
    /// only), then drop the complete batches at the front.
    fn walk(&mut self) -> Vec<Commit> {
        let mut held: KeyMap<FileKey, ()> = KeyMap::default();
        let mut last: KeyMap<FileKey, usize> = KeyMap::default();
        let mut commits: Vec<Commit> = Vec::new();
        for b in &mut self.order {
            if b.acks_left > 0 {
                held.extend(b.ends.iter().map(|&(k, _, _)| (k, ())));
                continue;
            }
            b.done.resize(b.ends.len(), false);
            for (end, done) in b.ends.iter().zip(b.done.iter_mut()) {
                if !*done && !held.contains_key(&end.0) {
                    *done = true;
                    match last.entry(end.0) {
                        std::collections::hash_map::Entry::Occupied(at) => commits[*at.get()] = *end,
                        std::collections::hash_map::Entry::Vacant(at) => {
                            at.insert(commits.len());
                            commits.push(*end);
                        }
                    }
                }
            }
        }
        while self.order.front().is_some_and(|b| b.acks_left == 0) {
            self.order.pop_front();
            self.complete_behind -= 1;
        }
        commits
    }

    /// Batches not yet acknowledged by every output.
    pub fn pending(&self) -> usize {
        self.order.len() - self.complete_behind
    }
}

struct Inner {
    runs: Runs,
    /// Heads of files not yet fingerprinted in full: a commit stores the longer head.
    heads: KeyMap<FileKey, Fingerprint>,
}

/// The ledger of one input, shared by its tailer and its owner's acknowledgements.
pub struct Ledger {
    input: String,
    checkpoints: Arc<Mutex<Checkpointer>>,
    inner: Mutex<Inner>,
}

impl Ledger {
    pub fn new(input: &str, outputs: u32, checkpoints: Arc<Mutex<Checkpointer>>) -> Self {
        Ledger {
            input: input.to_string(),
            checkpoints,
            inner: Mutex::new(Inner { runs: Runs::new(outputs), heads: KeyMap::default() }),
        }
    }

    /// Batches closed by the tailer, with the heads of the files whose fingerprint grew.
    pub fn open(&self, batches: &[(u64, &[FileEnd])], heads: Vec<(FileKey, Fingerprint)>) {
        let mut g = self.inner.lock().expect("ledger lock");
        for &(id, offsets) in batches {
            g.runs.open(id, offsets);
        }
        g.heads.extend(heads);
    }

    /// One output acknowledged batch `id` (delivered, spooled, or dropped on purpose). Returns
    /// `None` for a batch that is not pending, else whether this was its last acknowledgement.
    pub fn ack(&self, id: u64) -> Option<bool> {
        let mut g = self.inner.lock().expect("ledger lock");
        let Inner { runs, heads } = &mut *g;
        let before = runs.pending();
        let commits = runs.ack(id)?;
        let complete = runs.pending() < before;
        if !commits.is_empty() {
            let mut cp = self.checkpoints.lock().expect("checkpointer lock");
            cp.commit_all(&self.input, commits.iter().copied(), |key| heads.get(&key));
            if !heads.is_empty() {
                // A head is kept until the checkpoint holds it (a commit of an older epoch,
                // refused, stores nothing). Only files still growing their first KiB have one.
                for (key, _, _) in &commits {
                    let stored = heads.get(key).is_some_and(|h| cp.get(&self.input, *key).is_some_and(|e| e.fp.bytes.len() >= h.bytes.len()));
                    if stored {
                        heads.remove(key);
                    }
                }
            }
        }
        Some(complete)
    }

    /// Batches not yet acknowledged by every output.
    pub fn pending(&self) -> usize {
        self.inner.lock().expect("ledger lock").runs.pending()
    }

    /// The files whose heads wait to be stored (tests).
    #[cfg(test)]
    pub(crate) fn heads_waiting(&self) -> Vec<FileKey> {
        let mut keys: Vec<FileKey> = self.inner.lock().expect("ledger lock").heads.keys().copied().collect();
        keys.sort_unstable();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: per file, its entries in read order; committed = end of the longest prefix
    /// whose batches are all acknowledged by every output.
    fn model_committed(entries: &[(u64, u32, u64)], acks: &std::collections::HashMap<u64, u32>, outputs: u32) -> Option<(u32, u64)> {
        let mut last = None;
        for &(id, epoch, end) in entries {
            if acks.get(&id).copied().unwrap_or(0) < outputs {
                break;
            }
            last = Some((epoch, end));
        }
        last
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Random batches over 1-4 files (each file's offsets growing, an epoch bump now and
        /// then), 1-3 outputs, acknowledgements in a random order: after every step the
        /// committed offset of every file equals the model's.
        #[test]
        fn committed_offset_is_the_end_of_the_longest_acknowledged_run(
            outputs in 1u32..4,
            batches in proptest::collection::vec(proptest::collection::vec((0u64..4, 1u64..500, 0u8..20), 1..5), 1..25),
            order_seed in any::<u64>(),
        ) {
            let mut runs = Runs::new(outputs);
            let mut next_off = [0u64; 4];
            let mut epoch = [1u32; 4];
            let mut per_file: Vec<Vec<(u64, u32, u64)>> = vec![vec![]; 4];
            let mut all: Vec<(u64, Vec<FileEnd>)> = vec![];
            for (i, recs) in batches.iter().enumerate() {
                let id = i as u64 + 1;
                let mut offsets: Vec<FileEnd> = vec![];
                for &(f, len, bump) in recs {
                    if bump == 0 {
                        epoch[f as usize] += 1; // truncated: a new reading from 0
                        next_off[f as usize] = 0;
                    }
                    next_off[f as usize] += len;
                    let key = FileKey { dev: 1, ino: f };
                    let e = epoch[f as usize];
                    match offsets.last_mut() {
                        Some((k, ke, o)) if *k == key && *ke == e => *o = next_off[f as usize],
                        _ => offsets.push((key, e, next_off[f as usize])),
                    }
                }
                for &(k, e, o) in &offsets {
                    per_file[k.ino as usize].push((id, e, o));
                }
                runs.open(id, &offsets);
                all.push((id, offsets));
            }
            // Every output acknowledges every batch once, interleaved in a seeded random order.
            let mut acks: Vec<u64> = all.iter().flat_map(|(id, _)| std::iter::repeat_n(*id, outputs as usize)).collect();
            let mut s = order_seed | 1;
            for i in (1..acks.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                acks.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut counts = std::collections::HashMap::new();
            let mut committed: [Option<(u32, u64)>; 4] = [None; 4];
            for id in acks {
                let commits = runs.ack(id).expect("a pending batch");
                *counts.entry(id).or_insert(0u32) += 1;
                for (k, e, o) in commits {
                    let f = k.ino as usize;
                    // Commits only move forward within an epoch.
                    if let Some((pe, po)) = committed[f] { prop_assert!(e > pe || (e == pe && o >= po)); }
                    committed[f] = Some((e, o));
                }
                for f in 0..4 {
                    prop_assert_eq!(committed[f], model_committed(&per_file[f], &counts, outputs), "file {} after ack of {}", f, id);
                }
            }
            prop_assert_eq!(runs.pending(), 0);
            prop_assert!(runs.order.is_empty(), "nothing is kept once committed");
            // An acknowledgement too many, or of an unknown batch, is refused.
            prop_assert!(runs.ack(1).is_none());
        }
    }

    #[test]
    fn a_growing_head_is_kept_until_the_checkpoint_holds_it() {
        // Batch 1 was read before a truncation (epoch 1), batch 2 after it (epoch 2) with the
        // new content's head. Batch 1's acknowledgement is refused by the checkpoint (an older
        // epoch): the head must outlive it and be stored with batch 2's. Catches a head dropped
        // at any commit (the checkpoint would keep the empty head of the truncation: a restart
        // could not tell the file from another).
        let d = tempfile::tempdir().unwrap();
        let cp = Arc::new(Mutex::new(Checkpointer::open(&d.path().join("state"), std::time::Duration::from_secs(3600)).unwrap()));
        let k = FileKey { dev: 1, ino: 7 };
        let fp = |s: &str| Fingerprint { bytes: s.as_bytes().to_vec() };
        let old = cp.lock().unwrap().register("in", k, &fp("old line\n"), "/x/a.log", 0);
        let ledger = Ledger::new("in", 1, cp.clone());
        ledger.open(&[(1, &[(k, old, 9)])], vec![]);
        let new = cp.lock().unwrap().register("in", k, &fp(""), "/x/a.log", 0); // truncated: from 0
        ledger.open(&[(2, &[(k, new, 9)])], vec![(k, fp("new line\n"))]);
        assert_eq!(ledger.ack(1), Some(true));
        assert_eq!(cp.lock().unwrap().get("in", k).map(|e| (e.offset, e.fp.bytes.clone())), Some((0, vec![])), "epoch 1 refused");
        assert_eq!(ledger.ack(2), Some(true));
        assert_eq!(cp.lock().unwrap().get("in", k).map(|e| (e.offset, e.fp.bytes.clone())), Some((9, b"new line\n".to_vec())));
        assert!(ledger.inner.lock().unwrap().heads.is_empty(), "stored, then dropped");
    }

    #[test]
    fn a_batch_commits_when_its_last_output_acknowledges_and_only_in_order() {
        let k = FileKey { dev: 1, ino: 1 };
        let mut r = Runs::new(2);
        r.open(1, &[(k, 1, 10)]);
        r.open(2, &[(k, 1, 20)]);
        assert_eq!(r.ack(2), Some(vec![]));
        assert_eq!(r.ack(2), Some(vec![]), "batch 1 is still pending");
        assert_eq!(r.ack(2), None, "a third acknowledgement from two outputs");
        assert_eq!(r.pending(), 1);
        assert_eq!(r.ack(1), Some(vec![]));
        assert_eq!(r.ack(1), Some(vec![(k, 1, 20)]), "the whole run at once");
        assert_eq!(r.pending(), 0);
    }
}
