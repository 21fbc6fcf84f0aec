"""What a line cannot cost less than on this machine: the floors under issue 13's CPU goals.

Measured outside tailrace, so they bound what any change inside it can reach:

- `pread` of a just-written line from N files in turn (one line appended to each file, then one
  `pread` of it per file: what a read pass of N written files does), against the same `pread`
  on one file over and over (the call's fixed cost). The difference is the cold kernel structures
  of many files (struct file, inode, page cache tree, page).
- CPU per wakeup of a sleeping loop: `time.sleep`, and `trio.sleep` (tailrace's event loop),
  from the process's own CPU clock.

    python -m bench.floors --files 1000,5000 --runs 3

Each figure is the median of `--runs`; writes `bench/results/floors-<time>.json`."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.trees import RESULTS, save

LINE = b"2026-12-02T13:00:00.000Z app[1234]: request served in 12 ms, status 200, bytes 5120 path /api/v1/items\n"


def pread_round_robin(files: int, passes: int) -> dict[str, float]:
    """µs per `pread` of one new line in each of `files` files in turn, and on one file."""
    with tempfile.TemporaryDirectory(prefix="floors-") as d:
        fds = [os.open(Path(d, f"f{i}.log"), os.O_RDWR | os.O_CREAT, 0o644) for i in range(files)]
        try:
            pos = 0
            spent = 0.0
            for _ in range(passes):
                for fd in fds:
                    os.write(fd, LINE)
                t0 = time.perf_counter()
                for fd in fds:
                    os.pread(fd, 65536, pos)
                spent += time.perf_counter() - t0
                pos += len(LINE)
            many = spent / (files * passes) * 1e6
            n = files * passes
            t0 = time.perf_counter()
            for _ in range(n):
                os.pread(fds[0], 65536, 0)
            one = (time.perf_counter() - t0) / n * 1e6
        finally:
            for fd in fds:
                os.close(fd)
    return {"pread_us_round_robin": round(many, 3), "pread_us_one_file": round(one, 3),
            "cold_files_us": round(many - one, 3)}


def sleep_wakeup_us(period: float, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        time.sleep(period)
    return (time.process_time() - t0) / n * 1e6


def trio_wakeup_us(period: float, n: int) -> float:
    async def loop() -> float:
        t0 = time.process_time()
        for _ in range(n):
            await trio.sleep(period)
        return (time.process_time() - t0) / n * 1e6

    return trio.run(loop)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default="1000,5000")
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--period", type=float, default=0.2, help="seconds between wakeups")
    ap.add_argument("--wakeups", type=int, default=25)
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for files in (int(f) for f in args.files.split(",")):
        runs = [pread_round_robin(files, args.passes) for _ in range(args.runs)]
        row: dict[str, Any] = {"measure": "pread", "files": files, "runs": runs}
        for k in runs[0]:
            row[k] = statistics.median(r[k] for r in runs)
        rows.append(row)
        print(f"pread, {files} files: {row['pread_us_round_robin']} µs each in turn, "
              f"{row['pread_us_one_file']} on one file (median of {args.runs})")
    for name, f in (("time.sleep", sleep_wakeup_us), ("trio.sleep", trio_wakeup_us)):
        runs_us = [round(f(args.period, args.wakeups), 1) for _ in range(args.runs)]
        rows.append({"measure": f"wakeup {name}", "period_s": args.period, "runs_us": runs_us,
                     "us_per_wakeup": statistics.median(runs_us)})
        print(f"{name} every {args.period}s: {statistics.median(runs_us)} µs of CPU per wakeup ({runs_us})")
    print(f"raw: {save('floors', 'floors', argv, rows, args.results)}")


if __name__ == "__main__":
    main()
