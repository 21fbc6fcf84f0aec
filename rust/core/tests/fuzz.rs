//! Fuzzing on arbitrary bytes (proptest): the framer and the container parsers (any bytes in
//! any chunking: no panic, and every byte accounted for exactly once), and the checkpoint
//! readers (any snapshot, any journal: no panic, an error that names the file or a state).
//!
//! CI runs `FUZZ_CASES` (default 2,000) cases per target with every `make test`; the long run:
//!
//!     FUZZ_CASES=1000000 cargo test --release -p tailrace-core --test fuzz
//!
//! (the README's development section gives its duration on this machine).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tailrace_core::counters::Counters;
use tailrace_core::discovery::Roots;
use tailrace_core::identity::FileKey;
use tailrace_core::parser::{Format, Parser};
use tailrace_core::reader::{FileReader, Flags, LineSink, Source};
use tailrace_core::Checkpointer;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

/// Every record, and the bytes of input each one consumed.
#[derive(Default)]
struct Collect {
    records: Vec<(Vec<u8>, Flags)>,
    consumed: u64,
    last_end: u64,
}

impl LineSink for Collect {
    fn record(&mut self, _s: &Arc<Source>, body: &[u8], end: u64, consumed: u64, flags: Flags) {
        // Commit offsets never go backwards within a file.
        assert!(end >= self.last_end, "commit offset went back: {} then {end}", self.last_end);
        self.last_end = end;
        self.consumed += consumed;
        self.records.push((body.to_vec(), flags));
    }
}

/// Chunks of arbitrary bytes, biased towards what framing and parsing care about.
fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let byte = prop_oneof![
        4 => any::<u8>(),
        3 => Just(b'\n'),
        2 => Just(b' '),
        1 => Just(b'P'),
        1 => Just(b'F'),
        1 => Just(b'{'),
        1 => Just(b'"'),
        1 => Just(b'\\'),
    ];
    let piece = prop_oneof![
        4 => proptest::collection::vec(byte, 0..64),
        1 => Just(b"2026-12-02T10:00:00.123456789Z stdout P ".to_vec()),
        1 => Just(b"2026-12-02T10:00:00Z stderr F ".to_vec()),
        1 => Just(br#"{"log":"a\n","stream":"stdout","time":"2026-12-02T10:00:00Z"}"#.to_vec()),
        1 => Just(br#"{"log":"\ud83d\ude00\/","stream":"stderr","time":"2026-12-02T10:00:00.5Z"}"#.to_vec()),
    ];
    proptest::collection::vec(proptest::collection::vec(piece, 0..6).prop_map(|p| p.concat()), 1..12)
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Plain), Just(Format::Cri), Just(Format::Docker), Just(Format::Auto)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Written in any chunks, read after each, then flushed: no panic; the bytes consumed by
    /// records are exactly the file's bytes; with `plain`, the bodies and newlines are the file.
    #[test]
    fn framer_and_parsers_account_for_every_byte(chunks in chunks(), fmt in format(), max_line in 1usize..200) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f.log");
        std::fs::write(&path, b"").unwrap();
        let mut c = Counters::default();
        let meta = std::fs::metadata(&path).unwrap();
        let key = { use std::os::unix::fs::MetadataExt; FileKey { dev: meta.dev(), ino: meta.ino() } };
        let roots = Roots::new(&[], &["/".into()]);
        let (mut r, _) = FileReader::open(path.clone(), key, 0, Instant::now(), &roots, &mut c).unwrap();
        r.parser = Parser::new(fmt);
        r.max_message = max_line;
        let mut sink = Collect::default();
        let mut buf = vec![0u8; 4096];
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut all = Vec::new();
        for chunk in &chunks {
            f.write_all(chunk).unwrap();
            all.extend_from_slice(chunk);
            r.read(&mut buf, 1 << 20, max_line, Instant::now(), &mut sink, &mut c).unwrap();
        }
        r.flush_partial(Instant::now(), None, &mut sink, &mut c);
        prop_assert_eq!(sink.consumed, all.len() as u64);
        if fmt == Format::Plain {
            // Pieces of one line are its bytes in order; a newline ends each whole line.
            let mut rebuilt = Vec::new();
            for (body, flags) in &sink.records {
                rebuilt.extend_from_slice(body);
                let cut = rebuilt.len() < all.len() && all[rebuilt.len()] == b'\n';
                if cut && !flags.partial {
                    rebuilt.push(b'\n');
                }
            }
            prop_assert_eq!(rebuilt, all);
        }
    }

    /// Any bytes as the snapshot, and any bytes after a valid journal header: reading never
    /// panics; a snapshot that is not one is an error naming it.
    #[test]
    fn checkpoint_readers_take_any_bytes(snapshot in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
                                         journal in proptest::collection::vec(any::<u8>(), 0..300),
                                         header in any::<bool>()) {
        let d = tempfile::tempdir().unwrap();
        if let Some(s) = &snapshot {
            std::fs::write(d.path().join("checkpoints.json"), s).unwrap();
        }
        let mut j = if header { b"TRJOURN1".to_vec() } else { Vec::new() };
        if header {
            j.extend_from_slice(&0u64.to_le_bytes());
        }
        j.extend_from_slice(&journal);
        std::fs::write(d.path().join("checkpoints.journal"), &j).unwrap();
        match Checkpointer::read(d.path(), Duration::from_secs(3600)) {
            Ok(cp) => prop_assert!(cp.loaded.torn_bytes <= j.len() as u64),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("checkpoints.json") || msg.contains("checkpoints.journal"), "{}", msg);
            }
        }
    }
}
