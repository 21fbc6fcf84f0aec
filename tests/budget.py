"""The syscall and wakeup budget: for each workload, every kind of call the core counts, per
line written, and the event loop's wakeups per second, each with the value measured here and
the budget allowed (`tests/budgets.yaml`). `tests/test_budget.py` runs the workloads and fails on
any count over its budget, naming the call, the workload, the budget and the value.

Counts, not times: they do not depend on the machine's speed (a slower machine coalesces more,
so it makes fewer calls, not more), so a budget can be asserted where a time cannot.

Re-measure (writes `tests/budgets.yaml`: measured = the largest of the runs, allowed = 1.5× it
plus a floor):

    python -m tests.budget --runs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import yaml

from collector.flow import config
from collector.flow.pipeline import Pipeline, Wakeups
from collector.harness import appender
from collector.harness.appender import kube_paths
from tests.conftest import ROOT, base_config

BUDGETS = ROOT / "tests" / "budgets.yaml"
# Every kind of call the core counts (`stat_family` = fstat + stat: the fstat guard's count).
KINDS = ("read", "stat_family", "open", "close", "lseek", "readdir", "inotify_read", "inotify_remask", "fadvise",
         "readlink")
FLOOR_CALLS = 100  # a kind measured near 0 may still make a few calls: 100 over a run
PER_SECOND_FLOOR = 5.0


@dataclass(frozen=True)
class Workload:
    files: int
    rate: float = 0.0  # lines per file per second (appends); 0: bulk
    seconds: float = 0.0
    rotate_kib: int = 0
    fmt: str = "plain"
    bulk_lines: int = 0  # lines per file written before start (bulk: read from the head)
    watch: str = "auto"

    @property
    def written(self) -> int:
        return self.files * self.bulk_lines if self.bulk_lines else int(self.files * self.rate * self.seconds)


WORKLOADS = {
    "appends-200": Workload(files=200, rate=50, seconds=5),
    "appends-1000": Workload(files=1000, rate=10, seconds=5),
    "rotation": Workload(files=20, rate=500, seconds=5, rotate_kib=64),
    "kubernetes": Workload(files=120, rate=50, seconds=5, rotate_kib=16, fmt="cri"),
    "bulk": Workload(files=10, bulk_lines=40_000),
}


def _config(tmp_path: Path, w: Workload, watch: str) -> config.Config:
    glob = f"{tmp_path}/logs/*/*/*.log" if w.fmt == "cri" else f"{tmp_path}/logs/*.log"
    c = base_config(tmp_path, [glob], watch=watch, rescan_interval="60s", format=w.fmt)
    c["outputs"] = [{"type": "blackhole"}]
    return config.parse(yaml.safe_dump(c))


def _names(logs: Path, w: Workload) -> list[str]:
    return kube_paths(str(logs), w.files) if w.fmt == "cri" else [str(logs / f"w{i:04d}.log") for i in range(w.files)]


async def _delivered(p: Pipeline, n: int, seconds: float, what: str) -> None:
    """Wait until `n` records are delivered; past `seconds`, fail saying what is missing and the
    pipeline's counters (a bare timeout in CI said nothing of why)."""
    with trio.move_on_after(seconds):
        while p.records_delivered < n:  # noqa: ASYNC110 (the pipeline's own counter)
            await trio.sleep(0.05)
    if p.records_delivered < n:
        s = p.stats()
        raise AssertionError(
            f"{what}: {p.records_delivered} of {n} records delivered after {seconds:g} s: "
            + " ".join(f"{k}={s[k]}" for k in ("lines", "records_delivered", "batches_delivered", "files_open",
                                               "rotations", "deletions", "truncations", "open_errors",
                                               "read_errors", "parse_errors", "recovered_from_gzip",
                                               "inotify_overflows", "steps") if k in s))


