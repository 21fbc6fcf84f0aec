"""A small HTTP/1.1 client on trio and h11, for `otlp_http`: keep-alive connections in a pool,
TLS (CA file, client certificate, verification on by default), `HTTP_PROXY`/`HTTPS_PROXY`/
`NO_PROXY` from the environment (CONNECT tunnels for https). One request at a time per
connection; the caller bounds concurrency. Bodies are bytes in, bytes out (answers are small)."""

from __future__ import annotations

import ssl
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from collector.config import TlsConfig

# OTLP answers are small (an ExportLogsServiceResponse or a Status); more is not read.
MAX_ANSWER_BYTES = 1 << 20
_READ = 65536


class HttpError(OSError):
    """The request did not get an answer (connect, TLS, protocol or timeout)."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


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


class Connection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER_BYTES)

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        c = self.h11
        out = c.send(h11.Request(method=method, target=target, headers=[*headers, ("Content-Length", str(len(body)))]))
        data = c.send(h11.Data(data=body)) if body else b""
        end = c.send(h11.EndOfMessage())
        await self.stream.send_all(b"".join(x for x in (out, data, end) if x))
        status, answer_headers, chunks, size = 0, {}, [], 0
        while True:
            event = c.next_event()
            if event is h11.NEED_DATA:
                chunk = await self.stream.receive_some(_READ)
                if not chunk:
                    raise HttpError("connection closed before the answer was complete")
                c.receive_data(bytes(chunk))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                if size < MAX_ANSWER_BYTES:
                    chunks.append(bytes(event.data))
                    size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError("connection closed before the answer was complete")
        if c.our_state is h11.DONE and c.their_state is h11.DONE:
            c.start_next_cycle()
        return Response(status, answer_headers, b"".join(chunks))

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
            raise HttpError(f"cannot connect to {via.host}:{via.port}: {e.strerror or e}") from None
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
        c = h11.Connection(h11.CLIENT)
        authority = f"{self.target.host}:{self.target.port}"
        await stream.send_all(c.send(h11.Request(method="CONNECT", target=authority, headers=[("Host", authority)])))
        while True:
            event = c.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(_READ)
                if not chunk:
                    raise HttpError("proxy closed the connection during CONNECT")
                c.receive_data(bytes(chunk))
            elif isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise HttpError(f"proxy answered CONNECT with {event.status_code}")
                return
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:
                raise HttpError(f"proxy: unexpected {type(event).__name__} during CONNECT")

    async def request(self, method: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        """One request; a stale keep-alive connection is retried once on a fresh one."""
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
                    answer = await conn.request(method, target, hdrs, body)
            except trio.TooSlowError:
                if conn is not None:
                    await conn.aclose()
                raise HttpError(f"no answer within {self.timeout:g}s") from None
            except (OSError, h11.ProtocolError, trio.BrokenResourceError, ssl.SSLError) as e:
                if conn is not None:
                    await conn.aclose()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection
                cause = e.__cause__ or e  # trio wraps TLS errors in BrokenResourceError
                raise HttpError(str(cause) or type(cause).__name__) from None
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
