"""What a line cannot cost less than on this machine: the floors under issue 13's CPU goals.

Measured outside tailrace, so they bound what any change inside it can reach:

Reads go through descriptors opened as tailrace opens its files, `O_RDONLY | O_NOATIME` (else
relatime journals an atime update on almost every read of a file written since: ~1 µs more per
read here; `pread_us_written_elsewhere_atime` shows it), the writes through descriptors of their own.

- `pread` of just-written lines from N files in turn (the appends workload's lines, as many as
  each file gets between two reads at `--rate` lines/s and a read every `--period`: 4 at 1,000
  files, 1 at 5,000; then one `pread` per file: what a read pass of N written files does), against the same `pread`
  on one file over and over (the call's fixed cost). The difference is the cold kernel structures
  of many files (struct file, inode, page cache tree, page).
- The same reads of lines another process appended from another CPU (tailing a writer: each
  file's kernel structures were last touched there), the reader and the writer pinned; and
  those reads again with 2 MiB copied between passes (a pass's batch work evicting caches).
- CPU per wakeup of a sleeping loop: `time.sleep`, and `trio.sleep` (tailrace's event loop),
  from the process's own CPU clock.
- Each appends goal's floor per line (`appends floor`), composed of the above: the reads a read
  every `--period` makes per line, the core's framing, encoding and zstd on the workload's own
  lines, one wakeup a period (`appends_floors`).
- Bulk (a read from head): the core's reading, framing and encoding alone (a tailer stepped by
  hand into no output: no pipeline, no HTTP, no checkpoints), zstd at `--level` alone on the
  very batches it made (the codec's cost on the wire format: a floor for any change in
  tailrace), per MB of input; and the CPU of a whole `tailrace run` on an empty input (Python,
  imports, the first look, the last snapshot: paid once per process, whatever the input).
  `--corpus DIR` replays a directory of log files (as `bench.throughput` does), else generated
  access-log-like lines.

    python -m bench.floors --files 1000,5000 --runs 3 [--bulk-gib 0.25] [--corpus DIR]

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

from bench.trees import RESULTS, ROOT, save
from collector.harness.appender import line

# Bytes a pass's batch work moves through the caches at 1,000 files × 4 lines of ~200 bytes: the
# batch's protobuf (~1 MB) and zstd's tables and output; copied between passes by the scrubbed
# variant of the reads.
SCRUB = 2 << 20
# The appends workload's line (collector/harness/appender.py): 203 bytes.
LINE = line(1764720000000000000, 0, 0)


# Lines of the appends workload the framing, encoding and zstd floor is measured on (~20 MB).
APPENDS_LINES = 100_000


def lines_per_read(files: int, rate: float, period: float) -> int:
    """Lines each file gets between two reads at `rate` lines/s over `files` files read every
    `period` s (the appends workload's: 4 at 1,000 files, 1 at 5,000): a read's copy is that many."""
    return max(1, round(rate * period / files))


def reader_fd(path: Path, noatime: bool = True) -> int:
    """A descriptor to read `path` through, opened as tailrace's core opens a log file
    (`reader.rs::open_noatime`): without access-time updates where the file's owner allows it."""
    if noatime:
        try:
            return os.open(path, os.O_RDONLY | os.O_NOATIME)
        except PermissionError:
            pass
    return os.open(path, os.O_RDONLY)


def pread_round_robin(files: int, passes: int, per_read: int = 1) -> dict[str, float]:
    """µs per `pread` of `per_read` new lines in each of `files` files in turn, and on one file
    (CPU time, this process's clock: a shared VM's stolen time does not count)."""
    with tempfile.TemporaryDirectory(prefix="floors-") as d:
        paths = [Path(d, f"f{i}.log") for i in range(files)]
        wfds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for p in paths]
        fds = [reader_fd(p) for p in paths]
        try:
            pos = 0
            spent = 0.0
            for _ in range(passes):
                for _ in range(per_read):
                    for fd in wfds:
                        os.write(fd, LINE)
                t0 = time.process_time()
                for fd in fds:
                    os.pread(fd, 65536, pos)
                spent += time.process_time() - t0
                pos += len(LINE) * per_read
            many = spent / (files * passes) * 1e6
            n = files * passes
            t0 = time.process_time()
            for _ in range(n):
                os.pread(fds[0], len(LINE) * per_read, 0)
            one = (time.process_time() - t0) / n * 1e6
        finally:
            for fd in (*fds, *wfds):
                os.close(fd)
    return {"pread_us_round_robin": round(many, 3), "pread_us_one_file": round(one, 3),
            "cold_files_us": round(many - one, 3)}


