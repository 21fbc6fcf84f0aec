"""pytest-benchmark micro-benchmarks of the core's hot paths, through its Python API: read +
line split + OTLP JSON encoding of a file, with plain lines and with lines that need JSON
escaping, and start-up over many files (identity, fingerprint, checkpoint registration).
Not part of `make test`; run with

    .venv/bin/python -m pytest bench/micro --benchmark-only

Each round builds a fresh tailer and reads the whole file (page cache warm)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from collector.flow import config
from collector.flow.pipeline import standalone_tailer

LINES = 100_000
counter = itertools.count()


def _drain(directory: Path, tmp: Path) -> int:
    cfg = config.parse(
        f"state_dir: {tmp}/state{next(counter)}\n"
        f"inputs: [{{name: bench, paths: ['{directory}/*.log'], read_budget: 1GiB}}]\n"
        "outputs: [{type: blackhole}]\nbatch: {max_age: 1h}"
    )
    _, t = standalone_tailer(cfg)
    records = 0
    while True:
        batches = t.step()
        if not batches:
            break
        records += sum(b.records for b in batches)
    return records + sum(b.records for b in t.flush())


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plain")
    (d / "a.log").write_bytes(
        b"".join(
            b"2026-11-26T00:00:00Z INFO request %08d served in 12ms path=/api/v1/items\n" % i for i in range(LINES)
        )
    )
    return d


@pytest.fixture(scope="module")
def escaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("escaped")
    (d / "a.log").write_bytes(
        b"".join(b'{"level":"info","msg":"quoted \\"%08d\\"\\ttab","n":1}\n' % i for i in range(LINES))
    )
    return d


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("many")
    for i in range(2000):
        (d / f"f{i:05d}.log").write_bytes(b"one line\n")
    return d


def test_read_split_encode_plain(benchmark, plain: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(_drain, plain, tmp_path) == LINES


def test_read_split_encode_escaped(benchmark, escaped: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(_drain, escaped, tmp_path) == LINES


def test_startup_2000_files(benchmark, many: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(_drain, many, tmp_path) == 2000
