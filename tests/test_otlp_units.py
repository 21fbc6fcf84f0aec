"""otlp_http and spool pieces on their own: header parsing, answer decoding, proxies, TLS,
the spool's segment format."""

from __future__ import annotations

import collections
import contextlib
import email.utils
import functools
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from collector.flow import config
from collector.flow.outputs.otlp_http import logs_url, partial_success, retry_after, server_message, transcode
from collector.flow.spool import Spool
from collector.harness.receiver import Receiver
from collector.http import Response, Target, proxy_for
from tests.conftest import require_tool, stopped_stats, wait_for
from tests.test_otlp import account, otlp_config, write_files


def test_logs_url_adds_the_logs_path_only_to_a_base_url() -> None:
    assert logs_url("http://h:4318") == "http://h:4318/v1/logs"
    assert logs_url("http://h:4318/") == "http://h:4318/v1/logs"
    assert logs_url("https://h/custom/logs") == "https://h/custom/logs"


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("soon") is None
    when = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after(when, now=1_000_000) == 30.0
    assert retry_after(when, now=2_000_000) == 0.0


def test_partial_success_decodes_the_official_message() -> None:
    resp = logs_service_pb2.ExportLogsServiceResponse()
    assert partial_success(resp.SerializeToString()) == (0, "")
    resp.partial_success.rejected_log_records = 12
    resp.partial_success.error_message = "too old"
    assert partial_success(resp.SerializeToString()) == (12, "too old")
    assert partial_success(b"\xff\xff") == (0, "")


def test_server_message_reads_a_google_rpc_status() -> None:
    # google.rpc.Status by hand (code 3, message, one Any detail), as a collector answers a 400:
    # the message is read and the detail skipped; a text body is its start; garbage is not a crash.
    any_detail = b"\x0a\x15type.googleapis.com/x" + b"\x12\x03abc"
    msg = b"logs rejected: bad timestamp"
    status = b"\x08\x03" + b"\x12" + bytes([len(msg)]) + msg + b"\x1a" + bytes([len(any_detail)]) + any_detail
    proto = {"content-type": "application/x-protobuf"}
    assert server_message(Response(400, proto, status)) == "logs rejected: bad timestamp"
    assert server_message(Response(400, {"content-type": "text/plain"}, b"  no such path \n")) == "no such path"
    assert server_message(Response(400, proto, b"\xff\xff")) == "\ufffd\ufffd"


def test_transcode_between_codecs() -> None:
    raw = b"x" * 1000
    z = transcode(raw, "none", "zstd", 1)
    g = transcode(z, "zstd", "gzip", 6)
    assert transcode(g, "gzip", "none", 0) == raw


def test_proxy_from_the_environment_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    assert proxy_for(Target.parse("https://otlp.example:4318/v1/logs")) is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.local:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    p = proxy_for(Target.parse("https://otlp.example:4318/v1/logs"))
    assert p is not None and (p.host, p.port) == ("proxy.local", 3128)
    assert proxy_for(Target.parse("https://a.internal.example/v1/logs")) is None
    assert proxy_for(Target.parse("http://otlp.example/v1/logs")) is None  # no HTTP_PROXY


def test_config_errors_name_the_key() -> None:
    base = "inputs: [{paths: [/x]}]\noutputs: [{type: otlp_http, %s}]"
    for body, key in [
        ("endpoint: 'ftp://x'", "endpoint"),
        ("endpoint: 'http://x', max_in_flight: 0", "max_in_flight"),
        ("endpoint: 'http://x', compression: lz4", "compression"),
        ("endpoint: 'http://x', headers: {'bad header': v}", "headers"),
        ("endpoint: 'http://x', tls: {cert_file: /c}", "cert_file"),
        ("endpoint: 'http://x', spool: {after: forever}", "after"),
        ("endpoint: 'http://x', retry: {initial: 0s}", "initial"),
    ]:
        with pytest.raises(config.ConfigError, match=key):
            config.parse(base % body)
    cfg = config.parse(base % "endpoint: 'http://x', header_files: {Authorization: /nonexistent/token}")
    assert config.check(cfg) == ["$.outputs[0].header_files.Authorization: cannot read /nonexistent/token"]


