"""The pipeline: tailer tasks (one per input, driving the Rust core on a worker thread) →
bounded channel → dispatcher → one bounded channel and task per output. Each output's
acknowledgement goes to the core's ledger, which commits a batch (its checkpoints may advance)
when every output has acknowledged it. At a steady rate the event loop wakes once a pass: an
HTTP answer and a checkpoint write's completion are taken up in the next pass's wakeup
(`Passes`). Stopping: tailers stop
reading and flush their open batch, channels close downstream, outputs drain within
`shutdown_grace`, and the checkpoints are written one last time."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable

import msgspec
import outcome
import trio

from collector import log
from collector._native import Batch, Checkpointer, Tailer, raise_nofile_limit
from collector.flow.config import CHECKPOINT_FORGET_AFTER, Config, TailerOptions, tailer_options
from collector.flow.outputs import Output, build

CHANNEL_SIZE = 4
# The longest an HTTP answer or a checkpoint write's completion waits for the next pass (see
# `Passes`) before it is taken up in a wakeup of its own (the tail loops are idle).
RIDE_AT_MOST = 0.25
# Steps shorter than this run on the trio thread (GIL released inside); longer ones on a worker.
INLINE_STEP_SECONDS = 0.02


def tailer_options_for(cfg: Config, outputs: list[Output]) -> list[TailerOptions]:
    """Each input's tailer options, given the outputs it feeds: the wire forms they need, the
    codec batches are compressed with as they close (the first output that compresses: on the
    thread that reads, no extra thread hop per batch), and how many acknowledge each batch."""
    encodings = sorted({o.encoding for o in outputs})
    compression = next((c for o in outputs if (c := o.precompress()) is not None), None)
    host = socket.gethostname()
    node = os.environ.get("K8S_NODE_NAME") or None  # set by the DaemonSet (downward API)
    return [
        tailer_options(
            inp, cfg, encodings=list(encodings), compression=compression, outputs=len(outputs), host=host,
            node_name=node,
        )
        for inp in cfg.inputs
    ]


def make_tailer(cp: Checkpointer, options: TailerOptions) -> Tailer:
    return Tailer(cp, **msgspec.structs.asdict(options))


def standalone_tailer(cfg: Config, index: int = 0) -> tuple[Checkpointer, Tailer]:
    """Input `index`'s tailer built exactly as `Pipeline.run` builds it, without a pipeline
    (tests and micro-benchmarks drive it by hand)."""
    outputs = [build(o, cfg.state_dir) for o in cfg.outputs]
    cp = Checkpointer(cfg.state_dir, CHECKPOINT_FORGET_AFTER)
    return cp, make_tailer(cp, tailer_options_for(cfg, outputs)[index])


class StateDirInUse(Exception):
    """Another tailrace holds this state_dir: two would overwrite each other's checkpoints."""


def lock_state_dir(state_dir: str) -> int:
    """An exclusive flock on `state_dir/lock`, held (by the open descriptor) for the process's
    life; the kernel releases it however the process ends. The lock file names the holder."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)  # checkpoints, spool, profiles: tailrace's only
    path = os.path.join(state_dir, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise StateDirInUse(f"state_dir {state_dir} is in use by another tailrace (pid {holder or '?'})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(fd: int) -> str:
    return os.pread(fd, 64, 0).decode(errors="replace").strip()


def state_dir_holder(state_dir: str) -> str | None:
    """Who holds `state_dir`'s lock (what its lock file says), if a running tailrace does;
    nothing is created (check-config)."""
    try:
        fd = os.open(os.path.join(state_dir, "lock"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd) or "pid unknown"
    finally:
        os.close(fd)


class LoopLag:
    """The longest the event loop ran tasks without going back to its I/O wait, over the last
    1-2 s: every timer and I/O event waited that long at worst (a task that blocks holds them
    all up). Measured by the `Wakeups` instrument, not by a probe of its own (a probe's timer
    would be a wakeup a second, ~0.4 ms of CPU each). `tailrace_event_loop_lag_seconds`."""

    WINDOW = 1.0

    def __init__(self) -> None:
        self._max = self._before = 0.0
        self._since = -math.inf

    def ran(self, seconds: float, now: float) -> None:
        if now - self._since >= self.WINDOW:
            self._before, self._max, self._since = self._max, 0.0, now
        self._max = max(self._max, seconds)

    @property
    def value(self) -> float:
        return max(self._max, self._before)


class Wakeups(trio.abc.Instrument):
    """Times the event loop slept and woke (an I/O wait with a timeout, not a busy pass): on a VM
    each costs ~0.4 ms of CPU (`bench.floors`), more than reading a line, so their rate is the
    Python side's cost driver (`tailrace_event_loop_wakeups`). Between a wait and the next the
    loop runs tasks: the longest such run is the loop's lag (`LoopLag`)."""

    def __init__(self) -> None:
        self.n = 0
        self.lag = LoopLag()
        self._woke: float | None = None

    def before_io_wait(self, timeout: float) -> None:
        if self._woke is not None:
            now = time.monotonic()
            self.lag.ran(now - self._woke, now)

    def after_io_wait(self, timeout: float) -> None:
        self._woke = time.monotonic()
        if timeout > 0:
            self.n += 1


