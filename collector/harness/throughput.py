"""Bulk read-from-head throughput: MB (10^6 input bytes) per CPU-second of the tailrace process
(user + system, children included) and its peak RSS, for each output side by side, runs
interleaved: `otlp_http` (protobuf, zstd level 1, into a loopback receiver: collector/harness/receiver.py in
its own process, which checks the record count) and `blackhole` (encoding without shipping).
The file is written once and read once beforehand so the page cache is warm; each run starts
from empty state and ends when every byte is committed (acknowledged). Each run is paired with
one of the same process on an empty input (start-up, the first look, shutdown: ~0.4 s of CPU
here, whatever the size); "reading only" is the run's CPU less their median, what a
long-running tailrace pays per MB.

    python -m bench.throughput [--gib 1] [--runs 3] [--line-bytes 200] [--outputs otlp_http,blackhole]
                               [--content repetitive|varied] [--corpus DIR]

`--corpus DIR` replays the lines of the files under DIR (any directory of log files: your own)
instead of generated lines, repeated in order until `--gib` (a period of the whole corpus, so a
batch never sees a repeat when the corpus is larger than a batch).

Writes bench/results/throughput-<UTC time>.json and prints a Markdown table."""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from collector._native import CHECKPOINT_FILES
from collector.harness.watchmodes import CHECKOUT, RESULTS, ROOT, _shown, trees, warm_bytecode

WORDS = (
    "request", "served", "cache", "miss", "upstream", "timeout", "retry", "user", "session",
    "token", "refreshed", "order", "created", "payment", "declined", "inventory", "low",
    "shipment", "queued", "worker", "started", "job", "finished", "slow", "query", "index",
)


def varied_line(rng: random.Random, i: int) -> str:
    """An access-log-like line: timestamps, ids, paths, numbers and words that change."""
    return (
        f"2026-11-26T{i // 3600000 % 24:02d}:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z "
        f"{rng.choice(('INFO', 'INFO', 'INFO', 'WARN', 'ERROR', 'DEBUG'))} svc-{rng.randrange(40)} "
        f"req={rng.getrandbits(64):016x} user={rng.randrange(10**6)} ip=10.{rng.randrange(256)}.{rng.randrange(256)}."
        f"{rng.randrange(256)} path=/api/v1/{rng.choice(WORDS)}/{rng.randrange(10**5)} "
        f"status={rng.choice((200, 200, 200, 201, 204, 304, 400, 404, 500, 503))} dur={rng.expovariate(0.02):.1f}ms "
        f'msg="{" ".join(rng.choice(WORDS) for _ in range(8))}" '
    )


def make_file(path: Path, total: int, line_bytes: int, content: str = "repetitive") -> int:
    """Write `total` bytes (rounded down to whole lines) of distinct `line_bytes`-byte lines:
    `repetitive` (a counter and padding: compresses ~100x) or `varied` (access-log-like, ~4x)."""
    lines = total // line_bytes
    if path.exists() and path.stat().st_size == lines * line_bytes:
        return lines
    pad = "y" * line_bytes
    rng = random.Random(42)
    with open(path, "wb", buffering=1 << 20) as f:
        chunk = []
        for i in range(lines):
            if content == "varied":
                text = varied_line(rng, i)
                text = (text + pad)[: line_bytes - 1] if len(text) < line_bytes - 1 else text[: line_bytes - 1]
                chunk.append((text + "\n").encode())
                if len(chunk) == 10_000:
                    f.write(b"".join(chunk))
                    chunk.clear()
                continue
            head = f"2026-11-26T00:00:00.000Z bench line {i:010d} "
            chunk.append((head + pad[: line_bytes - len(head) - 1] + "\n").encode())
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))
    return lines


def make_corpus_file(path: Path, total: int, corpus: str) -> int:
    """Write the lines of the files under `corpus` in order, again and again, to `total` bytes
    (whole lines); returns the line count."""
    from collector.harness.appender import corpus_lines

    lines = corpus_lines(corpus)
    one = b"".join(ln + b"\n" for ln in lines)
    written = n = 0
    with open(path, "wb", buffering=1 << 20) as f:
        while written + len(one) <= total:
            f.write(one)
            written += len(one)
            n += len(lines)
        for ln in lines:
            if written + len(ln) + 1 > total:
                break
            f.write(ln + b"\n")
            written += len(ln) + 1
            n += 1
    return n


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def committed(state: Path) -> int:
    from collector._native import read_checkpoints

    return sum(int(e["offset"]) for e in read_checkpoints(str(state)))