def pread_written_elsewhere(files: int, passes: int, scrub: int = 0, noatime: bool = True, per_read: int = 1
                            ) -> float:
    """µs per `pread` of the `per_read` lines another process just appended to each of `files` files (one
    file after another, a line at a time, as the appender writes), that
    process on another CPU (what tailing a writer costs: each file's kernel structures were last
    touched on the writer's CPU, so the read starts with cache misses the same-process figure
    does not have). With `scrub`, that many bytes are copied between the passes (what a pass's
    batch work does to the caches: encoding, zstd). Without `noatime`, the reads update each
    file's access time (relatime: the file changed since the last read). 0.0 with fewer than 2 CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return 0.0
    with tempfile.TemporaryDirectory(prefix="floors-") as d:
        paths = [Path(d, f"f{i}.log") for i in range(files)]
        wfds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for p in paths]
        fds = [reader_fd(p, noatime) for p in paths]
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer
            try:
                os.sched_setaffinity(0, {cpus[1]})
                while os.read(go_r, 1) == b"w":
                    for _ in range(per_read):
                        for fd in wfds:
                            os.write(fd, LINE)
                    os.write(done_w, b"d")
            finally:
                os._exit(0)
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpus[0]})
        try:
            pos, spent = 0, 0.0
            src, dst = bytes(scrub), bytearray(scrub)
            for _ in range(passes):
                os.write(go_w, b"w")
                os.read(done_r, 1)
                dst[:] = src
                t0 = time.process_time()
                for fd in fds:
                    os.pread(fd, 65536, pos)
                spent += time.process_time() - t0
                pos += len(LINE) * per_read
        finally:
            os.write(go_w, b"q")
            os.waitpid(pid, 0)
            os.sched_setaffinity(0, mine)
            for fd in (*fds, *wfds, go_r, go_w, done_r, done_w):
                os.close(fd)
    return round(spent / (files * passes) * 1e6, 3)


def bulk_floor(data: Path, level: int) -> dict[str, float]:
    """ms of CPU per MB of `data` (warm in the page cache) for the core's read + frame + encode
    and for zstd at `level` on the batches it made, each timed alone by the process's CPU clock."""
    from collector.flow import config
    from collector.flow.pipeline import standalone_tailer

    size = data.stat().st_size
    with tempfile.TemporaryDirectory(prefix="floors-") as d:
        cfg = config.parse(f"state_dir: {d}\ninputs: [{{name: bulk, paths: ['{data}']}}]\n"
                           "outputs: [{type: blackhole}]\n")
        _, tailer = standalone_tailer(cfg)
        step = codec = 0.0
        proto = wire = done = 0
        while done < size:
            t0 = time.process_time()
            batches = tailer.step() if tailer.bytes_read() < size else tailer.flush()
            step += time.process_time() - t0
            for b in batches:
                t0 = time.process_time()
                wire += len(b.encode("zstd", level))
                codec += time.process_time() - t0
                proto += b.proto_bytes
                done += b.input_bytes
                tailer.commit(b.id)
    mb = size / 1e6
    return {"read_frame_encode_ms_per_mb": round(step / mb * 1e3, 3), "zstd_ms_per_mb": round(codec / mb * 1e3, 3),
            "proto_per_input": round(proto / size, 3), "zstd_ratio": round(proto / wire, 2)}


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
    ap.add_argument("--period", type=float, default=0.2, help="seconds between wakeups (and between a file's reads)")
    ap.add_argument("--rate", type=float, default=20000,
                    help="lines per second over all the files (the appends workload's): each read copies rate × "
                         "period / files lines, at least one")
    ap.add_argument("--wakeups", type=int, default=25)
    ap.add_argument("--bulk-gib", type=float, default=0.25, help="bulk input size (0: no bulk floor)")
    ap.add_argument("--corpus", default=None, help="a directory of log files to replay for the bulk floor")
    ap.add_argument("--level", type=int, default=1, help="zstd level of the bulk floor")
    ap.add_argument("--data-dir", default=str(ROOT / "bench" / "work"), help="where the bulk input is written")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for files in (int(f) for f in args.files.split(",")):
        per_read = lines_per_read(files, args.rate, args.period)
        runs = [{**pread_round_robin(files, args.passes, per_read),
                 "pread_us_written_elsewhere": pread_written_elsewhere(files, args.passes, per_read=per_read),
                 "pread_us_written_elsewhere_scrubbed": pread_written_elsewhere(files, args.passes, SCRUB,
                                                                                per_read=per_read),
                 "pread_us_written_elsewhere_atime": pread_written_elsewhere(files, args.passes, noatime=False,
                                                                             per_read=per_read)}
                for _ in range(args.runs)]
        row: dict[str, Any] = {"measure": "pread", "files": files, "lines_per_read": per_read, "line_bytes": len(LINE),
                               "runs": runs}
        for k in runs[0]:
            row[k] = statistics.median(r[k] for r in runs)
        rows.append(row)
        print(f"pread of {per_read} line(s) of {len(LINE)} bytes, {files} files: {row['pread_us_round_robin']} µs "
              f"each in turn, "
              f"{row['pread_us_one_file']} on one file, {row['pread_us_written_elsewhere']} in turn when "
              f"another process on another CPU wrote the lines, {row['pread_us_written_elsewhere_scrubbed']} with "
              f"{SCRUB >> 20} MiB copied between passes, {row['pread_us_written_elsewhere_atime']} updating access "
              f"times (median of {args.runs})")
    for name, f in (("time.sleep", sleep_wakeup_us), ("trio.sleep", trio_wakeup_us)):
        runs_us = [round(f(args.period, args.wakeups), 1) for _ in range(args.runs)]
        rows.append({"measure": f"wakeup {name}", "period_s": args.period, "runs_us": runs_us,
                     "us_per_wakeup": statistics.median(runs_us)})
        print(f"{name} every {args.period}s: {statistics.median(runs_us)} µs of CPU per wakeup ({runs_us})")
    rows.extend(appends_floors(args, rows))
    if args.bulk_gib > 0:
        rows.append(bulk_rows(args))
    print(f"raw: {save('floors', 'floors', argv, rows, args.results)}")


