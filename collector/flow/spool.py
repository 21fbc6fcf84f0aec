"""The spool: a write-ahead log on disk for one output, in `state_dir/spool/<output>`. A batch the
output could not deliver in time is written as one segment file (tmp + fsync + rename + fsync of
the directory); once `append` returns it counts as acknowledged, so checkpoints may advance. The
output replays segments oldest first (also after a restart) and deletes each one its receiver
acknowledged. Bounded by `max_bytes`: a full spool makes `append` wait, which stops reading.

Segment layout: magic `TRS2`, codec (1 byte: its index in the core's `CODECS`, 0 none, 1 gzip,
2 zstd), records (u32 LE), payload length (u32 LE), CRC-32 of everything before it and of the
payload (u32 LE), then the payload: the encoded, compressed ExportLogsServiceRequest exactly as
it would be sent. (`TRS1` segments, whose CRC covered the payload only, are still read.)"""

from __future__ import annotations

import contextlib
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import trio

from collector import log
from collector._native import CODECS

MAGIC = b"TRS2"
LEGACY_MAGIC = b"TRS1"
_HEAD = struct.Struct("<4sBIII")
_FIELDS = struct.Struct("<4sBII")  # the header before its CRC


def spool_dir(state_dir: str | Path, output: str) -> Path:
    """Where an output's spool keeps its segments."""
    return Path(state_dir) / "spool" / output


def segment_name(seq: int) -> str:
    """A segment's file name: its sequence number, zero-padded so names sort in writing order."""
    return f"{seq:020d}.seg"


def segment_seq(name: str) -> int | None:
    """The sequence number a segment's file name carries (`segment_name`), else None."""
    stem, dot, ext = name.partition(".")
    return int(stem) if dot and ext == "seg" and stem.isdigit() else None


def decode_segment(raw: bytes) -> tuple[str, int, bytes]:
    """(codec, records, payload) of a segment's bytes; ValueError for anything else (short,
    wrong magic, codec, length or checksum). Fuzzed on arbitrary bytes (tests/test_fuzz.py)."""
    try:
        magic, codec, records, n, crc = _HEAD.unpack_from(raw)
    except struct.error as e:
        raise ValueError(f"short header ({len(raw)} bytes)") from e
    payload = raw[_HEAD.size:]
    if magic == MAGIC:
        want = zlib.crc32(payload, zlib.crc32(raw[:_FIELDS.size]))
    elif magic == LEGACY_MAGIC:
        want = zlib.crc32(payload)
    else:
        raise ValueError("not a spool segment")
    if len(payload) != n or crc != want or codec >= len(CODECS):
        raise ValueError("bad header or checksum")
    return CODECS[codec], records, payload


def encode_segment(payload: bytes, codec: str, records: int) -> bytes:
    """The header of a segment holding `payload` (what `decode_segment` reads back)."""
    fields = _FIELDS.pack(MAGIC, CODECS.index(codec), records, len(payload))
    return fields + struct.pack("<I", zlib.crc32(payload, zlib.crc32(fields)))


@dataclass(frozen=True)
class Segment:
    seq: int
    path: Path
    size: int


@dataclass(frozen=True)
class Entry:
    segment: Segment
    codec: str
    records: int
    payload: bytes


class Spool:
    def __init__(self, directory: str | Path, max_bytes: int, name: str, warn_every: float = 30.0) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.name = name
        self.warn_every = warn_every
        self._segments: list[Segment] = []
        self.bytes = 0
        self.appended = 0
        self.replayed = 0
        self.corrupt = 0
        # A batch waits for room (reading stops behind it): what readiness reports.
        self.full = False
        self._changed = trio.Event()
        # Sequence numbers keep replay order; they start at the wall clock (µs) so a spool
        # emptied and refilled across restarts still sorts in writing order.
        self._next_seq = time.time_ns() // 1000
        self._limiter = trio.CapacityLimiter(1)

    def open(self) -> None:
        """Create the directory; pick up segments a previous run left (to replay)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in self.dir.iterdir():
            if p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # never renamed, so never acknowledged
            elif (seq := segment_seq(p.name)) is not None:
                self._segments.append(Segment(seq, p, p.stat().st_size))
        self._segments.sort(key=lambda s: s.seq)
        self._next_seq = max(self._next_seq, self._segments[-1].seq + 1 if self._segments else 0)
        self.bytes = sum(s.size for s in self._segments)
        if self._segments:
            log.info(f"spool {self.name}: {len(self._segments)} batches ({self.bytes} bytes) left to replay")

    def __len__(self) -> int:
        return len(self._segments)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    async def append(self, payload: bytes, codec: str, records: int) -> None:
        """Write one batch durably; waits while the spool is full (reading stops behind it)."""
        size = _HEAD.size + len(payload)
        warned = 0.0
        self.full = bool(self._segments) and self.bytes + size > self.max_bytes
        while self._segments and self.bytes + size > self.max_bytes:
            now = time.monotonic()
            if now - warned >= self.warn_every:
                warned = now
                log.warning(
                    f"spool {self.name} is full: reading waits until the output catches up",
                    spooled_batches=len(self._segments), spooled_bytes=self.bytes, max_bytes=self.max_bytes,
                )
            with trio.move_on_after(self.warn_every):
                await self.changed()
        self.full = False
        seq = self._next_seq  # taken before any await: concurrent appends never share one
        self._next_seq += 1
        path = self.dir / segment_name(seq)
        head = encode_segment(payload, codec, records)

        def _write() -> None:
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, head)
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

        with trio.CancelScope(shield=True):  # half a write is never acknowledged, but finish it
            await trio.to_thread.run_sync(_write, limiter=self._limiter)
        self._segments.append(Segment(seq, path, size))
        self._segments.sort(key=lambda s: s.seq)  # concurrent appends may finish out of order
        self.bytes += size
        self.appended += 1
        self._wake()

    async def head(self) -> Entry | None:
        """The oldest segment, read and checked; a corrupt one is set aside (logged) and skipped."""
        while self._segments:
            seg = self._segments[0]
            try:
                raw = await trio.to_thread.run_sync(seg.path.read_bytes, limiter=self._limiter)
                codec, records, payload = decode_segment(raw)
                return Entry(seg, codec, records, payload)
            except (OSError, ValueError) as e:
                self.corrupt += 1
                log.error(f"spool {self.name}: segment {seg.path.name} is unreadable ({e}); set aside as .corrupt")
                self._segments.pop(0)
                self.bytes -= seg.size
                with contextlib.suppress(OSError):
                    seg.path.rename(seg.path.with_suffix(".corrupt"))
        return None

    async def remove(self, seg: Segment) -> None:
        """The output acknowledged `seg`: delete it."""
        await trio.to_thread.run_sync(lambda: seg.path.unlink(missing_ok=True), limiter=self._limiter)
        self._segments.remove(seg)
        self.bytes -= seg.size
        self.replayed += 1
        self._wake()
