"""A loopback OTLP/HTTP logs receiver (the tests' and the benchmark harness's), for what the
OpenTelemetry Collector cannot do on demand: 503 storms with `Retry-After`, slow answers, 413 above a body size, 415 to
zstd, 400/401 answers, partial success. Decodes every request with the official generated
classes (opentelemetry-proto), so it is an independent check of tailrace's encoder.

In a test: `with Receiver() as r: ...`: a trio server on a loop of its own, run off the test's
thread through trio's own thread API (`trio.lowlevel.start_thread_soon`), so synchronous tests
can drive it and it never shares tailrace's event loop; the tests' state (`got`, `held`,
`attempts`) is read under `lock`, and `gate` is a `threading.Event` a test sets. As a process
(benchmarks): `python -m collector.harness.receiver --port N [--count-only]` prints
`listening PORT`, then one JSON line of totals when it gets SIGTERM."""

from __future__ import annotations

import contextlib
import gzip
import http
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
import zstandard
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

# A fault: (status, headers, body) to answer instead of accepting, or None to accept.
Fault = tuple[int, dict[str, str], bytes]


@dataclass
class Received:
    bodies: list[bytes] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    observed_ns: list[int] = field(default_factory=list)
    # When each record's request arrived (time.time_ns(), body read): delivery latency.
    arrived_ns: list[int] = field(default_factory=list)
    requests: int = 0
    accepted: int = 0
    encodings: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)
    wire_bytes: int = 0
    records: int = 0


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


