"""Checkpoint I/O at scale: N files tracked (each past its 1 KiB fingerprint), W of them written
at 100 lines/s each, a blackhole output; tailrace's bytes written (`wchar` and `write_bytes` of
/proc/PID/io) over a window once everything is read. The figure issue 12 starts from
(10,000 files, 5 written: 216 MB in 10 s). The test (tests/test_reliability.py) asserts the
bound; this prints the figure for any checkout.

    python -m bench.checkpoint_io [--files 10000] [--written 5] [--window 10] [--tree DIR ...]

Writes bench/results/checkpoint-io-<UTC time>.json and prints a Markdown table."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def proc_io(pid: int) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split(": ") for ln in Path(f"/proc/{pid}/io").read_text().splitlines())}


def one(tree: Path, files: int, written: int, window: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as w:
        work = Path(w)
        logs = work / "logs"
        logs.mkdir()
        body = "".join(f"line {i:04d} of a file that is past its fingerprint\n" for i in range(22)).encode()
        for i in range(files):
            (logs / f"f{i:05d}.log").write_bytes(body)
        cfg = {"state_dir": str(work / "state"), "inputs": [{"name": "in", "paths": [str(logs / "*.log")]}],
               "outputs": [{"type": "blackhole"}], "progress_interval": "0s", "admin": {"enabled": False}}
        (work / "c.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "--config", str(work / "c.yaml")],
                                cwd=tree, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(tree)})
        time.sleep(20.0)  # every file read and checkpointed at least once (a warm-up, not measured)
        stop = threading.Event()

        def write() -> None:
            fds = [os.open(logs / f"f{i:05d}.log", os.O_WRONLY | os.O_APPEND) for i in range(written)]
            n = 0
            while not stop.wait(0.01):
                for fd in fds:
                    os.write(fd, b"written during the window %08d\n" % n)
                n += 1
            for fd in fds:
                os.close(fd)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(2.0)
        before = proc_io(proc.pid)
        time.sleep(window)
        after = proc_io(proc.pid)
        stop.set()
        writer.join()
        proc.terminate()
        proc.wait(timeout=60)
    return {k + "_per_s": round((after[k] - before[k]) / window) for k in ("wchar", "write_bytes")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.checkpoint_io", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--written", type=int, default=5)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--tree", action="append", default=[], help="checkout whose tailrace runs (repeatable)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    rows = []
    for tree in [Path(t).resolve() for t in args.tree] or [ROOT]:
        print(f"[{tree}]", file=sys.stderr, flush=True)
        rows.append({"tree": str(tree), **one(tree, args.files, args.written, args.window)})
        print(f"    {rows[-1]}", file=sys.stderr, flush=True)
    when = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    result = {"benchmark": "checkpoint I/O", "command": "python -m bench.checkpoint_io " + " ".join(
        sys.argv[1:] if argv is None else argv), "when": when,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "rows": rows}
    out = Path(args.results) / f"checkpoint-io-{when}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print("| tree | bytes written/s (wchar) | to storage/s (write_bytes) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['tree']} | {r['wchar_per_s']:,} | {r['write_bytes_per_s']:,} |")
    print(f"\nraw: {out}")


if __name__ == "__main__":
    main()
