"""The seams the architecture promises, each shown by behaviour: one set of defaults (what tests
and benchmarks build is what `run` builds), one codec policy (a batch is compressed once, with
its output's current codec), typed errors (a corrupt checkpoint file is corrupt state, not a
configuration error), counters readable while a worker is inside a step, and resources
released in reverse when start-up fails half-way."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from collector import _native
from collector.flow import config
from collector.flow.outputs import Output, build
from collector.flow.pipeline import Pipeline, lock_state_dir, standalone_tailer, tailer_options_for
from collector.harness.receiver import Receiver
from collector.observe.admin import Admin
from collector.observe.telemetry import Telemetry
from tests.conftest import ROOT


async def until(cond: Callable[[], Any], deadline_s: float, what: str) -> None:
    """Wait for `cond` with a deadline (trio's clock; the condition is checked every 20 ms)."""
    try:
        with trio.fail_after(deadline_s):
            while not cond():  # noqa: ASYNC110 (a condition other threads make true)
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {deadline_s}s waiting for {what}") from None


def _cfg(tmp_path: Path, extra: str = "", outputs: str = "[{type: blackhole}]", inp: str = "") -> config.Config:
    return config.parse(
        f"state_dir: {tmp_path}/state\ninputs: [{{paths: ['{tmp_path}/logs/*.log']{inp}}}]\n"
        f"outputs: {outputs}\nprogress_interval: 0s\n{extra}"
    )


async def test_tailers_built_by_tests_and_benchmarks_are_the_ones_run_builds(tmp_path: Path) -> None:
    # Catches a default written twice (the binding's, a test helper's, the configuration's):
    # the options the pipeline hands the core equal those of the standalone path, field by field.
    (tmp_path / "logs").mkdir()
    cfg = _cfg(tmp_path)
    p = Pipeline(cfg)
    async with trio.open_nursery() as n:
        await n.start(p.run)
        p.request_stop()
    standalone = tailer_options_for(cfg, [build(o, cfg.state_dir) for o in cfg.outputs])
    assert p.tailer_options == standalone
    o = standalone[0]
    # The configuration's defaults reach the core as numbers, decoded once.
    defaults = (o.watch, o.coalesce, o.batch_max_bytes, o.batch_max_age, o.rescan_interval)
    assert defaults == ("auto", None, 2 << 20, 0.2, 60.0)
    assert (o.encodings, o.compression, o.outputs) == (["proto"], None, 1)
    cp, t = standalone_tailer(cfg)
    assert t.read_delay() == 0.2, "coalesce auto waits the batch's max_age"


async def test_a_batch_is_compressed_once_with_the_codec_its_output_sends(tmp_path: Path) -> None:
    # Catches the core compressing with the codec it was built with after the output switched
    # (a 415): every later batch would be compressed twice, zstd at close and gzip to send.
    logs = tmp_path / "logs"
    logs.mkdir()
    rounds, per_round = 4, 50
    with Receiver(accept_zstd=False) as r:
        cfg = _cfg(tmp_path, "batch: {max_age: 20ms}\n", f"[{{type: otlp_http, endpoint: '{r.endpoint}'}}]")
        p = Pipeline(cfg)
        before = _native.compressions()
        async with trio.open_nursery() as n:
            await n.start(p.run)
            with (logs / "a.log").open("a") as f:
                for i in range(rounds):
                    # One batch at a time: each round is written after the last one arrived.
                    f.write("".join(f"round {i} line {j}\n" for j in range(per_round)))
                    f.flush()
                    await until(lambda i=i: r.records() == (i + 1) * per_round, 20, f"round {i}")
            p.request_stop()
        made = _native.compressions() - before
    requests = sum(r.got.statuses.values())
    assert r.got.statuses == {415: 1, 200: rounds} and set(r.got.encodings) == {"gzip"}
    # The first batch was compressed with zstd as it closed, refused, then compressed with
    # gzip; every later one once, with gzip, as it closed.
    assert made == requests == rounds + 1
    assert p.records_delivered == rounds * per_round


def test_a_corrupt_checkpoint_file_is_corrupt_state_naming_the_file(tmp_path: Path) -> None:
    # Catches errors crossing the binding as strings: a corrupt state file reported as a
    # configuration error (exit 2) tells the user to fix a configuration that is fine.
    (tmp_path / "logs").mkdir()
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoints.json").write_text('{"version": 1, "entries": [')
    with pytest.raises(_native.CorruptState, match="checkpoints.json: not a checkpoint file"):
        _native.Checkpointer(str(state), 60.0)
    (tmp_path / "c.yaml").write_text(
        f"state_dir: {state}\ninputs: [{{paths: ['{tmp_path}/logs/*.log']}}]\noutputs: [{{type: blackhole}}]\n"
        "admin: {enabled: false}\nprofiler: {enabled: false}\nprogress_interval: 0s\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "run", "--config", str(tmp_path / "c.yaml")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert r.returncode == 1, r.stderr
    why = "tailrace: corrupt state, not guessing (move the file aside to start over)"
    assert f"{why}: {state}/checkpoints.json: not a checkpoint file" in r.stderr
    assert "Traceback" not in r.stderr and "configuration error" not in r.stderr


async def test_metrics_are_answered_while_a_worker_is_inside_a_step(tmp_path: Path) -> None:
    # Catches a getter that takes the tailer's lock with the GIL held: the scrape would wait
    # for the step (here: for ever, the step is held until the scrape has answered).
    (tmp_path / "logs").mkdir()
    # Polling with no file: a step every 50 ms, each on a worker thread (none reads a byte).
    cfg = _cfg(tmp_path, "admin: {address: '127.0.0.1:0'}\n", inp=", watch: poll, poll_interval: 50ms")
    p = Pipeline(cfg)
    telemetry = Telemetry(p)
    admin = Admin(p, telemetry, None)
    async with trio.open_nursery() as n:
        await n.start(p.run)
        port = await n.start(admin.serve, cfg.admin.address)
        t = p.tailers[0]
        t._hold_steps(True)
        try:
            await until(t._step_held, 20, "a step held on its worker thread")

            def scrape() -> tuple[int, bytes]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                    return resp.status, resp.read()

            status, body = await trio.to_thread.run_sync(scrape)
            assert t._step_held(), "answered while the step was still held"
            assert status == 200 and b"tailrace_lines_read_total" in body
            # The counters as the steps before the held one left them, answered at once.
            during = t.stats()["steps"]
            assert t._step_held()
        finally:
            t._hold_steps(False)  # a held worker cannot be cancelled: release it first
        # Released, the held step ends and publishes: the count moves on.
        await until(lambda: t.stats()["steps"] > during, 20, "the held step to finish")
        p.request_stop()
        n.cancel_scope.cancel()
    assert not t._step_held()


class _Opened(Output):
    def __init__(self, name: str, events: list[str], fail: bool = False) -> None:
        super().__init__(name)
        self.events = events
        self.fail = fail

    async def open(self) -> None:
        if self.fail:
            raise OSError(f"{self.name}: cannot open")
        self.events.append(f"open {self.name}")

    async def close(self) -> None:
        self.events.append(f"close {self.name}")


async def test_a_failing_second_output_closes_the_first_and_releases_the_lock(tmp_path: Path) -> None:
    # Catches resources acquired outside the pipeline's scope: the first output left open and
    # the state_dir locked, so a retry in the same process (or a restart) finds it "in use".
    (tmp_path / "logs").mkdir()
    cfg = _cfg(tmp_path, outputs="[{type: blackhole}, {type: blackhole}]")
    p = Pipeline(cfg)
    events: list[str] = []
    p.outputs = [_Opened("one", events), _Opened("two", events, fail=True)]
    with pytest.raises(OSError, match="two: cannot open"):
        await p.run()
    assert events == ["open one", "close one"]
    fd = lock_state_dir(cfg.state_dir)  # raises StateDirInUse while another holder has it
    os.close(fd)
    assert (tmp_path / "state" / "checkpoints.json").exists(), "the last checkpoints were written"
