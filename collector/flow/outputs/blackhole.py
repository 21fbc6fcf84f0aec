"""`blackhole`: acknowledges every batch at once and keeps only counts (for benchmarks)."""

from __future__ import annotations

from typing import Final

from collector._native import Batch
from collector.flow.config import BlackholeOutput


class Blackhole:
    encoding: Final = "proto"
    max_in_flight = 1

    def __init__(self, cfg: BlackholeOutput) -> None:
        self.name = cfg.name
        self.batches = 0
        self.records = 0

    def precompress(self) -> None:
        return None

    def state(self) -> dict[str, object]:
        return {}

    async def serve(self) -> None:
        pass

    async def open(self) -> None:
        pass

    async def send(self, batch: Batch) -> None:
        self.batches += 1
        self.records += batch.records

    async def close(self) -> None:
        pass
