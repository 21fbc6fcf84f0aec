"""`file`: OTLP JSON, one ExportLogsServiceRequest per line, appended to `path` (the format the
OpenTelemetry Collector's file exporter writes). A batch is acknowledged once written and
flushed to the kernel; writes run on a worker thread so the event loop never blocks on disk."""

from __future__ import annotations

import os
from typing import BinaryIO

import trio

from collector._native import Batch
from collector.flow.config import FileOutput
from collector.flow.outputs import Output


class File(Output):
    encoding = "json"

    def __init__(self, cfg: FileOutput) -> None:
        super().__init__(cfg.name)
        self.path = cfg.path
        self._f: BinaryIO | None = None
        self._limiter = trio.CapacityLimiter(1)

    async def open(self) -> None:
        def _open() -> BinaryIO:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            return open(self.path, "ab")

        self._f = await trio.to_thread.run_sync(_open, limiter=self._limiter)

    async def send(self, batch: Batch) -> None:
        f = self._f
        assert f is not None, "open() first"

        def _write() -> None:
            f.write(batch.json)
            f.flush()

        await trio.to_thread.run_sync(_write, limiter=self._limiter)
        self.delivered(batch)

    async def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            await trio.to_thread.run_sync(f.close, limiter=self._limiter)
