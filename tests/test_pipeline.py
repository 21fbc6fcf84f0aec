"""The core through its Python API, and the trio pipeline in-process: checkpoints advance
exactly to acknowledged bytes, and only when every output has acknowledged."""

from __future__ import annotations

from pathlib import Path

import trio

from collector._native import Batch, read_checkpoints
from collector.flow import config
from collector.flow.outputs import Output
from collector.flow.pipeline import Pipeline, standalone_tailer
from tests.conftest import records


def test_checkpoint_advances_only_on_commit_and_exactly(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntwo\nthree\npartial")
    cfg = config.parse(
        f"state_dir: {tmp_path}/state\ninputs: [{{name: in, paths: ['{tmp_path}/*.log']}}]\n"
        "outputs: [{type: blackhole}]\nbatch: {max_records: 2, max_age: 0s}"
    )
    cp, t = standalone_tailer(cfg)
    batches = t.step() + t.flush()
    assert [b.records for b in batches] == [2, 1]
    assert [b.input_bytes for b in batches] == [8, 6]
    cp.write()
    assert cp.offset_of("in", str(log)) == 0
    t.commit(batches[1].id)  # out of order: nothing contiguous yet
    assert cp.offset_of("in", str(log)) == 0
    t.commit(batches[0].id)
    assert cp.offset_of("in", str(log)) == 14  # "one\ntwo\nthree\n": the partial is not committed
    assert cp.write() == 1
    # As a restart reads it (the snapshot, then the journal).
    assert [(e["path"], e["offset"]) for e in read_checkpoints(str(tmp_path / "state"))] == [(str(log), 14)]
    stats = t.stats()
    assert (stats["lines"], stats["bytes"], stats["batches"], stats["pending_batches"]) == (3, 14, 2, 0)
    assert stats["syscalls_fstat"] == 1  # one at open; none on the read path


class GatedOutput(Output):
    """An output that holds every batch until its gate opens."""

    encoding = "proto"
    max_in_flight = 1

    def __init__(self) -> None:
        super().__init__("gated")
        self.gate = trio.Event()
        self.got: list[Batch] = []

    async def open(self) -> None:
        pass

    def precompress(self) -> None:
        return None

    def state(self) -> dict[str, object]:
        return {}

    async def serve(self) -> None:
        pass

    async def send(self, batch: Batch) -> None:
        await self.gate.wait()
        self.got.append(batch)

    async def close(self) -> None:
        pass


async def test_checkpoint_waits_for_every_output(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100)))
    cfg = config.parse(
        f"state_dir: {tmp_path}/state\ninputs: [{{paths: ['{tmp_path}/*.log'], poll_interval: 20ms}}]\n"
        f"outputs: [{{type: file, path: {tmp_path}/out.jsonl}}, {{type: blackhole}}]\n"
        "batch: {max_age: 10ms}\ncheckpoint_interval: 20ms\nprogress_interval: 0s"
    )
    p = Pipeline(cfg)
    gated = GatedOutput()
    p.outputs[1] = gated
    async with trio.open_nursery() as n:
        await n.start(p.run)
        with trio.fail_after(10):
            while len(records(tmp_path / "out.jsonl")) < 100:  # noqa: ASYNC110 (a file another task writes)
                await trio.sleep(0.02)
        # The file output acknowledged every batch (its counters move as its send returns, and
        # the acknowledgement follows without an await): only the gated output holds them back.
        with trio.fail_after(10):
            while p.outputs[0].stats["delivered_records"] < 100:  # noqa: ASYNC110
                await trio.sleep(0.02)
        p.checkpointer.write()
        assert p.checkpointer.offset_of("input0", str(log)) == 0, "the gated output has not acknowledged"
        gated.gate.set()
        with trio.fail_after(10):
            while p.records_delivered < 100:  # noqa: ASYNC110
                await trio.sleep(0.02)
        p.request_stop()
    assert p.checkpointer.offset_of("input0", str(log)) == log.stat().st_size
    assert sum(b.records for b in gated.got) == 100


async def test_checkpoints_follow_acknowledgements_and_an_idle_pipeline_never_wakes(tmp_path: Path) -> None:
    """The last acknowledgement is made durable within `checkpoint_interval` though nothing else
    happens after it; then, idle, tailrace's event loop does not wake at all (no checkpoint
    timer, no loop-lag probe: each wakeup costs ~0.4 ms of CPU on a VM)."""
    log = tmp_path / "a.log"
    log.write_bytes(b"one\n")
    cfg = config.parse(
        f"state_dir: {tmp_path}/state\n"
        f"inputs: [{{paths: ['{tmp_path}/*.log'], watch: inotify, rescan_interval: 60s}}]\n"
        "outputs: [{type: blackhole}]\nbatch: {max_age: 10ms}\ncheckpoint_interval: 300ms\nprogress_interval: 0s"
    )
    p = Pipeline(cfg)
    async with trio.open_nursery() as n:
        await n.start(p.run)
        with trio.fail_after(10):
            while p.records_delivered < 1:  # noqa: ASYNC110 (the pipeline's own counter)
                await trio.sleep(0.02)
        acked = trio.current_time()
        with trio.fail_after(5):
            while p.checkpoint_writes < 1:  # noqa: ASYNC110
                await trio.sleep(0.02)
        # Within the interval of the acknowledgement (the first write is due 300 ms after the
        # start, which came before it), with what a restart would read.
        assert trio.current_time() - acked < 0.3 + 0.1
        assert [e["offset"] for e in read_checkpoints(str(tmp_path / "state"))] == [4]
        before = p.wakeups.n
        await trio.sleep(1.0)
        # The one wakeup is this test's own sleep; a checkpoint timer would add three.
        assert (p.wakeups.n - before, p.checkpoint_writes) == (1, 1)
        p.request_stop()


