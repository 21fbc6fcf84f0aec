//! OTLP wire forms used by the batcher: protobuf (`ExportLogsServiceRequest`, hand-encoded
//! from the published opentelemetry-proto field numbers: no codegen, no intermediate objects),
//! JSON string escaping, and the per-output compression (zstd | gzip | none).
//!
//! Field numbers (opentelemetry/proto/logs/v1/logs.proto, common/v1/common.proto):
//! ExportLogsServiceRequest.resource_logs = 1; ResourceLogs.resource = 1, .scope_logs = 2;
//! Resource.attributes = 1; ScopeLogs.scope = 1, .log_records = 2; InstrumentationScope.name = 1,
//! .version = 2; LogRecord.time_unix_nano = 1 (fixed64), .body = 5, .attributes = 6,
//! .observed_time_unix_nano = 11 (fixed64); KeyValue.key = 1, .value = 2;
//! AnyValue.string_value = 1, .bool_value = 2.

use std::io::Write;

const LEN: u8 = 2;
const I64: u8 = 1;

#[inline]
pub fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

#[inline]
pub fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// LEB128 (protobuf's varint; the checkpoint journal's numbers too).
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Length of a LEN field (tag + length + content) whose content is `n` bytes.
#[inline]
pub fn field_len(n: usize) -> usize {
    1 + varint_len(n) + n
}

#[inline]
pub fn put_len_field(out: &mut Vec<u8>, field: u8, n: usize) {
    out.push(tag(field, LEN));
    put_varint(out, n as u64);
}

/// `KeyValue { key, value: AnyValue { string_value } }` as a repeated `attributes` field.
pub fn proto_string_attr(out: &mut Vec<u8>, field: u8, key: &str, value: &str) {
    let any = field_len(value.len());
    let kv = field_len(key.len()) + field_len(any);
    put_len_field(out, field, kv);
    put_len_field(out, 1, key.len());
    out.extend_from_slice(key.as_bytes());
    put_len_field(out, 2, any);
    put_len_field(out, 1, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// `KeyValue { key, value: AnyValue { bool_value: true } }` as a LogRecord attribute.
pub fn proto_true_attr(out: &mut Vec<u8>, key: &str) {
    let kv = field_len(key.len()) + field_len(2);
    put_len_field(out, 6, kv);
    put_len_field(out, 1, key.len());
    out.extend_from_slice(key.as_bytes());
    put_len_field(out, 2, 2);
    out.extend_from_slice(&[tag(2, 0), 1]);
}

/// One LogRecord as a `log_records` field: time (the runtime's, when known: 0 is none),
/// observed time, string body, attributes already encoded as repeated field 6.
pub fn proto_record(out: &mut Vec<u8>, time_ns: u64, observed_ns: u64, body: &str, attrs: &[&[u8]]) {
    let any = field_len(body.len());
    let time = if time_ns != 0 { 9 } else { 0 };
    let rec = time + 9 + field_len(any) + attrs.iter().map(|a| a.len()).sum::<usize>();
    put_len_field(out, 2, rec);
    if time_ns != 0 {
        out.push(tag(1, I64));
        out.extend_from_slice(&time_ns.to_le_bytes());
    }
    out.push(tag(11, I64));
    out.extend_from_slice(&observed_ns.to_le_bytes());
    put_len_field(out, 5, any);
    put_len_field(out, 1, body.len());
    out.extend_from_slice(body.as_bytes());
    for a in attrs {
        out.extend_from_slice(a);
    }
}

/// `KeyValue { key, value: { stringValue } }` in OTLP/JSON.
pub fn json_string_attr(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(b"{\"key\":\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\",\"value\":{\"stringValue\":\"");
    escape_json(out, String::from_utf8_lossy(value).as_bytes());
    out.extend_from_slice(b"\"}}");
}

/// One `resource_logs` field of a request around `records` (encoded `log_records` fields):
/// resource (encoded `attributes` fields) and scope. Returns the bytes that go before the
/// records; a request is any number of these, each followed by its records.
pub fn proto_resource_logs_head(resource_attrs: &[u8], scope: &[u8], records_len: usize) -> Vec<u8> {
    let scope_logs = field_len(scope.len()) + records_len;
    let resource_logs = field_len(resource_attrs.len()) + field_len(scope_logs);
    let mut h = Vec::with_capacity(32 + resource_attrs.len() + scope.len());
    put_len_field(&mut h, 1, resource_logs);
    put_len_field(&mut h, 1, resource_attrs.len());
    h.extend_from_slice(resource_attrs);
    put_len_field(&mut h, 2, scope_logs);
    put_len_field(&mut h, 1, scope.len());
    h.extend_from_slice(scope);
    h
}

/// Bytes enough for `proto_resource_logs_head` of this resource and scope, whatever the
/// records' length: the fields' own bytes and four tags with their longest lengths.
pub fn head_room(resource_attrs: &[u8], scope: &[u8]) -> usize {
    resource_attrs.len() + scope.len() + 4 * (1 + 10)
}

/// `InstrumentationScope { name, version }`.
pub fn proto_scope(name: &str, version: &str) -> Vec<u8> {
    let mut s = Vec::new();
    put_len_field(&mut s, 1, name.len());
    s.extend_from_slice(name.as_bytes());
    put_len_field(&mut s, 2, version.len());
    s.extend_from_slice(version.as_bytes());
    s
}

/// The codecs of OTLP/HTTP bodies (`Content-Encoding`). This is the one codec policy: the
/// names, their default levels, and the byte that stands for each in the spool's segment
/// headers (the discriminant; never renumber).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Gzip = 1,
    Zstd = 2,
}

impl Compression {
    /// Every codec, in the order of their spool byte.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    pub fn parse(s: &str) -> crate::error::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| crate::error::Error::Config(format!("compression: {s:?} (zstd, gzip or none)")))
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// zstd 1 (fast, ~10× on logs), gzip 6 (its own default).
    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 6,
            Compression::Zstd => 1,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.get(b as usize).copied()
    }
}

