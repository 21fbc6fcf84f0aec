"""`file`: OTLP JSON, one ExportLogsServiceRequest per line, appended to `path` (the format the
OpenTelemetry Collector's file exporter writes). A batch is acknowledged once written to the
kernel; writes run on a worker thread so the event loop never blocks on disk.

Each batch opens the path, appends, closes (as Fluent Bit's file output does): moved away or
deleted (logrotate, an operator's `rm`), the next batch creates it again, and no batch is
acknowledged into a file nobody can read any more. `os.open` and `os.write`, not Python's
`open`: that one `fstat`s every file it opens, and the fstat guard counts the whole process."""

from __future__ import annotations

import os

import trio

from collector._native import Batch
from collector.flow.config import FileOutput
from collector.flow.outputs import Output

FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class File(Output):
    encoding = "json"

    def __init__(self, cfg: FileOutput) -> None:
        super().__init__(cfg.name)
        self.path = cfg.path
        self._limiter = trio.CapacityLimiter(1)

    def _append(self, data: bytes) -> None:
        try:
            fd = os.open(self.path, FLAGS, 0o644)
        except FileNotFoundError:  # its directory went too
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.path, FLAGS, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    async def open(self) -> None:
        # Created at the start (an empty file says the output works), as before the first batch.
        await trio.to_thread.run_sync(self._append, b"", limiter=self._limiter)

    async def send(self, batch: Batch) -> None:
        await trio.to_thread.run_sync(self._append, batch.json, limiter=self._limiter)
        self.delivered(batch)

    async def close(self) -> None:
        pass
