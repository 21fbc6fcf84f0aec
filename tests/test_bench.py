"""`tailrace bench`: the watch-mode harness end to end at a small scale, every line accounted for
(the figures themselves are machine-dependent and are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson


def test_tailrace_bench_watchmodes_accounts_for_every_line(tmp_path: Path) -> None:
    results = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "bench", "watchmodes", "--workload", "appends", "--files", "3",
         "--rate", "300", "--seconds", "1", "--modes", "inotify,naive", "--runs", "1", "--results", str(results)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (out,) = results.glob("watchmodes-appends-*.json")
    rows = {row["mode"]: row for row in orjson.loads(out.read_bytes())["rows"]}
    assert set(rows) == {"inotify", "naive"}
    for row in rows.values():
        counts = (row["expected_lines"], row["delivered"], row["lost"], row["duplicated"], row["backlog"])
        assert counts == (300, 300, 0, 0, 0), row
        assert row["latency"] == "delivery" and row["latency_ms_p99"] is not None
    assert rows["inotify"]["stat_family_per_line"] == 0
    assert rows["naive"]["stat_family_per_line"] >= 2
    assert "| inotify |" in r.stdout and f"raw: {out}" in r.stdout


def test_tailrace_bench_names_the_harnesses(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "collector.cli", "bench", "nope"], capture_output=True, text=True)
    assert r.returncode == 64 and "watchmodes" in r.stderr and "throughput" in r.stderr  # a usage error
