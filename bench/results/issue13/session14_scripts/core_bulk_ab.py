"""The core's bulk read + frame + encode (`bench.floors.bulk_floor`: a tailer stepped by hand,
no pipeline), in two trees, interleaved pairs (the order alternates), each run a process of its
own. Used in session 14 for the batch copy (`batcher.rs`, `Group::room`).

    python bench/results/issue13/session14_scripts/core_bulk_ab.py DATA TREE_A TREE_B [--pairs N] [--json OUT]

DATA: a log file warm in the page cache (e.g. `collector.harness.throughput.bulk_input`'s
corpus file). Prints each tree's median ms of CPU per MB of input and every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CODE = ("import json; from pathlib import Path; from bench.floors import bulk_floor; "
        "print(json.dumps(bulk_floor(Path({data!r}), 1)))")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("trees", nargs=2)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args()
    runs: dict[str, list[float]] = {t: [] for t in a.trees}
    for i in range(a.pairs):
        for t in a.trees if i % 2 == 0 else a.trees[::-1]:
            cmd = [sys.executable, "-c", CODE.format(data=a.data)]
            env = {**os.environ, "PYTHONPATH": t}
            out = subprocess.run(cmd, cwd=t, capture_output=True, text=True, env=env, check=True)
            runs[t].append(json.loads(out.stdout.strip().splitlines()[-1])["read_frame_encode_ms_per_mb"])
    result = {"data": a.data, "bytes": Path(a.data).stat().st_size, "pairs": a.pairs,
              "read_frame_encode_ms_per_mb": {t: {"median": statistics.median(v), "runs": v} for t, v in runs.items()}}
    for t, v in runs.items():
        print(t, "median", statistics.median(v), v)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