async def run(tmp_path: Path, w: Workload, watch: str | None = None) -> dict[str, Any]:
    """The core's counters over the workload (after start-up and discovery for appends; the
    whole read for bulk), plus `wakeups` of the event loop and `elapsed_ms`, and the count of
    files polled at the end (`auto` polls files on filesystems it does not trust)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    line = "2026-12-01T10:00:00Z stdout F hello\n" if w.fmt == "cri" else "hello\n"
    for name in _names(logs, w):
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "w") as f:  # noqa: ASYNC230 (set-up before the pipeline starts)
            if w.bulk_lines:
                f.writelines(f"{name} line {i:08d} of the bulk workload, padded to a plausible length\n"
                             for i in range(w.bulk_lines))
            else:
                f.write(line)  # the files exist (one line each) before start: discovery is over before counting
    p = Pipeline(_config(tmp_path, w, watch or w.watch))
    # The pipeline counts its loop's wakeups (`loop_wakeups`); an instrument of the test's own,
    # over the same window, must agree exactly (catches a count not kept, or not for the whole run).
    wakeups = Wakeups()
    async with trio.open_nursery() as n:
        if w.bulk_lines:
            before: dict[str, int] = {}
            trio.lowlevel.add_instrument(wakeups)
            t0 = trio.current_time()
            await n.start(p.run)
            await _delivered(p, w.written, 300, "the bulk read")
            woke, elapsed = wakeups.n, trio.current_time() - t0
            counted = p.stats()["loop_wakeups"]
        else:
            await n.start(p.run)
            await _delivered(p, w.files, 60, "the files' first lines")
            before = p.stats()
            args = [str(w.rotate_kib), "kubernetes"] if w.fmt == "cri" else [str(w.rotate_kib)] if w.rotate_kib else []
            counted = -p.stats()["loop_wakeups"]
            trio.lowlevel.add_instrument(wakeups)
            t0 = trio.current_time()
            writer = await trio.lowlevel.open_process(
                [*appender.COMMAND, str(logs), str(w.files), str(w.rate), str(w.seconds), *args],
                stdout=subprocess.DEVNULL)
            assert await writer.wait() == 0
            # Wakeups while lines are written (the wait below polls, and is not counted).
            woke, elapsed = wakeups.n, trio.current_time() - t0
            counted += p.stats()["loop_wakeups"]
            await _delivered(p, w.files + w.written, 180, "every line written")
        trio.lowlevel.remove_instrument(wakeups)
        after = p.stats()
        p.request_stop()
    assert p.records_delivered == w.files * (0 if w.bulk_lines else 1) + w.written, "every line delivered, none twice"
    assert counted == woke, f"the pipeline counted {counted} wakeups, the test's instrument {woke}"
    return {k: after[k] - before.get(k, 0) for k in after} | {
        "wakeups": woke, "elapsed_ms": int(elapsed * 1000), "files_polled_end": after["files_polled"]}


def rates(w: Workload, d: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per line written: every kind (and, for bulk, steps and wakeups: its duration is the
    machine's speed); per second of writing: steps, wakeups and the checkpoints' fsyncs (their
    share of profile samples is the disk's, not judged: this count is their guard)."""
    per_line = {k: d[k if k == "stat_family" else f"syscalls_{k}"] / w.written for k in KINDS}
    if w.bulk_lines:
        per_line |= {"steps": d["steps"] / w.written, "wakeups": d["wakeups"] / w.written}
        return {"per_line": per_line}
    seconds = d["elapsed_ms"] / 1000
    return {"per_line": per_line, "per_second": {"steps": d["steps"] / seconds, "wakeups": d["wakeups"] / seconds,
                                                 "fsyncs": d["checkpoint_fsyncs"] / seconds}}


def load() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(BUDGETS.read_text())
    return doc


def over_budget(name: str, measured: dict[str, dict[str, float]], budget: dict[str, Any] | None = None) -> list[str]:
    """One line per count over its budget: the workload, the call, the value, the budget."""
    budget = budget if budget is not None else load()[name]
    out = []
    for unit, values in measured.items():
        for kind, value in values.items():
            spec = budget[unit][kind]
            if value > spec["allowed"]:
                per = "per line" if unit == "per_line" else "per second"
                out.append(f"{name}: {kind} {value:.4f} {per} is over its budget of {spec['allowed']} "
                           f"(measured {spec['measured']} when the budget was set)")
    return out


def _allowed(value: float, floor: float) -> float:
    return float(f"{max(1.5 * value, value + floor):.4g}")


HEADER = """\
# The syscall and wakeup budget, per workload (tests/budget.py runs them, tests/test_budget.py
# checks every count in CI). per_line: calls the core counts per line written; per_second:
# the pipeline's steps, the event loop's wakeups and the checkpoints' fsyncs per second of writing
# (bulk: steps and wakeups per line).
# measured: the largest of {runs} runs on the machine that set it (python -m tests.budget --runs {runs});
# allowed: the budget: 1.5x measured, and at least measured + {floor_calls} calls over the run
# (per line) or + {second_floor}/s (per second), for counts near zero.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.budget", description="Re-measure tests/budgets.yaml.")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args(argv)
    import tempfile

    doc = load() if BUDGETS.exists() else {}
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        runs = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(rates(w, trio.run(run, Path(tmp), w)))
            print(f"{name} run {i + 1}: {runs[-1]}", file=sys.stderr)
        entry: dict[str, Any] = {"workload": {k: v for k, v in vars(w).items() if v}}
        for unit in runs[0]:
            floor = FLOOR_CALLS / w.written if unit == "per_line" else PER_SECOND_FLOOR
            entry[unit] = {}
            for kind in runs[0][unit]:
                m = max(r[unit][kind] for r in runs)
                entry[unit][kind] = {"measured": float(f"{m:.4g}"), "allowed": _allowed(m, floor)}
        doc[name] = entry
    BUDGETS.write_text(HEADER.format(runs=args.runs, floor_calls=FLOOR_CALLS, second_floor=PER_SECOND_FLOOR)
                       + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120))
    print(f"wrote {BUDGETS}", file=sys.stderr)


if __name__ == "__main__":
    main()
