//! Batcher: records → batches. A batch holds its records once per wire form its outputs need,
//! each written straight into one buffer (no object per record): OTLP protobuf
//! (`ExportLogsServiceRequest`, for `otlp_http` and `blackhole`) and OTLP JSON (for `file` and
//! `stdout`). It carries the offsets that acknowledging it commits. A batch closes at
//! `max_bytes` (uncompressed), `max_records`, or `max_age` (checked by the tailer's clock).
//! Compression happens when an output asks for the payload (`Batch::encode`), on the caller's
//! thread with the GIL released.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::identity::FileKey;
use crate::otlp::{self, escape_json, CodecChoice, Compression};
use crate::reader::{Flags, LineSink, Source};

/// Which wire forms the batcher writes (at least one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encodings {
    /// OTLP protobuf `log_records`, wrapped into a request by `Batch::encode`.
    pub proto: bool,
    /// OTLP/JSON, one `ExportLogsServiceRequest` per line (the OpenTelemetry Collector's file
    /// exporter format).
    pub json: bool,
}

#[derive(Clone, Debug)]
pub struct BatchLimits {
    pub max_bytes: usize,
    pub max_records: usize,
    pub max_age: Duration,
}

/// The parts of every request that do not depend on the records.
#[derive(Debug)]
pub struct RequestParts {
    /// `Resource.attributes` fields (host.name).
    resource_attrs: Vec<u8>,
    /// `InstrumentationScope` (name tailrace, its version).
    scope: Vec<u8>,
}

/// One batch and what acknowledging it commits.
#[derive(Debug)]
pub struct Batch {
    pub id: u64,
    pub records: u64,
    /// Input bytes the batch covers (newlines included).
    pub input_bytes: u64,
    /// For each file in the batch, the offset just past its last record here.
    pub offsets: Vec<(FileKey, u32, u64)>,
    /// The whole OTLP/JSON document (with its newline), if JSON was asked for.
    pub json: Vec<u8>,
    /// The protobuf request, if protobuf was asked for: a gap for the head, then the encoded
    /// `log_records` fields from `gap` on. At close the head is written at the end of the gap
    /// (from `head_at`), so the whole request is one contiguous slice (compressed without a
    /// copy). `ends[i]` is where record `i` ends, relative to `gap`.
    proto: Vec<u8>,
    gap: usize,
    head_at: usize,
    ends: Vec<u32>,
    parts: Arc<RequestParts>,
    /// The whole request compressed when the batch closed, if the tailer was asked to.
    compressed: Option<(Compression, i32, Vec<u8>)>,
    pool: Arc<BufferPool>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.proto));
    }
}

/// Protobuf buffers of delivered batches, reused by new ones: a fresh megabyte per batch costs
/// more in page faults (and their system time) than encoding into it.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    const KEEP: usize = 8;

    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut v = self.free.lock().expect("pool lock").pop().unwrap_or_default();
        v.clear();
        v.reserve(capacity);
        v
    }

    fn give(&self, v: Vec<u8>) {
        if v.capacity() > 0 {
            let mut free = self.free.lock().expect("pool lock");
            if free.len() < Self::KEEP {
                free.push(v);
            }
        }
    }
}

impl Batch {
    /// The `ExportLogsServiceRequest` protobuf holding records `from..to`, compressed: the
    /// bytes compressed when the batch closed if they are the ones asked for, else compressed
    /// now.
    pub fn encode(&self, codec: Compression, level: i32, from: usize, to: usize) -> crate::error::Result<std::borrow::Cow<'_, [u8]>> {
        use crate::error::Error;
        let to = to.min(self.ends.len());
        if from >= to {
            return Err(Error::Config(format!("empty record range {from}..{to} of {}", self.ends.len())));
        }
        let compress = |parts: &[&[u8]]| otlp::compress(codec, level, parts).map_err(|e| Error::io("compress", e));
        if from == 0 && to == self.ends.len() {
            if let Some(done) = self.precompressed(codec, level) {
                return Ok(done.into());
            }
            return compress(&[&self.proto[self.head_at..]]).map(Into::into);
        }
        let a = self.gap + if from == 0 { 0 } else { self.ends[from - 1] as usize };
        let b = self.gap + self.ends[to - 1] as usize;
        let records = &self.proto[a..b];
        let head = otlp::proto_request_head(&self.parts.resource_attrs, &self.parts.scope, records.len());
        compress(&[&head, records]).map(Into::into)
    }

    /// The whole request as compressed when the batch closed, if it was, with this codec.
    pub fn precompressed(&self, codec: Compression, level: i32) -> Option<&[u8]> {
        match &self.compressed {
            Some((c, l, bytes)) if *c == codec && (*l == level || codec == Compression::None) => Some(bytes),
            _ => None,
        }
    }

    /// Uncompressed protobuf size of the records of the batch.
    pub fn proto_len(&self) -> usize {
        self.proto.len() - self.gap
    }
}

