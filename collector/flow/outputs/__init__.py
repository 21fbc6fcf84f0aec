"""Outputs: where batches go. Each output gets every batch; `send` returns once the batch is
delivered (its acknowledgement), dropped on purpose (counted), or durably spooled. Up to
`max_in_flight` sends run at once, so acknowledgements may come out of order; the pipeline
commits a batch when every output has acknowledged it. `encoding` says which wire form the
core must write for it; `serve` runs for the output's lifetime (spool replay)."""

from __future__ import annotations

from typing import Literal, Protocol

from collector._native import Batch
from collector.flow.config import BlackholeOutput, FileOutput, OtlpHttpOutput, OutputConfig, StdoutOutput


class Output(Protocol):
    name: str
    max_in_flight: int

    @property
    def encoding(self) -> Literal["proto", "json"]: ...

    def precompress(self) -> tuple[str, int] | None:
        """The (codec, level) the core should compress this output's batches with as they close."""
        ...

    def state(self) -> dict[str, object]:
        """For /readyz and `tailrace top`; `not_ready` names why batches cannot be taken now."""
        ...

    async def open(self) -> None: ...

    async def serve(self) -> None: ...

    async def send(self, batch: Batch) -> None: ...

    async def close(self) -> None: ...


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
