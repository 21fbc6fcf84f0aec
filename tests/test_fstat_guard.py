"""The fstat regression guard: counts that do not depend on machine speed. In steady state
(after start-up and discovery), 200 files × 50 one-line appends/s for 5 s through `inotify` and
`auto` cost at most 0.01 stat-family calls and 1.1 `read()` calls per line shipped; `naive`
(Fluent Bit's event path) costs at least 2 stat-family calls per line, so the guard can fail
(`tests/test_budget.py`, which budgets every other kind of call too).
The core's counters are cross-checked once against `strace -f -c` attached to a running
tailrace."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from collector.harness.appender import COMMAND
from tests import budget
from tests.conftest import base_config, count_records, require_tool, wait_for


def stat_family(s: dict[str, int]) -> int:
    return s["stat_family"]  # defined once, in the core


async def _steady_state_counts(
    tmp_path: Path, watch: str, files: int, rate: float, seconds: float, fmt: str = "plain"
) -> dict[str, int]:
    """The core's counters over an appends workload after start-up (tests/budget.py's runner)."""
    return await budget.run(tmp_path, budget.Workload(files=files, rate=rate, seconds=seconds, fmt=fmt), watch)


@pytest.mark.parametrize("watch", ["inotify", "auto"])
async def test_inotify_modes_make_no_stat_calls_per_line(tmp_path: Path, watch: str) -> None:
    d = await _steady_state_counts(tmp_path, watch, files=200, rate=50, seconds=5)
    lines = d["lines"]
    assert lines == 50_000
    assert d["files_polled_end"] == 0, "every file watched by inotify (none fell back to polling)"
    assert stat_family(d) <= 0.01 * lines, d
    assert d["syscalls_read"] <= 1.1 * lines, d
    assert d["inotify_overflows"] == 0, d
    # Reads wait for the batch deadline (coalesce: auto; max_age is 50 ms here): at most one
    # read pass per period, and a wakeup carries many lines.
    periods = d["elapsed_ms"] / 50
    assert d["read_passes"] <= periods + 10, d
    assert d["steps"] <= 2 * d["read_passes"] + 20, d
    # Files written at every read turn steady: read on the cadence, without write events.
    assert d["steady_on"] >= 100 and d["syscalls_inotify_remask"] >= d["steady_on"], d
    assert d["inotify_events"] <= 0.1 * lines, d


async def test_the_guard_holds_for_cri_container_logs(tmp_path: Path) -> None:
    # A node's layout and CRI lines (every 1000th message in 16 KiB pieces: two more lines):
    # parsing and one resource per container add no stat call and no read.
    d = await _steady_state_counts(tmp_path, "auto", files=120, rate=50, seconds=5, fmt="cri")
    messages = 120 * 50 * 5
    assert d["lines"] == messages + 2 * (messages // 1000), d
    assert stat_family(d) <= 0.01 * d["lines"], d
    assert d["syscalls_read"] <= 1.1 * d["lines"], d
    assert (d["inotify_overflows"], d["parse_errors"], d["split_lines"]) == (0, 0, 0), d


STAT_CALLS = ("fstat", "newfstatat", "fstatat64", "statx", "stat", "lstat")


def _strace_counts(text: str) -> dict[str, int]:
    counts = {}
    for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", text, re.M):
        counts[m.group(2)] = int(m.group(1))
    return counts


def _attached(text: str) -> int:
    """Threads strace says it attached to ("attached with N threads", or one per line)."""
    m = re.search(r"attached with (\d+) threads", text)
    return int(m.group(1)) if m else text.count(" attached")


def _stats_dump(t, n: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Ask tailrace for its counters (SIGUSR1) and parse the n-th stats line of its log."""
    t.proc.send_signal(signal.SIGUSR1)
    lines = wait_for(
        lambda: len(found := re.findall(r"^\S+ tailrace info: stats (.*)$", t.log(), re.M)) >= n and found, 10, "stats"
    )
    return {k: int(v) for k, v in (kv.split("=") for kv in lines[n - 1].split())}


@pytest.mark.parametrize("watch, per_line", [("inotify", (0.0, 0.01)), ("naive", (2.0, None))])
def test_counts_agree_with_strace(tmp_path: Path, tailrace, watch: str, per_line) -> None:  # type: ignore[no-untyped-def]
    """At a small scale (20 files × 20 lines/s × 3 s), strace attached to every thread counts
    what the core's counters say: preads are file reads, stat-family calls are stat calls."""
    strace = require_tool("strace", "the guard's cross-check (apt-get install strace)")
    files, rate, seconds = 20, 20.0, 3.0
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(files):
        (logs / f"w{i:04d}.log").write_text("hello\n")
    cfg = base_config(tmp_path, [f"{logs}/*.log"], watch=watch, rescan_interval="60s")
    out = tmp_path / "out" / "logs.jsonl"
    t = tailrace(cfg).start()
    wait_for(lambda: count_records(out) == files, 30, "start-up lines")
    assert t.proc is not None
    trace_log = tmp_path / "strace.txt"
    with open(trace_log, "w") as trace_err:
        tracer = subprocess.Popen(
            [strace, "-f", "-c", "-p", str(t.proc.pid)], stderr=trace_err, stdout=subprocess.DEVNULL
        )
    try:
        threads = len(os.listdir(f"/proc/{t.proc.pid}/task"))
        wait_for(lambda: trace_log.read_text().count(" attached") >= 1, 10, "strace attached")
        wait_for(lambda: _attached(trace_log.read_text()) >= threads, 10, f"strace attached to {threads} threads")
        before = _stats_dump(t, 1)
        subprocess.run(
            [*COMMAND, str(logs), str(files), str(rate), str(seconds)], check=True, capture_output=True
        )
        lines = int(files * rate * seconds)
        wait_for(lambda: count_records(out) == files + lines, 60, "every line delivered")
        # Quiescent: naive works through its queue one event at a time after the last line, and
        # steady files are read on the cadence until four of their last eight reads found nothing
        # (4 × 50 ms here): two dumps 0.5 s apart that agree.
        n, after = 2, _stats_dump(t, 2)
        deadline = time.monotonic() + 60
        while True:
            n += 1
            time.sleep(0.5)
            again = _stats_dump(t, n)
            if again["syscalls_fstat"] == after["syscalls_fstat"] and again["syscalls_read"] == after["syscalls_read"]:
                break
            assert time.monotonic() < deadline, "tailrace never went quiet after the last line"
            after = again
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    err = trace_log.read_text()
    assert t.stop() == 0
    counts = _strace_counts(err)
    assert counts, err
    core = {k: after[k] - before[k] for k in after}
    assert core["lines"] == lines
    traced_stats = sum(counts.get(k, 0) for k in STAT_CALLS)
    core_stats = stat_family(core)
    # strace's window holds the core's (it attached before the first dump, detached after the
    # second), plus start-up work of neither: the two agree within a few calls.
    assert core_stats <= traced_stats <= core_stats + 5, (core, err)
    assert core["syscalls_read"] <= counts.get("pread64", 0) <= core["syscalls_read"] + 5, (core, err)
    lo, hi = per_line
    assert traced_stats >= lo * lines, (traced_stats, lines)
    if hi is not None:
        assert traced_stats <= hi * lines, (traced_stats, lines)
        assert counts.get("pread64", 0) <= 1.1 * lines, (counts, lines)