struct Open {
    batch: Batch,
    opened: Instant,
}

pub struct Batcher {
    limits: BatchLimits,
    encodings: Encodings,
    /// Compress each batch as it closes (on the thread that reads), with the main output's
    /// current codec.
    precompress: Arc<CodecChoice>,
    /// Room for the request head before the records (its largest possible size).
    gap: usize,
    pool: Arc<BufferPool>,
    header: Vec<u8>,
    parts: Arc<RequestParts>,
    open: Option<Open>,
    ready: VecDeque<Batch>,
    next_id: u64,
    now: Instant,
    observed_ns: u64,
    /// `observed_time_unix_nano` of the current pass, as decimal text.
    observed: Vec<u8>,
    pub invalid_utf8: u64,
}

const FOOTER: &[u8] = b"]}]}]}\n";

impl Batcher {
    pub fn new(limits: BatchLimits, encodings: Encodings, host: &str, first_id: u64) -> Self {
        Self::with_compression(limits, encodings, host, first_id, Arc::new(CodecChoice::default()))
    }

    pub fn with_compression(limits: BatchLimits, encodings: Encodings, host: &str, first_id: u64, precompress: Arc<CodecChoice>) -> Self {
        let mut header = Vec::new();
        header.extend_from_slice(b"{\"resourceLogs\":[{\"resource\":{\"attributes\":[");
        string_attr(&mut header, "host.name", host.as_bytes());
        header.extend_from_slice(b"]},\"scopeLogs\":[{\"scope\":{\"name\":\"tailrace\",\"version\":\"");
        header.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        header.extend_from_slice(b"\"},\"logRecords\":[");
        let mut resource_attrs = Vec::new();
        otlp::proto_string_attr(&mut resource_attrs, 1, "host.name", host);
        let parts = Arc::new(RequestParts { resource_attrs, scope: otlp::proto_scope("tailrace", env!("CARGO_PKG_VERSION")) });
        let gap = otlp::proto_request_head(&parts.resource_attrs, &parts.scope, u32::MAX as usize).len();
        Batcher {
            limits,
            encodings,
            precompress,
            gap,
            pool: Arc::new(BufferPool::default()),
            header,
            parts,
            open: None,
            ready: VecDeque::new(),
            next_id: first_id,
            now: Instant::now(),
            observed_ns: 0,
            observed: b"0".to_vec(),
            invalid_utf8: 0,
        }
    }

    /// Set the clock for the records that follow (one clock read per pass, not per line).
    pub fn set_clock(&mut self, now: Instant, unix_ns: u64) {
        self.now = now;
        self.observed_ns = unix_ns;
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

    /// The open batch's age counts from `t` if that is earlier than its first record (lines that
    /// waited in their files before they were read).
    pub fn backdate(&mut self, t: Instant) {
        if let Some(o) = &mut self.open {
            o.opened = o.opened.min(t);
        }
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
            let b = &mut o.batch;
            if self.encodings.json {
                b.json.extend_from_slice(FOOTER);
            }
            if self.encodings.proto {
                let head = otlp::proto_request_head(&b.parts.resource_attrs, &b.parts.scope, b.proto.len() - b.gap);
                b.head_at = b.gap - head.len();
                b.proto[b.head_at..b.gap].copy_from_slice(&head);
                if let Some((codec, level)) = self.precompress.get() {
                    // A failure here is retried (and reported) by the output's own encode.
                    if let Ok(out) = otlp::compress(codec, level, &[&b.proto[b.head_at..]]) {
                        b.compressed = Some((codec, level, out));
                    }
                }
            }
            self.ready.push_back(o.batch);
        }
    }
}

