"""Memory held by unfinished lines: N files each ending in a line of B bytes without its
newline, a blackhole output; tailrace's peak RSS (VmHWM) once every file was read. The figure
issue 12 starts from (500 files × 800 KB: 429 MB RSS). The test (tests/test_reliability.py)
asserts the bound; this prints the figure for any checkout.

    python -m bench.memory [--files 500] [--line-bytes 800000] [--tree DIR ...]

Writes bench/results/memory-<UTC time>.json and prints a Markdown table."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.trees import RESULTS, compare, start


def one(tree: Path, files: int, line_bytes: int, settle: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as w:
        work = Path(w)
        logs = work / "logs"
        logs.mkdir()
        tail = b"x" * line_bytes
        for i in range(files):
            (logs / f"f{i:03d}.log").write_bytes(b"first line\n" + tail)
        cfg = {"state_dir": str(work / "state"), "inputs": [{"name": "in", "paths": [str(logs / "*.log")]}],
               "outputs": [{"type": "blackhole"}], "progress_interval": "0s", "admin": {"enabled": False}}
        proc = start(tree, work, cfg)
        time.sleep(settle)  # every file read (and, past partial_flush, its partial line flushed)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        proc.terminate()
        proc.wait(timeout=60)
    kib = {ln.split(":")[0]: int(ln.split()[1]) for ln in status.splitlines() if ln.startswith(("VmHWM", "VmRSS"))}
    return {"peak_rss_mib": round(kib["VmHWM"] / 1024, 1), "rss_mib": round(kib["VmRSS"] / 1024, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--line-bytes", type=int, default=800_000)
    ap.add_argument("--settle", type=float, default=15.0, help="seconds before reading the peak")
    ap.add_argument("--tree", action="append", default=[], help="checkout whose tailrace runs (repeatable)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    compare("memory", "memory of unfinished lines", argv, args.tree, args.results,
            lambda tree: one(tree, args.files, args.line_bytes, args.settle),
            [("peak RSS MiB", "peak_rss_mib"), ("RSS at the end MiB", "rss_mib")])

if __name__ == "__main__":
    main()