class LoopbackReceiver:
    """collector/harness/receiver.py in a process of its own: its CPU is not tailrace's."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector.harness.receiver", "--count-only"],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])

    def stop(self) -> dict[str, object]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return dict(orjson.loads(out.strip().splitlines()[-1]))


def one_run(data: Path, size: int, lines: int, work: Path, output: str, tree: Path | None = None,
            level: int | None = None) -> dict[str, float]:
    state = work / "state"
    cfg = work / "bench.yaml"
    receiver = LoopbackReceiver() if output == "otlp_http" else None
    lvl = f", compression_level: {level}" if level is not None else ""
    out = (f"{{type: otlp_http, endpoint: 'http://127.0.0.1:{receiver.port}'{lvl}}}" if receiver
           else "{type: blackhole}")
    cfg.write_text(
        f"state_dir: {state}\n"
        f"inputs: [{{name: bulk, paths: ['{data}']}}]\n"
        f"outputs: [{out}]\n"
        "checkpoint_interval: 200ms\nprogress_interval: 0s\n"
    )
    warm_bytecode(tree)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "run", "--config", str(cfg)],
        cwd=tree or work, env={**os.environ, "PYTHONPATH": str(tree)} if tree else None,
    )
    last = 0.0
    # An empty input (`size` 0) measures start-up and shutdown: it ends once the first look is
    # made and the first checkpoints written (a snapshot even of nothing).
    while (done := committed(state)) < size or (size == 0 and not (state / CHECKPOINT_FILES[0]).exists()):
        if proc.poll() is not None:
            raise SystemExit(f"tailrace exited early with {proc.returncode}")
        if time.monotonic() - last > 2:
            print(f"  … {done / 1e6:,.0f} of {size / 1e6:,.0f} MB committed", file=sys.stderr, flush=True)
            last = time.monotonic()
        time.sleep(0.05)
    wall = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"tailrace exited with {proc.returncode}")
    cpu = ru.ru_utime + ru.ru_stime
    extra: dict[str, float] = {}
    if receiver is not None:
        got = receiver.stop()
        if got["records"] != lines:
            raise SystemExit(f"the receiver counted {got['records']} records, expected {lines}")
        extra = {"wire_bytes": float(str(got["wire_bytes"])), "requests": float(str(got["requests"]))}
    return {
        **extra,
        "cpu_s": cpu,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "wall_s": wall,
        "mb_per_cpu_s": size / 1e6 / cpu,
        "peak_rss_mib": ru.ru_maxrss / 1024,
    }


def bulk_input(data_dir: Path, gib: float, corpus: str | None, line_bytes: int = 200,
               content: str = "repetitive") -> tuple[Path, int, str]:
    """The input file under `data_dir` (written, then warm in the page cache): `corpus`'s lines
    replayed to `gib`, else generated lines; with its line count and a description."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if corpus:
        data = data_dir / f"corpus-{Path(corpus).resolve().name}-{gib:g}GiB.log"
        print(f"writing {data} from {corpus} …", file=sys.stderr, flush=True)
        lines = make_corpus_file(data, int(gib * (1 << 30)), corpus)
        what = f"corpus {Path(corpus).resolve()}"
    else:
        suffix = "" if content == "repetitive" else f"-{content}"
        data = data_dir / f"bulk-{gib:g}GiB-{line_bytes}B{suffix}.log"
        print(f"writing {data} …", file=sys.stderr, flush=True)
        lines = make_file(data, int(gib * (1 << 30)), line_bytes, content)
        what = f"{line_bytes}-byte {content} lines"
    warm(data)
    return data, lines, what