class StallingOutput(GatedOutput):
    """An output whose first send blocks the event loop itself (a synchronous call where an
    await belonged: the bug a plugin can bring), then behaves."""

    def __init__(self, stall: float) -> None:
        super().__init__()
        self.gate.set()
        self.stall = stall

    async def send(self, batch: Batch) -> None:
        if self.stall:
            import time

            time.sleep(self.stall)  # noqa: ASYNC251 (the stall under test)
            self.stall = 0
        self.got.append(batch)


async def test_an_event_loop_stall_shows_in_the_loop_lag_and_loses_nothing(tmp_path: Path) -> None:
    from collector.observe.telemetry import Telemetry

    log = tmp_path / "a.log"
    cfg = config.parse(
        f"state_dir: {tmp_path}/state\ninputs: [{{paths: ['{tmp_path}/*.log'], poll_interval: 20ms}}]\n"
        "outputs: [{type: blackhole}]\nbatch: {max_age: 10ms, max_records: 100}\ncheckpoint_interval: 20ms\n"
        "progress_interval: 0s"
    )
    p = Pipeline(cfg)
    stalling = StallingOutput(stall=2.5)
    p.outputs[0] = stalling
    telemetry = Telemetry(p, None)
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    async with trio.open_nursery() as n:
        await n.start(p.run)
        with trio.fail_after(30):
            while p.records_delivered < 1000:  # noqa: ASYNC110 (the pipeline's own counter)
                await trio.sleep(0.02)
            # The lag is the longest run between two I/O waits: the stall's.
            while telemetry.loop_lag < 1.0:  # noqa: ASYNC110
                await trio.sleep(0.05)
        p.request_stop()
        n.cancel_scope.cancel()
    assert sum(b.records for b in stalling.got) == 1000
    assert [e["offset"] for e in read_checkpoints(str(tmp_path / "state"))] == [log.stat().st_size]


async def test_answers_and_checkpoint_writes_ride_on_the_next_pass_one_wakeup_a_pass(tmp_path: Path) -> None:
    """At a steady rate the event loop wakes once a pass: the HTTP answer to a pass's batch is
    read, and a checkpoint write's completion taken up, in the next pass's wakeup, not in
    wakeups of their own (~0.15-0.4 ms of CPU each on a VM; they were six of eleven a second at
    1,000 files). Every line is still delivered once and checkpointed exactly."""
    import threading

    from collector.harness.receiver import Receiver

    logs = [tmp_path / f"f{i}.log" for i in range(4)]
    for f in logs:
        f.write_bytes(b"")
    stop = threading.Event()
    written = [0]

    def writer() -> None:  # another thread: its sleeps are not this event loop's wakeups
        while not stop.wait(0.01):
            for f in logs:
                with f.open("ab") as fh:
                    fh.write(b"line %d\n" % written[0])
                written[0] += 1

    with Receiver() as r:
        cfg = config.parse(
            f"state_dir: {tmp_path}/state\n"
            f"inputs: [{{paths: ['{tmp_path}/*.log'], watch: inotify, rescan_interval: 60s}}]\n"
            f"outputs: [{{type: otlp_http, endpoint: '{r.endpoint}'}}]\n"
            "batch: {max_age: 100ms}\ncheckpoint_interval: 300ms\nprogress_interval: 0s"
        )
        p = Pipeline(cfg)
        thread = threading.Thread(target=writer)
        async with trio.open_nursery() as n:
            await n.start(p.run)
            thread.start()
            with trio.fail_after(10):
                while p.records_delivered < 100:  # noqa: ASYNC110 (the pipeline's own counter)
                    await trio.sleep(0.05)
            s0, w0 = p.stats(), p.wakeups.n
            await trio.sleep(3.0)  # one wakeup of this test's own
            s1, w1 = p.stats(), p.wakeups.n
            stop.set()
            await trio.to_thread.run_sync(thread.join)
            with trio.fail_after(10):
                while p.records_delivered < written[0]:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            p.request_stop()
        steps = s1["steps"] - s0["steps"]
        requests = s1["otlp_http0.requests"] - s0["otlp_http0.requests"]
        writes = s1["checkpoint_fsyncs"] - s0["checkpoint_fsyncs"]
        # ~30 passes, each shipping a batch; ~10 checkpoint writes. Each answer and write
        # completion in a wakeup of its own would make it ~70 (either alone, 40 or 60). The
        # margin: this test's own sleep, and a slow step's successor run on a worker thread.
        assert steps >= 20 and requests >= steps - 2 and writes >= 5, (steps, requests, writes)
        assert w1 - w0 <= steps + 5, (w1 - w0, steps, requests, writes)
        assert r.records() == written[0] == p.records_delivered
    assert [e["offset"] for e in read_checkpoints(str(tmp_path / "state"))] == [f.stat().st_size for f in logs]
