"""Why a journal and not SQLite (what Fluent Bit uses) for checkpoints: the bytes each store
writes for the same change. 10,000 files tracked (each with a 1 KiB head), then acknowledgement
groups that move the offsets of 5 files each; per group: SQLite (WAL, `synchronous=NORMAL`,
one transaction per group, a checkpoint of the WAL every 1,000 pages as its default) against
tailrace's journal (one append per group; measured through the core, `Checkpointer.write_stats`).
Bytes are `wchar` of /proc/self/io around the groups (SQLite) and the journal's own count.

    python -m bench.checkpoint_store [--files 10000] [--groups 500]

Writes bench/results/checkpoint-store-<UTC time>.json and prints a Markdown table."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from bench.trees import RESULTS, save


def wchar() -> int:
    return int(next(ln for ln in Path("/proc/self/io").read_text().splitlines() if ln.startswith("wchar")).split()[1])


def sqlite_bytes(files: int, groups: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(os.path.join(d, "cp.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE cp (dev INT, ino INT, offset INT, head BLOB, path TEXT, PRIMARY KEY (dev, ino))")
        db.execute("BEGIN")
        db.executemany("INSERT INTO cp VALUES (1, ?, 0, ?, ?)",
                       ((i, os.urandom(1024), f"/var/log/pods/p{i}/c/0.log") for i in range(files)))
        db.execute("COMMIT")
        before = wchar()
        for g in range(groups):
            db.execute("BEGIN")
            for i in range(5):
                db.execute("UPDATE cp SET offset = ? WHERE dev = 1 AND ino = ?", (g * 100 + 100, i * (files // 5)))
            db.execute("COMMIT")
        after = wchar()
        db.close()
    return (after - before) / groups


def journal_bytes(files: int, groups: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        logs = root / "logs"
        logs.mkdir()
        body = b"".join(b"line %04d of a file past its head\n" % n for n in range(40))
        for i in range(files):
            (logs / f"{i:05d}.log").write_bytes(body)
        from collector.flow import config
        from collector.flow.pipeline import standalone_tailer

        cfg = config.parse(f"state_dir: {root}/state\ninputs: [{{paths: ['{logs}/*.log'], coalesce: 0s}}]\n"
                           "outputs: [{type: blackhole}]\nbatch: {max_records: 200}\nprogress_interval: 0s")
        cp, t = standalone_tailer(cfg)
        while batches := t.step() + t.flush():  # every file read (a step stops at 4 batches ready)
            for b in batches:
                t.commit(b.id)
        cp.compact()
        before = cp.write_stats()["journal_bytes"]
        writes0 = cp.write_stats()["journal_writes"]
        for g in range(groups):
            for i in range(5):
                with open(logs / f"{i * (files // 5):05d}.log", "ab") as f:
                    f.write(b"more %08d\n" % g)
            for b in t.step() + t.flush():
                t.commit(b.id)
        s = cp.write_stats()
        assert s["journal_writes"] - writes0 == groups, s
        return (s["journal_bytes"] - before) / groups


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.checkpoint_store", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=500)
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    rows = [
        {"store": "sqlite (WAL, synchronous=NORMAL)", "bytes_per_group": round(sqlite_bytes(args.files, args.groups))},
        {"store": "tailrace journal", "bytes_per_group": round(journal_bytes(args.files, args.groups))},
    ]
    out = save("checkpoint-store", "checkpoint store: bytes per acknowledgement group of 5 files", argv, rows,
               args.results)
    print("| store | bytes written per group of 5 offsets |\n|---|---|")
    for r in rows:
        print(f"| {r['store']} | {r['bytes_per_group']:,} |")
    print(f"\nraw: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