/// A source's attributes (`log.file.path`, `log.file.name`) in each wire form, encoded once.
#[derive(Debug, Default)]
pub struct SourceAttrs {
    json: Vec<u8>,
    proto: Vec<u8>,
}

fn source_attrs(source: &Source) -> &SourceAttrs {
    source.encoded_attrs.get_or_init(|| {
        let path = String::from_utf8_lossy(source.path.as_bytes());
        let name = path.rsplit('/').next().unwrap_or(&path);
        let mut json = Vec::with_capacity(128 + 2 * path.len());
        string_attr(&mut json, "log.file.path", path.as_bytes());
        json.push(b',');
        string_attr(&mut json, "log.file.name", name.as_bytes());
        let mut proto = Vec::with_capacity(64 + 2 * path.len());
        otlp::proto_string_attr(&mut proto, 6, "log.file.path", &path);
        otlp::proto_string_attr(&mut proto, 6, "log.file.name", name);
        SourceAttrs { json, proto }
    })
}

/// The `tailrace.*` flag attributes as LogRecord attribute fields.
fn proto_flag(key: &'static str) -> Vec<u8> {
    let mut v = Vec::new();
    otlp::proto_true_attr(&mut v, key);
    v
}

thread_local! {
    static FLAGS: [Vec<u8>; 3] = [proto_flag("tailrace.invalid_utf8"), proto_flag("tailrace.split"), proto_flag("tailrace.partial")];
}

impl LineSink for Batcher {
    fn record(&mut self, source: &Arc<Source>, body: &[u8], end_offset: u64, consumed: u64, flags: Flags) {
        let attrs = source_attrs(source);
        let now = self.now;
        let (enc, header, parts, gap, pool) = (self.encodings, &self.header, &self.parts, self.gap, &self.pool);
        let max_bytes = self.limits.max_bytes;
        let open = self.open.get_or_insert_with(|| {
            let mut json = Vec::new();
            if enc.json {
                json.reserve(64 * 1024);
                json.extend_from_slice(header);
            }
            let id = self.next_id;
            self.next_id += 1;
            let batch = Batch {
                id,
                records: 0,
                input_bytes: 0,
                offsets: Vec::new(),
                json,
                // A buffer a delivered batch gave back: already grown and paged in.
                proto: if enc.proto {
                    let mut v = pool.take(gap + max_bytes / 16);
                    v.resize(gap, 0);
                    v
                } else {
                    Vec::new()
                },
                gap: if enc.proto { gap } else { 0 },
                head_at: 0,
                ends: Vec::new(),
                parts: parts.clone(),
                compressed: None,
                pool: pool.clone(),
            };
            Open { batch, opened: now }
        });
        let b = &mut open.batch;
        let lossy;
        let (text, valid) = match std::str::from_utf8(body) {
            Ok(t) => (t, true),
            Err(_) => {
                lossy = String::from_utf8_lossy(body);
                (&*lossy, false)
            }
        };
        if enc.proto {
            FLAGS.with(|f| {
                let mut extra: [&[u8]; 4] = [&attrs.proto, &[], &[], &[]];
                if !valid {
                    extra[1] = &f[0];
                }
                if flags.split {
                    extra[2] = &f[1];
                }
                if flags.partial {
                    extra[3] = &f[2];
                }
                otlp::proto_record(&mut b.proto, self.observed_ns, text, &extra);
            });
            b.ends.push((b.proto.len() - b.gap) as u32);
        }
        if enc.json {
            let p = &mut b.json;
            if b.records > 0 {
                p.push(b',');
            }
            p.extend_from_slice(b"{\"observedTimeUnixNano\":\"");
            p.extend_from_slice(&self.observed);
            p.extend_from_slice(b"\",\"body\":{\"stringValue\":\"");
            escape_json(p, text.as_bytes());
            p.extend_from_slice(b"\"},\"attributes\":[");
            p.extend_from_slice(&attrs.json);
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
        }
        b.records += 1;
        b.input_bytes += consumed;
        match b.offsets.last_mut() {
            Some((k, e, prev)) if *k == source.key && *e == source.epoch => *prev = end_offset,
            _ => b.offsets.push((source.key, source.epoch, end_offset)),
        }
        if !valid {
            self.invalid_utf8 += 1;
        }
        if b.json.len().max(b.proto.len() - b.gap) >= self.limits.max_bytes || b.records as usize >= self.limits.max_records {
            self.finish();
        }
    }
}

