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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.trees import RESULTS, compare, start


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
        proc = start(tree, work, cfg)
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
    compare("checkpoint-io", "checkpoint I/O", argv, args.tree, args.results,
            lambda tree: one(tree, args.files, args.written, args.window),
            [("bytes written/s (wchar)", "wchar_per_s"), ("to storage/s (write_bytes)", "write_bytes_per_s")])

if __name__ == "__main__":
    main()
