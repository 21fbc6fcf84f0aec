"""Outputs: where batches go. Each output gets every batch; `send` returns once the batch is
delivered (its acknowledgement), dropped on purpose (counted), or durably spooled. Up to
`max_in_flight` sends run at once, so acknowledgements may come out of order; the core's ledger
commits a batch when every output has acknowledged it. `encoding` says which wire form the
core must write for it; `serve` runs for the output's lifetime (spool replay)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from collector._native import Batch
from collector.flow.config import BlackholeOutput, FileOutput, OtlpHttpOutput, OutputConfig, StdoutOutput
from collector.http import Settle

# Export latency hook (telemetry): (output, seconds, HTTP status or 0 without an answer).
# (output, seconds, HTTP status or why there was none: connect, tls, timeout, protocol)
Observer = Callable[[str, float, int | str], None]


class Output:
    """The base of every output: what an output that needs nothing does by default. `stats`
    counts what it did (`delivered_batches`, `delivered_records`, and whatever else it has),
    read by /metrics, /stats and `top`; `observe`, when set, is called after each export."""

    encoding: ClassVar[Literal["proto", "json"]] = "proto"
    max_in_flight: int = 1

    def __init__(self, name: str) -> None:
        self.name = name
        # Every output has these series (what alerts and `tailrace top` read); outputs add theirs.
        self.stats: dict[str, int] = dict.fromkeys(
            ("delivered_batches", "delivered_records", "retries", "dropped_batches", "dropped_records"), 0
        )
        self.observe: Observer | None = None
        # Awaited between a request sent and its answer read, when set (by the pipeline): the
        # answer is then read in the wakeup of the tail loops' next pass, not in one of its own.
        self.settle: Settle | None = None

    def precompress(self) -> tuple[str, int] | None:
        """The (codec, level) the core should compress this output's batches with as they
        close, now (it may change: a 415 makes an OTLP endpoint's codec gzip)."""
        return None

    def state(self) -> dict[str, object]:
        """For /readyz and `tailrace top`; `not_ready` names why batches cannot be taken now."""
        return {}

    async def open(self) -> None:
        pass

    async def serve(self) -> None:
        pass

    async def send(self, batch: Batch) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def delivered(self, batch: Batch) -> None:
        self.stats["delivered_batches"] += 1
        self.stats["delivered_records"] += batch.records


def build(cfg: OutputConfig, state_dir: str) -> Output:
    from collector.flow.outputs.blackhole import Blackhole
    from collector.flow.outputs.file import File
    from collector.flow.outputs.otlp_http import OtlpHttp
    from collector.flow.outputs.stdout import Stdout

    if isinstance(cfg, FileOutput):
        return File(cfg)
    if isinstance(cfg, StdoutOutput):
        return Stdout(cfg)
    if isinstance(cfg, BlackholeOutput):
        return Blackhole(cfg)
    if isinstance(cfg, OtlpHttpOutput):
        return OtlpHttp(cfg, state_dir)
    raise ValueError(f"output type {type(cfg).__struct_config__.tag!r} is not available in this build")
