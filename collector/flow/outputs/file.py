"""`file`: OTLP JSON, one ExportLogsServiceRequest per line, appended to `path` (the format the
OpenTelemetry Collector's file exporter writes). A batch is acknowledged once written and
flushed to the kernel; writes run on a worker thread so the event loop never blocks on disk.
Before each write the path is checked to still name the file held open (a `stat` per batch):
moved away or deleted (logrotate, an operator's `rm`), it is created again, so no batch is
acknowledged into a file nobody can read any more."""

from __future__ import annotations

import os
from typing import BinaryIO

import trio

from collector import log
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

    def _open(self) -> BinaryIO:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        return open(self.path, "ab")

    async def open(self) -> None:
        self._f = await trio.to_thread.run_sync(self._open, limiter=self._limiter)

    def _current(self) -> BinaryIO:
        """The open file, opened again when the path no longer names it."""
        f = self._f
        assert f is not None, "open() first"
        held = os.fstat(f.fileno())
        try:
            at_path = os.stat(self.path)
            if (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino):
                return f
        except FileNotFoundError:
            pass
        f.close()
        self._f = f = self._open()
        log.info("output file moved away or deleted: writing a new one", output=self.name, path=self.path)
        return f

    async def send(self, batch: Batch) -> None:
        def _write() -> None:
            f = self._current()
            f.write(batch.json)
            f.flush()

        await trio.to_thread.run_sync(_write, limiter=self._limiter)
        self.delivered(batch)

    async def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            await trio.to_thread.run_sync(f.close, limiter=self._limiter)
