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

/// At most this many emptied runs are kept (a batch's worth at 10,000 files), each of at most
/// this capacity: 1.3 MB at most.
const SPARE_RUNS: usize = 10_000;
const SPARE_CAPACITY: usize = 4;

struct BatchState {
    acks_left: u32,
    /// Entries of this batch still queued in some file's run.
    queued: u32,
}

/// Pending batches and per-file runs (no locks, no I/O).
pub struct Runs {
    outputs: u32,
    batches: KeyMap<u64, BatchState>,
    /// Per file, its batches in read order: (batch id, epoch, end offset in that batch).
    files: KeyMap<FileKey, VecDeque<(u64, u32, u64)>>,
    /// Emptied runs kept for reuse: at every batch each file in it opens a run and its
    /// acknowledgement empties it, so 5,000 files meant 5,000 allocations and frees per batch.
    spare: Vec<VecDeque<(u64, u32, u64)>>,
}

impl Runs {
    pub fn new(outputs: u32) -> Self {
        Runs { outputs: outputs.max(1), batches: KeyMap::default(), files: KeyMap::default(), spare: Vec::new() }
    }

    /// A batch closed holding, per file, the offset just past its last record (in read order).
    pub fn open(&mut self, id: u64, offsets: &[FileEnd]) {
        for &(key, epoch, end) in offsets {
            let spare = &mut self.spare;
            self.files.entry(key).or_insert_with(|| spare.pop().unwrap_or_default()).push_back((id, epoch, end));
        }
        self.batches.insert(id, BatchState { acks_left: self.outputs, queued: offsets.len() as u32 });
    }

    /// One output acknowledged batch `id`. `None`: not a pending batch (unknown, or already
    /// acknowledged by every output). `Some(commits)`: the offsets that became committed
    /// (empty until the last output acknowledged it, or while earlier batches are pending).
    pub fn ack(&mut self, id: u64, offsets: &[FileEnd]) -> Option<Vec<Commit>> {
        let b = self.batches.get_mut(&id).filter(|b| b.acks_left > 0)?;
        b.acks_left -= 1;
        if b.acks_left > 0 {
            return Some(Vec::new());
        }
        let mut commits: Vec<Commit> = Vec::new();
        for &(key, _, _) in offsets {
            let Some(run) = self.files.get_mut(&key) else { continue };
            let mut last = None;
            while let Some(&(front, epoch, end)) = run.front() {
                let Some(fb) = self.batches.get_mut(&front) else { break };
                if fb.acks_left > 0 {
                    break;
                }
                run.pop_front();
                fb.queued -= 1;
                if fb.queued == 0 {
                    self.batches.remove(&front);
                }
                last = Some((key, epoch, end));
            }
            if run.is_empty() {
                if let Some(run) = self.files.remove(&key).filter(|r| r.capacity() <= SPARE_CAPACITY) {
                    if self.spare.len() < SPARE_RUNS {
                        self.spare.push(run);
                    }
                }
            }
            commits.extend(last);
        }
        if self.batches.get(&id).is_some_and(|b| b.queued == 0) {
            self.batches.remove(&id);
        }
        Some(commits)
    }

    /// Batches not yet acknowledged by every output.
    pub fn pending(&self) -> usize {
        self.batches.values().filter(|b| b.acks_left > 0).count()
    }
}

struct Inner {
    runs: Runs,
    /// Each pending batch's offsets (what its acknowledgement may commit).
    offsets: KeyMap<u64, Vec<FileEnd>>,
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
            inner: Mutex::new(Inner { runs: Runs::new(outputs), offsets: KeyMap::default(), heads: KeyMap::default() }),
        }
    }

    /// Batches closed by the tailer, with the heads of the files whose fingerprint grew.
    pub fn open(&self, batches: &[(u64, &[FileEnd])], heads: Vec<(FileKey, Fingerprint)>) {
        let mut g = self.inner.lock().expect("ledger lock");
        for &(id, offsets) in batches {
            g.runs.open(id, offsets);
            g.offsets.insert(id, offsets.to_vec());
        }
        g.heads.extend(heads);
    }

    /// One output acknowledged batch `id` (delivered, spooled, or dropped on purpose). Returns
    /// `None` for a batch that is not pending, else whether this was its last acknowledgement.
    pub fn ack(&self, id: u64) -> Option<bool> {
        let mut g = self.inner.lock().expect("ledger lock");
        let Inner { runs, offsets, heads } = &mut *g;
        let commits = runs.ack(id, offsets.get(&id).map(Vec::as_slice).unwrap_or(&[]))?;
        let complete = runs.batches.get(&id).is_none_or(|b| b.acks_left == 0);
        if complete {
            offsets.remove(&id);
        }
        if !commits.is_empty() {
            let mut cp = self.checkpoints.lock().expect("checkpointer lock");
            cp.commit_all(&self.input, commits.iter().copied(), |key| heads.get(&key));
            for (key, _, _) in &commits {
                if heads.get(key).is_some_and(Fingerprint::is_full) || !runs.files.contains_key(key) {
                    heads.remove(key);
                }
            }
        }
        Some(complete)
    }

    /// Batches not yet acknowledged by every output.
    pub fn pending(&self) -> usize {
        self.inner.lock().expect("ledger lock").runs.pending()
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
                let offsets = &all[(id - 1) as usize].1;
                let commits = runs.ack(id, offsets).expect("a pending batch");
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
            prop_assert!(runs.batches.is_empty() && runs.files.is_empty(), "nothing is kept once committed");
            // An acknowledgement too many, or of an unknown batch, is refused.
            prop_assert!(runs.ack(1, &all[0].1).is_none());
        }
    }

    #[test]
    fn a_batch_commits_when_its_last_output_acknowledges_and_only_in_order() {
        let k = FileKey { dev: 1, ino: 1 };
        let mut r = Runs::new(2);
        r.open(1, &[(k, 1, 10)]);
        r.open(2, &[(k, 1, 20)]);
        assert_eq!(r.ack(2, &[(k, 1, 20)]), Some(vec![]));
        assert_eq!(r.ack(2, &[(k, 1, 20)]), Some(vec![]), "batch 1 is still pending");
        assert_eq!(r.ack(2, &[(k, 1, 20)]), None, "a third acknowledgement from two outputs");
        assert_eq!(r.pending(), 1);
        assert_eq!(r.ack(1, &[(k, 1, 10)]), Some(vec![]));
        assert_eq!(r.ack(1, &[(k, 1, 10)]), Some(vec![(k, 1, 20)]), "the whole run at once");
        assert_eq!(r.pending(), 0);
    }
}