async def test_spool_round_trip_order_corruption_and_bound(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", max_bytes=3 * (17 + 100), name="t", warn_every=0.05)
    s.open()
    for i in range(3):
        await s.append(bytes([i]) * 100, "zstd", i + 1)
    assert len(s) == 3 and s.bytes == 3 * 117
    # Full: the next append waits until a segment is removed.
    done = trio.Event()

    async def fourth() -> None:
        await s.append(b"\x03" * 100, "none", 4)
        done.set()

    async with trio.open_nursery() as n:
        n.start_soon(fourth)
        await trio.sleep(0.2)
        assert not done.is_set()
        e = await s.head()
        assert e is not None and (e.payload, e.codec, e.records) == (b"\x00" * 100, "zstd", 1)
        await s.remove(e.segment)
        with trio.fail_after(5):
            await done.wait()
    # A restart finds the rest in order; a damaged segment is set aside, not replayed.
    segs = sorted((tmp_path / "spool").glob("*.seg"))
    data = bytearray(segs[0].read_bytes())
    data[-1] ^= 0xFF
    segs[0].write_bytes(bytes(data))
    s2 = Spool(tmp_path / "spool", max_bytes=1 << 20, name="t")
    s2.open()
    assert len(s2) == 3
    e = await s2.head()
    assert e is not None and e.records == 3 and s2.corrupt == 1
    assert len(list((tmp_path / "spool").glob("*.corrupt"))) == 1


def _certs(d: Path) -> dict[str, Path]:
    require_tool("openssl", "TLS tests make a throwaway CA")
    p = {k: d / f"{k}.pem" for k in ("ca", "ca_key", "srv", "srv_key", "cli", "cli_key")}

    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p["ca_key"]), "-out", str(p["ca"]),
        "-days", "1", "-subj", "/CN=tailrace test CA")
    for who, name in (("srv", "127.0.0.1"), ("cli", "client")):
        csr = d / f"{who}.csr"
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p[f"{who}_key"]), "-out", str(csr),
            "-subj", f"/CN={name}")
        ext = d / f"{who}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if who == "srv" else "extendedKeyUsage=clientAuth\n")
        run("x509", "-req", "-in", str(csr), "-CA", str(p["ca"]), "-CAkey", str(p["ca_key"]), "-CAcreateserial",
            "-out", str(p[who]), "-days", "1", "-extfile", str(ext))
    return p


