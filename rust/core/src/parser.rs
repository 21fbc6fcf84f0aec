//! Parser: container runtime lines → records, between line framing (`reader`) and the batcher.
//! One `Parser` per file (its state: the pieces waiting for their end, per stream).
//!
//! - `plain`: the line is the body.
//! - `cri` (containerd, CRI-O): `<RFC3339Nano> <stdout|stderr> <P|F> <message>`. `P` pieces are
//!   merged per stream until the `F`, every byte kept; past `max_line_bytes` of merged message
//!   the record goes out in flagged pieces (`tailrace.split`), never dropped.
//! - `docker` (json-file): `{"log":"…","stream":"…","time":"…"}`; a `log` without its trailing
//!   newline is a piece, merged per stream the same way; the body is `log` unescaped exactly,
//!   without its final newline.
//! - `auto`: decided per file from its first line (again after a truncation): `{` is docker, a
//!   line that parses as CRI is cri, anything else plain.
//!
//! The runtime's timestamp becomes the record's time, the stream its `log.iostream`. A
//! malformed line is shipped whole as a plain body flagged `tailrace.parse_error`, never
//! dropped. Offsets: a record's commit offset never passes the first byte of a piece still
//! held (of the other stream), so a crash re-reads what was not delivered.
//!
//! No allocation per line: a merged or unescaped message is built in the stream's buffer,
//! which is kept.

use std::sync::Arc;
use std::time::Instant;

use crate::counters::Counters;
use crate::error::{Error, Result};
use crate::reader::{Flags, LineSink, Source, Stream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    Cri,
    Docker,
    Auto,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "plain" => Ok(Format::Plain),
            "cri" => Ok(Format::Cri),
            "docker" => Ok(Format::Docker),
            "auto" => Ok(Format::Auto),
            other => Err(Error::Config(format!("format: {other:?} (plain, cri, docker or auto)"))),
        }
    }
}

/// Pieces of one stream waiting for their end.
#[derive(Default)]
struct Held {
    buf: Vec<u8>,
    /// The first piece's time, and where its line started in the file.
    time_ns: u64,
    start: u64,
    /// File offset just past the last piece taken.
    end: u64,
    consumed: u64,
    since: Option<Instant>,
    /// Pieces of this record already emitted (over `max_line_bytes`).
    split: bool,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.since.is_none()
    }
}

pub struct Parser {
    format: Format,
    /// The last timestamp's first 19 bytes (to the second) and their Unix seconds: lines of a
    /// second share them, so most lines parse only their fraction.
    second: ([u8; 19], i64),
    /// The format decided for this file (`auto`), until the next truncation.
    decided: Option<Format>,
    held: [Held; 2],
    /// Scratch for an unescaped docker message.
    scratch: Vec<u8>,
}

/// One parsed line.
struct Line<'a> {
    stream: Stream,
    time_ns: u64,
    /// The message is a piece (CRI `P`, docker `log` without its newline).
    piece: bool,
    msg: &'a [u8],
}

impl Parser {
    pub fn new(format: Format) -> Self {
        Parser { format, second: ([0; 19], i64::MIN), decided: None, held: Default::default(), scratch: Vec::new() }
    }

    /// The file restarts at 0 (truncation): `auto` decides again.
    pub fn reset(&mut self) {
        self.decided = None;
    }

    /// Since when pieces have waited for their end, if any do.
    pub fn held_since(&self) -> Option<Instant> {
        self.held.iter().filter_map(|h| h.since).min()
    }

    /// Memory held in pieces (bounded by `max_line_bytes` per stream).
    pub fn held_bytes(&self) -> usize {
        self.held.iter().filter(|h| !h.buf.is_empty()).map(|h| h.buf.capacity()).sum()
    }

    /// The offset a record ending at `end` may commit: not past a held piece's first byte.
    fn commit_offset(&self, end: u64) -> u64 {
        self.held.iter().filter(|h| !h.is_empty()).map(|h| h.start).fold(end, u64::min)
    }