/// The codec and level batches are compressed with as they close, shared by a tailer's batcher
/// and the owner, which changes it when its output's codec changes (a 415 from the endpoint):
/// read at each close, so a batch is compressed once, with the codec its output sends.
#[derive(Debug, Default)]
pub struct CodecChoice(std::sync::atomic::AtomicU64);

impl CodecChoice {
    pub fn new(choice: Option<(Compression, i32)>) -> Self {
        let c = CodecChoice::default();
        c.set(choice);
        c
    }

    /// `None` (or codec `none`): batches are not compressed as they close.
    pub fn set(&self, choice: Option<(Compression, i32)>) {
        let v = match choice {
            Some((c, level)) if c != Compression::None => ((c as u64 + 1) << 32) | level as u32 as u64,
            _ => 0,
        };
        self.0.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<(Compression, i32)> {
        let v = self.0.load(std::sync::atomic::Ordering::Relaxed);
        let codec = Compression::from_byte(((v >> 32) as u8).checked_sub(1)?)?;
        Some((codec, v as u32 as i32))
    }
}

/// Compressions made by this process (every codec but `none`): tests count them to show that
/// a batch is compressed once.
pub static COMPRESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Decompress a whole body of `codec`.
pub fn decompress(codec: Compression, data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Zstd => zstd::stream::decode_all(data),
        Compression::Gzip => {
            let mut out = Vec::with_capacity(data.len() * 4);
            flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
            Ok(out)
        }
    }
}

/// A body compressed with `from`, recompressed with `to` at `level` (a spooled batch for an
/// endpoint that now asks for another codec).
pub fn transcode(data: &[u8], from: Compression, to: Compression, level: i32) -> std::io::Result<Vec<u8>> {
    if from == to {
        return Ok(data.to_vec());
    }
    compress(to, level, &[&decompress(from, data)?])
}

thread_local! {
    /// One zstd context per thread (and level), reused: creating one costs more than a batch.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
}

/// Compress `parts` (concatenated) as one stream. A single part is compressed in one shot,
/// without the copy into a streaming buffer.
pub fn compress(codec: Compression, level: i32, parts: &[&[u8]]) -> std::io::Result<Vec<u8>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if codec != Compression::None {
        COMPRESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match codec {
        Compression::None => Ok(parts.concat()),
        Compression::Zstd if parts.len() == 1 => ZSTD.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                *slot = Some((level, zstd::bulk::Compressor::new(level)?));
            }
            let (_, c) = slot.as_mut().expect("just set");
            c.include_contentsize(true)?;
            c.compress(parts[0])
        }),
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::with_capacity(total / 4 + 64), level)?;
            enc.include_contentsize(true)?;
            enc.set_pledged_src_size(Some(total as u64))?;
            for p in parts {
                enc.write_all(p)?;
            }
            enc.finish()
        }
        Compression::Gzip => {
            let lvl = flate2::Compression::new(level.clamp(0, 9) as u32);
            let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(total / 4 + 64), lvl);
            for p in parts {
                enc.write_all(p)?;
            }
            enc.finish()
        }
    }
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
    fn varints_round_numbers() {
        for (v, enc) in [(0usize, vec![0u8]), (127, vec![127]), (128, vec![0x80, 1]), (300, vec![0xac, 2]), (1 << 21, vec![0x80, 0x80, 0x80, 1])] {
            let mut o = Vec::new();
            put_varint(&mut o, v as u64);
            assert_eq!(o, enc);
            assert_eq!(varint_len(v), enc.len());
        }
    }

    #[test]
    fn compression_round_trips() {
        let data = b"hello hello hello hello".repeat(100);
        let z = compress(Compression::Zstd, 1, &[&data[..10], &data[10..]]).unwrap();
        assert_eq!(zstd::stream::decode_all(&z[..]).unwrap(), data);
        let g = compress(Compression::Gzip, 6, &[&data]).unwrap();
        let mut d = flate2::read::GzDecoder::new(&g[..]);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut back).unwrap();
        assert_eq!(back, data);
    }
}
