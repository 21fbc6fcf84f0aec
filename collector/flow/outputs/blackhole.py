"""`blackhole`: acknowledges every batch at once and keeps only counts (for benchmarks)."""

from __future__ import annotations

from collector._native import Batch
from collector.flow.config import BlackholeOutput
from collector.flow.outputs import Output


class Blackhole(Output):
    encoding = "proto"

    def __init__(self, cfg: BlackholeOutput) -> None:
        super().__init__(cfg.name)

    @property
    def batches(self) -> int:
        return self.stats["delivered_batches"]

    @property
    def records(self) -> int:
        return self.stats["delivered_records"]

    async def send(self, batch: Batch) -> None:
        self.delivered(batch)