fn string_attr(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(b"{\"key\":\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\",\"value\":{\"stringValue\":\"");
    escape_json(out, String::from_utf8_lossy(value).as_bytes());
    out.extend_from_slice(b"\"}}");
}

fn bool_attr(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b"{\"key\":\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\",\"value\":{\"boolValue\":true}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (field number, payload) of each field: LEN fields give their content, fixed64 its 8 bytes,
    /// varints their raw bytes.
    fn fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> (u64, Vec<u8>) {
            let (mut v, mut shift, mut raw) = (0u64, 0, Vec::new());
            loop {
                let x = b[0];
                *b = &b[1..];
                raw.push(x);
                v |= ((x & 0x7f) as u64) << shift;
                shift += 7;
                if x < 0x80 {
                    return (v, raw);
                }
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let (key, _) = varint(&mut b);
            let v = match key & 7 {
                0 => varint(&mut b).1,
                1 => {
                    let v = b[..8].to_vec();
                    b = &b[8..];
                    v
                }
                2 => {
                    let n = varint(&mut b).0 as usize;
                    let v = b[..n].to_vec();
                    b = &b[n..];
                    v
                }
                w => panic!("wire type {w}"),
            };
            out.push((key >> 3, v));
        }
        out
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// A `KeyValue { key, value: AnyValue { string_value } }` as (key, value).
    fn kv(b: &[u8]) -> (String, String) {
        let f = fields(b);
        (text(&f[0].1), text(&fields(&f[1].1)[0].1))
    }

    #[test]
    fn encodes_otlp_json_and_closes_at_limits() {
        let limits = BatchLimits { max_bytes: 1 << 20, max_records: 2, max_age: Duration::from_secs(1) };
        let mut b = Batcher::new(limits, Encodings { proto: true, json: true }, "h\"1", 7);
        b.set_clock(Instant::now(), 42);
        let src = Arc::new(Source { key: FileKey { dev: 1, ino: 2 }, path: "/var/log/a.log".into(), epoch: 3, encoded_attrs: Default::default() });
        b.record(&src, b"he said \"hi\"\t\x01", 16, 16, Flags::default());
        b.record(&src, b"\xffbad", 21, 5, Flags { split: false, partial: true });
        let batch = b.pop_ready().expect("closed at max_records");
        assert_eq!(batch.id, 7);
        assert_eq!((batch.records, batch.input_bytes), (2, 21));
        assert_eq!(batch.offsets, vec![(FileKey { dev: 1, ino: 2 }, 3, 21)]);
        // Protobuf: walk the request with a generic wire decoder.
        let req = batch.encode(Compression::None, 0, 0, 2).unwrap().into_owned();
        let rl = &fields(&req)[0];
        assert_eq!(rl.0, 1);
        let rl = fields(&rl.1);
        let resource = fields(&rl[0].1);
        assert_eq!(kv(&resource[0].1), ("host.name".into(), "h\"1".into()));
        let sl = fields(&rl[1].1);
        assert_eq!(sl[0].0, 1);
        let scope = fields(&sl[0].1);
        assert_eq!((text(&scope[0].1), text(&scope[1].1)), ("tailrace".into(), env!("CARGO_PKG_VERSION").into()));
        let recs: Vec<_> = sl[1..].iter().map(|r| (r.0, fields(&r.1))).collect();
        assert_eq!(recs.len(), 2);
        assert!(recs.iter().all(|(f, _)| *f == 2));
        let r0 = &recs[0].1;
        assert_eq!((r0[0].0, r0[0].1.clone()), (11, 42u64.to_le_bytes().to_vec()));
        assert_eq!(r0[1].0, 5);
        assert_eq!(text(&fields(&r0[1].1)[0].1), "he said \"hi\"\t\x01");
        assert_eq!(kv(&r0[2].1), ("log.file.path".into(), "/var/log/a.log".into()));
        assert_eq!(kv(&r0[3].1), ("log.file.name".into(), "a.log".into()));
        let r1 = &recs[1].1;
        assert_eq!(text(&fields(&r1[1].1)[0].1), "\u{fffd}bad");
        let keys: Vec<String> = r1[2..].iter().map(|a| text(&fields(&a.1)[0].1)).collect();
        assert_eq!(keys, ["log.file.path", "log.file.name", "tailrace.invalid_utf8", "tailrace.partial"]);
        assert_eq!(fields(&r1[4].1)[1].1, vec![0x10, 1]);
        // A range is a request of its own; compressed forms decode to the same bytes.
        let one = batch.encode(Compression::None, 0, 1, 2).unwrap();
        assert_eq!(fields(&fields(&fields(&one)[0].1)[1].1).len(), 2);
        let z = batch.encode(Compression::Zstd, 1, 0, 2).unwrap();
        assert_eq!(zstd::stream::decode_all(&z[..]).unwrap(), req);
        assert!(batch.encode(Compression::None, 0, 2, 2).is_err());
        assert!(batch.precompressed(Compression::Zstd, 1).is_none());
        // Compressed as it closes when asked: the same request, no work left for the output.
        let limits = BatchLimits { max_bytes: 1 << 20, max_records: 2, max_age: Duration::from_secs(1) };
        let choice = Arc::new(CodecChoice::new(Some((Compression::Zstd, 1))));
        let mut pre = Batcher::with_compression(limits, Encodings { proto: true, json: false }, "h\"1", 7, choice.clone());
        pre.set_clock(Instant::now(), 42);
        pre.record(&src, b"he said \"hi\"\t\x01", 16, 16, Flags::default());
        pre.record(&src, b"\xffbad", 21, 5, Flags { split: false, partial: true });
        let p = pre.pop_ready().unwrap();
        assert!(p.json.is_empty());
        let done = p.precompressed(Compression::Zstd, 1).expect("compressed at close");
        assert_eq!(zstd::stream::decode_all(done).unwrap(), req);
        assert!(p.precompressed(Compression::Zstd, 3).is_none() && p.precompressed(Compression::Gzip, 1).is_none());
        // The output's codec changed (a 415): the next batch closes compressed with the new one.
        choice.set(Some((Compression::Gzip, 6)));
        pre.record(&src, b"again", 27, 6, Flags::default());
        pre.close_if_due(Instant::now(), true);
        let g = pre.pop_ready().unwrap();
        assert!(g.precompressed(Compression::Gzip, 6).is_some() && g.precompressed(Compression::Zstd, 1).is_none());
        assert_eq!(otlp::decompress(Compression::Gzip, g.precompressed(Compression::Gzip, 6).unwrap()).unwrap(), &*g.encode(Compression::None, 0, 0, 1).unwrap());
        let text = String::from_utf8(batch.json.clone()).unwrap();
        assert!(text.ends_with("]}]}]}\n"));
        assert!(text.contains(r#"{"key":"host.name","value":{"stringValue":"h\"1"}}"#));
        assert!(text.contains(r#""body":{"stringValue":"he said \"hi\"\t\u0001"}"#));
        assert!(text.contains(r#""body":{"stringValue":"�bad"}"#));
        assert!(text.contains(r#"{"key":"tailrace.invalid_utf8","value":{"boolValue":true}},{"key":"tailrace.partial","value":{"boolValue":true}}"#));
        assert!(text.contains(r#"{"key":"log.file.name","value":{"stringValue":"a.log"}}"#));
        assert_eq!(b.invalid_utf8, 1);
    }
}
