"""The spool reader fuzzed on arbitrary bytes (the core's framer, parsers and checkpoint
readers: rust/core/tests/fuzz.rs). `FUZZ_CASES` cases (default 20,000; the long run:
`FUZZ_CASES=1000000 .venv/bin/pytest tests/test_fuzz.py`): never anything but a decoded
segment or ValueError, and a segment decodes only when it is exactly what was written."""

from __future__ import annotations

import os
import random
import re

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


def _mutate(rng: random.Random, node: object, depth: int = 0) -> object:
    """A configuration with one part replaced by something of another type or value."""
    junk = [None, True, -1, 0, 2**70, 1.5, "", "x" * 300, "-5s", "1ZiB", [], {}, ["*"], {"k": 1}, "${NOPE}", "\x00"]
    if isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(list(node))
        out = dict(node)
        roll = rng.random()
        if roll < 0.1:
            out[rng.choice(["bogus", "inputz", "max_bytes", "type"])] = rng.choice(junk)
        elif roll < 0.2:
            del out[key]
        else:
            out[key] = _mutate(rng, node[key], depth + 1)
        return out
    if isinstance(node, list) and node and rng.random() < 0.8:
        out_list = list(node)
        i = rng.randrange(len(out_list))
        out_list[i] = _mutate(rng, out_list[i], depth + 1)
        return out_list
    return rng.choice(junk)


def test_any_configuration_is_accepted_or_refused_naming_a_key_never_a_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Configurations mutated at random from a valid one (`FUZZ_CASES` / 10 of them):
    `check-config` exits 0, or 2 with `configuration error:` and the offending key's path;
    never a traceback, never another code."""
    import contextlib
    import io

    import yaml

    from collector import cli

    valid = {
        "state_dir": str(tmp_path / "state"),
        "inputs": [{"name": "in", "paths": ["/var/log/*.log"], "watch": "inotify", "poll_interval": "250ms",
                    "max_line_bytes": "1MiB", "format": "cri", "allowed_roots": ["/srv"]}],
        "outputs": [{"type": "otlp_http", "endpoint": "http://127.0.0.1:4318", "compression": "zstd",
                     "retry": {"initial": "1s", "max": "30s"}, "spool": {"after": "5s", "max_bytes": "1GiB"}},
                    {"type": "file", "path": str(tmp_path / "out.jsonl")}],
        "batch": {"max_age": "200ms", "max_records": 100},
        "memory": {"max_pending_bytes": "48MiB"},
        "admin": {"address": "127.0.0.1:0"},
        "log": {"level": "info"},
    }
    rng = random.Random(14)
    path = tmp_path / "c.yaml"
    codes = {0: 0, 2: 0}
    for i in range(max(200, int(os.environ.get("FUZZ_CASES", "20000")) // 10)):
        cfg = _mutate(rng, valid)
        path.write_text(yaml.safe_dump(cfg))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["check-config", str(path)])
        text = err.getvalue()
        assert code in (0, 2), (i, cfg, code, text)
        assert "Traceback" not in text, (i, cfg, text)
        if code == 2:
            assert text.startswith("tailrace: configuration error: "), (i, cfg, text)
            # The offending key is named: a path into the document (`$.inputs[0].watch`, ...).
            # Every line names the file (and its line when known), then the key's path.
            head = rf"tailrace: configuration error: {re.escape(str(path))}(:\d+)?: "
            for line in text.splitlines():
                assert re.match(head + r"(\$|expected a mapping)", line), (i, cfg, text)
        codes[code] += 1
    assert codes[0] > 0 and codes[2] > 0, codes
