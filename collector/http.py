"""A small HTTP/1.1 client on trio, for `otlp_http`: keep-alive connections in a pool, TLS (CA
file, client certificate, verification on by default), `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`
from the environment (CONNECT tunnels for https). One request at a time per connection; the
caller bounds concurrency. Requests always carry Content-Length; answers are read by
Content-Length, chunked coding, or to the end of the connection, and are small (bounded).

Written here rather than on h11: one POST shape and small answers need a fraction of a general
client, and h11's per-event validation was a quarter of tailrace's Python CPU per request."""

from __future__ import annotations

import socket
import ssl
import struct
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from collector.flow.config import TlsConfig

# OTLP answers are small (an ExportLogsServiceResponse or a Status).
MAX_ANSWER_BYTES = 1 << 20
MAX_HEAD_BYTES = 64 * 1024
_READ = 65536


# What to wait for before reading an answer (the pipeline's next pass: `Output.settle`).
Settle = Callable[[], Awaitable[None]]


class HttpError(OSError):
    """The request did not get an answer; `kind` says why: `connect`, `tls`, `timeout` or
    `protocol` (what the export metrics label a failure with)."""

    def __init__(self, message: str, kind: str = "protocol") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    # How long the answer lay in the socket before it was read (a `settle` held it): the
    # request's duration is the time to read it less this.
    unread_for: float = 0.0


# `struct tcp_info`'s `tcpi_last_data_recv`: milliseconds since data last arrived (linux/tcp.h).
_LAST_DATA_RECV = struct.Struct("=52xI")


def unread_for(stream: trio.abc.Stream, held: float) -> float:
    """How long the answer just read had arrived before it was read, after a wait of `held`
    seconds between the request and the read: the kernel's time of the last data received
    (`TCP_INFO`, a tick's precision) — at most `held`, 0 where the socket does not say."""
    if held <= 0:
        return 0.0  # nothing held: every request without a settle, or one whose settle did not wait
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)
    if sock is None:
        return 0.0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _LAST_DATA_RECV.size)
        (ms,) = _LAST_DATA_RECV.unpack(info)
    except (OSError, struct.error):
        return 0.0
    return min(held, int(ms) / 1000)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        u = urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        return cls(u.scheme, u.hostname or "", port, path)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def signal_url(endpoint: str, path: str) -> str:
    """An OTLP endpoint: a base URL gets the signal's `path` (`/v1/logs`), a full URL is kept."""
    base = endpoint.rstrip("/")
    return base if base.split("://", 1)[1].partition("/")[2] else base + path


