//! Batcher: records → encoded batches. Each batch is one `ExportLogsServiceRequest` in the
//! encoding its output needs, written straight into one buffer (no object per record), and
//! carries the offsets that acknowledging it commits. A batch closes at `max_bytes`
//! (uncompressed), `max_records`, or `max_age` (checked by the tailer's clock).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::identity::FileKey;
use crate::reader::{Flags, LineSink, Source};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// OTLP/JSON, one `ExportLogsServiceRequest` per line (the OpenTelemetry Collector's file
    /// exporter format).
    OtlpJson,
}

#[derive(Clone, Debug)]
pub struct BatchLimits {
    pub max_bytes: usize,
    pub max_records: usize,
    pub max_age: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { max_bytes: 1 << 20, max_records: 10_000, max_age: Duration::from_millis(100) }
    }
}

/// One encoded batch and what acknowledging it commits.
#[derive(Debug)]
pub struct Batch {
    pub id: u64,
    pub payload: Vec<u8>,
    pub records: u64,
    /// Input bytes the batch covers (newlines included).
    pub input_bytes: u64,
    /// For each file in the batch, the offset just past its last record here.
    pub offsets: Vec<(FileKey, u32, u64)>,
}

struct Open {
    batch: Batch,
    opened: Instant,
}

pub struct Batcher {
    limits: BatchLimits,
    encoding: Encoding,
    header: Vec<u8>,
    open: Option<Open>,
    ready: VecDeque<Batch>,
    next_id: u64,
    now: Instant,
    /// `observed_time_unix_nano` of the current pass, as decimal text.
    observed: Vec<u8>,
    pub invalid_utf8: u64,
}

const FOOTER: &[u8] = b"]}]}]}\n";

impl Batcher {
    pub fn new(limits: BatchLimits, encoding: Encoding, host: &str, first_id: u64) -> Self {
        let mut header = Vec::new();
        header.extend_from_slice(b"{\"resourceLogs\":[{\"resource\":{\"attributes\":[");
        string_attr(&mut header, "host.name", host.as_bytes());
        header.extend_from_slice(b"]},\"scopeLogs\":[{\"scope\":{\"name\":\"tailrace\",\"version\":\"");
        header.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        header.extend_from_slice(b"\"},\"logRecords\":[");
        Batcher {
            limits,
            encoding,
            header,
            open: None,
            ready: VecDeque::new(),
            next_id: first_id,
            now: Instant::now(),
            observed: b"0".to_vec(),
            invalid_utf8: 0,
        }
    }

    /// Set the clock for the records that follow (one clock read per pass, not per line).
    pub fn set_clock(&mut self, now: Instant, unix_ns: u64) {
        self.now = now;
        self.observed.clear();
        self.observed.extend_from_slice(unix_ns.to_string().as_bytes());
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn pop_ready(&mut self) -> Option<Batch> {
        self.ready.pop_front()
    }

    /// When the open batch reaches `max_age`, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.opened + self.limits.max_age)
    }

