//! CPU of the ledger per file per batch, from `open` to the commit in the checkpoints: FILES
//! files in every batch (in a shuffled order, as files come from a hash map), BATCHES
//! batches, two acknowledgements outstanding (acknowledged in read order). Prints one JSON
//! line; compare two checkouts by running it in each.
//!
//!     cargo run --release -p tailrace-core --example ledger_cost -- 5000 200
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tailrace_core::checkpoints::Checkpointer;
use tailrace_core::identity::{FileKey, Fingerprint};
use tailrace_core::ledger::Ledger;

fn main() {
    let arg = |i: usize, d: u64| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (files, batches) = (arg(1, 5000), arg(2, 200));
    let dir = std::env::temp_dir().join(format!("ledger-cost-{}", std::process::id()));
    let cp = Arc::new(Mutex::new(Checkpointer::open(&dir, Duration::from_secs(3600)).expect("state dir")));
    let mut epoch = 0;
    for f in 0..files {
        let fp = Fingerprint { bytes: vec![b'x'; 1024] };
        epoch = cp.lock().unwrap().register("in", FileKey { dev: 1, ino: f }, &fp, &format!("/x/{f}.log"), 0);
    }
    let ledger = Ledger::new("in", 1, cp.clone());
    let mut keys: Vec<u64> = (0..files).collect();
    let mut s = 88172645463325252u64;
    for i in (1..keys.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        keys.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let mut off = vec![0u64; files as usize];
    let mut in_flight = std::collections::VecDeque::new();
    let t0 = Instant::now();
    for id in 1..=batches {
        let ends: Vec<(FileKey, u32, u64)> = keys
            .iter()
            .map(|&f| {
                off[f as usize] += 100;
                (FileKey { dev: 1, ino: f }, epoch, off[f as usize])
            })
            .collect();
        ledger.open(&[(id, &ends)], vec![]);
        in_flight.push_back(id);
        if in_flight.len() > 2 {
            ledger.ack(in_flight.pop_front().unwrap());
        }
    }
    while let Some(id) = in_flight.pop_front() {
        ledger.ack(id);
    }
    let spent = t0.elapsed();
    let c = cp.lock().unwrap();
    let committed = (0..files).all(|f| c.get("in", FileKey { dev: 1, ino: f }).is_some_and(|e| e.offset == off[f as usize]));
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(committed, "every file committed at its last offset");
    println!("{{\"files\": {files}, \"batches\": {batches}, \"us_per_file_per_batch\": {:.4}}}", spent.as_secs_f64() * 1e6 / (files * batches) as f64);
}