    /// One framed line (without its newline) ending at `end_offset`, `consumed` bytes of input.
    #[allow(clippy::too_many_arguments)]
    pub fn line(&mut self, source: &Arc<Source>, line: &[u8], end_offset: u64, consumed: u64, flags: Flags, max_line: usize, now: Instant, sink: &mut dyn LineSink, c: &mut Counters) {
        let format = match self.format {
            Format::Auto => *self.decided.get_or_insert_with(|| detect(line)),
            f => f,
        };
        // Lines the reader already cut (over max_line_bytes, or flushed without a newline)
        // cannot be parsed as a whole: shipped as they are.
        if format == Format::Plain || flags.split || flags.partial {
            let commit = self.commit_offset(end_offset);
            sink.record(source, line, commit, consumed, flags);
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let parsed = match format {
            Format::Cri => parse_cri(line, &mut self.second),
            _ => parse_docker(line, &mut scratch, &mut self.second),
        };
        match parsed {
            Some(l) => self.take(source, l, end_offset, consumed, max_line, now, sink, c),
            None => {
                c.parse_errors += 1;
                let commit = self.commit_offset(end_offset);
                sink.record(source, line, commit, consumed, Flags { parse_error: true, ..flags });
            }
        }
        self.scratch = scratch;
    }

    #[allow(clippy::too_many_arguments)]
    fn take(&mut self, source: &Arc<Source>, l: Line<'_>, end: u64, consumed: u64, max_line: usize, now: Instant, sink: &mut dyn LineSink, c: &mut Counters) {
        let s = l.stream as usize;
        let meta = Flags { stream: Some(l.stream), time_ns: l.time_ns, ..Flags::default() };
        if self.held[s].is_empty() && !l.piece && l.msg.len() <= max_line {
            // The common case: a whole message in one line, no copy.
            let commit = self.commit_offset(end);
            sink.record(source, l.msg, commit, consumed, meta);
            return;
        }
        {
            let h = &mut self.held[s];
            if h.is_empty() {
                h.since = Some(now);
                h.time_ns = l.time_ns;
                h.start = end - consumed;
                h.consumed = 0;
                h.split = false;
            }
            h.buf.extend_from_slice(l.msg);
            h.end = end;
            h.consumed += consumed;
        }
        // Over the cap: full pieces go out flagged now (the rest waits for its end).
        while self.held[s].buf.len() > max_line {
            if !self.held[s].split {
                c.split_lines += 1;
            }
            self.emit_held(source, s, Some(max_line), false, sink);
        }
        if !l.piece {
            self.emit_held(source, s, None, false, sink);
        }
    }

    /// Emit stream `s`'s held message: its first `n` bytes (a split piece; the rest stays
    /// held, and the commit offset stays before it) or all of it (complete, or flushed with
    /// `partial`). The record keeps the first piece's time.
    fn emit_held(&mut self, source: &Arc<Source>, s: usize, piece: Option<usize>, partial: bool, sink: &mut dyn LineSink) {
        let stream = Some(if s == 0 { Stream::Stdout } else { Stream::Stderr });
        let time_ns = self.held[s].time_ns;
        if let Some(n) = piece {
            let commit = self.commit_offset(self.held[s].start);
            let h = &mut self.held[s];
            h.split = true;
            sink.record(source, &h.buf[..n], commit, 0, Flags { split: true, stream, time_ns, ..Flags::default() });
            h.buf.drain(..n);
            return;
        }
        self.held[s].since = None;
        let commit = self.commit_offset(self.held[s].end);
        let h = &mut self.held[s];
        sink.record(source, &h.buf, commit, h.consumed, Flags { split: h.split, partial, stream, time_ns, parse_error: false });
        if h.buf.capacity() > 64 * 1024 {
            h.buf = Vec::new(); // a long message's allocation is given back
        } else {
            h.buf.clear();
        }
        h.split = false;
    }

    /// Emit every held piece now as a split piece and free its memory (the memory bound);
    /// the message goes on in later pieces, and the commit offset stays before its start.
    pub fn spill(&mut self, source: &Arc<Source>, sink: &mut dyn LineSink, c: &mut Counters) {
        for s in 0..2 {
            let n = self.held[s].buf.len();
            if n == 0 {
                continue;
            }
            if !self.held[s].split {
                c.split_lines += 1;
            }
            self.emit_held(source, s, Some(n), false, sink);
            self.held[s].buf = Vec::new();
        }
    }

    /// Emit pieces that waited `idle` (or all, when the file is closed: `idle` None), flagged
    /// `tailrace.partial`. Returns whether any were.
    pub fn flush(&mut self, source: &Arc<Source>, now: Instant, idle: Option<std::time::Duration>, sink: &mut dyn LineSink, c: &mut Counters) -> bool {
        let mut any = false;
        for s in 0..2 {
            let Some(since) = self.held[s].since else { continue };
            if idle.is_some_and(|d| now.saturating_duration_since(since) < d) {
                continue;
            }
            c.partial_flushes += 1;
            self.emit_held(source, s, None, true, sink);
            any = true;
        }
        any
    }
}

fn detect(line: &[u8]) -> Format {
    if line.first() == Some(&b'{') {
        Format::Docker
    } else if parse_cri(line, &mut ([0; 19], i64::MIN)).is_some() {
        Format::Cri
    } else {
        Format::Plain
    }
}

fn stream_of(s: &[u8]) -> Option<Stream> {
    match s {
        b"stdout" => Some(Stream::Stdout),
        b"stderr" => Some(Stream::Stderr),
        _ => None,
    }
}

/// `<time> <stream> <tag> <message>`; the message may be empty (`… stdout F` or `… F `).
fn parse_cri<'a>(line: &'a [u8], second: &mut ([u8; 19], i64)) -> Option<Line<'a>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = parts.next()?;
    let stream = stream_of(parts.next()?)?;
    let tag = parts.next()?;
    let msg = parts.next().unwrap_or(b"");
    let piece = match tag {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Line { stream, time_ns: rfc3339_cached(time, second)?, piece, msg })
}

