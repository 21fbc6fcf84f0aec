"""tailrace's own metrics through the OpenTelemetry SDK: a MeterProvider whose only reader is
pulled (collected when `/metrics` is scraped, on the trio thread: no SDK background thread),
observable instruments that read the pipeline's counters, and a histogram of export latency.
`prometheus_text` renders a collection as the Prometheus text format (0.0.4); series are named
`tailrace_…`, monotonic counters end in `_total`."""

from __future__ import annotations

import math
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from collector import __version__, log
from collector._native import BUILD_COMMIT, BUILD_RUSTC, CORE_VERSION
from collector.flow.config import TlsConfig

if TYPE_CHECKING:
    from collector.flow.pipeline import Pipeline
    from collector.observe.profiler import Profiler

# Export latencies wait in a list until a collection records them in the SDK's histogram (or
# this many wait): a record costs ~16 µs of CPU here warm, more on the cold event loop of a pass.
PENDING_LATENCIES = 4096
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def process_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_start_time_seconds() -> float:
    """When this process started (Unix seconds): its start in clock ticks after boot, plus boot."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Telemetry:
    def __init__(self, pipeline: Pipeline, profiler: Profiler | None = None,
                 reloads: dict[str, int] | None = None) -> None:
        self.pipeline = pipeline
        self.profiler = profiler
        # SIGHUP reloads by result (`ok`, `invalid`), kept across the pipelines they start.
        self.reloads = reloads if reloads is not None else {"ok": 0, "invalid": 0}
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(
            resource=Resource.create({"service.name": "tailrace", "service.version": __version__,
                                      "host.name": socket.gethostname()}),
            metric_readers=[self.reader],
            views=[View(instrument_name="tailrace_export_latency",
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS))],
        )
        meter = self.provider.get_meter("tailrace", __version__)
        self.pushes = 0
        per_input = self._per_input
        counters: list[tuple[str, str, str, Callable[[], Iterable[Observation]]]] = [
            ("tailrace_lines_read", "1", "Lines read from files (records made)", per_input("lines")),
            ("tailrace_bytes_read", "By", "Bytes read from files", per_input("bytes")),
            ("tailrace_rotations", "1", "Rotations seen", per_input("rotations")),
            ("tailrace_truncations", "1", "Truncations seen", per_input("truncations")),
            ("tailrace_inotify_events", "1", "inotify events drained", per_input("inotify_events")),
            ("tailrace_read_passes", "1", "Passes that read files (wakeups that read)", per_input("read_passes")),
            ("tailrace_parse_errors", "1", "Lines the parser could not read (shipped whole, flagged)",
             per_input("parse_errors")),
            ("tailrace_recovered_from_gzip", "1", "Files finished from their compressed copy after a restart",
             per_input("recovered_from_gzip")),
            ("tailrace_open_errors", "1", "Files matched that could not be opened or looked at (reported once each)",
             per_input("open_errors")),
            ("tailrace_read_errors", "1", "Reads that failed", per_input("read_errors")),
            ("tailrace_inotify_overflows", "1", "inotify queue overflows (each a look everywhere)",
             per_input("inotify_overflows")),
            ("tailrace_deletions", "1", "Files deleted while read (drained through their descriptor)",
             per_input("deletions")),
            ("tailrace_outside_roots", "1", "Files not read: they resolve outside the allowed roots",
             per_input("outside_roots")),
            ("tailrace_memory_spills", "1", "Files that emitted unfinished lines early (the memory bound)",
             per_input("memory_spills")),
            ("tailrace_panics", "1", "Bugs contained to one file (it is no longer read)", per_input("panics")),
            ("tailrace_records_exported", "1", "Records an output acknowledged", self._per_output("delivered_records")),
            ("tailrace_batches_exported", "1", "Batches an output acknowledged", self._per_output("delivered_batches")),
            ("tailrace_export_retries", "1", "Export attempts retried", self._per_output("retries")),
            ("tailrace_records_dropped", "1", "Records dropped on purpose (non-retryable answers)",
             self._per_output("dropped_records")),
            ("tailrace_batches_spooled", "1", "Batches written to the spool", self._per_output("spooled_batches")),
            ("tailrace_syscalls", "1", "Syscalls made by the core, by kind", self._syscalls),
            ("tailrace_config_reloads", "1", "Configuration reloads asked for with SIGHUP, by result",
             lambda: [Observation(n, {"result": r}) for r, n in self.reloads.items()]),
            ("tailrace_checkpoint_written_bytes", "By", "Bytes written to the state directory's checkpoints, by kind",
             self._checkpoint_bytes),
            ("tailrace_checkpoint_write_errors", "1", "Checkpoint writes that failed (a full disk: retried, backing "
             "off from checkpoint_interval)", lambda: [Observation(self.pipeline.checkpoint_write_errors)]),
            ("tailrace_event_loop_wakeups", "1", "Times the trio loop slept and woke (each costs CPU: ~0.4 ms on a VM)",
             lambda: [Observation(self.pipeline.wakeups.n)]),
            ("tailrace_process_cpu_seconds", "s", "CPU time of the tailrace process",
             lambda: [Observation(process_cpu_seconds())]),
        ]
        for name, unit, desc, fn in counters:
            meter.create_observable_counter(name, callbacks=[_cb(fn)], unit=unit, description=desc)
        gauges: list[tuple[str, str, str, Callable[[], Iterable[Observation]]]] = [
            ("tailrace_files_watched", "1", "Files open for reading", per_input("files_open")),
            ("tailrace_files_steady", "1", "Files read on the cadence without write events", self._steady),
            ("tailrace_lag_bytes", "By", "Bytes read but not yet acknowledged", self._lag),
            ("tailrace_spool_bytes", "By", "Bytes in the spool", self._spool_bytes),
            ("tailrace_profiler_stat_share", "1", "Share of the last profile's samples in stat-family syscalls",
             self._stat_share),
            ("tailrace_profiler_syscall_share", "1",
             "Share of the last profile's samples in each syscall (its leaf-most wrapper frame)", self._syscall_share),
            ("tailrace_event_loop_lag_seconds", "s",
             "The longest the event loop ran without going back to its I/O wait (last 1-2 s)",
             lambda: [Observation(self.loop_lag)]),
            ("tailrace_process_rss_bytes", "By", "Resident memory of the tailrace process",
             lambda: [Observation(process_rss_bytes())]),
            ("tailrace_build_info", "1", "1, labelled with what this tailrace was built from",
             lambda: [Observation(1, {"version": __version__, "core": CORE_VERSION, "commit": BUILD_COMMIT,
                                      "rustc": BUILD_RUSTC})]),
            ("process_start_time_seconds", "s", "When the tailrace process started (Unix time)",
             lambda: [Observation(process_start_time_seconds())]),
            ("process_open_fds", "1", "Open file descriptors", lambda: [Observation(open_fds())]),
            ("process_max_fds", "1", "The open-files limit (soft)",
             lambda: [Observation(resource.getrlimit(resource.RLIMIT_NOFILE)[0])]),
        ]
        for name, unit, desc, fn in gauges:
            meter.create_observable_gauge(name, callbacks=[_cb(fn)], unit=unit, description=desc)
        self.export_latency = meter.create_histogram(
            "tailrace_export_latency", unit="s", description="Export request duration, by output and status"
        )
        self._latencies: list[tuple[float, str, int | str]] = []

    def _per_input(self, key: str) -> Callable[[], Iterable[Observation]]:
        def f() -> Iterable[Observation]:
            return [Observation(s[key], {"input": name}) for name, s in self.pipeline.stats_by_input().items()]

        return f

    def _per_output(self, key: str) -> Callable[[], Iterable[Observation]]:
        def f() -> Iterable[Observation]:
            return [
                Observation(st[key], {"output": out.name})
                for out in self.pipeline.outputs
                if key in (st := out.stats)
            ]

        return f

    def _syscalls(self) -> Iterable[Observation]:
        s = self.pipeline.stats()
        return [Observation(v, {"kind": k[len("syscalls_"):]}) for k, v in s.items() if k.startswith("syscalls_")]

    def _checkpoint_bytes(self) -> Iterable[Observation]:
        s = self.pipeline.checkpointer.write_stats()
        return [
            Observation(s["journal_bytes"], {"kind": "journal"}),
            Observation(s["snapshot_bytes"], {"kind": "snapshot"}),
        ]

    def _steady(self) -> Iterable[Observation]:
        by_input = self.pipeline.stats_by_input().items()
        return [Observation(s["steady_on"] - s["steady_off"], {"input": n}) for n, s in by_input]

    def _lag(self) -> Iterable[Observation]:
        return [Observation(s["lag_bytes"], {"input": n}) for n, s in self.pipeline.stats_by_input().items()]

    def _spool_bytes(self) -> Iterable[Observation]:
        return [
            Observation(spool_bytes, {"output": out.name})
            for out in self.pipeline.outputs
            if isinstance(spool_bytes := out.state().get("spool_bytes"), int)
        ]

    def _stat_share(self) -> Iterable[Observation]:
        share = self.profiler.last_share if self.profiler else None
        return [] if share is None else [Observation(share)]

    def _syscall_share(self) -> Iterable[Observation]:
        shares = self.profiler.last_syscall_shares if self.profiler else {}
        return [Observation(v, {"syscall": k}) for k, v in shares.items()]

    def observe_export(self, output: str, seconds: float, status: int | str) -> None:
        self._latencies.append((seconds, output, status))
        if len(self._latencies) >= PENDING_LATENCIES:
            self._record_latencies()

    def _record_latencies(self) -> None:
        pending, self._latencies = self._latencies, []
        for seconds, output, status in pending:
            self.export_latency.record(seconds, {"output": output, "status": str(status)})

    @property
    def loop_lag(self) -> float:
        return self.pipeline.wakeups.lag.value

    async def push(self, endpoint: str, interval: float, headers: dict[str, str], tls: TlsConfig) -> None:
        """Every `interval`, the same collection as /metrics as an OTLP/HTTP ExportMetricsServiceRequest."""
        from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

        from collector.http import Client, HttpError, signal_url

        url = signal_url(endpoint, "/v1/metrics")
        client = Client(url, tls, f"tailrace/{__version__}", timeout=min(10.0, interval))
        hdrs = [("Content-Type", "application/x-protobuf"), *headers.items()]
        try:
            while True:
                await trio.sleep(interval)
                data = self.collect()
                if data is None:
                    continue
                body = encode_metrics(data).SerializeToString()
                try:
                    resp = await client.request("POST", hdrs, body)
                    self.pushes += 1
                    if not 200 <= resp.status < 300:
                        log.log("warning", f"telemetry: {url} answered {resp.status}", every=300.0, key="tpush")
                except HttpError as e:
                    log.log("warning", f"telemetry: {url}: {e}", every=300.0, key="tpush")
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    def collect(self) -> MetricsData | None:
        self._record_latencies()
        return self.reader.get_metrics_data()

    def prometheus(self) -> str:
        return prometheus_text(self.collect())


def _cb(fn: Callable[[], Iterable[Observation]]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    return lambda _options: fn()


def _labels(attrs: Any, extra: dict[str, str] | None = None) -> str:
    items = {**dict(attrs or {}), **(extra or {})}
    if not items:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in items.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(items, esc, strict=True)) + "}"


def _num(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v) if isinstance(v, float) else str(v)


def prometheus_text(data: MetricsData | None) -> str:
    """The Prometheus text format (0.0.4) of a collection, written here rather than by the SDK's
    Prometheus support (`opentelemetry-exporter-prometheus`), on purpose: that package is a
    pre-release (0.66b2 today) pinned to one SDK patch release (`opentelemetry-sdk~=1.45.2`),
    brings `prometheus-client` as a runtime dependency, registers into its process-global
    registry, and renames series by unit (`tailrace_export_latency` would gain a suffix and a
    `target_info` family would appear), which would break the dashboards and alerts the README
    documents. This is ~50 lines over the same `MetricsData`; the tests parse its output with
    `prometheus_client`'s own parser, so a format error fails there."""
    out: list[str] = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                d = m.data
                if isinstance(d, Sum):
                    name = m.name + ("_total" if d.is_monotonic else "")
                    kind = "counter" if d.is_monotonic else "gauge"
                elif isinstance(d, Gauge):
                    name, kind = m.name, "gauge"
                elif isinstance(d, Histogram):
                    name, kind = m.name + ("_seconds" if m.unit == "s" else ""), "histogram"
                else:
                    continue
                out.append(f"# HELP {name} {m.description}")
                out.append(f"# TYPE {name} {kind}")
                for p in d.data_points:
                    if isinstance(p, NumberDataPoint):
                        out.append(f"{name}{_labels(p.attributes)} {_num(p.value)}")
                    elif isinstance(p, HistogramDataPoint):
                        cum = 0
                        for bound, n in zip([*p.explicit_bounds, math.inf], p.bucket_counts, strict=True):
                            cum += n
                            out.append(f"{name}_bucket{_labels(p.attributes, {'le': _num(float(bound))})} {cum}")
                        out.append(f"{name}_sum{_labels(p.attributes)} {_num(p.sum)}")
                        out.append(f"{name}_count{_labels(p.attributes)} {p.count}")
    return "\n".join(out) + "\n"


def now_unix() -> float:
    return time.time()