def appends_floors(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each appends goal's floor per line, from the pieces measured above: a read of each file
    every `period` (`files / (rate × period)` reads per line: a fifth of them finding nothing
    when a file gets 0.8 lines a period, each counted as a read of one line, which overstates
    it by the copy of a line, ~0.1 µs at most: ≤ 0.025 µs per line at 5,000 files; an inotify
    event per line besides one read costs about as much as the empty reads), between the reads
    of lines another CPU wrote and
    the same with 2 MiB copied between passes; the core's framing, encoding and zstd at `level`
    per line, measured on the appends workload's own lines (`bulk_floor` on APPENDS_LINES of
    them); and one event-loop wakeup a period. No wakeup for HTTP answers, no acknowledgement,
    no checkpoint, no per-file bookkeeping: what any tailer reading these files on this
    machine would pay."""
    with tempfile.TemporaryDirectory(prefix="floors-") as d:
        data = Path(d, "appends.log")
        data.write_bytes(b"".join(line(1764720000000000000 + n * 50_000, n % 1000, n // 1000)
                                  for n in range(APPENDS_LINES)))
        per_line_bytes = data.stat().st_size / APPENDS_LINES
        enc = [bulk_floor(data, args.level) for _ in range(args.runs)]
    ms_per_mb = statistics.median(r["read_frame_encode_ms_per_mb"] + r["zstd_ms_per_mb"] for r in enc)
    enc_us = round(ms_per_mb * per_line_bytes / 1e3, 3)  # ms per 10^6 bytes = ns per byte
    (trio_row,) = [r for r in rows if r["measure"] == "wakeup trio.sleep"]
    wake_us = round(trio_row["us_per_wakeup"] / args.period / args.rate, 3)
    out = []
    for r in (r for r in rows if r["measure"] == "pread"):
        reads = round(r["files"] / (args.rate * args.period), 4)
        reads_us = sorted((r["pread_us_written_elsewhere"], r["pread_us_written_elsewhere_scrubbed"]))
        low, high = (round(reads * us + enc_us + wake_us, 3) for us in reads_us)
        out.append({"measure": "appends floor", "files": r["files"], "rate": args.rate, "period_s": args.period,
                    "reads_per_line": reads, "read_us": reads_us, "encode_zstd_us_per_line": enc_us,
                    "zstd_level": args.level, "wakeups_us_per_line": wake_us, "us_per_line_low": low,
                    "us_per_line_high": high})
        print(f"appends floor, {r['files']} files at {args.rate:g} lines/s, a read every {args.period}s: "
              f"{low}-{high} µs per line ({reads} reads per line at {reads_us[0]}-{reads_us[1]} µs, framing, "
              f"encoding and zstd {enc_us}, wakeups {wake_us})")
    return out


def bulk_rows(args: argparse.Namespace) -> dict[str, Any]:
    from collector.harness.throughput import bulk_input, idle_cpu_s

    work = Path(args.data_dir)
    data, _, _ = bulk_input(work, args.bulk_gib, args.corpus, 200, "varied")
    runs = [bulk_floor(data, args.level) for _ in range(args.runs)]
    row: dict[str, Any] = {"measure": "bulk", "input": str(data), "bytes": data.stat().st_size,
                           "zstd_level": args.level, "runs": runs}
    for k in runs[0]:
        row[k] = statistics.median(r[k] for r in runs)
    row["startup_shutdown_runs_cpu_s"] = [round(idle_cpu_s(work, "blackhole"), 3) for _ in range(args.runs)]
    row["startup_shutdown_cpu_s"] = statistics.median(row["startup_shutdown_runs_cpu_s"])
    both = row["read_frame_encode_ms_per_mb"] + row["zstd_ms_per_mb"]
    row["mb_per_cpu_s_before_the_pipeline"] = round(1e3 / both, 1)
    print(f"bulk ({data.name}): read+frame+encode {row['read_frame_encode_ms_per_mb']} ms/MB, zstd level "
          f"{args.level} {row['zstd_ms_per_mb']} ms/MB (ratio {row['zstd_ratio']}): "
          f"{row['mb_per_cpu_s_before_the_pipeline']} MB/CPU-s before the pipeline; a tailrace run on an empty "
          f"input {row['startup_shutdown_cpu_s']} s of CPU (median of {args.runs})")
    return row


if __name__ == "__main__":
    main()