    /// Close the open batch if it is old enough (or unconditionally with `force`).
    pub fn close_if_due(&mut self, now: Instant, force: bool) {
        if let Some(o) = &self.open {
            if force || now >= o.opened + self.limits.max_age {
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        if let Some(mut o) = self.open.take() {
            o.batch.payload.extend_from_slice(FOOTER);
            self.ready.push_back(o.batch);
        }
    }

}

/// `log.file.path` and `log.file.name`, encoded once per source.
fn source_attrs(source: &Source) -> &[u8] {
    source.encoded_attrs.get_or_init(|| {
        let mut a = Vec::with_capacity(128 + 2 * source.path.len());
        string_attr(&mut a, "log.file.path", source.path.as_bytes());
        a.push(b',');
        let name = source.path.rsplit('/').next().unwrap_or(&source.path);
        string_attr(&mut a, "log.file.name", name.as_bytes());
        a
    })
}

impl LineSink for Batcher {
    fn record(&mut self, source: &Arc<Source>, body: &[u8], end_offset: u64, consumed: u64, flags: Flags) {
        let Encoding::OtlpJson = self.encoding;
        let attrs = source_attrs(source);
        let now = self.now;
        let open = self.open.get_or_insert_with(|| {
            let mut payload = Vec::with_capacity(64 * 1024);
            payload.extend_from_slice(&self.header);
            let id = self.next_id;
            self.next_id += 1;
            Open { batch: Batch { id, payload, records: 0, input_bytes: 0, offsets: Vec::new() }, opened: now }
        });
        let b = &mut open.batch;
        let p = &mut b.payload;
        if b.records > 0 {
            p.push(b',');
        }
        p.extend_from_slice(b"{\"observedTimeUnixNano\":\"");
        p.extend_from_slice(&self.observed);
        p.extend_from_slice(b"\",\"body\":{\"stringValue\":\"");
        let valid = match std::str::from_utf8(body) {
            Ok(_) => {
                escape_json(p, body);
                true
            }
            Err(_) => {
                escape_json(p, String::from_utf8_lossy(body).as_bytes());
                false
            }
        };
        p.extend_from_slice(b"\"},\"attributes\":[");
        p.extend_from_slice(attrs);
        if !valid {
            p.push(b',');
            bool_attr(p, "tailrace.invalid_utf8");
        }
        if flags.split {
            p.push(b',');
            bool_attr(p, "tailrace.split");
        }
        if flags.partial {
            p.push(b',');
            bool_attr(p, "tailrace.partial");
        }
        p.extend_from_slice(b"]}");
        b.records += 1;
        b.input_bytes += consumed;
        match b.offsets.last_mut() {
            Some((k, e, prev)) if *k == source.key && *e == source.epoch => *prev = end_offset,
            _ => b.offsets.push((source.key, source.epoch, end_offset)),
        }
        if !valid {
            self.invalid_utf8 += 1;
        }
        if b.payload.len() >= self.limits.max_bytes || b.records as usize >= self.limits.max_records {
            self.finish();
        }
    }
}

fn string_attr(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(b"{\"key\":\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\",\"value\":{\"stringValue\":\"");
    escape_json(out, &String::from_utf8_lossy(value).into_owned().into_bytes());
    out.extend_from_slice(b"\"}}");
}

fn bool_attr(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b"{\"key\":\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\",\"value\":{\"boolValue\":true}}");
}

/// JSON string escaping of valid UTF-8; copies runs that need no escape in one go. Runs are
/// found eight bytes at a time (SWAR): most log lines hold no byte that needs escaping.
pub fn escape_json(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    let mut from = 0;
    let mut i = 0;
    while i < s.len() {
        if i + 8 <= s.len() && !word_needs_escape(u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"))) {
            i += 8;
            continue;
        }
        let b = s[i];
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&s[from..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        i += 1;
        from = i;
    }
    out.extend_from_slice(&s[from..]);
}

/// Does any byte of `w` need escaping in a JSON string (`"`, `\\`, or below 0x20)?
#[inline]
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_0x20 = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_0x20 | has_zero(w ^ (ONES * b'"' as u64)) | has_zero(w ^ (ONES * b'\\' as u64))) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_matches_a_bytewise_reference() {
        fn reference(s: &[u8]) -> Vec<u8> {
            let mut o = Vec::new();
            for &b in s {
                match b {
                    b'"' => o.extend_from_slice(b"\\\""),
                    b'\\' => o.extend_from_slice(b"\\\\"),
                    b'\n' => o.extend_from_slice(b"\\n"),
                    b'\r' => o.extend_from_slice(b"\\r"),
                    b'\t' => o.extend_from_slice(b"\\t"),
                    0..=0x1f => o.extend_from_slice(format!("\\u{:04x}", b).as_bytes()),
                    _ => o.push(b),
                }
            }
            o
        }
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in 0..200 {
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    [b'a', b'"', b'\\', 0x1f, 0x20, 0x7f, b'\n', 0x00, b'z', 0x21][(seed % 10) as usize]
                })
                .collect();
            let mut got = Vec::new();
            escape_json(&mut got, &s);
            assert_eq!(got, reference(&s), "input {s:?}");
        }
    }

    #[test]
    fn encodes_otlp_json_and_closes_at_limits() {
        let limits = BatchLimits { max_bytes: 1 << 20, max_records: 2, max_age: Duration::from_secs(1) };
        let mut b = Batcher::new(limits, Encoding::OtlpJson, "h\"1", 7);
        b.set_clock(Instant::now(), 42);
        let src = Arc::new(Source { key: FileKey { dev: 1, ino: 2 }, path: "/var/log/a.log".into(), epoch: 3, encoded_attrs: Default::default() });
        b.record(&src, b"he said \"hi\"\t\x01", 16, 16, Flags::default());
        b.record(&src, b"\xffbad", 21, 5, Flags { split: false, partial: true });
        let batch = b.pop_ready().expect("closed at max_records");
        assert_eq!(batch.id, 7);
        assert_eq!((batch.records, batch.input_bytes), (2, 21));
        assert_eq!(batch.offsets, vec![(FileKey { dev: 1, ino: 2 }, 3, 21)]);
        let text = String::from_utf8(batch.payload).unwrap();
        assert!(text.ends_with("]}]}]}\n"));
        assert!(text.contains(r#"{"key":"host.name","value":{"stringValue":"h\"1"}}"#));
        assert!(text.contains(r#""body":{"stringValue":"he said \"hi\"\t\u0001"}"#));
        assert!(text.contains(r#""body":{"stringValue":"�bad"}"#));
        assert!(text.contains(r#"{"key":"tailrace.invalid_utf8","value":{"boolValue":true}},{"key":"tailrace.partial","value":{"boolValue":true}}"#));
        assert!(text.contains(r#"{"key":"log.file.name","value":{"stringValue":"a.log"}}"#));
        assert_eq!(b.invalid_utf8, 1);
    }
}