def proxy_for(target: Target) -> Target | None:
    """The proxy the environment names for `target`, honouring NO_PROXY."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(target.scheme)
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # (not in typeshed)
    if not url or bypass(target.host, proxies):
        return None
    if "://" not in url:
        url = "http://" + url
    return Target.parse(url)


def tls_context(cfg: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


class Reader:
    """Reads an HTTP/1.1 answer from a stream: status line and headers, then the body by
    Content-Length, chunked transfer coding, or (neither) until the connection closes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.closed = False

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(_READ)
        if not chunk:
            self.closed = True
            raise HttpError("connection closed before the answer was complete")
        self.buf += chunk

    async def _until(self, sep: bytes, limit: int) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            if len(self.buf) > limit:
                raise HttpError("answer header too long")
            await self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def head(self) -> tuple[str, int, dict[str, str]]:
        """(version, status, headers) of the next final answer (1xx answers are skipped)."""
        while True:
            lines = (await self._until(b"\r\n\r\n", MAX_HEAD_BYTES)).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise HttpError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
            headers: dict[str, str] = {}
            for ln in lines[1:]:
                name, sep, value = ln.partition(":")
                if not sep or not name or name != name.strip():
                    raise HttpError(f"malformed answer header: {ln[:80]!r}")
                key = name.lower()
                headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
            status = int(parts[1])
            if status >= 200 or status == 101:
                return parts[0], status, headers
            # 1xx (100 Continue, 103 Early Hints): a final answer follows.

    async def body(self, headers: dict[str, str]) -> tuple[bytes, bool]:
        """(body, whether the connection can carry another request)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = await self._until(b"\r\n", MAX_HEAD_BYTES)
                n = int(line.split(b";", 1)[0].strip() or b"x", 16)
                if n == 0:
                    while await self._until(b"\r\n", MAX_HEAD_BYTES):  # trailers, then the blank line
                        pass
                    return b"".join(chunks), True
                data = await self._exactly(n)
                await self._exactly(2)
                if size < MAX_ANSWER_BYTES:
                    chunks.append(data)
                    size += n
        if "content-length" in headers:
            try:
                n = int(headers["content-length"])
            except ValueError:
                raise HttpError(f"bad Content-Length {headers['content-length']!r}") from None
            if n > MAX_ANSWER_BYTES:
                raise HttpError(f"answer body of {n} bytes is too large")
            return await self._exactly(n), True
        while not self.closed:  # delimited by the end of the connection
            try:
                await self._fill()
            except HttpError:
                break
            if len(self.buf) > MAX_ANSWER_BYTES:
                raise HttpError("answer body too large")
        out = bytes(self.buf)
        self.buf.clear()
        return out, False


def _check(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise HttpError(f"{what} holds a line break")  # never sent: it would inject headers
    return value


class Connection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = Reader(stream)
        self.reusable = True

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                      settle: Settle | None = None) -> Response:
        head = [f"{method} {_check(target, 'the request target')} HTTP/1.1"]
        head += [f"{k}: {_check(v, f'header {k}')}" for k, v in headers]
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        self.reusable = False  # until the whole answer is read
        await self.stream.send_all(b"".join(("\r\n".join(head).encode("latin-1"), body)))
        held = 0.0
        if settle is not None:
            t0 = trio.current_time()
            await settle()
            held = trio.current_time() - t0
        version, status, answer_headers = await self.reader.head()
        data, keep = await self.reader.body(answer_headers)
        conn = answer_headers.get("connection", "").lower()
        self.reusable = keep and not self.reader.buf and (
            "keep-alive" in conn if version == "HTTP/1.0" else "close" not in conn
        )
        return Response(status, answer_headers, data, unread_for(self.stream, held))

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


class Client:
    """Keep-alive connections to one endpoint (through its proxy, if any)."""

    def __init__(self, url: str, tls: TlsConfig, user_agent: str, timeout: float) -> None:
        self.timeout = timeout  # per attempt: connect, TLS, request and answer
        self.target = Target.parse(url)
        self.proxy = proxy_for(self.target)
        self.user_agent = user_agent
        self._tls = tls_context(tls) if self.target.scheme == "https" else None
        self._server_name = tls.server_name or self.target.host
        self._idle: list[Connection] = []
        self.connects = 0

    async def _connect(self) -> Connection:
        via = self.proxy or self.target
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(via.host, via.port)
        except OSError as e:
            raise HttpError(f"cannot connect to {via.host}:{via.port}: {e.strerror or e}", "connect") from None
        self.connects += 1
        try:
            if self.proxy and self._tls:
                await self._tunnel(stream)
            if self._tls:
                tls = trio.SSLStream(stream, self._tls, server_hostname=self._server_name, https_compatible=True)
                await tls.do_handshake()
                stream = tls
        except BaseException:
            await stream.aclose()
            raise
        return Connection(stream)

    async def _tunnel(self, stream: trio.abc.Stream) -> None:
        authority = f"{self.target.host}:{self.target.port}"
        await stream.send_all(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("latin-1"))
        reader = Reader(stream)
        _, status, _ = await reader.head()
        if status != 200:
            raise HttpError(f"proxy answered CONNECT with {status}")
        if reader.buf:
            raise HttpError("proxy sent data before the tunnel was up")

    async def request(self, method: str, headers: list[tuple[str, str]], body: bytes,
                      settle: Settle | None = None) -> Response:
        """One request; a stale keep-alive connection is retried once on a fresh one. `settle`,
        if given, is awaited between the request sent and its answer read."""
        target = self.target.path
        if self.proxy and not self._tls:
            target = f"http://{self.target.authority}{self.target.path}"
        hdrs = [("Host", self.target.authority), ("User-Agent", self.user_agent), *headers]
        for attempt in (0, 1):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else None
            try:
                with trio.fail_after(self.timeout):
                    if conn is None:
                        conn = await self._connect()
                    answer = await conn.request(method, target, hdrs, body, settle)
            except trio.TooSlowError:
                if conn is not None:
                    await conn.aclose()
                raise HttpError(f"no answer within {self.timeout:g}s", "timeout") from None
            except (OSError, ValueError, trio.BrokenResourceError, ssl.SSLError) as e:
                if conn is not None:
                    await conn.aclose()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection
                cause = e.__cause__ or e  # trio wraps TLS errors in BrokenResourceError
                kind = "tls" if isinstance(cause, ssl.SSLError) else "connect" if isinstance(cause, OSError) \
                    else "protocol"
                raise HttpError(str(cause) or type(cause).__name__, kind) from None
            except BaseException:
                if conn is not None:
                    await conn.aclose()
                raise
            if conn.reusable and answer.headers.get("connection", "").lower() != "close":
                self._idle.append(conn)
            else:
                await conn.aclose()
            return answer
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()
