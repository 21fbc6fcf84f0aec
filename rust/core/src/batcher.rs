//! Batcher: records → batches. A batch holds its records once per wire form its outputs need,
//! each written straight into its resource's buffer (no object per record): OTLP protobuf
//! (`ExportLogsServiceRequest`, for `otlp_http` and `blackhole`) and OTLP JSON (for `file` and
//! `stdout`), with one `ResourceLogs` per resource (`resource.rs`: host, pod, container),
//! whose attributes are encoded once. It carries the offsets that acknowledging it commits. A batch closes at
//! `max_bytes` (uncompressed), `max_records`, or `max_age` (checked by the tailer's clock).
//! Compression happens when an output asks for the payload (`Batch::encode`), on the caller's
//! thread with the GIL released.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::identity::FileKey;
use crate::otlp::{self, escape_json, CodecChoice, Compression};
use crate::resource::{self, Resource};
use crate::reader::{Flags, LineSink, Source, Stream};

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
    /// The whole protobuf request, if protobuf was asked for, from `proto[base..]`: one
    /// `ResourceLogs` per resource, each holding its records in file order. `ends[i]` is where
    /// record `i` ends in `proto`; `groups` say where each resource's records start. The
    /// bytes before `base` are the first resource's unused head room (see `Group::room`).
    proto: Vec<u8>,
    base: usize,
    ends: Vec<u32>,
    groups: Vec<Span>,
    scope: Arc<Vec<u8>>,
    /// The whole request compressed when the batch closed, if the tailer was asked to.
    compressed: Option<(Compression, i32, Vec<u8>)>,
    pool: Arc<BufferPool>,
}

/// Where one resource's records lie in a closed batch.
#[derive(Debug)]
struct Span {
    resource: Arc<Resource>,
    /// Index of its first record, and the byte where that record starts in `proto`.
    first: usize,
    start: usize,
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
            return compress(&[self.request()]).map(Into::into);
        }
        // A request of its own: each resource's records within the range, under its head.
        let mut heads: Vec<Vec<u8>> = Vec::new();
        let mut slices: Vec<(usize, usize)> = Vec::new();
        for (g, span) in self.groups.iter().enumerate() {
            let last = self.groups.get(g + 1).map_or(self.ends.len(), |n| n.first);
            let (a, b) = (from.max(span.first), to.min(last));
            if a >= b {
                continue;
            }
            let start = if a == span.first { span.start } else { self.ends[a - 1] as usize };
            let end = self.ends[b - 1] as usize;
            heads.push(otlp::proto_resource_logs_head(&span.resource.proto, &self.scope, end - start));
            slices.push((start, end));
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * heads.len());
        for (h, (a, b)) in heads.iter().zip(&slices) {
            parts.push(h);
            parts.push(&self.proto[*a..*b]);
        }
        compress(&parts).map(Into::into)
    }

    /// The whole request as compressed when the batch closed, if it was, with this codec.
    pub fn precompressed(&self, codec: Compression, level: i32) -> Option<&[u8]> {
        match &self.compressed {
            Some((c, l, bytes)) if *c == codec && (*l == level || codec == Compression::None) => Some(bytes),
            _ => None,
        }
    }

    /// Size of the protobuf request, uncompressed.
    pub fn proto_len(&self) -> usize {
        self.request().len()
    }

    /// The whole protobuf request.
    fn request(&self) -> &[u8] {
        &self.proto[self.base..]
    }

    /// The resources of the batch, one `ResourceLogs` each, in the order they appear.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.groups.iter().map(|g| &*g.resource)
    }
}

/// One resource's records in the open batch.
struct Group {
    resource: Arc<Resource>,
    /// `room` bytes left for the resource's head, then its records. The first group's buffer
    /// becomes the batch's request, its head written into the room: a batch of one resource
    /// (the usual case) is never copied, and one of several copies all but its first.
    proto: Vec<u8>,
    room: usize,
    /// Where each record ends in `proto`.
    ends: Vec<u32>,
    json: Vec<u8>,
}

struct Open {
    id: u64,
    records: u64,
    input_bytes: u64,
    offsets: Vec<(FileKey, u32, u64)>,
    groups: Vec<Group>,
    /// Bytes written so far (the larger wire form), against `max_bytes`.
    bytes: usize,
    opened: Instant,
}

