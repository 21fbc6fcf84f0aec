"""`tailrace profile`: a py-spy flamegraph of a running tailrace (`--pid`) or of one started on
a configuration (`--config`, stopped afterwards), for performance investigations. Writes an SVG
flamegraph, a speedscope JSON and the collapsed stacks into `--out`, prints the stat-family
share, the share of samples in each syscall (the hot ones marked) and the top frames."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import trio

from collector.flow.config import ProfilerConfig
from collector.observe.profiler import HOT_MIN_SAMPLES, Profile, record


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    child = None
    pid = args.pid
    if args.config:
        child = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "--config", args.config])
        pid = child.pid
        time.sleep(1.0)  # past the imports
        if child.poll() is not None:
            print(f"tailrace profile: tailrace exited with {child.returncode}", file=sys.stderr)
            return 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    raw = out / f"tailrace-{pid}-{stamp}.collapsed"
    print(f"sampling pid {pid} for {args.duration:g}s at {args.rate} Hz (native frames) …", file=sys.stderr)
    try:
        prof: Profile = trio.run(record, pid, args.duration, args.rate, raw)
    except OSError as e:
        print(f"tailrace profile: {e}", file=sys.stderr)
        return 1
    finally:
        if child is not None:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=60)
    svg = raw.with_suffix(".svg")
    svg.write_text(prof.svg(f"tailrace pid {pid} {stamp}"))
    speedscope = raw.with_suffix(".speedscope.json")
    speedscope.write_bytes(orjson.dumps(prof.speedscope(f"tailrace pid {pid} {stamp}")))
    total = max(prof.samples, 1)
    print(f"{prof.samples} samples; stat-family share {100 * prof.stat_share():.1f}% "
          f"({prof.stat_samples()} samples)")
    counts = prof.syscall_samples()
    threshold = ProfilerConfig().syscall_threshold  # the continuous profiler's default, and its rule
    hot = {name for name, _ in prof.hot_syscalls(threshold)}
    print(f"\n{'share%':>7} {'samples':>8}  syscall (leaf-most wrapper frame; * hot: over {100 * threshold:.0f}%, "
          f"{HOT_MIN_SAMPLES}+ samples, not data path or disk wait)")
    for name, n in counts.most_common():
        print(f"{100 * n / total:7.1f} {n:8d} {'*' if name in hot else ' '} {name}")
    print(f"\n{'total%':>7} {'self%':>6}  frame")
    for frame, self_n, total_n in prof.top(20):
        print(f"{100 * total_n / total:7.1f} {100 * self_n / total:6.1f}  {frame[:110]}")
    print(f"\nflamegraph: {svg}\nspeedscope: {speedscope}\nstacks:     {raw}")
    return 0 if os.path.exists(svg) else 1