/// `rfc3339_ns`, reusing the seconds of the previous timestamp when its first 19 bytes
/// (`YYYY-MM-DDTHH:MM:SS`) are the same and it is in UTC (`Z`).
fn rfc3339_cached(t: &[u8], second: &mut ([u8; 19], i64)) -> Option<u64> {
    if t.len() >= 21 && t[..19] == second.0 && second.1 != i64::MIN && matches!(t[t.len() - 1], b'Z' | b'z') {
        let frac = &t[19..t.len() - 1];
        let nanos = match frac {
            [] => 0,
            [b'.', digits @ ..] if !digits.is_empty() && digits.len() <= 9 && digits.iter().all(u8::is_ascii_digit) => {
                digits.iter().fold(0u64, |n, d| n * 10 + (d - b'0') as u64) * 10u64.pow(9 - digits.len() as u32)
            }
            _ => return None,
        };
        return u64::try_from(second.1).ok()?.checked_mul(1_000_000_000)?.checked_add(nanos);
    }
    let ns = rfc3339_ns(t)?;
    if t.len() >= 20 && matches!(t[t.len() - 1], b'Z' | b'z') {
        second.0.copy_from_slice(&t[..19]);
        second.1 = (ns / 1_000_000_000) as i64;
    }
    Some(ns)
}

/// Unix nanoseconds of an RFC 3339 timestamp: `YYYY-MM-DDTHH:MM:SS[.frac](Z|z|±hh:mm)`, the
/// fraction up to 9 digits (containerd drops trailing zeros, CRI-O writes offsets).
pub fn rfc3339_ns(t: &[u8]) -> Option<u64> {
    fn num(b: &[u8]) -> Option<i64> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(b.iter().fold(0i64, |n, d| n * 10 + (d - b'0') as i64))
    }
    if t.len() < 20 || t[4] != b'-' || t[7] != b'-' || !matches!(t[10], b'T' | b't' | b' ') || t[13] != b':' || t[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&t[0..4])?, num(&t[5..7])?, num(&t[8..10])?);
    let (h, mi, s) = (num(&t[11..13])?, num(&t[14..16])?, num(&t[17..19])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut nanos = 0i64;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(&rest[1..1 + digits])? * 10i64.pow(9 - digits as u32);
        rest = &rest[1 + digits..];
    }
    let offset = match *rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let v = num(&[h1, h2])? * 3600 + num(&[m1, m2])? * 60;
            if sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset;
    u64::try_from(secs).ok()?.checked_mul(1_000_000_000)?.checked_add(nanos as u64)
}

