"""`stdout`: OTLP JSON lines on standard output (for a look, or a pipe into another tool)."""

from __future__ import annotations

import sys
from typing import Final

import trio

from collector._native import Batch
from collector.flow.config import StdoutOutput


class Stdout:
    encoding: Final = "json"
    max_in_flight = 1

    def __init__(self, cfg: StdoutOutput) -> None:
        self.name = cfg.name
        self._limiter = trio.CapacityLimiter(1)

    def precompress(self) -> None:
        return None

    def state(self) -> dict[str, object]:
        return {}

    async def serve(self) -> None:
        pass

    async def open(self) -> None:
        pass

    async def send(self, batch: Batch) -> None:
        def _write() -> None:
            sys.stdout.buffer.write(batch.json)
            sys.stdout.buffer.flush()

        await trio.to_thread.run_sync(_write, limiter=self._limiter)

    async def close(self) -> None:
        pass