pub struct Batcher {
    limits: BatchLimits,
    encodings: Encodings,
    /// Compress each batch as it closes (on the thread that reads), with the main output's
    /// current codec.
    precompress: Arc<CodecChoice>,
    pool: Arc<BufferPool>,
    /// `InstrumentationScope` (name tailrace, its version), encoded once.
    scope: Arc<Vec<u8>>,
    /// `host.name` and `k8s.node.name`, the attributes every resource has.
    base: Vec<(&'static str, String)>,
    /// Which file attributes records carry.
    file_attrs: FileAttrs,
    /// Resources by their attributes (files of one container share one).
    resources: std::collections::HashMap<Vec<(&'static str, String)>, Arc<Resource>>,
    /// Group buffers of closed batches, reused.
    spare: Vec<Vec<u8>>,
    open: Option<Open>,
    ready: VecDeque<Batch>,
    next_id: u64,
    now: Instant,
    observed_ns: u64,
    /// `observed_time_unix_nano` of the current pass, as decimal text.
    observed: Vec<u8>,
    pub invalid_utf8: u64,
}

impl Batcher {
    pub fn new(limits: BatchLimits, encodings: Encodings, host: &str, first_id: u64) -> Self {
        Self::with_compression(limits, encodings, host, None, first_id, Arc::new(CodecChoice::default()))
    }

    /// Which file attributes records carry (before the first record).
    pub fn set_file_attrs(&mut self, which: FileAttrs) {
        self.file_attrs = which;
    }

    pub fn with_compression(limits: BatchLimits, encodings: Encodings, host: &str, node: Option<&str>, first_id: u64, precompress: Arc<CodecChoice>) -> Self {
        let mut base = vec![("host.name", host.to_string())];
        if let Some(node) = node {
            base.push(("k8s.node.name", node.to_string()));
        }
        Batcher {
            limits,
            encodings,
            precompress,
            pool: Arc::new(BufferPool::default()),
            scope: Arc::new(otlp::proto_scope("tailrace", env!("CARGO_PKG_VERSION"))),
            base,
            file_attrs: FileAttrs::default(),
            resources: Default::default(),
            spare: Vec::new(),
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

    /// The resource of a source: from its path, interned (files of one container share it).
    fn resource_of(&mut self, source: &Source) -> Arc<Resource> {
        let mut attrs = self.base.clone();
        attrs.extend(resource::path_attrs(&source.path.to_string_lossy()));
        self.resources
            .entry(attrs)
            .or_insert_with_key(|a| Arc::new(Resource::new(&a.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())))
            .clone()
    }

    /// Lay the open batch out as one request (a `ResourceLogs` per group) and one JSON
    /// document, compress it if asked, and queue it.
    fn finish(&mut self) {
        let Some(o) = self.open.take() else { return };
        let (enc, scope) = (self.encodings, self.scope.clone());
        // What the groups after the first add to its buffer (their room is at least their head).
        let more: usize = o.groups.iter().skip(1).map(|g| g.proto.len()).sum();
        let (mut proto, mut base, mut ends) = (Vec::new(), 0, Vec::new());
        let mut spans = Vec::with_capacity(o.groups.len());
        let mut json = Vec::new();
        if enc.json {
            json.reserve(o.groups.iter().map(|g| g.json.len() + g.resource.json.len() + 128).sum::<usize>() + 32);
            json.extend_from_slice(b"{\"resourceLogs\":[");
        }
        let mut first = 0usize;
        for (i, mut g) in o.groups.into_iter().enumerate() {
            let n = g.ends.len();
            if enc.proto {
                let head = otlp::proto_resource_logs_head(&g.resource.proto, &scope, g.proto.len() - g.room);
                if i == 0 {
                    base = g.room - head.len();
                    g.proto[base..g.room].copy_from_slice(&head);
                    spans.push(Span { resource: g.resource.clone(), first, start: g.room });
                    proto = std::mem::take(&mut g.proto);
                    ends = std::mem::take(&mut g.ends);
                    proto.reserve(more);
                } else {
                    proto.extend_from_slice(&head);
                    let start = proto.len();
                    ends.extend(g.ends.iter().map(|e| (start + *e as usize - g.room) as u32));
                    proto.extend_from_slice(&g.proto[g.room..]);
                    spans.push(Span { resource: g.resource.clone(), first, start });
                }
            }
            if enc.json {
                if i > 0 {
                    json.push(b',');
                }
                json.extend_from_slice(b"{\"resource\":{\"attributes\":[");
                json.extend_from_slice(&g.resource.json);
                json.extend_from_slice(b"]},\"scopeLogs\":[{\"scope\":{\"name\":\"tailrace\",\"version\":\"");
                json.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
                json.extend_from_slice(b"\"},\"logRecords\":[");
                json.extend_from_slice(&g.json);
                json.extend_from_slice(b"]}]}");
            }
            first += n;
            for mut v in [std::mem::take(&mut g.proto), std::mem::take(&mut g.json)] {
                if v.capacity() > 0 && self.spare.len() < 4096 {
                    v.clear();
                    self.spare.push(v);
                }
            }
        }
        if enc.json {
            json.extend_from_slice(b"]}\n");
        }
        let mut b = Batch {
            id: o.id,
            records: o.records,
            input_bytes: o.input_bytes,
            offsets: o.offsets,
            json,
            proto,
            base,
            ends,
            groups: spans,
            scope,
            compressed: None,
            pool: self.pool.clone(),
        };
        if enc.proto {
            if let Some((codec, level)) = self.precompress.get() {
                // A failure here is retried (and reported) by the output's own encode.
                if let Ok(out) = otlp::compress(codec, level, &[b.request()]) {
                    b.compressed = Some((codec, level, out));
                }
            }
        }
        self.ready.push_back(b);
    }
}

/// Which file attributes each record carries. The semantic conventions make `log.file.name`
/// recommended and `log.file.path` opt-in, and the OpenTelemetry Collector's filelog receiver
/// ships the name only by default (`include_file_name`, `include_file_path`): so does tailrace.
/// The path is 1.7× the line's protobuf on short lines' budgets, one setting away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAttrs {
    pub name: bool,
    pub path: bool,
}

impl Default for FileAttrs {
    fn default() -> Self {
        FileAttrs { name: true, path: false }
    }
}

/// A source's attributes (`log.file.name`, and `log.file.path` when asked for) in each wire
/// form, and its resource, found once per source.
#[derive(Debug)]
pub struct SourceAttrs {
    json: Vec<u8>,
    proto: Vec<u8>,
    resource: Arc<Resource>,
}

fn source_attrs(source: &Source, which: FileAttrs, resource: impl FnOnce() -> Arc<Resource>) -> &SourceAttrs {
    source.encoded_attrs.get_or_init(|| {
        let path = source.path.to_string_lossy();
        let name = path.rsplit('/').next().unwrap_or(&path);
        let mut json = Vec::with_capacity(128 + 2 * path.len());
        let mut proto = Vec::with_capacity(64 + 2 * path.len());
        if which.path {
            otlp::json_string_attr(&mut json, "log.file.path", path.as_bytes());
            otlp::proto_string_attr(&mut proto, 6, "log.file.path", &path);
        }
        if which.name {
            if !json.is_empty() {
                json.push(b',');
            }
            otlp::json_string_attr(&mut json, "log.file.name", name.as_bytes());
            otlp::proto_string_attr(&mut proto, 6, "log.file.name", name);
        }
        SourceAttrs { json, proto, resource: resource() }
    })
}

/// The `tailrace.*` flag attributes as LogRecord attribute fields.
fn proto_flag(key: &'static str) -> Vec<u8> {
    let mut v = Vec::new();
    otlp::proto_true_attr(&mut v, key);
    v
}

// Encoded once per process: statics, not thread-locals (a thread-local in an extension module
// is a `__tls_get_addr` call and an init check on every access: two per record, ~2 % of a
// bulk read's CPU).
static FLAGS: std::sync::LazyLock<[Vec<u8>; 4]> = std::sync::LazyLock::new(|| {
    [proto_flag("tailrace.invalid_utf8"), proto_flag("tailrace.split"), proto_flag("tailrace.partial"), proto_flag("tailrace.parse_error")]
});
/// `log.iostream` = stdout, stderr.
static STREAMS: std::sync::LazyLock<[Vec<u8>; 2]> =
    std::sync::LazyLock::new(|| [proto_stream(Stream::Stdout), proto_stream(Stream::Stderr)]);

fn proto_stream(s: Stream) -> Vec<u8> {
    let mut v = Vec::new();
    otlp::proto_string_attr(&mut v, 6, "log.iostream", s.name());
    v
}

impl LineSink for Batcher {
    fn record(&mut self, source: &Arc<Source>, body: &[u8], end_offset: u64, consumed: u64, flags: Flags) {
        if source.encoded_attrs.get().is_none() {
            let r = self.resource_of(source);
            source_attrs(source, self.file_attrs, || r);
        }
        let attrs = source_attrs(source, self.file_attrs, || unreachable!("set above"));
        let enc = self.encodings;
        if self.open.is_none() {
            let id = self.next_id;
            self.next_id += 1;
            self.open = Some(Open { id, records: 0, input_bytes: 0, offsets: Vec::new(), groups: Vec::new(), bytes: 0, opened: self.now });
        }
        let o = self.open.as_mut().expect("opened above");
        // The group of this record's resource: usually the last one used (a file's records
        // come in runs).
        let gi = match o.groups.iter().rposition(|g| Arc::ptr_eq(&g.resource, &attrs.resource)) {
            Some(i) => i,
            None => {
                // The first group's buffer is the request's: a large one, from the pool.
                let mut proto = if o.groups.is_empty() { self.pool.take(0) } else { self.spare.pop().unwrap_or_default() };
                let room = if enc.proto { otlp::head_room(&attrs.resource.proto, &self.scope) } else { 0 };
                proto.resize(room, 0);
                let json = self.spare.pop().unwrap_or_default();
                o.groups.push(Group { resource: attrs.resource.clone(), proto, room, ends: Vec::new(), json });
                o.groups.len() - 1
            }
        };
        let g = &mut o.groups[gi];
        let lossy;
        let (text, valid) = match std::str::from_utf8(body) {
            Ok(t) => (t, true),
            Err(_) => {
                lossy = String::from_utf8_lossy(body);
                (&*lossy, false)
            }
        };
        let size = |g: &Group| (g.proto.len() - g.room).max(g.json.len());
        let before = size(g);
        if enc.proto {
            let mut extra: [&[u8]; 6] = [&attrs.proto, &[], &[], &[], &[], &[]];
            if let Some(s) = flags.stream {
                extra[1] = &STREAMS[s as usize];
            }
            for (i, on) in [!valid, flags.split, flags.partial, flags.parse_error].into_iter().enumerate() {
                if on {
                    extra[2 + i] = &FLAGS[i];
                }
            }
            otlp::proto_record(&mut g.proto, flags.time_ns, self.observed_ns, text, &extra);
            g.ends.push(g.proto.len() as u32);
        }
        if enc.json {
            let p = &mut g.json;
            if !p.is_empty() {
                p.push(b',');
            }
            p.push(b'{');
            if flags.time_ns != 0 {
                p.extend_from_slice(b"\"timeUnixNano\":\"");
                let _ = write!(p, "{}", flags.time_ns); // into a Vec: cannot fail
                p.extend_from_slice(b"\",");
            }
            p.extend_from_slice(b"\"observedTimeUnixNano\":\"");
            p.extend_from_slice(&self.observed);
            p.extend_from_slice(b"\",\"body\":{\"stringValue\":\"");
            escape_json(p, text.as_bytes());
            p.extend_from_slice(b"\"},\"attributes\":[");
            p.extend_from_slice(&attrs.json);
            let mut empty = attrs.json.is_empty();
            let mut sep = |p: &mut Vec<u8>| {
                if !std::mem::replace(&mut empty, false) {
                    p.push(b',');
                }
            };
            if let Some(s) = flags.stream {
                sep(p);
                otlp::json_string_attr(p, "log.iostream", s.name().as_bytes());
            }
            for (on, key) in [(!valid, "tailrace.invalid_utf8"), (flags.split, "tailrace.split"), (flags.partial, "tailrace.partial"), (flags.parse_error, "tailrace.parse_error")] {
                if on {
                    sep(p);
                    bool_attr(p, key);
                }
            }
            p.extend_from_slice(b"]}");
        }
        o.bytes += size(g) - before;
        o.records += 1;
        o.input_bytes += consumed;
        match o.offsets.last_mut() {
            Some((k, e, prev)) if *k == source.key && *e == source.epoch => *prev = end_offset,
            _ => o.offsets.push((source.key, source.epoch, end_offset)),
        }
        if !valid {
            self.invalid_utf8 += 1;
        }
        if o.bytes >= self.limits.max_bytes || o.records as usize >= self.limits.max_records {
            self.finish();
        }
    }
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
        b.set_file_attrs(FileAttrs { name: true, path: true });
        b.set_clock(Instant::now(), 42);
        let src = Arc::new(Source { key: FileKey { dev: 1, ino: 2 }, path: "/var/log/a.log".into(), epoch: 3, encoded_attrs: Default::default() });
        b.record(&src, b"he said \"hi\"\t\x01", 16, 16, Flags::default());
        b.record(&src, b"\xffbad", 21, 5, Flags { partial: true, ..Flags::default() });
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
        let mut pre = Batcher::with_compression(limits, Encodings { proto: true, json: false }, "h\"1", None, 7, choice.clone());
        pre.set_clock(Instant::now(), 42);
        pre.record(&src, b"he said \"hi\"\t\x01", 16, 16, Flags::default());
        pre.record(&src, b"\xffbad", 21, 5, Flags { partial: true, ..Flags::default() });
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

    #[test]
    fn one_resource_logs_per_resource_encoded_once_records_in_file_order() {
        let limits = BatchLimits { max_bytes: 1 << 20, max_records: 100, max_age: Duration::from_secs(1) };
        let mut b = Batcher::with_compression(limits, Encodings { proto: true, json: true }, "n1", Some("node-a"), 1, Arc::new(CodecChoice::default()));
        b.set_clock(Instant::now(), 42);
        let uid = "49cc7c1fd3702c40b2686ea7486091d3";
        let src = |ino: u64, path: String| Arc::new(Source { key: FileKey { dev: 1, ino }, path: path.into(), epoch: 1, encoded_attrs: Default::default() });
        let app = src(1, format!("/var/log/pods/shop_cart_{uid}/app/0.log"));
        let app_rotated = src(2, format!("/var/log/pods/shop_cart_{uid}/app/0.log.20261201-101500"));
        let side = src(3, format!("/var/log/pods/shop_cart_{uid}/sidecar/1.log"));
        let plain = src(4, "/var/log/syslog".into());
        let meta = Flags { stream: Some(Stream::Stderr), time_ns: 7, ..Flags::default() };
        for (s, body) in [(&app_rotated, "a0"), (&side, "s0"), (&app, "a1"), (&plain, "p0"), (&side, "s1"), (&app, "a2")] {
            b.record(s, body.as_bytes(), 10, 3, meta);
        }
        b.close_if_due(Instant::now(), true);
        let batch = b.pop_ready().unwrap();
        let req = batch.encode(Compression::None, 0, 0, 6).unwrap().into_owned();
        let rls: Vec<Vec<(u64, Vec<u8>)>> = fields(&req).into_iter().map(|(f, v)| { assert_eq!(f, 1); fields(&v) }).collect();
        let resource = |rl: &Vec<(u64, Vec<u8>)>| fields(&rl[0].1).iter().map(|a| kv(&a.1)).collect::<Vec<_>>();
        let bodies = |rl: &Vec<(u64, Vec<u8>)>| fields(&rl[1].1)[1..].iter().map(|r| text(&fields(&fields(&r.1)[2].1)[0].1)).collect::<Vec<_>>();
        // Three resources (the rotated file shares its container's), in order of appearance;
        // each holds its records in the order they were read.
        assert_eq!(rls.len(), 3);
        let base = [("host.name".to_string(), "n1".to_string()), ("k8s.node.name".into(), "node-a".into())];
        let pod = |c: &str, n: &str| {
            let mut v = base.to_vec();
            v.extend([("k8s.namespace.name", "shop"), ("k8s.pod.name", "cart"), ("k8s.pod.uid", uid), ("k8s.container.name", c), ("k8s.container.restart_count", n)].map(|(k, v)| (k.to_string(), v.to_string())));
            v
        };
        assert_eq!((resource(&rls[0]), bodies(&rls[0])), (pod("app", "0"), vec!["a0".to_string(), "a1".into(), "a2".into()]));
        assert_eq!((resource(&rls[1]), bodies(&rls[1])), (pod("sidecar", "1"), vec!["s0".to_string(), "s1".into()]));
        assert_eq!((resource(&rls[2]), bodies(&rls[2])), (base.to_vec(), vec!["p0".to_string()]));
        // A record: time (field 1), observed time, body, its file's attributes, the stream.
        let r0 = fields(&fields(&rls[0][1].1)[1].1);
        assert_eq!((r0[0].0, r0[0].1.clone()), (1, 7u64.to_le_bytes().to_vec()));
        assert_eq!(kv(&r0.last().unwrap().1), ("log.iostream".into(), "stderr".into()));
        // A range is a request of its own across resources: records 2..5 in grouped order
        // (a2, s0, s1) are two ResourceLogs.
        let part = batch.encode(Compression::None, 0, 2, 5).unwrap().into_owned();
        let prls: Vec<Vec<(u64, Vec<u8>)>> = fields(&part).into_iter().map(|(_, v)| fields(&v)).collect();
        assert_eq!(prls.iter().map(bodies).collect::<Vec<_>>(), vec![vec!["a2".to_string()], vec!["s0".to_string(), "s1".into()]]);
        let json: serde_json::Value = serde_json::from_slice(&batch.json).unwrap();
        let rl = json["resourceLogs"].as_array().unwrap();
        assert_eq!(rl.len(), 3);
        assert_eq!(rl[1]["scopeLogs"][0]["logRecords"][1]["body"]["stringValue"], "s1");
        assert_eq!(rl[1]["scopeLogs"][0]["logRecords"][1]["timeUnixNano"], "7");
        assert_eq!(rl[2]["resource"]["attributes"][1]["value"]["stringValue"], "node-a");
        assert_eq!(batch.resources().count(), 3);
    }

    /// A batch of one resource (a plain file's, one container's) is sent from the buffer its
    /// records were encoded into, its head written into the room left before them: the request
    /// is never copied (a copy of every batch was ~2.4 % of tailrace's CPU at 1,000 files).
    #[test]
    fn a_batch_of_one_resource_is_sent_from_where_its_records_were_encoded() {
        let limits = BatchLimits { max_bytes: 1 << 20, max_records: 100, max_age: Duration::from_secs(1) };
        let mut b = Batcher::with_compression(limits, Encodings { proto: true, json: false }, "n1", None, 1, Arc::new(CodecChoice::default()));
        b.set_clock(Instant::now(), 42);
        let s = Arc::new(Source { key: FileKey { dev: 1, ino: 1 }, path: "/var/log/a.log".into(), epoch: 1, encoded_attrs: Default::default() });
        let meta = Flags { time_ns: 7, ..Flags::default() };
        let bodies = |req: &[u8]| -> Vec<Vec<String>> {
            fields(req).iter().map(|(_, rl)| fields(&fields(rl)[1].1)[1..].iter().map(|r| text(&fields(&fields(&r.1)[2].1)[0].1)).collect()).collect()
        };
        let batch_of = |b: &mut Batcher, lines: &[&str]| {
            for l in lines {
                b.record(&s, l.as_bytes(), 10, 3, meta);
            }
            let o = b.open.as_ref().unwrap();
            let (at, bytes) = (o.groups[0].proto.as_ptr(), o.bytes);
            b.close_if_due(Instant::now(), true);
            (b.pop_ready().unwrap(), at, bytes)
        };
        let (batch, at, bytes) = batch_of(&mut b, &["one", "two", "three"]);
        assert_eq!(batch.proto.as_ptr(), at); // not copied
        let req = batch.encode(Compression::None, 0, 0, 3).unwrap().into_owned();
        assert_eq!(bodies(&req), [["one", "two", "three"]]);
        // `max_bytes` counts the records' bytes, not the room: the request is they and the head.
        let head = otlp::proto_resource_logs_head(&batch.groups[0].resource.proto, &batch.scope, bytes);
        assert_eq!(batch.proto_len(), head.len() + bytes);
        assert_eq!(bodies(&batch.encode(Compression::None, 0, 0, 2).unwrap()), [["one", "two"]]);
        assert_eq!(bodies(&batch.encode(Compression::None, 0, 1, 3).unwrap()), [["two", "three"]]);
        drop(batch); // delivered: its buffer goes back to the pool, and the next batch's group takes it
        let (next, again, _) = batch_of(&mut b, &["four"]);
        assert_eq!((next.proto.as_ptr(), bodies(&next.encode(Compression::None, 0, 0, 1).unwrap())), (again, vec![vec!["four".to_string()]]));
        assert_eq!(again, at);
    }
}
