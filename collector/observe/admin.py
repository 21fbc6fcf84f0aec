"""The admin HTTP endpoint (trio), `admin.address` (default 127.0.0.1:2020; port 0 picks one,
logged at start):

- `GET /healthz`: 200 `ok` while the event loop answers.
- `GET /readyz`: 200 `ready` when every output can take batches (its last request succeeded, or
  it has not sent yet, or its spool accepts them); otherwise 503 and the reasons, one a line.
- `GET /metrics`: Prometheus text (the OpenTelemetry SDK's metrics, collected on scrape).
- `GET /stats`: JSON counters (per input, per output, profiler), what `tailrace top` reads.
- `GET /debug/profile/latest.svg`: the newest flamegraph of the profiler (404 before one).

One request per connection, `Connection: close`; GET and HEAD only."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson
import trio

from collector import __version__, log
from collector.observe.telemetry import process_cpu_seconds, process_rss_bytes

if TYPE_CHECKING:
    from collector.flow.pipeline import Pipeline
    from collector.observe.profiler import Profiler
    from collector.observe.telemetry import Telemetry

MAX_REQUEST = 8192


class Admin:
    def __init__(self, pipeline: Pipeline, telemetry: Telemetry, profiler: Profiler | None) -> None:
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.profiler = profiler
        self.port = 0
        self.started = time.time()

    def stats(self) -> dict[str, object]:
        p = self.pipeline
        prof = self.profiler
        return {
            "version": __version__,
            "time": time.time(),
            "uptime_s": time.time() - self.started,
            "cpu_s": process_cpu_seconds(),
            "rss_bytes": process_rss_bytes(),
            "inputs": p.stats_by_input(),
            "outputs": {o.name: {**o.stats, **o.state()} for o in p.outputs},
            "totals": p.stats(),
            "profiler": None if prof is None else {
                "profiles": prof.profiles, "last_share": prof.last_share, "last_samples": prof.last_samples,
                "warnings": prof.warnings, "unavailable": prof.unavailable,
                "syscall_shares": prof.last_syscall_shares, "hot_syscalls": prof.last_hot,
                "syscall_warnings": prof.syscall_warnings,
            },
        }

    def ready(self) -> list[str]:
        return [f"output {o.name}: {why}" for o in self.pipeline.outputs if (why := o.state().get("not_ready"))]

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            problems = self.ready()
            return (503, "text/plain", ("\n".join(problems) + "\n").encode()) if problems else (
                200, "text/plain", b"ready\n")
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.telemetry.prometheus().encode()
        if path == "/stats":
            return 200, "application/json", orjson.dumps(self.stats(), option=orjson.OPT_NON_STR_KEYS)
        if path == "/debug/profile/latest.svg":
            svg = self.profiler.latest_svg if self.profiler else None
            if svg is None or not svg.exists():
                return 404, "text/plain", b"no profile yet\n"
            return 200, "image/svg+xml", svg.read_bytes()
        return 404, "text/plain", b"not found\n"

    async def serve(self, address: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        host, _, port = address.rpartition(":")
        try:
            listeners = await trio.open_tcp_listeners(int(port), host=host.strip("[]") or None)
        except OSError as e:
            log.warning(f"admin: cannot listen on {address}: {e.strerror or e}; running without the admin endpoint")
            task_status.started(0)
            return
        self.port = listeners[0].socket.getsockname()[1]
        log.info(f"admin endpoint on http://{host}:{self.port}/ (healthz, readyz, metrics, stats)")
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(10):
                buf = b""
                while b"\r\n\r\n" not in buf and len(buf) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    buf += chunk
                parts = buf.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    status, ctype, body = 400, "text/plain", b"bad request\n"
                    method = "GET"
                elif parts[0] not in ("GET", "HEAD"):
                    status, ctype, body = 405, "text/plain", b"GET or HEAD\n"
                    method = parts[0]
                else:
                    method = parts[0]
                    status, ctype, body = self.answer(method, parts[1])
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                await stream.send_all(head + (b"" if method == "HEAD" else body))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
