"""`blackhole`: acknowledges every batch at once and keeps only counts (for benchmarks)."""

from __future__ import annotations

from collector._native import Batch
from collector.config import BlackholeOutput


class Blackhole:
    def __init__(self, cfg: BlackholeOutput) -> None:
        self.name = cfg.name
        self.batches = 0
        self.records = 0

    async def open(self) -> None:
        pass

    async def send(self, batch: Batch) -> None:
        self.batches += 1
        self.records += batch.records

    async def close(self) -> None:
        pass
