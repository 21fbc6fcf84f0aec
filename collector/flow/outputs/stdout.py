"""`stdout`: OTLP JSON lines on standard output (for a look, or a pipe into another tool)."""

from __future__ import annotations

import sys

import trio

from collector._native import Batch
from collector.flow.config import StdoutOutput
from collector.flow.outputs import Output


class Stdout(Output):
    encoding = "json"

    def __init__(self, cfg: StdoutOutput) -> None:
        super().__init__(cfg.name)
        self._limiter = trio.CapacityLimiter(1)

    async def send(self, batch: Batch) -> None:
        def _write() -> None:
            sys.stdout.buffer.write(batch.json)
            sys.stdout.buffer.flush()

        await trio.to_thread.run_sync(_write, limiter=self._limiter)
        self.delivered(batch)