def test_tls_verifies_the_server_and_presents_a_client_certificate(tmp_path: Path, tailrace: Any) -> None:
    c = _certs(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(c["srv"], c["srv_key"])
    ctx.load_verify_locations(c["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    with Receiver(tls=ctx) as r:
        expected = write_files(tmp_path / "logs", 1, 100)
        # Without the CA the server is not trusted: nothing is delivered, the error is logged.
        bad = tailrace(otlp_config(tmp_path, r.endpoint, spool={"enabled": False})).start()
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in bad.log(), 30, "the verification failure")
        bad.kill()
        assert r.records() == 0
        tls = {"ca_file": str(c["ca"]), "cert_file": str(c["cli"]), "key_file": str(c["cli_key"])}
        good = tailrace(otlp_config(tmp_path, r.endpoint, tls=tls)).start()
        wait_for(lambda: r.records() >= 100, 30, "100 records over TLS")
        assert good.stop() == 0
        assert account(expected, collections.Counter(b.decode() for b in r.bodies())) == (0, 0, 0)
        assert stopped_stats(good.log())["otlp.delivered_records"] == "100"


class _Script(trio.abc.Stream):
    """A stream that answers with scripted bytes, in the pieces given."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)
        self.sent = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.pieces.pop(0) if self.pieces else b""

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    ("pieces", "status", "body", "reusable"),
    [
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"], 200, b"abc", True),
        ([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2", b"04 No Content\r\nContent-Length: 0\r\n\r\n"], 204, b"", True),
        ([b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nab", b"c\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"],
         503, b"abcde", True),
        ([b"HTTP/1.1 400 Bad\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"], 400, b"no", False),
        ([b"HTTP/1.0 200 OK\r\n\r\nto the end", b" of the connection"], 200, b"to the end of the connection", False),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxEXTRA"], 200, b"x", False),
    ],
)
async def test_http_answers_are_framed_correctly(pieces: list[bytes], status: int, body: bytes, reusable: bool) -> None:
    from collector.http import Connection

    c = Connection(_Script(pieces))
    resp = await c.request("POST", "/v1/logs", [("Host", "h")], b"payload")
    assert (resp.status, resp.body, c.reusable) == (status, body, reusable)
    assert c.stream.sent == b"POST /v1/logs HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\npayload"  # type: ignore[attr-defined]


async def test_an_answer_held_by_a_settle_is_not_counted_in_the_requests_duration() -> None:
    """While a `settle` holds the reading of an answer (the pipeline's next pass), the answer
    lies in the socket: `unread_for` says how long, from the kernel's time of its arrival (not
    the whole hold), so the export latency is not the pass period. Without a settle it is 0."""
    from collector.http import Connection

    holding = trio.Event()
    delay = 0.0
    sent_at = ended_at = 0.0

    async def server(stream: trio.SocketStream) -> None:
        nonlocal sent_at
        got = b""
        while not got.endswith(b"\r\n\r\npayload"):
            got += await stream.receive_some(65536)
        await holding.wait()
        await trio.sleep(delay)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # arrives as sent (loopback)
        sent_at = trio.current_time()
        await trio.sleep_forever()

    async def settle() -> None:
        nonlocal ended_at
        holding.set()
        await trio.sleep(0.3)
        ended_at = trio.current_time()

    async with trio.open_nursery() as n:
        listeners = await n.start(functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        for delay, hold in ((0.0, settle), (0.2, settle), (0.0, None)):
            holding = trio.Event()
            if hold is None:
                holding.set()
            c = Connection(await trio.open_tcp_stream("127.0.0.1", port))
            t0 = trio.current_time()
            resp = await c.request("POST", "/v1/logs", [("Host", "h")], b"payload", hold)
            took = trio.current_time() - t0
            assert resp.status == 200
            if hold is None:
                assert resp.unread_for == 0.0
            else:
                # From the answer's arrival to the hold's end (~0.3 s less `delay`), within a
                # kernel tick, and the read just after the hold.
                lay = ended_at - sent_at
                assert lay > 0.05 and lay - 0.015 <= resp.unread_for <= min(lay + 0.05, took), (
                    delay, resp.unread_for, lay, took)
            await c.aclose()
        n.cancel_scope.cancel()


async def test_unread_for_reads_the_tcp_socket_under_tls_and_is_bounded_by_the_hold() -> None:
    """`unread_for` finds the TCP socket under a TLS stream (an https endpoint), reads when data
    last arrived there, and never says more than the hold; 0 for a stream with no socket."""
    from collector.http import unread_for

    async def server(stream: trio.SocketStream) -> None:
        await stream.send_all(b"answer")
        await trio.sleep_forever()

    async with trio.open_nursery() as n:
        listeners = await n.start(functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        assert await client.receive_some(64) == b"answer"
        await trio.sleep(0.2)
        tls = trio.SSLStream(client, ssl.create_default_context(), server_hostname="h")
        lay = unread_for(tls, 10.0)
        assert 0.18 <= lay <= 0.5, lay  # 0.2 s since the data came (a kernel tick's precision)
        assert unread_for(tls, 0.05) == 0.05  # no more than the hold
        assert unread_for(client, 0.0) == 0.0  # no hold, nothing to leave out
        await client.aclose()
        n.cancel_scope.cancel()
    assert unread_for(_Script([]), 1.0) == 0.0  # not a socket


async def test_the_export_latency_leaves_out_the_pipelines_hold_on_an_answer(tmp_path: Path) -> None:
    """`otlp_http` reports each request's duration to `observe` less the time its answer lay
    unread while the pipeline's `settle` held it (the next pass): 0.3 s held here, and the
    loopback answer took milliseconds. Fails if the hold is counted."""
    from collector.flow.outputs.otlp_http import OtlpHttp
    from collector.flow.pipeline import standalone_tailer

    (tmp_path / "a.log").write_bytes(b"one\ntwo\n")
    with Receiver() as r:
        cfg = config.parse(
            f"state_dir: {tmp_path}/state\ninputs: [{{paths: ['{tmp_path}/*.log']}}]\n"
            f"outputs: [{{type: otlp_http, endpoint: '{r.endpoint}'}}]\nbatch: {{max_age: 0s}}"
        )
        _, tailer = standalone_tailer(cfg)
        batches = tailer.step() + tailer.flush()
        assert [b.records for b in batches] == [2]
        out = OtlpHttp(cfg.outputs[0], cfg.state_dir)  # type: ignore[arg-type]
        seen: list[tuple[float, int | str]] = []
        out.observe = lambda name, seconds, status: seen.append((seconds, status))

        async def hold() -> None:
            await trio.sleep(0.3)

        out.settle = hold
        t0 = trio.current_time()
        await out.send(batches[0])
        took = trio.current_time() - t0
        await out.close()
    assert took >= 0.3 and len(seen) == 1 and seen[0][1] == 200, (took, seen)
    assert 0 <= seen[0][0] < 0.1, seen  # the request's own milliseconds, not the 0.3-s hold
    assert r.records() == 2


@pytest.mark.parametrize(
    "pieces",
    [
        [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"],
        [b"SSH-2.0-OpenSSH\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"],
        [],
    ],
)
async def test_http_broken_answers_are_errors(pieces: list[bytes]) -> None:
    from collector.http import Connection, HttpError

    with pytest.raises(HttpError):
        await Connection(_Script(pieces)).request("POST", "/", [], b"")
    with pytest.raises(HttpError, match="line break"):
        await Connection(_Script(pieces)).request("POST", "/", [("X", "a\r\nInjected: 1")], b"")


class ConnectProxy:
    """A CONNECT-only HTTP proxy on loopback (a thread per tunnel) that records its tunnels."""

    def __init__(self) -> None:
        import socket
        import threading

        self.tunnels: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head and (chunk := client.recv(4096)):
                head += chunk
            if b"\r\n\r\n" not in head:  # the client went away before asking
                client.close()
                continue
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                client.close()
                continue
            self.tunnels.append(target)
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

            def pipe(a: socket.socket, b: socket.socket) -> None:
                try:
                    while data := a.recv(65536):
                        b.sendall(data)
                except OSError:
                    pass
                finally:
                    # Both ends shut (the other direction's recv ends too), then this direction's
                    # source closed: each socket is the source of one direction, so both are
                    # closed once both are done (left to the garbage collector, an unclosed
                    # socket is a ResourceWarning in whatever test runs then).
                    for s in (a, b):
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)
                    a.close()

            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def test_https_through_a_connect_proxy_and_no_proxy(
    tmp_path: Path, tailrace: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = _certs(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(c["srv"], c["srv_key"])
    proxy = ConnectProxy()
    for k in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    try:
        with Receiver(tls=ctx) as r:
            expected = write_files(tmp_path / "logs", 1, 100)
            t = tailrace(otlp_config(tmp_path, r.endpoint, tls={"ca_file": str(c["ca"])})).start()
            wait_for(lambda: r.records() >= 100, 30, "100 records through the proxy")
            assert t.stop() == 0
            assert account(expected, collections.Counter(b.decode() for b in r.bodies())) == (0, 0, 0)
            assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{r.port}"}
            # NO_PROXY: the same endpoint is reached directly.
            n = len(proxy.tunnels)
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            with open(tmp_path / "logs" / "f000.log", "a") as f:
                f.write("direct\n")
            t.start()
            wait_for(lambda: r.records() >= 101, 30, "the line sent directly")
            assert t.stop() == 0
            assert len(proxy.tunnels) == n
    finally:
        proxy.close()