def idle_cpu_s(data_dir: Path, output: str, tree: Path | None = None, level: int | None = None) -> float:
    """CPU seconds of the same `tailrace run` on an empty input: start-up, the first look, the
    first checkpoints, shutdown (what a run pays whatever its input)."""
    empty = data_dir / "empty.log"
    empty.write_bytes(b"")
    with tempfile.TemporaryDirectory() as work:
        return one_run(empty, 0, 0, Path(work), output, tree, level)["cpu_s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="tailrace bench throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--line-bytes", type=int, default=200)
    ap.add_argument("--data-dir", "--dir", dest="data_dir",
                    default=str(ROOT / "bench" / "work" if CHECKOUT else Path.cwd() / "tailrace-bench-work"),
                    help="where the input file is written (the filesystem read from)")
    ap.add_argument("--outputs", default="otlp_http,blackhole")
    ap.add_argument("--content", choices=["repetitive", "varied"], default="repetitive")
    ap.add_argument("--corpus", default=None, help="a directory of log files to replay instead of generated lines")
    ap.add_argument("--results", default=str(RESULTS), help="directory for the raw JSON")
    ap.add_argument("--tree", action="append", default=[],
                    help="run tailrace from this checkout (repeat to compare versions side by side)")
    ap.add_argument("--levels", default="", help="otlp_http compression levels side by side, e.g. 1,-1,-3 "
                    "(zstd's negative levels are its fast modes); default: the output's default")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    results = Path(args.results)

    data_dir = Path(args.data_dir)
    data, lines, content = bulk_input(data_dir, args.gib, args.corpus, args.line_bytes, args.content)
    size = data.stat().st_size
    several = len(args.tree) > 1
    levels: list[int | None] = [int(v) for v in args.levels.split(",")] if args.levels else [None]
    cells = [(o, t, lv, f"{o}{f' ({t.name})' if several and t else ''}{f' level {lv}' if lv is not None else ''}")
             for o in args.outputs.split(",") for t in trees(args.tree)
             for lv in (levels if o == "otlp_http" else [None])]
    runs: dict[str, list[dict[str, float]]] = {label: [] for *_, label in cells}
    idle: dict[str, list[float]] = {label: [] for *_, label in cells}
    for i in range(args.runs):  # interleaved: run i of every cell, then run i + 1
        for output, tree, level, label in cells:
            with tempfile.TemporaryDirectory() as work:
                print(f"run {i + 1}/{args.runs}: {label}", file=sys.stderr, flush=True)
                r = one_run(data, size, lines, Path(work), output, tree, level)
                print(f"  {r['mb_per_cpu_s']:.1f} MB/CPU-s, {r['peak_rss_mib']:.0f} MiB peak RSS", file=sys.stderr)
                runs[label].append(r)
            idle[label].append(idle_cpu_s(data_dir, output, tree, level))  # the same process, no input
    # What reading costs: each run's CPU less the median start-up and shutdown of its cell (a
    # fixed ~0.4 s here, whatever the input's size; a node's tailrace pays it once).
    for label, rs in runs.items():
        fixed = statistics.median(idle[label])
        for r in rs:
            r["startup_shutdown_cpu_s"] = fixed
            r["mb_per_reading_cpu_s"] = size / 1e6 / max(r["cpu_s"] - fixed, 1e-9)
    med = {o: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for o, rs in runs.items()}
    result = {
        "benchmark": "bulk read-from-head, per output",
        "command": "python -m bench.throughput " + " ".join(argv),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "input": {"bytes": size, "lines": lines, "content": content},
        "runs": runs,
        "startup_shutdown_runs_cpu_s": idle,
        "median": med,
    }
    results.mkdir(parents=True, exist_ok=True)
    when = str(result["when"])
    out = results / f"throughput-{when.replace(':', '')}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    rows = [
        "| output | input | runs | MB per CPU-second (median; min-max) | the same, reading only "
        "(median; min-max) | start-up + shutdown CPU s | peak RSS MiB (median) | wall s (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o, rs in runs.items():
        spread = [r["mb_per_cpu_s"] for r in rs]
        reading = [r["mb_per_reading_cpu_s"] for r in rs]
        m = med[o]
        rows.append(
            f"| {o} | {size / 2**30:.2f} GiB, {content} | {len(rs)} | "
            f"{m['mb_per_cpu_s']:.1f} ({min(spread):.1f}-{max(spread):.1f}) | "
            f"{m['mb_per_reading_cpu_s']:.1f} ({min(reading):.1f}-{max(reading):.1f}) | "
            f"{m['startup_shutdown_cpu_s']:.2f} | {m['peak_rss_mib']:.0f} | {m['wall_s']:.1f} |"
        )
    for label, m in med.items():
        if "wire_bytes" in m:
            rows.append(f"\n{label}: {m['wire_bytes'] / 1e6:.0f} MB on the wire (zstd, {size / m['wire_bytes']:.1f}x), "
                        f"{m['requests']:.0f} requests")
    print("\n".join(rows) + f"\n\nraw: {_shown(out)}")


if __name__ == "__main__":
    main()
