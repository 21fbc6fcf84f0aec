"""Where tailrace's CPU goes, by stage, from a perf profile with call graphs.

    perf record -e cpu-clock -F 999 --call-graph fp -p <tailrace pid> -o run.data -- sleep 10
    perf script -i run.data -F ip,sym,dso > run.txt
    python -m bench.perf_shares run.txt [--json shares.json]

(A build with frame pointers: `RUSTFLAGS="-C force-frame-pointers=yes -g" maturin build
--release` in a separate checkout.) Each sample goes to the first stage its stack names, in
this order: the kernel's read path under `pread`, zstd, the ledger and checkpoints, framing and
encoding, the step's own per-file bookkeeping, the HTTP send, Python and trio, the rest."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import orjson

STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("pread (kernel read path)", ("__libc_pread", "pread64")),
    ("zstd", ("ZSTD", "zstd", "HUF_", "FSE_")),
    ("ledger + checkpoints", ("Ledger::ack", "Checkpointer")),
    ("framing + encoding", ("Parser::line", "LineSink", "emit_line", "proto_record", "Batcher", "FileReader::read",
                            "from_utf8")),
    ("step bookkeeping (per file)", ("Tailer::step", "take_ready")),
    ("HTTP send", ("sendto", "__send", "tcp_")),
    ("Python + trio", ("libpython", "_PyEval")),
]
OTHER = "other (kernel: epoll, futex, scheduler; libc)"


def shares(perf_script: str) -> tuple[int, dict[str, float]]:
    """(samples, share of each stage in %) of `perf script -F ip,sym,dso` output."""
    counts: Counter[str] = Counter()
    for sample in perf_script.split("\n\n"):
        frames = " | ".join(line.strip() for line in sample.strip().splitlines())
        if not frames:
            continue
        counts[next((name for name, keys in STAGES if any(k in frames for k in keys)), OTHER)] += 1
    total = sum(counts.values())
    return total, {k: round(100 * v / total, 1) for k, v in counts.most_common()} if total else {}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("script", help="perf script -F ip,sym,dso output")
    ap.add_argument("--json", help="write {samples, shares} here")
    args = ap.parse_args(argv)
    total, by_stage = shares(Path(args.script).read_text())
    print(f"{total} samples")
    for name, pct in by_stage.items():
        print(f"  {name:46} {pct:5.1f}%")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({"samples": total, "shares": by_stage}, option=orjson.OPT_INDENT_2))
    if not total:
        sys.exit("no samples in the file")


if __name__ == "__main__":
    main()
