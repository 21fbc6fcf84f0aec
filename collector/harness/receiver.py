"""A loopback OTLP/HTTP logs receiver (the tests' and the benchmark harness's), for what the
OpenTelemetry Collector cannot do on demand: 503 storms with `Retry-After`, slow answers, 413 above a body size, 415 to
zstd, 400/401 answers, partial success. Decodes every request with the official generated
classes (opentelemetry-proto), so it is an independent check of tailrace's encoder.

In a test: `with Receiver() as r: ...` (a thread). As a process (benchmarks):
`python -m collector.harness.receiver --port N [--count-only]` prints `listening PORT`, then one JSON line
of totals when it gets SIGTERM.

An exception to the house rule (trio in `collector/`): this is the peer, not tailrace — a
`http.server` in a thread, as it was in `tests/` before the harness moved into the package, so
synchronous tests can drive it and it never shares tailrace's event loop. Rewriting it on trio
is left for a round of its own (its fault injection and graceful stop are what the delivery
tests rest on)."""

from __future__ import annotations

import contextlib
import gzip
import http.server
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
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self._conns: set[socket.socket] = set()
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
        receiver = self
        self._closing = False

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                with receiver.lock:
                    receiver._active += 1
                try:
                    n = int(self.headers.get("Content-Length", "0"))
                    raw = self.rfile.read(n)
                    answer: Fault = (503, {}, b"stopping")  # going down: refused uncounted, retried
                    if not receiver._closing:
                        answer = receiver.handle(self.path, dict(self.headers.items()), raw)
                    status, headers, body = answer
                    with contextlib.suppress(OSError):  # a sender killed while its answer was held
                        self.send_response(status)
                        for k, v in headers.items():
                            self.send_header(k, v)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                finally:
                    with receiver.lock:
                        receiver._active -= 1

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self) -> tuple[socket.socket, Any]:
                conn, addr = super().get_request()
                with receiver.lock:
                    receiver._conns.add(conn)
                return conn, addr

            def shutdown_request(self, request: Any) -> None:
                with receiver.lock:
                    receiver._conns.discard(request)
                super().shutdown_request(request)

        self._server = Server(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused until `start` again on the same port). A
        request already counted gets its answer first (else the sender, never answered, would
        send it again: a duplicate the test did not cause); one arriving meanwhile is refused
        uncounted."""
        self._closing = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        deadline = time.monotonic() + 10
        while self._active and time.monotonic() < deadline and self.gate.is_set():
            time.sleep(0.01)
        with self.lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:  # keep-alive connections too: the receiver is down
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- requests ---------------------------------------------------------------------
    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> Fault:
        arrived = time.time_ns()
        h = {k.lower(): v for k, v in headers.items()}
        with self.lock:
            self.got.requests += 1
            self.got.wire_bytes += len(raw)
            self.got.headers.append(h)
        if self.delay:
            time.sleep(self.delay)
        answer = self._answer(path, h, raw, arrived)
        with self.lock:
            self.got.statuses[answer[0]] = self.got.statuses.get(answer[0], 0) + 1
            # Each attempt: when it arrived, which body (a batch sent again is the same bytes),
            # what it was answered.
            self.attempts.append((arrived / 1e9, hash(raw), answer[0]))
        return answer

    def _answer(self, path: str, h: dict[str, str], raw: bytes, arrived: int) -> Fault:
        if path == "/v1/metrics":
            from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

            mreq = metrics_service_pb2.ExportMetricsServiceRequest()
            mreq.ParseFromString(raw)
            with self.lock:
                self.metrics.append(mreq)
            return 200, {"Content-Type": "application/x-protobuf"}, b""
        if path != "/v1/logs":
            return 404, {"Content-Type": "text/plain"}, b"no such path"
        fault = self.fault(h) if self.fault else None
        if fault is not None:
            return fault
        enc = h.get("content-encoding", "identity")
        if enc == "zstd" and not self.accept_zstd:
            return 415, {"Content-Type": "text/plain"}, b"zstd is not supported"
        if self.max_body is not None and len(raw) > self.max_body:
            return 413, {"Content-Type": "text/plain"}, b"too large"
        if h.get("content-type") != "application/x-protobuf":
            return 415, {"Content-Type": "text/plain"}, b"protobuf only"
        if enc == "zstd":
            data = zstandard.ZstdDecompressor().decompress(raw)
        elif enc == "gzip":
            data = gzip.decompress(raw)
        elif enc == "identity":
            data = raw
        else:
            return 415, {}, b"unknown encoding"
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
        if held:
            self.gate.wait()
        resp = logs_service_pb2.ExportLogsServiceResponse()
        if reject:
            resp.partial_success.rejected_log_records = reject
            resp.partial_success.error_message = "rejected by the test"
        return 200, {"Content-Type": "application/x-protobuf"}, resp.SerializeToString()

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