/// A docker json-file line. `scratch` receives the unescaped `log`.
fn parse_docker<'a>(line: &[u8], scratch: &'a mut Vec<u8>, second: &mut ([u8; 19], i64)) -> Option<Line<'a>> {
    let mut p = Json { b: line, i: 0 };
    p.ws();
    p.eat(b'{')?;
    let (mut stream, mut time, mut log) = (None, None, false);
    scratch.clear();
    p.ws();
    if p.peek() == Some(b'}') {
        return None;
    }
    loop {
        p.ws();
        let key = p.raw_string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        match key {
            b"log" => {
                p.string_into(scratch)?;
                log = true;
            }
            b"stream" => stream = Some(stream_of(p.raw_string()?)?),
            b"time" => time = Some(rfc3339_cached(p.raw_string()?, second)?),
            _ => p.skip_value()?,
        }
        p.ws();
        match p.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    p.ws();
    if p.i != line.len() || !log {
        return None;
    }
    let piece = scratch.last() != Some(&b'\n');
    if !piece {
        scratch.pop();
    }
    Some(Line { stream: stream?, time_ns: time?, piece, msg: scratch })
}

/// A minimal JSON scanner for the json-file envelope: exact unescaping of strings, other
/// values skipped without allocating.
struct Json<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Json<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }
    /// A string without escapes, as its bytes (keys, stream, time).
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let n = memchr::memchr2(b'"', b'\\', &self.b[start..])?;
        if self.b[start + n] != b'"' {
            return None;
        }
        self.i = start + n + 1;
        Some(&self.b[start..start + n])
    }
    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    }
    fn string_into(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let rest = &self.b[self.i..];
            let n = memchr::memchr2(b'"', b'\\', rest)?;
            if rest[..n].iter().any(|&c| c < 0x20) {
                return None; // a raw control character (a newline inside the string): invalid
            }
            out.extend_from_slice(&rest[..n]);
            self.i += n + 1;
            if rest[n] == b'"' {
                return Some(());
            }
            match self.next()? {
                b'"' => out.push(b'"'),
                b'\\' => out.push(b'\\'),
                b'/' => out.push(b'/'),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'u' => {
                    let mut cp = self.hex4()?;
                    if (0xD800..0xDC00).contains(&cp) {
                        // A high surrogate: its low half must follow.
                        if self.next()? != b'\\' || self.next()? != b'u' {
                            return None;
                        }
                        let lo = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&lo) {
                            return None;
                        }
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (0xDC00..0xE000).contains(&cp) {
                        return None;
                    }
                    let ch = char::from_u32(cp)?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => return None,
            }
        }
    }
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                let mut sink = Vec::new();
                self.string_into(&mut sink)
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            let mut sink = Vec::new();
                            self.string_into(&mut sink)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let n = self.b[self.i..].iter().take_while(|c| !matches!(c, b',' | b'}' | b']' | b' ')).count();
                if n == 0 {
                    return None;
                }
                self.i += n;
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::FileKey;

    #[derive(Default)]
    struct Collect(Vec<(String, u64, Flags)>);
    impl LineSink for Collect {
        fn record(&mut self, _s: &Arc<Source>, body: &[u8], end: u64, _n: u64, flags: Flags) {
            self.0.push((String::from_utf8_lossy(body).into_owned(), end, flags));
        }
    }

    /// Feed lines (without newlines) as the reader frames them; returns the records.
    fn run(format: Format, max: usize, lines: &[&str]) -> (Vec<(String, u64, Flags)>, Parser, Counters) {
        let src = Arc::new(Source { key: FileKey { dev: 1, ino: 1 }, path: "/p".into(), epoch: 1, encoded_attrs: Default::default() });
        let mut p = Parser::new(format);
        let (mut sink, mut c) = (Collect::default(), Counters::default());
        let mut end = 0;
        for l in lines {
            end += l.len() as u64 + 1;
            p.line(&src, l.as_bytes(), end, l.len() as u64 + 1, Flags::default(), max, Instant::now(), &mut sink, &mut c);
        }
        (sink.0, p, c)
    }

    const T: &str = "2026-12-01T10:00:00.123456789Z";
    const T_NS: u64 = 1_796_119_200_123_456_789;

    fn out(stream: Stream, time_ns: u64) -> Flags {
        Flags { stream: Some(stream), time_ns, ..Flags::default() }
    }

    #[test]
    fn timestamps_of_containerd_and_cri_o() {
        assert_eq!(rfc3339_ns(T.as_bytes()), Some(T_NS));
        assert_eq!(rfc3339_ns(b"1970-01-01T00:00:00Z"), Some(0));
        // Trailing zeros dropped (8 digits), a lowercase z, an offset (CRI-O).
        assert_eq!(rfc3339_ns(b"2026-12-01T10:00:00.12345678z"), Some(T_NS - 9));
        assert_eq!(rfc3339_ns(b"2026-12-01T11:30:00.123456789+01:30"), Some(T_NS));
        assert_eq!(rfc3339_ns(b"2026-12-01T08:00:00.123456789-02:00"), Some(T_NS));
        assert_eq!(rfc3339_ns(b"2024-02-29T00:00:00Z"), Some(1_709_164_800_000_000_000));
        for bad in ["2026-13-01T00:00:00Z", "2026-12-01T10:00:00", "2026-12-01T10:00:00.Z", "2026-12-01T10:00:00.1234567890Z", "yesterday"] {
            assert_eq!(rfc3339_ns(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn cached_seconds_give_the_same_instants() {
        let mut second = ([0u8; 19], i64::MIN);
        for t in ["2026-12-01T10:00:00.5Z", "2026-12-01T10:00:00.123456789Z", "2026-12-01T10:00:00Z", "2026-12-01T10:00:00.1z", "2026-12-01T10:00:01.000000001Z", "2026-12-01T10:00:01.7+01:00", "2026-12-01T10:00:01.x"] {
            assert_eq!(rfc3339_cached(t.as_bytes(), &mut second), rfc3339_ns(t.as_bytes()), "{t}");
        }
    }

    #[test]
    fn cri_pieces_merge_per_stream_keeping_every_byte() {
        let (recs, p, c) = run(
            Format::Cri,
            1 << 20,
            &[
                &format!("{T} stdout P first  "),
                &format!("{T} stderr F an error"),
                &format!("{T} stdout P  second "),
                &format!("{T} stdout F third"),
                &format!("{T} stdout F "),
                &format!("{T} stderr F"),
            ],
        );
        let bodies: Vec<(&str, Flags)> = recs.iter().map(|(b, _, f)| (b.as_str(), *f)).collect();
        assert_eq!(
            bodies,
            [
                ("an error", out(Stream::Stderr, T_NS)),
                ("first   second third", out(Stream::Stdout, T_NS)),
                ("", out(Stream::Stdout, T_NS)),
                ("", out(Stream::Stderr, T_NS)),
            ]
        );
        // The stderr line came while stdout pieces were held from offset 0: it commits 0.
        assert_eq!(recs[0].1, 0);
        let line = |s: &str| s.len() as u64 + 1;
        let after_merge = line(&format!("{T} stdout P first  ")) + line(&format!("{T} stderr F an error")) + line(&format!("{T} stdout P  second ")) + line(&format!("{T} stdout F third"));
        assert_eq!(recs[1].1, after_merge);
        assert_eq!((p.held_bytes(), c.parse_errors, c.split_lines), (0, 0, 0));
    }

    #[test]
    fn a_merged_message_over_the_cap_goes_out_in_flagged_pieces() {
        let (recs, _, c) = run(Format::Cri, 10, &[&format!("{T} stdout P 0123456"), &format!("{T} stdout P 789abcdef"), &format!("{T} stdout F ghijk")]);
        let got: Vec<(&str, bool)> = recs.iter().map(|(b, _, f)| (b.as_str(), f.split)).collect();
        assert_eq!(got, [("0123456789", true), ("abcdefghij", true), ("k", true)]);
        assert_eq!(c.split_lines, 1);
        // Pieces commit nothing: the record's first line is still not delivered whole.
        assert_eq!((recs[0].1, recs[1].1), (0, 0));
    }

    #[test]
    fn held_pieces_are_flushed_flagged_partial() {
        let src = Arc::new(Source { key: FileKey { dev: 1, ino: 1 }, path: "/p".into(), epoch: 1, encoded_attrs: Default::default() });
        let mut p = Parser::new(Format::Cri);
        let (mut sink, mut c) = (Collect::default(), Counters::default());
        let t0 = Instant::now();
        let l = format!("{T} stderr P no end yet");
        p.line(&src, l.as_bytes(), 100, 100, Flags::default(), 1 << 20, t0, &mut sink, &mut c);
        assert_eq!(p.held_since(), Some(t0));
        let later = t0 + std::time::Duration::from_secs(6);
        assert!(!p.flush(&src, t0 + std::time::Duration::from_secs(1), Some(std::time::Duration::from_secs(5)), &mut sink, &mut c));
        assert!(p.flush(&src, later, Some(std::time::Duration::from_secs(5)), &mut sink, &mut c));
        assert_eq!(sink.0, [("no end yet".to_string(), 100, Flags { partial: true, ..out(Stream::Stderr, T_NS) })]);
        assert_eq!((p.held_since(), c.partial_flushes), (None, 1));
    }

    #[test]
    fn malformed_lines_are_shipped_whole_and_flagged() {
        let lines = [
            "2026-12-01 nonsense stdout F x".to_string(),
            format!("{T} stdin F x"),
            format!("{T} stdout X x"),
            format!("{T} stdout"),
            "not a cri line at all".to_string(),
        ];
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (recs, _, c) = run(Format::Cri, 1 << 20, &refs);
        assert_eq!(recs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), refs);
        assert!(recs.iter().all(|r| r.2 == Flags { parse_error: true, ..Flags::default() }));
        assert_eq!(c.parse_errors, 5);
    }

    #[test]
    fn docker_json_unescaped_exactly_and_pieces_merged() {
        let lines = [
            r#"{"log":"tab\there \"quoted\" \/slash \u00e9 \ud83d\ude00\n","stream":"stdout","time":"2026-12-01T10:00:00.123456789Z"}"#,
            r#"{"log":"part one, ","stream":"stderr","time":"2026-12-01T10:00:00.123456789Z"}"#,
            r#"{"log":"other\n","stream":"stdout","attrs":{"a":"b}"},"time":"2026-12-01T10:00:01Z"}"#,
            r#"{"log":"part two\n","stream":"stderr","time":"2026-12-01T10:00:02Z"}"#,
            r#"{"log":"\n","stream":"stdout","time":"2026-12-01T10:00:03Z"}"#,
        ];
        let (recs, _, c) = run(Format::Docker, 1 << 20, &lines);
        let got: Vec<(&str, Flags)> = recs.iter().map(|(b, _, f)| (b.as_str(), *f)).collect();
        assert_eq!(
            got,
            [
                ("tab\there \"quoted\" /slash é 😀", out(Stream::Stdout, T_NS)),
                ("other", out(Stream::Stdout, T_NS - 123_456_789 + 1_000_000_000)),
                ("part one, part two", out(Stream::Stderr, T_NS)),
                ("", out(Stream::Stdout, T_NS - 123_456_789 + 3_000_000_000)),
            ]
        );
        assert_eq!(c.parse_errors, 0);
        let bad = [
            r#"{"log":"x\n","stream":"stdout"}"#,
            r#"{"log":"x\n","stream":"stdout","time":"2026-12-01T10:00:00Z""#,
            r#"{"log":"\ud83d alone\n","stream":"stdout","time":"2026-12-01T10:00:00Z"}"#,
            r#"{"log":"\q\n","stream":"stdout","time":"2026-12-01T10:00:00Z"}"#,
            "{\"log\":\"raw\nnewline\",\"stream\":\"stdout\",\"time\":\"2026-12-01T10:00:00Z\"}",
        ];
        let (recs, _, c) = run(Format::Docker, 1 << 20, &bad);
        assert_eq!(recs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), bad);
        assert_eq!(c.parse_errors, 5);
    }

    #[test]
    fn auto_decides_per_file_from_its_first_line_and_again_after_a_truncation() {
        let (recs, mut p, _) = run(Format::Auto, 1 << 20, &[&format!("{T} stdout F cri"), "{\"not\": \"docker now\"}"]);
        assert_eq!(recs[0].0, "cri");
        assert!(recs[1].2.parse_error, "decided once: cri");
        p.reset();
        assert_eq!(p.decided, None);
        let (recs, _, _) = run(Format::Auto, 1 << 20, &["plain text", &format!("{T} stdout F looks like cri")]);
        assert_eq!(recs.iter().map(|r| (r.0.as_str(), r.2)).collect::<Vec<_>>(), [("plain text", Flags::default()), (&*format!("{T} stdout F looks like cri"), Flags::default())]);
    }
}
