"""The syscall and wakeup budget (tests/budgets.yaml, tests/budget.py) in CI: every workload
within every budget; a budget can fail (one `lseek` injected per read fails it, naming the
call); `naive` (Fluent Bit's event path) is over it by its stat and fadvise calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import _native
from tests import budget


@pytest.mark.parametrize("name", list(budget.WORKLOADS))
async def test_every_count_is_within_its_budget(tmp_path: Path, name: str) -> None:
    w = budget.WORKLOADS[name]
    d = await budget.run(tmp_path, w)
    assert d["files_polled_end"] == 0, "auto watched every file by inotify (a polled run would judge polling)"
    measured = budget.rates(w, d)
    print(name, measured)
    assert budget.over_budget(name, measured) == []


def test_the_budget_file_covers_every_workload_and_call() -> None:
    # A workload or a counted call added without a budget fails here, not silently.
    doc = budget.load()
    assert sorted(doc) == sorted(budget.WORKLOADS)
    for name, entry in doc.items():
        kinds = set(budget.KINDS) | ({"steps", "wakeups"} if budget.WORKLOADS[name].bulk_lines else set())
        assert set(entry["per_line"]) == kinds, name
        if not budget.WORKLOADS[name].bulk_lines:
            assert set(entry["per_second"]) == {"steps", "wakeups", "fsyncs"}, name
        for unit in ("per_line", "per_second"):
            for kind, spec in entry.get(unit, {}).items():
                assert spec["allowed"] >= spec["measured"], (name, kind)


def test_over_budget_names_the_workload_the_call_the_value_and_the_budget() -> None:
    budget_doc = {"per_line": {"read": {"measured": 0.4, "allowed": 0.6}, "lseek": {"measured": 0.0, "allowed": 0.002}},
                  "per_second": {"wakeups": {"measured": 30.0, "allowed": 50.0}}}
    measured = {"per_line": {"read": 0.6, "lseek": 0.41}, "per_second": {"wakeups": 51.0}}
    assert budget.over_budget("w", measured, budget_doc) == [
        "w: lseek 0.4100 per line is over its budget of 0.002 (measured 0.0 when the budget was set)",
        "w: wakeups 51.0000 per second is over its budget of 50.0 (measured 30.0 when the budget was set)",
    ]


@pytest.fixture
def extra_lseek() -> Iterator[None]:
    _native._inject_regression("lseek", True)
    try:
        yield
    finally:
        _native._inject_regression("lseek", False)


async def test_one_extra_lseek_per_read_fails_the_budget(tmp_path: Path, extra_lseek: None) -> None:
    w = budget.WORKLOADS["appends-200"]
    measured = budget.rates(w, await budget.run(tmp_path, w))
    failures = budget.over_budget("appends-200", measured)
    # Exactly the injected call is over, by as many calls as reads (each read got one more).
    assert [f.split(" ")[1] for f in failures] == ["lseek"], failures
    assert measured["per_line"]["lseek"] >= measured["per_line"]["read"], measured


async def test_naive_is_over_budget_by_its_stat_and_fadvise_calls(tmp_path: Path) -> None:
    w = budget.WORKLOADS["appends-200"]
    d = await budget.run(tmp_path, w, watch="naive")
    measured = budget.rates(w, d)
    over = {f.split(" ")[1] for f in budget.over_budget("appends-200", measured)}
    assert {"stat_family", "fadvise"} <= over, over
    assert d["stat_family"] >= 2 * w.written, d  # Fluent Bit's two fstats per read, at least
    assert d["syscalls_fadvise"] >= 0.3 * w.written, d
