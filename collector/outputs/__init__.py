"""Outputs: where batches go. Each output gets every batch, in order, and returns from `send`
only once the batch is delivered (its acknowledgement); the pipeline commits a batch when
every output has acknowledged it."""

from __future__ import annotations

from typing import Protocol

from collector._native import Batch
from collector.config import BlackholeOutput, FileOutput, OutputConfig, StdoutOutput


class Output(Protocol):
    name: str

    async def open(self) -> None: ...

    async def send(self, batch: Batch) -> None: ...

    async def close(self) -> None: ...


def build(cfg: OutputConfig) -> Output:
    from collector.outputs.blackhole import Blackhole
    from collector.outputs.file import File
    from collector.outputs.stdout import Stdout

    if isinstance(cfg, FileOutput):
        return File(cfg)
    if isinstance(cfg, StdoutOutput):
        return Stdout(cfg)
    if isinstance(cfg, BlackholeOutput):
        return Blackhole(cfg)
    raise ValueError(f"output type {type(cfg).__struct_config__.tag!r} is not available in this build")
