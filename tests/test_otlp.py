"""otlp_http end to end: the real OpenTelemetry Collector as the receiver, and the tests' own
loopback receiver (collector/harness/receiver.py) for faults it cannot make. Every line written is
accounted for: delivered exactly once, or (where the issue allows) duplicated within a bound
the test computes and reports."""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from collector._native import read_checkpoints
from collector.harness.appender import spawn
from collector.harness.receiver import Receiver
from tests.conftest import Otelcol, stopped_stats, wait_for


def otlp_config(tmp_path: Path, endpoint: str, paths: list[str] | None = None, **out: Any) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"),
        "inputs": [{"name": "test", "paths": paths or [str(tmp_path / "logs" / "*.log")], "rescan_interval": "200ms"}],
        "outputs": [{"type": "otlp_http", "name": "otlp", "endpoint": endpoint, **out}],
        "batch": {"max_age": "50ms"},
        "checkpoint_interval": "200ms",
        "progress_interval": "0s",
        "shutdown_grace": "5s",
        "admin": {"address": "127.0.0.1:0"},
    }


def line(f: int, n: int) -> str:
    # Quotes, a backslash, a tab and multi-byte UTF-8: bodies must come back byte-identical.
    return f'file{f:03d} line{n:05d} "quoted" back\\slash\ttab ünïcødé → ✓ {"x" * 40}'


def write_files(directory: Path, files: int, lines: int) -> collections.Counter[str]:
    directory.mkdir(parents=True, exist_ok=True)
    expected: collections.Counter[str] = collections.Counter()
    for f in range(files):
        text = [line(f, n) for n in range(lines)]
        (directory / f"f{f:03d}.log").write_text("".join(t + "\n" for t in text), encoding="utf-8")
        expected.update(text)
    return expected


def all_lines(directory: Path) -> collections.Counter[str]:
    """Every complete line in every file of `directory` (rotated ones included)."""
    c: collections.Counter[str] = collections.Counter()
    for p in directory.iterdir():
        c.update(p.read_bytes().decode().splitlines())
    return c


def appender(directory: Path, files: int, rate: float, seconds: float, rotate_kib: int = 0) -> subprocess.Popen[str]:
    return spawn(directory, files, rate, seconds, rotate_kib)


def finish(p: subprocess.Popen[str]) -> int:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0
    return int(out.split()[-1])


def account(expected: collections.Counter[str], got: collections.Counter[str]) -> tuple[int, int, int]:
    """(lost, duplicated, unexpected) line counts."""
    lost = sum((expected - got).values())
    dup = sum((got - expected).values())
    unexpected = sum(v for k, v in got.items() if k not in expected)
    return lost, dup, unexpected


# -- the real OpenTelemetry Collector ---------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_otelcol_receives_every_line_byte_identical(  # type: ignore[no-untyped-def]
    tmp_path: Path, tailrace, otelcol: Otelcol, compression: str
) -> None:
    expected = write_files(tmp_path / "logs", 100, 1000)
    t = tailrace(otlp_config(tmp_path, otelcol.endpoint, compression=compression)).start()
    wait_for(lambda: len(otelcol.bodies()) >= 100_000, 120, "100,000 records at the OpenTelemetry Collector", 0.2)
    assert t.stop() == 0
    otelcol.stop()
    got = collections.Counter(otelcol.bodies())
    assert account(expected, got) == (0, 0, 0)
    assert sum(got.values()) == 100_000
    s = stopped_stats(t.log())
    assert s["otlp.delivered_records"] == "100000" and s["otlp.dropped_records"] == "0"
    assert s["otlp.spooled_batches"] == "0"
    rec = json.loads(otelcol.out.read_bytes().splitlines()[0])["resourceLogs"][0]
    assert rec["scopeLogs"][0]["scope"]["name"] == "tailrace"
    assert {a["key"] for a in rec["resource"]["attributes"]} == {"host.name"}
    first = rec["scopeLogs"][0]["logRecords"][0]
    assert {a["key"] for a in first["attributes"]} == {"log.file.name"}  # the path is opt-in
    assert int(first["observedTimeUnixNano"]) > 0