class Passes:
    """The tail loops' passes, for work that can wait for the next one: an HTTP answer due a
    millisecond after its request, a checkpoint write's completion. Taken up in the wakeup of
    the next pass (within `within` at the latest) rather than in one of their own: at a steady
    rate these were six of eleven wakeups a second, ~0.15 ms of CPU each on this VM (more than
    the work they woke for; `bench/results/issue13/README.md`, session 15)."""

    def __init__(self) -> None:
        self._next = trio.Event()

    def passed(self) -> None:
        self._next.set()
        self._next = trio.Event()

    async def next(self, within: float) -> None:
        with trio.move_on_after(within):
            await self._next.wait()


class Pipeline:
    """Outputs are built here (plain objects); every resource is acquired in `run`, in order
    (the state_dir lock, the checkpoints, the tailers with their inotify instances, each
    output opened), and released in reverse inside its scope, whatever fails or is cancelled:
    outputs closed, last checkpoints written, lock released."""

    checkpointer: Checkpointer

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.outputs: list[Output] = [build(o, cfg.state_dir) for o in cfg.outputs]
        self.tailers: list[Tailer] = []
        self.tailer_options: list[TailerOptions] = []
        self._stopping = trio.Event()
        self._finished = trio.Event()
        # Set once every input has made its first step (its first look: discovery done).
        self.looked = trio.Event()
        self._looked_inputs: set[int] = set()
        self._readers: list[trio.CancelScope] = []
        self._commits = 0
        self.records_delivered = 0
        self.batches_delivered = 0
        self.bytes_acked = [0] * len(cfg.inputs)
        self.checkpoint_writes = 0
        self.checkpoint_write_errors = 0
        self._checkpoints_failing = False
        self.wakeups = Wakeups()  # counts while `run` runs
        # The checkpoint loop's wait for its next write, while it waits for one (a tail loop
        # about to sleep past it moves it to now: the write rides on that wakeup).
        self._checkpoint_wait: trio.CancelScope | None = None
        self._acked = trio.Event()  # set by an acknowledgement
        self.passes = Passes()

    def request_stop(self) -> None:
        """Stop reading; what was read is flushed, delivered, and committed."""
        self._stopping.set()
        for scope in self._readers:
            scope.cancel()
        self.passes.passed()  # nothing waits for a pass that may not come

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def finished(self) -> None:
        """Wait until `run` has stopped, flushed and written its last checkpoints."""
        await self._finished.wait()

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for t in self.tailers:
            for k, v in t.stats().items():
                total[k] = total.get(k, 0) + v
        total["records_delivered"] = self.records_delivered
        total["batches_delivered"] = self.batches_delivered
        total["loop_wakeups"] = self.wakeups.n
        if hasattr(self, "checkpointer"):
            for k, v in self.checkpointer.write_stats().items():
                total[f"checkpoint_{k}"] = v
        total["checkpoint_write_errors"] = self.checkpoint_write_errors
        for out in self.outputs:
            for k, v in out.stats.items():
                total[f"{out.name}.{k}"] = v
        return total

    def stats_by_input(self) -> dict[str, dict[str, int]]:
        """Each input's core counters, plus `lag_bytes`: read but not yet acknowledged."""
        out = {}
        for i, (inp, t) in enumerate(zip(self.cfg.inputs, self.tailers, strict=False)):
            s = t.stats()
            s["lag_bytes"] = max(0, s["bytes"] - self.bytes_acked[i])
            out[inp.name] = s
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        trio.lowlevel.add_instrument(self.wakeups)
        try:
            async with contextlib.AsyncExitStack() as resources:
                await self._acquire(resources)
                await self._serve(task_status)
        finally:
            trio.lowlevel.remove_instrument(self.wakeups)
            self._finished.set()

    async def _acquire(self, resources: contextlib.AsyncExitStack) -> None:
        cfg = self.cfg
        lock = lock_state_dir(cfg.state_dir)
        resources.callback(os.close, lock)  # released last: the final checkpoints are written
        self.checkpointer = Checkpointer(cfg.state_dir, CHECKPOINT_FORGET_AFTER)
        loaded = self.checkpointer.loaded
        if loaded["unread_kind"]:
            log.warning("checkpoint journal: a record this version does not read (written by a newer tailrace that "
                        "crashed?) was cut off with what followed it; the offsets before it are kept, so lines "
                        "acknowledged after them will be shipped again", path=self.checkpointer.journal_path,
                        kind=loaded["unread_kind"], bytes=loaded["torn_bytes"])
        elif loaded["torn_bytes"]:
            log.warning("checkpoint journal: a record torn by a crash was cut off (the one before it is kept)",
                        path=self.checkpointer.journal_path, bytes=loaded["torn_bytes"])
        if loaded["migrated"]:
            log.info("checkpoints migrated to version 2 (a snapshot and a journal)", path=self.checkpointer.path)
        resources.push_async_callback(_shielded, functools.partial(self._write_checkpoints, final=True))
        raise_nofile_limit()
        self.tailer_options = tailer_options_for(cfg, self.outputs)
        self._adopt_renamed()
        self.tailers = [make_tailer(self.checkpointer, o) for o in self.tailer_options]
        for t in self.tailers[1:]:
            t.share_with(self.tailers[0])  # one memory bound for the process; files read twice said
        for out in self.outputs:
            await out.open()
            resources.push_async_callback(_shielded, out.close)

    def _adopt_renamed(self) -> None:
        """An input renamed (in the file, or by a reload) keeps its files' checkpoints: the
        entries of an input no longer configured go to the input whose globs read their files
        (the core's rule, `Checkpointer::adopt_renamed`), so nothing is shipped again."""
        inputs = [(o.name, o.paths, o.exclude) for o in self.tailer_options]
        for was, to, files in self.checkpointer.adopt_renamed(inputs):
            if len(to) == 1:
                log.info("checkpoints of an input no longer configured taken over by the input that reads its files "
                         "(renamed?): they are not read again", input=to[0], was=was, files=files)
            else:
                log.warning("checkpoints of an input no longer configured match several inputs, so none takes them "
                            "over: each reads those files as new ones (read_from)", was=was, inputs=", ".join(to),
                            files=files)

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as services:
            services.start_soon(self._checkpoint_loop)
            for out in self.outputs:
                services.start_soon(out.serve)
            with trio.CancelScope() as flow:
                services.start_soon(self._grace_watchdog, flow)
                task_status.started()
                await self._flow()
            if flow.cancelled_caught:
                log.warning(
                    "shutdown grace period over: undelivered batches stay behind their checkpoints",
                    unacknowledged=sum(t.stats()["pending_batches"] for t in self.tailers),
                )
            services.cancel_scope.cancel()

    async def _flow(self) -> None:
        async with trio.open_nursery() as nursery:
            out_sends = []
            for out in self.outputs:
                send, recv = trio.open_memory_channel[tuple[int, Batch]](CHANNEL_SIZE)
                out_sends.append(send)
                nursery.start_soon(self._output_loop, out, recv)
            if len(out_sends) == 1:
                # One output: the tail loops hand it their batches directly (a task hop less
                # per batch).
                to_dispatch = out_sends[0]
            else:
                to_dispatch, dispatched = trio.open_memory_channel[tuple[int, Batch]](CHANNEL_SIZE)
                nursery.start_soon(self._dispatch, dispatched, out_sends)
            async with to_dispatch:
                for i, t in enumerate(self.tailers):
                    nursery.start_soon(self._tail_loop, i, t, to_dispatch.clone())

    def _codec_output(self) -> Output | None:
        """The output whose codec the core compresses with as batches close (see
        `tailer_options_for`)."""
        return next((o for o in self.outputs if o.precompress() is not None), None)

    async def _tail_loop(self, index: int, tailer: Tailer, out: trio.MemorySendChannel[tuple[int, Batch]]) -> None:
        """Step the core, then wait: for news or the core's next timer when nothing is known
        to be written, else for the timer alone (written files wait `coalesce` to be read, an
        open batch its age limit). Both are descriptors the core arms (`wake_fd`, `timer_fd`):
        no trio deadline, whose wakeup cancels a scope (~120-150 µs of CPU more per wakeup here).
        One wakeup carries many lines: on a VM each trio wakeup costs ~250-450 µs of CPU, more
        than reading a line. Stopping cancels the wait; batches already read are sent (shielded)
        and the open batch is flushed. Before each step the core is told the compressing
        output's current codec, so batches close compressed once, with the codec that output
        sends (it changes after a 415)."""
        limiter = trio.CapacityLimiter(1)
        seen: dict[str, int] = {}
        timer_fd, wake_fd = tailer.timer_fd(), tailer.wake_fd()
        heavy = True  # the first step discovers every file: on a worker thread
        codec_out = self._codec_output()
        codec = self.tailer_options[index].compression, self.tailer_options[index].compression_level
        async with out:
            with trio.CancelScope() as reading:
                self._readers.append(reading)
                if self._stopping.is_set():
                    reading.cancel()
                while True:
                    if codec_out is not None and (now := codec_out.precompress() or (None, 0)) != codec:
                        codec = now
                        tailer.set_compression(*codec)
                    # A step that reads little runs inline: a thread hop costs more than the work.
                    # After a step that read a lot the next runs on a worker thread, so the event
                    # loop stays free while a backlog is read.
                    before = tailer.bytes_read()
                    t0 = time.perf_counter()
                    if heavy:
                        batches = await trio.to_thread.run_sync(tailer.step, limiter=limiter)
                    else:
                        batches = tailer.step()
                    if tailer.bytes_read() != before:
                        heavy = time.perf_counter() - t0 > INLINE_STEP_SECONDS
                    if not self.looked.is_set():
                        self._looked_inputs.add(index)
                        if len(self._looked_inputs) == len(self.tailers):
                            self.looked.set()
                    if batches:
                        with trio.CancelScope(shield=True):
                            await self._emit(batches, index, out)
                    for msg in tailer.take_reports():
                        log.warning(msg, input=self.cfg.inputs[index].name)
                    if log.enabled("debug"):
                        seen = self._debug_changes(index, tailer, seen)
                    self.passes.passed()
                    wait = tailer.next_wakeup()
                    if wait <= 0:
                        await trio.lowlevel.checkpoint()
                        continue
                    clock = trio.current_time()
                    planned = clock + wait
                    if (cp := self._checkpoint_wait) is not None and cp.deadline <= planned:
                        cp.deadline = clock  # written in this wakeup, not in one of its own
                    # The core armed its timer for `planned` in the step.
                    await trio.lowlevel.wait_readable(timer_fd if tailer.has_waiting() else wake_fd)
            await self._emit(await trio.to_thread.run_sync(tailer.flush, limiter=limiter), index, out)

    # What a look changed, said at `debug` after the step that made it.
    _DEBUG_KEYS = ("files_opened", "files_closed", "rotations", "truncations", "deletions", "recovered_from_gzip",
                   "scoped_looks", "inotify_overflows", "memory_spills")

    def _debug_changes(self, index: int, tailer: Tailer, seen: dict[str, int]) -> dict[str, int]:
        now = tailer.stats()
        changed = {k: now[k] - seen.get(k, 0) for k in self._DEBUG_KEYS if now[k] != seen.get(k, 0)}
        if changed and seen:
            log.debug("files changed", input=self.cfg.inputs[index].name, open=now["files_open"], **changed)
        return {k: now[k] for k in self._DEBUG_KEYS}

    @staticmethod
    async def _emit(batches: list[Batch], index: int, out: trio.MemorySendChannel[tuple[int, Batch]]) -> None:
        for b in batches:
            await out.send((index, b))

    async def _dispatch(
        self,
        recv: trio.MemoryReceiveChannel[tuple[int, Batch]],
        sends: list[trio.MemorySendChannel[tuple[int, Batch]]],
    ) -> None:
        async with recv:
            try:
                async for item in recv:
                    for s in sends:
                        await s.send(item)
            finally:
                for s in sends:
                    await s.aclose()

    async def _output_loop(self, out: Output, recv: trio.MemoryReceiveChannel[tuple[int, Batch]]) -> None:
        """`out.max_in_flight` senders take batches in order; each acknowledges its batch when
        its send returns (long-lived tasks: no task and no semaphore per batch)."""

        async def settle() -> None:
            # Its answer is read in the next pass's wakeup, unless batches wait for this
            # output (a backlog: answers are read as they come) or the pipeline is stopping.
            if not recv.statistics().current_buffer_used and not self._stopping.is_set():
                await self.passes.next(RIDE_AT_MOST)

        out.settle = settle

        async def sender(r: trio.MemoryReceiveChannel[tuple[int, Batch]]) -> None:
            async with r:
                async for index, batch in r:
                    await self._deliver(out, index, batch)

        async with recv, trio.open_nursery() as senders:
            for _ in range(max(1, out.max_in_flight)):
                senders.start_soon(sender, recv.clone())

    async def _deliver(self, out: Output, index: int, batch: Batch) -> None:
        backoff = 0.1
        while True:
            try:
                await out.send(batch)
                break
            except OSError as e:
                # Never drop: the batch waits (and reading stops behind it) until the output
                # recovers or shutdown gives up, leaving it behind its checkpoint.
                log.log("warning", f"output {out.name}: {e}; retrying", every=10.0, key=f"out:{out.name}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self._ack(index, batch)

    def _ack(self, index: int, batch: Batch) -> None:
        """One output acknowledged: the core's ledger decides what that commits."""
        if not self.tailers[index].commit(batch.id):
            return  # other outputs have yet to acknowledge it
        self.bytes_acked[index] += batch.input_bytes
        self._commits += 1
        self._acked.set()
        self.records_delivered += batch.records
        self.batches_delivered += 1

    async def _grace_watchdog(self, flow: trio.CancelScope) -> None:
        await self._stopping.wait()
        await trio.sleep(self.cfg.shutdown_grace)
        flow.cancel()

    async def _checkpoint_loop(self) -> None:
        """An acknowledgement is made durable within `checkpoint_interval` of the write before
        (so within that of its own time). The wait has no wakeup of its own while a tail loop
        wakes before it is due (the write moves to that wakeup); with nothing acknowledged
        since the last write, it waits for an acknowledgement, not for a timer. The first write
        is made whatever was acknowledged: that tailrace ran here is state too (`read_from: end`
        applies to a first start only)."""
        written, failing = -1, 0
        due = trio.current_time() + self.cfg.checkpoint_interval
        while True:
            if self._commits == written:
                self._acked = trio.Event()
                await self._acked.wait()
            with trio.CancelScope(deadline=due) as self._checkpoint_wait:
                await trio.sleep_forever()
            self._checkpoint_wait = None
            commits, started = self._commits, trio.current_time()
            if await self._write_checkpoints():
                written, failing = commits, 0
            else:
                # Retried, acknowledged or not, backing off to 32 intervals: a snapshot owed on
                # a full disk formats every entry at each try (~20 MB at 10,000 files).
                failing = min(failing + 1, 6)
            # From the write's start: its completion is taken up at the next pass, later.
            due = started + self.cfg.checkpoint_interval * (1 << max(failing - 1, 0))

    async def _in_thread_by_next_pass(self, fn: Callable[[], object]) -> object:
        """`fn` run on a worker thread, its completion taken up at the next pass: the thread
        does not wake the event loop (`trio.to_thread` would, a wakeup per write)."""
        done: list[outcome.Outcome[object]] = []
        trio.lowlevel.start_thread_soon(fn, done.append)
        while not done:
            await self.passes.next(RIDE_AT_MOST)
        return done[0].unwrap()

    async def _write_checkpoints(self, final: bool = False) -> bool:
        """Every `checkpoint_interval`: the journal made durable (fsync), compacted when due.
        At shutdown: a new snapshot, so the state is one file until the next start. Whether it
        was written (a full disk, a read-only mount: said, and retried)."""
        try:
            if final:
                await trio.to_thread.run_sync(self.checkpointer.compact)
            else:
                await self._in_thread_by_next_pass(self.checkpointer.write)
            self.checkpoint_writes += 1
        except OSError as e:
            self.checkpoint_write_errors += 1
            self._checkpoints_failing = True
            log.log("error", "cannot write checkpoints (retried, backing off from checkpoint_interval to 32 of "
                    f"them; lines acknowledged since the last write are read again after a crash): {e}", every=10.0)
        else:
            if self._checkpoints_failing:
                self._checkpoints_failing = False
                log.info("checkpoints written again")
            return True
        return False


async def _shielded(f: Callable[[], Awaitable[object]]) -> None:
    """Release a resource even while the scope is being cancelled."""
    with trio.CancelScope(shield=True):
        await f()


async def progress(pipeline: Pipeline, interval: float) -> None:
    """Log a progress line every `interval` seconds."""
    last = pipeline.stats()
    t0 = time.monotonic()
    while True:
        await trio.sleep(interval)
        now = pipeline.stats()
        t1 = time.monotonic()
        dt = max(t1 - t0, 1e-9)
        rate = (now["lines"] - last["lines"]) / dt
        log.info(
            f"read {now['lines']} lines ({rate:,.0f}/s), delivered {now['records_delivered']} records "
            f"in {now['batches_delivered']} batches; {now['files_open']} files open, "
            f"{now['rotations']} rotations, {now['pending_batches']} batches unacknowledged"
        )
        last, t0 = now, t1
