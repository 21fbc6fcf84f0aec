"""zstd level-1 parameters on a batch shaped like the appends workload's (4,000 records of its
203-byte lines with their OTLP framing and `log.file.name`), ms per batch and ratio, best of 20
× 5 compressions: `python bench/results/issue13/session15_scripts/zstd_params.py`."""

from __future__ import annotations

import random
import time

import zstandard

from collector.harness.appender import line


def batch() -> bytes:
    ns = 1_764_000_000_000_000_000
    recs = []
    for i in range(4000):
        f = random.randrange(1000)
        body = line(ns + i * 50000, f, i // 1000)[:-1]
        name = b"file%04d.log" % f
        recs.append(b"\x12\x00\x59" + (ns + i).to_bytes(8, "little") + b"\x2a\xd0\x01\x0a\xcd\x01" + body
                    + b"\x32\x1d\x0a\x0dlog.file.name\x12\x0c\x0a\x0a" + name)
    return b"".join(recs)


def main() -> None:
    data = batch()
    p = zstandard.ZstdCompressionParameters
    for name, params in [
        ("1", p.from_level(1)), ("1, window_log 17", p.from_level(1, window_log=17)),
        ("1, hash_log 12", p.from_level(1, hash_log=12)), ("1, hash_log 15", p.from_level(1, hash_log=15)),
        ("1, min_match 7", p.from_level(1, min_match=7)), ("1, min_match 5", p.from_level(1, min_match=5)),
        ("-1", p.from_level(-1)), ("-3", p.from_level(-3)), ("2", p.from_level(2)),
    ]:
        c = zstandard.ZstdCompressor(compression_params=params)
        best = float("inf")
        for _ in range(20):
            t = time.process_time()
            for _ in range(5):
                out = c.compress(data)
            best = min(best, (time.process_time() - t) / 5)
        print(f"level {name:18} {best * 1e3:.3f} ms per {len(data)} bytes, ratio {len(data) / len(out):.2f}")


if __name__ == "__main__":
    main()
