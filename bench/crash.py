"""Duplicates after `kill -9`: N files appended at a total rate, tailrace killed with SIGKILL at
random moments and restarted, K times; then every line is accounted for at a loopback OTLP/HTTP
receiver (collector/harness/receiver.py, a thread of this process): lost, duplicated, and the duplicates as
a share of the lines written. The figure issue 12 starts from (10 files, 10,000 lines/s, 5 kills).

    python -m bench.crash [--files 10] [--rate 10000] [--kills 5] [--runs 3] [--tree DIR]

`--tree` runs the tailrace of another checkout (its `collector` package and build), so a
before/after pair runs in one invocation's conditions. Writes
bench/results/crash-<UTC time>.json and prints a Markdown table."""

from __future__ import annotations

import argparse
import collections
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.trees import RESULTS, ROOT, save, start, trees
from collector.harness.receiver import Receiver


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def one(tree: Path, files: int, rate: float, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as w, Receiver() as r:
        work = Path(w)
        logs = work / "logs"
        logs.mkdir()
        cfg = {
            "state_dir": str(work / "state"),
            "inputs": [{"name": "in", "paths": [str(logs / "*.log")]}],
            "outputs": [{"type": "otlp_http", "name": "otlp", "endpoint": r.endpoint}],
            "progress_interval": "0s",
            "admin": {"enabled": False},
        }
        per_file = rate / files
        app = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "appender.py"), str(logs), str(files), str(per_file), "3600"],
            stdout=subprocess.PIPE, text=True,
        )
        assert app.stdout is not None and app.stdout.readline().strip() == "started"

        proc = start(tree, work, cfg)
        for k in range(kills):
            base = r.records()
            wait(lambda b=base: r.records() >= b + int(rate), 60, f"kill {k}: a second of lines delivered")
            time.sleep(rng.uniform(0.0, 2.0))
            proc.kill()
            proc.wait()
            proc = start(tree, work, cfg)
        time.sleep(2.0)
        app.send_signal(signal.SIGTERM)
        app.communicate(timeout=30)
        expected: collections.Counter[str] = collections.Counter()
        for p in logs.iterdir():
            expected.update(p.read_bytes().decode().splitlines())
        written = sum(expected.values())
        wait(lambda: len(set(r.bodies())) >= len(expected), 120, "every line")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        got = collections.Counter(b.decode() for b in r.bodies())
    lost = sum((expected - got).values())
    dup = sum((got - expected).values())
    return {"written": written, "received": sum(got.values()), "lost": lost, "duplicated": dup,
            "duplicated_pct": round(100 * dup / written, 2), "duplicated_per_kill": dup // max(kills, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--rate", type=float, default=10000, help="total lines per second")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tree", action="append", default=[],
                    help="checkout whose tailrace runs (repeatable; default: this one)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    rows = []
    for tree in trees(args.tree):
        runs = []
        for i in range(args.runs):
            print(f"[{tree}] run {i + 1}", file=sys.stderr, flush=True)
            runs.append(one(tree, args.files, args.rate, args.kills, seed=i))
            print(f"    {runs[-1]}", file=sys.stderr, flush=True)
        rows.append({"tree": str(tree), "runs": runs,
                     "median_duplicated_pct": statistics.median(r["duplicated_pct"] for r in runs),
                     "lost_total": sum(r["lost"] for r in runs)})
    out = save("crash", "duplicates after kill -9", argv, rows, args.results)
    print("| tree | runs | lost | duplicated % (median) | duplicated % (all) |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['tree']} | {len(row['runs'])} | {row['lost_total']} | {row['median_duplicated_pct']} | "
              f"{[r['duplicated_pct'] for r in row['runs']]} |")
    print(f"\nraw: {out}")


if __name__ == "__main__":
    main()
