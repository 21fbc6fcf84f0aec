"""The spool reader fuzzed on arbitrary bytes (the core's framer, parsers and checkpoint
readers: rust/core/tests/fuzz.rs). `FUZZ_CASES` cases (default 20,000; the long run:
`FUZZ_CASES=1000000 .venv/bin/pytest tests/test_fuzz.py`): never anything but a decoded
segment or ValueError, and a segment decodes only when it is exactly what was written."""

from __future__ import annotations

import os
import random

from collector._native import CODECS
from collector.flow.spool import decode_segment, encode_segment


def test_the_spool_reader_takes_any_bytes() -> None:
    rng = random.Random(12)
    cases = int(os.environ.get("FUZZ_CASES", "20000"))
    decoded = 0
    for i in range(cases):
        payload = rng.randbytes(rng.randrange(0, 64))
        codec = rng.choice(CODECS)
        records = rng.randrange(0, 1 << 32)
        good = encode_segment(payload, codec, records) + payload
        kind = i % 4
        if kind == 0:  # arbitrary bytes
            raw = rng.randbytes(rng.randrange(0, 40))
        elif kind == 1:  # a segment cut short (a crash mid-write that was never renamed, or a bad disk)
            raw = good[: rng.randrange(0, len(good))]
        elif kind == 2:  # one byte changed
            at = rng.randrange(len(good))
            raw = good[:at] + bytes([good[at] ^ rng.randrange(1, 256)]) + good[at + 1:]
        else:  # intact
            raw = good
        try:
            got = decode_segment(raw)
        except ValueError:
            assert kind != 3, "an intact segment was refused"
            continue
        decoded += 1
        # Whatever decodes is the segment written, never a misread one.
        assert raw == good and got == (codec, records, payload), f"case {i} (kind {kind}) misread"
    assert decoded >= cases // 4


def test_segments_of_the_previous_format_are_still_read() -> None:
    # TRS1 (spooled by an older tailrace before an upgrade): its CRC covers the payload only.
    import struct
    import zlib

    payload = b"\x0a\x03abc"
    legacy = struct.pack("<4sBIII", b"TRS1", CODECS.index("zstd"), 7, len(payload), zlib.crc32(payload)) + payload
    assert decode_segment(legacy) == ("zstd", 7, payload)