def test_otelcol_restart_mid_stream_loses_nothing(tmp_path: Path, tailrace, otelcol: Otelcol) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    w = appender(logs, 10, 100, 10)
    t = tailrace(otlp_config(tmp_path, otelcol.endpoint, retry={"initial": "100ms", "max": "500ms"})).start()
    wait_for(lambda: len(otelcol.bodies()) >= 2000, 30, "2,000 records before the stop")
    otelcol.stop()
    time.sleep(2)  # the receiver is down for a while: the workload keeps writing
    otelcol.start()
    written = finish(w)
    # Distinct lines: duplicates must not make the count look complete before the last lines arrive.
    wait_for(lambda: len(set(otelcol.bodies())) >= written, 60, f"{written} distinct lines after the restart", 0.2)
    assert t.stop() == 0
    otelcol.stop()
    expected, got = all_lines(logs), collections.Counter(otelcol.bodies())
    lost, dup, unexpected = account(expected, got)
    print(f"otelcol restart: {written} written, {sum(got.values())} received, {lost} lost, {dup} duplicated")
    assert (lost, unexpected) == (0, 0)
    # Duplicates only from batches in flight at the stop: at most the window (4) of batches.
    s = stopped_stats(t.log())
    assert dup <= 4 * max(1, written // max(1, int(s["otlp.delivered_batches"]))) * 2


# -- faults from the tests' own receiver -----------------------------------------------------


def test_503_storm_with_retry_after_then_recovery_exactly_once(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    with Receiver() as r:
        storm_end = time.monotonic() + 20
        r.fault = lambda h: (503, {"Retry-After": "1"}, b"busy") if time.monotonic() < storm_end else None
        logs = tmp_path / "logs"
        w = appender(logs, 10, 50, 24)
        # Backoff alone would retry after 100-200 ms: only the header can space attempts by 1 s.
        t = tailrace(otlp_config(tmp_path, r.endpoint, retry={"initial": "100ms", "max": "200ms"})).start()
        written = finish(w)
        wait_for(lambda: r.records() >= written, 60, f"{written} records after the storm", 0.2)
        assert t.stop() == 0
        lost, dup, unexpected = account(all_lines(logs), collections.Counter(b.decode() for b in r.bodies()))
        assert (lost, dup, unexpected) == (0, 0, 0)
        s = stopped_stats(t.log())
        # Retry-After: 1 honoured: each batch's next attempt after a 503 comes 1 s later or more.
        last_503: dict[int, float] = {}
        gaps = []
        for when, body, status in r.attempts:
            if body in last_503:
                gaps.append(when - last_503.pop(body))
            if status == 503:
                last_503[body] = when
        assert len(gaps) >= 10, gaps
        assert min(gaps) >= 0.95, sorted(gaps)[:5]
        assert int(s["otlp.spooled_batches"]) > 0  # the storm outlasted spool.after (5 s)
        assert s["otlp.dropped_records"] == "0"


def test_kill_9_twenty_times_repeats_only_the_batches_in_flight(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """Acknowledgements survive a killed process (each acknowledged group is one append to the
    checkpoint journal; the page cache outlives the process): after `kill -9` the only lines
    delivered again are those of batches sent and not yet answered. 20 kills at random points
    under load (the receiver holds its answers from a random moment, so batches are in flight,
    then tailrace is killed): nothing lost, and the duplicates are exactly the lines held at
    the kills. An implementation that journals only every `checkpoint_interval` repeats what
    was acknowledged since (thousands of lines per kill); one that journals before the answer
    loses the batches in flight."""
    rng = random.Random(20)
    with Receiver() as r:
        logs = tmp_path / "logs"
        w = appender(logs, 10, 300, 600)  # 3,000 lines/s across 10 files, until stopped below
        t = tailrace(otlp_config(tmp_path, r.endpoint))
        in_flight: collections.Counter[str] = collections.Counter()
        starts = 0

        def delivered() -> int | None:
            """tailrace's own count of acknowledged records (None until its admin is up)."""
            import re
            import urllib.request

            ports = re.findall(r"admin endpoint on (http://[0-9.:]+)/", t.log())
            if len(ports) < starts:
                return None
            try:
                with urllib.request.urlopen(ports[-1] + "/stats", timeout=5) as resp:
                    return int(json.loads(resp.read())["totals"]["records_delivered"])
            except OSError:
                return None

        for kill in range(20):
            t.start()
            starts += 1
            base = r.records()
            # Some progress by this process, then answers are held from a random moment.
            wait_for(lambda b=base: r.records() >= b + 500, 60, f"run {kill}: 500 records")
            time.sleep(rng.uniform(0, 0.5))  # where the kill lands: randomised, nothing waits on it
            r.gate.clear()
            wait_for(lambda: r.held_requests >= 1, 30, f"run {kill}: a batch in flight")
            # Every answer sent before the gate closed has been acknowledged by tailrace.
            with r.lock:
                answered = r.got.records - len(r.held) - base
            wait_for(lambda a=answered: delivered() == a, 30, f"run {kill}: {answered} records acknowledged")
            t.kill()
            with r.lock:
                in_flight.update(b.decode() for b in r.held)
                r.held.clear()
                r.held_requests = 0
            r.gate.set()
        t.start()
        w.terminate()  # every line it wrote is whole (one write each)
        w.communicate(timeout=30)
        written = sum(all_lines(logs).values())
        wait_for(lambda: len(set(r.bodies())) >= written, 90, f"{written} distinct lines", 0.2)
        assert t.stop() == 0
    expected, got = all_lines(logs), collections.Counter(b.decode() for b in r.bodies())
    lost, dup, unexpected = account(expected, got)
    print(f"kill -9 x20: {written} written, {sum(got.values())} received, {lost} lost, {dup} duplicated "
          f"({100 * dup / written:.2f} %), {sum(in_flight.values())} in flight at the kills")
    assert (lost, unexpected) == (0, 0)
    assert got - expected == in_flight


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_rotation_by_rename_ten_times_a_second_every_line_once(tmp_path: Path, tailrace, watch: str) -> None:  # type: ignore[no-untyped-def]
    """One file written at 2,000 lines/s and renamed away every 38 KiB (about every 100 ms) for
    4 s: every line exactly once, by events or by polling (which sees several rotations
    between two looks: rule 4's siblings)."""
    with Receiver() as r:
        logs = tmp_path / "logs"
        cfg = otlp_config(tmp_path, r.endpoint)
        cfg["inputs"][0].update(watch=watch, poll_interval="250ms")
        t = tailrace(cfg).start()
        wait_for(lambda: "running" in t.log(), 30, "tailrace running")
        w = appender(logs, 1, 2000, 4, rotate_kib=38)
        written = finish(w)
        rotated = len(list(logs.glob("*.log.*")))
        wait_for(lambda: r.records() >= written, 60, f"{written} records", 0.2)
        assert t.stop() == 0
    assert rotated >= 30, rotated
    assert account(all_lines(logs), collections.Counter(b.decode() for b in r.bodies())) == (0, 0, 0)


def test_receiver_down_60s_with_rotation_loses_nothing_and_memory_stays_flat(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    r = Receiver(count_only=False).start()
    port = r.port
    logs = tmp_path / "logs"
    w = appender(logs, 10, 500, 70, rotate_kib=1024)  # 5,000 lines/s, each file rotated every 1 MiB
    cfg = otlp_config(tmp_path, r.endpoint, paths=[str(logs / "*.log")], retry={"initial": "200ms", "max": "2s"})
    t = tailrace(cfg).start()
    assert t.proc is not None
    wait_for(lambda: r.records() >= 5000, 30, "records before the outage")
    r.stop()
    rss: list[tuple[float, int]] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.5):
            try:
                status = Path(f"/proc/{t.proc.pid}/status").read_text()  # type: ignore[union-attr]
            except OSError:
                return
            kib = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            rss.append((time.monotonic() - down, kib))

    down = time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(60)
    r2 = Receiver(port=port)
    r2.got = r.got  # one account across both lives of the receiver
    r2.start()
    written = finish(w)
    wait_for(lambda: len(set(r2.bodies())) >= written, 120, f"{written} distinct lines after recovery", 0.5)
    stop_sampling.set()
    sampler.join()
    assert t.stop() == 0
    r2.stop()
    lost, dup, unexpected = account(all_lines(logs), collections.Counter(b.decode() for b in r2.bodies()))
    assert (lost, dup, unexpected) == (0, 0, 0)
    s = stopped_stats(t.log())
    assert int(s["rotations"]) >= 50
    assert int(s["otlp.spooled_batches"]) > 0
    peak = max(k for _, k in rss)
    first = max(k for at, k in rss if 10 <= at < 35)
    last = max(k for at, k in rss if 35 <= at < 60)
    print(f"outage RSS: peak {peak / 1024:.1f} MiB, 10-35 s {first / 1024:.1f} MiB, 35-60 s {last / 1024:.1f} MiB")
    assert peak < 200 * 1024
    assert last <= first + 8 * 1024, "RSS grows with the length of the outage"


def _run_simple(tmp_path: Path, tailrace, r: Receiver, lines: int = 2000, **out: Any):  # type: ignore[no-untyped-def]
    expected = write_files(tmp_path / "logs", 1, lines)
    t = tailrace(otlp_config(tmp_path, r.endpoint, **out)).start()
    return expected, t


def test_429_is_retried_and_500_is_dropped_and_counted_as_the_otlp_spec_says(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """OTLP/HTTP: 429 (like 502-504) is retried, with exactly-once delivery after; 500 (like
    every other 5xx and 4xx) must not be retried: the batch is dropped and counted."""
    answers = iter([(429, {}, b"slow down")] * 3 + [(500, {"Content-Type": "text/plain"}, b"boom")])
    with Receiver() as r:
        r.fault = lambda h: next(answers, None)
        expected = write_files(tmp_path / "logs", 1, 2000)
        cfg = otlp_config(tmp_path, r.endpoint, retry={"initial": "50ms", "max": "100ms"}, max_in_flight=1)
        cfg["batch"]["max_records"] = 100  # 20 batches: the one answered 500 is dropped, not the rest
        t = tailrace(cfg).start()
        wait_for(lambda: t.totals()["records_delivered"] == 2000, 30,
                 "every record acknowledged (one batch dropped)")
        assert t.stop() == 0
    s = stopped_stats(t.log())
    assert (r.got.statuses[429], r.got.statuses[500], s["otlp.retries"]) == (3, 1, "3")
    dropped = int(s["otlp.dropped_records"])
    got = collections.Counter(b.decode() for b in r.bodies())
    lost, dup, unexpected = account(expected, got)
    assert (dup, unexpected) == (0, 0)
    assert lost == dropped > 0 and s["otlp.dropped_batches"] == "1"
    assert "answered 500: boom" in t.log()


def test_413_splits_the_batch_until_it_fits(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    with Receiver(max_body=40_000) as r:
        expected, t = _run_simple(tmp_path, tailrace, r, compression="none")
        wait_for(lambda: r.records() >= 2000, 30, "2,000 records")
        assert t.stop() == 0
        assert account(expected, collections.Counter(b.decode() for b in r.bodies())) == (0, 0, 0)
        s = stopped_stats(t.log())
        assert int(s["otlp.split_batches"]) >= 3 and r.got.statuses[413] == int(s["otlp.split_batches"])


def test_415_to_zstd_falls_back_to_gzip_once(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    with Receiver(accept_zstd=False) as r:
        expected, t = _run_simple(tmp_path, tailrace, r)
        wait_for(lambda: r.records() >= 2000, 30, "2,000 records")
        assert t.stop() == 0
        assert account(expected, collections.Counter(b.decode() for b in r.bodies())) == (0, 0, 0)
        assert r.got.statuses[415] == 1 and set(r.got.encodings) == {"gzip"}
        assert t.log().count("does not accept zstd (415); sending gzip") == 1


def test_400_drops_the_batch_counts_it_and_moves_on(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    with Receiver() as r:
        first = threading.Event()

        def fault(h: dict[str, str]) -> tuple[int, dict[str, str], bytes] | None:
            if not first.is_set():
                first.set()
                return 400, {"Content-Type": "text/plain"}, b"bad data: field x"
            return None

        r.fault = fault
        expected, t = _run_simple(tmp_path, tailrace, r, lines=500)
        wait_for(lambda: "records dropped" in t.log(), 30, "the drop to be logged")
        with open(tmp_path / "logs" / "f000.log", "a") as f:
            f.write("".join(line(1, n) + "\n" for n in range(100)))
        wait_for(lambda: r.records() >= 100, 30, "the lines after the drop")
        assert t.stop() == 0
        s = stopped_stats(t.log())
        assert s["otlp.dropped_records"] == "500" and s["otlp.dropped_batches"] == "1"
        assert "answered 400: bad data: field x" in t.log()
        got = collections.Counter(b.decode() for b in r.bodies())
        assert got == collections.Counter(line(1, n) for n in range(100))
        # The dropped batch advanced its checkpoint: a restart does not send it again.
        cp = read_checkpoints(str(tmp_path / "state"))
        assert cp[0]["offset"] == (tmp_path / "logs" / "f000.log").stat().st_size


def test_401_is_retried_loudly_until_fixed(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    with Receiver() as r:
        fixed = threading.Event()
        r.fault = lambda h: None if fixed.is_set() else (401, {"Content-Type": "text/plain"}, b"who are you")
        expected, t = _run_simple(tmp_path, tailrace, r, retry={"misconfigured": "300ms"}, spool={"enabled": False})
        wait_for(lambda: r.got.statuses.get(401, 0) >= 3, 30, "three 401 answers")
        assert "check the endpoint and credentials" in t.log()
        fixed.set()
        wait_for(lambda: r.records() >= 2000, 30, "2,000 records once fixed")
        assert t.stop() == 0
        assert account(expected, collections.Counter(b.decode() for b in r.bodies())) == (0, 0, 0)


def test_partial_success_is_logged_and_counted_not_retried(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    with Receiver() as r:
        r.partial_reject = 1
        expected, t = _run_simple(tmp_path, tailrace, r)
        wait_for(lambda: r.got.records + r.got.accepted >= 2000, 30, "every record answered")
        assert t.stop() == 0
        s = stopped_stats(t.log())
        assert int(s["otlp.rejected_records"]) == r.got.accepted
        assert r.records() + r.got.accepted == 2000 and r.got.requests == r.got.accepted
        assert "receiver rejected 1 records: rejected by the test" in t.log()


def test_slow_answers_time_out_and_are_retried(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    with Receiver() as r:
        slow = [2]

        def fault(h: dict[str, str]) -> tuple[int, dict[str, str], bytes] | None:
            if slow[0] > 0:
                slow[0] -= 1
                time.sleep(1.0)
                return 503, {}, b""
            return None

        r.fault = fault
        expected, t = _run_simple(tmp_path, tailrace, r, timeout="300ms", max_in_flight=1,
                                  retry={"initial": "50ms", "max": "100ms"})
        wait_for(lambda: r.records() >= 2000, 30, "2,000 records")
        assert t.stop() == 0
        assert account(expected, collections.Counter(b.decode() for b in r.bodies())) == (0, 0, 0)
        assert "no answer within 0.3s" in t.log()


def test_header_files_are_reread_and_never_logged(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    token = tmp_path / "token"
    token.write_text("Bearer secret-one\n")
    with Receiver() as r:
        r.fault = lambda h: None if h.get("authorization", "").startswith("Bearer secret") else (401, {}, b"")
        expected, t = _run_simple(tmp_path, tailrace, r, lines=10, header_files={"Authorization": str(token)},
                                  headers={"X-Tenant": "t1"})
        wait_for(lambda: r.records() >= 10, 30, "the first lines")
        token.write_text("Bearer secret-two\n")
        os.utime(token, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        with open(tmp_path / "logs" / "f000.log", "a") as f:
            f.write("after the token rotated\n")
        wait_for(lambda: r.records() >= 11, 30, "the line after the rotation")
        # Nowhere but on the wire: not in /stats, /metrics or the configuration echoed anywhere.
        exposed = [t.get(path)[1].decode() for path in ("/stats", "/metrics", "/readyz")]
        assert t.stop() == 0
        seen = [h.get("authorization") for h in r.got.headers]
        assert seen[0] == "Bearer secret-one" and seen[-1] == "Bearer secret-two"
        assert all(h.get("x-tenant") == "t1" for h in r.got.headers)
        assert "secret" not in t.log()
        assert [page for page in exposed if "secret" in page] == []
        profiles = list((tmp_path / "state" / "profiles").glob("*"))
        assert [p.name for p in profiles if b"secret" in p.read_bytes()] == []


def test_spool_survives_a_restart_and_replays_exactly_once(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    from collector.harness.receiver import RefusingPort

    refusing = RefusingPort()  # nobody listens until the receiver below
    port = refusing.port
    expected = write_files(tmp_path / "logs", 5, 1000)
    cfg = otlp_config(tmp_path, f"http://127.0.0.1:{port}", spool={"after": "500ms"},
                      retry={"initial": "100ms", "max": "200ms"})
    t = tailrace(cfg).start()
    spool = tmp_path / "state" / "spool" / "otlp"
    sizes = {str(p): p.stat().st_size for p in (tmp_path / "logs").iterdir()}

    def all_committed() -> bool:
        return {e["path"]: e["offset"] for e in read_checkpoints(str(tmp_path / "state"))} == sizes

    wait_for(all_committed, 30, "every line spooled and committed")
    assert t.stop() == 0
    s = stopped_stats(t.log())
    assert s["otlp.spooled_records"] == "5000" and s["otlp.delivered_records"] == "0"
    assert len(list(spool.glob("*.seg"))) == int(s["otlp.spooled_batches"])
    with Receiver(port=refusing.release()) as r:
        t.start()
        wait_for(lambda: r.records() >= 5000, 30, "the spool replayed after the restart")
        wait_for(lambda: not list(spool.glob("*.seg")), 10, "replayed segments deleted")
        assert t.stop() == 0
        assert account(expected, collections.Counter(b.decode() for b in r.bodies())) == (0, 0, 0)
    s = stopped_stats(t.log())
    assert s["otlp.replayed_batches"] == str(r.got.accepted) and s["lines"] == "0"