MAX_HEAD = 64 * 1024


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _RequestReader:
    """HTTP/1.1 requests off one stream: the head, then a body by Content-Length or chunked."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD or not await self._fill():
                raise ValueError("no line")
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise ValueError("the body ended early")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def request(self) -> tuple[str, dict[str, str], bytes, bool] | None:
        """(path, headers, body, keep the connection), or None when the client closed."""
        while not self.buf:
            if not await self._fill():
                return None
        parts = (await self._line()).decode("latin-1").split()
        if len(parts) != 3:
            raise ValueError("not a request line")
        _, path, version = parts
        headers: dict[str, str] = {}
        while line := await self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip()] = value.strip()
        low = {k.lower(): v for k, v in headers.items()}
        if low.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while n := int((await self._line()).split(b";", 1)[0] or b"0", 16):
                chunks.append(await self._exactly(n))
                await self._exactly(2)
            while await self._line():  # trailers, then the blank line
                pass
            body = b"".join(chunks)
        else:
            body = await self._exactly(int(low.get("content-length", "0")))
        conn = low.get("connection", "").lower()
        keep = "keep-alive" in conn if version == "HTTP/1.0" else "close" not in conn
        return path, headers, body, keep


class Receiver:
    def __init__(
        self,
        *,
        accept_zstd: bool = True,
        max_body: int | None = None,
        delay: float = 0.0,
        count_only: bool = False,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls
        self.accept_zstd = accept_zstd
        self.max_body = max_body
        self.delay = delay
        self.count_only = count_only
        self.fault: Callable[[dict[str, str]], Fault | None] | None = None
        self.partial_reject = 0  # reject this many records (partial_success) per request
        self.got = Received()
        self.lock = threading.Lock()
        self.port = port
        self._token: trio.lowlevel.TrioToken | None = None
        self._stopped = threading.Event()  # the server's loop has ended
        self._listening: trio.CancelScope | None = None
        self._listeners_closed = threading.Event()
        self._connections: trio.CancelScope | None = None
        self.metrics: list[Any] = []  # ExportMetricsServiceRequest messages (telemetry push)
        # Open: answers go out. Closed: requests are accepted (their records counted) but not
        # answered until it opens, their records kept in `held`: batches in flight, for as long
        # as a test wants them so.
        self.gate = threading.Event()
        self.gate.set()
        self._active = 0  # requests being handled
        self._closing = False
        self.held: list[bytes] = []
        self.held_requests = 0
        self.attempts: list[tuple[float, int, int]] = []

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Receiver:
        self._closing = False
        self._stopped.clear()
        ready: list[BaseException | None] = []
        started = threading.Event()

        def serve() -> None:
            trio.run(self._serve, ready, started)

        def ended(result: object) -> None:
            if not started.is_set():  # the server never came up (the port is taken, ...)
                ready.append(getattr(result, "error", None) or RuntimeError("receiver stopped"))
                started.set()
            self._stopped.set()

        trio.lowlevel.start_thread_soon(serve, ended, name="receiver")
        started.wait(30)
        if not ready:
            raise RuntimeError("the receiver did not start within 30 s")
        if ready[0] is not None:
            raise ready[0]  # as binding the port raised it
        return self

    async def _serve(self, ready: list[BaseException | None], started: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        listeners: list[Any] = list(await trio.open_tcp_listeners(self.port, host="127.0.0.1"))
        self.port = int(listeners[0].socket.getsockname()[1])
        if self.tls is not None:
            listeners = [trio.SSLListener(ln, self.tls, https_compatible=True) for ln in listeners]
        self._listeners_closed.clear()
        async with trio.open_nursery() as connections:
            self._connections = connections.cancel_scope
            with trio.CancelScope() as self._listening:
                ready.append(None)
                started.set()
                await trio.serve_listeners(self._connection, listeners, handler_nursery=connections)
            for ln in listeners:
                await ln.aclose()
            self._listeners_closed.set()
            await trio.sleep_forever()  # connections stay until `stop` closes them

    def stop(self) -> None:
        """Stop listening (connections are refused until `start` again on the same port). A
        request already counted gets its answer first (else the sender, never answered, would
        send it again: a duplicate the test did not cause); one arriving meanwhile is refused
        uncounted."""
        self._closing = True
        token = self._token
        if token is None:
            return
        self._token = None
        # (From any thread, a test's trio loop included: the calls are queued on the server's
        # loop, and what they did is waited for here.)
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._cancel, self._listening)
        self._listeners_closed.wait(10)
        deadline = time.monotonic() + 10
        while self._active and time.monotonic() < deadline and self.gate.is_set():
            time.sleep(0.01)
        with contextlib.suppress(trio.RunFinishedError):  # keep-alive connections too: it is down
            token.run_sync_soon(self._cancel, self._connections)
        self._stopped.wait(30)

    @staticmethod
    def _cancel(scope: trio.CancelScope | None) -> None:
        assert scope is not None
        scope.cancel()

    async def _connection(self, stream: trio.abc.Stream) -> None:
        """One client: requests answered in order on the same connection (HTTP/1.1 keep-alive)
        until it closes, asks to close, or the receiver stops."""
        reader = _RequestReader(stream)
        try:
            while True:
                request = await reader.request()
                if request is None:
                    return
                path, headers, raw, keep = request
                with self.lock:
                    self._active += 1
                try:
                    answer: Fault = (503, {}, b"stopping")  # going down: refused uncounted, retried
                    if not self._closing:
                        answer = await self.handle(path, headers, raw)
                    status, hdrs, body = answer
                    head = [f"HTTP/1.1 {status} {_phrase(status)}", *(f"{k}: {v}" for k, v in hdrs.items()),
                            f"Content-Length: {len(body)}", "", ""]
                    await stream.send_all("\r\n".join(head).encode("latin-1") + body)
                finally:
                    with self.lock:
                        self._active -= 1
                if not keep:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return  # a sender killed while its answer was held, a TLS handshake refused, garbage
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError), trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- requests ---------------------------------------------------------------------
    async def handle(self, path: str, headers: dict[str, str], raw: bytes) -> Fault:
        arrived = time.time_ns()
        h = {k.lower(): v for k, v in headers.items()}
        with self.lock:
            self.got.requests += 1
            self.got.wire_bytes += len(raw)
            self.got.headers.append(h)
        if self.delay:
            await trio.sleep(self.delay)
        # A test's fault may block (a slow answer): on a worker thread, as a request of its own.
        fault = await trio.to_thread.run_sync(self.fault, h) if self.fault and path == "/v1/logs" else None
        answer, held = self._answer(path, h, raw, arrived, fault)
        if held:  # batches in flight: answered once the test opens the gate
            await trio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)
        with self.lock:
            self.got.statuses[answer[0]] = self.got.statuses.get(answer[0], 0) + 1
            # Each attempt: when it arrived, which body (a batch sent again is the same bytes),
            # what it was answered.
            self.attempts.append((arrived / 1e9, hash(raw), answer[0]))
        return answer

    def _answer(self, path: str, h: dict[str, str], raw: bytes, arrived: int, fault: Fault | None
                ) -> tuple[Fault, bool]:
        """The answer, and whether it waits for the gate (its records accepted and held)."""
        if path == "/v1/metrics":
            from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

            mreq = metrics_service_pb2.ExportMetricsServiceRequest()
            mreq.ParseFromString(raw)
            with self.lock:
                self.metrics.append(mreq)
            return (200, {"Content-Type": "application/x-protobuf"}, b""), False
        if path != "/v1/logs":
            return (404, {"Content-Type": "text/plain"}, b"no such path"), False
        if fault is not None:
            return fault, False
        enc = h.get("content-encoding", "identity")
        if enc == "zstd" and not self.accept_zstd:
            return (415, {"Content-Type": "text/plain"}, b"zstd is not supported"), False
        if self.max_body is not None and len(raw) > self.max_body:
            return (413, {"Content-Type": "text/plain"}, b"too large"), False
        if h.get("content-type") != "application/x-protobuf":
            return (415, {"Content-Type": "text/plain"}, b"protobuf only"), False
        if enc == "zstd":
            data = zstandard.ZstdDecompressor().decompress(raw)
        elif enc == "gzip":
            data = gzip.decompress(raw)
        elif enc == "identity":
            data = raw
        else:
            return (415, {}, b"unknown encoding"), False
        req = logs_service_pb2.ExportLogsServiceRequest()
        req.ParseFromString(data)
        bodies: list[bytes] = []
        attributes: list[dict[str, Any]] = []
        observed: list[int] = []
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    bodies.append(rec.body.string_value.encode())
                    if not self.count_only:
                        attributes.append({a.key: _value(a.value) for a in rec.attributes})
                        observed.append(rec.observed_time_unix_nano)
        reject = min(self.partial_reject, len(bodies))
        held = not self.gate.is_set()
        with self.lock:
            if held:
                self.held.extend(bodies[reject:])
                self.held_requests += 1
            self.got.accepted += 1
            self.got.encodings[enc] = self.got.encodings.get(enc, 0) + 1
            self.got.records += len(bodies) - reject
            if not self.count_only:
                self.got.bodies.extend(bodies[reject:])
                self.got.attributes.extend(attributes[reject:])
                self.got.observed_ns.extend(observed[reject:])
                self.got.arrived_ns.extend([arrived] * (len(bodies) - reject))
        resp = logs_service_pb2.ExportLogsServiceResponse()
        if reject:
            resp.partial_success.rejected_log_records = reject
            resp.partial_success.error_message = "rejected by the test"
        return (200, {"Content-Type": "application/x-protobuf"}, resp.SerializeToString()), held

    def bodies(self) -> list[bytes]:
        with self.lock:
            return list(self.got.bodies)

    def records(self) -> int:
        with self.lock:
            return self.got.records


def free_port() -> int:
    """A port free now, for a server started next (the OpenTelemetry Collector's config needs
    it before it binds; `RefusingPort` where nobody must listen). Chosen below the kernel's
    ephemeral range (`ip_local_port_range`), so no outgoing connection — tailrace's own, while
    the server starts — can be given it in the window before the server binds; only a port
    bound on purpose could take it."""
    import random

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 16384), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # every one tried was taken: the kernel's choice, as before
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RefusingPort:
    """A port where connections are refused for as long as this holds it: bound, never
    listening, so no other process can take it meanwhile. `release()` frees it for a receiver
    started right after."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])

    def release(self) -> int:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.port

    def __enter__(self) -> RefusingPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--count-only", action="store_true")
    args = ap.parse_args()
    r = Receiver(port=args.port, count_only=args.count_only).start()
    print(f"listening {r.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(0.2):
        pass
    r.stop()
    g = r.got
    sys.stdout.write(orjson.dumps({"requests": g.requests, "records": g.records, "wire_bytes": g.wire_bytes,
                                   "encodings": g.encodings, "statuses": {str(k): v for k, v in g.statuses.items()}}
                                  ).decode() + "\n")


if __name__ == "__main__":
    main()
