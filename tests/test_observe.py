"""Self-observation: the profiler catches the fstat regression (naive) and stays quiet for
inotify; /metrics, /healthz, /readyz; `tailrace top`; `tailrace profile`; a py-spy killed
mid-sample never leaves tailrace stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from collector.harness.appender import spawn
from collector.observe.profiler import Profile, Profiler, is_stat_frame, syscall_of
from tests.conftest import ROOT, base_config, require_tool, wait_for


def test_profile_parsing_share_and_renderings() -> None:
    text = (
        "main (cli.py:1);step (tailer.rs:10);tailrace_core::reader::FileReader::fstat (reader.rs:165);"
        "statx (libc.so.6) 30\n"
        "main (cli.py:1);step (tailer.rs:10);pread64 (libc.so.6) 60\n"
        "main (cli.py:1);epoll (x.py:3) 10\n"
        "garbage line\n"
        "Thread.run (threading.py:982);lock_PyThread_acquire_lock (libpython3.11.so.1.0) 40\n"
        "run (_run.py:2535);get_events (_io_epoll.py:243);epoll_wait (libc.so.6) 7\n"
    )
    p = Profile.parse(text)
    assert (p.samples, p.stat_samples(), p.idle) == (100, 30, 47)
    assert p.stat_share() == 0.3
    assert p.top(2)[0] == ("main (cli.py:1)", 0, 100)
    for frame in ("fstat64 (libc.so.6)", "__fxstat64 (libc.so.6)", "newfstatat (libc.so.6)", "statx (libc.so.6)",
                  "tailrace_core::reader::FileReader::fstat (reader.rs:165)"):
        assert is_stat_frame(frame), frame
    for frame in ("pread64 (libc.so.6)", "stats (pipeline.py:10)", "Pipeline.stats (x.py:1)", "statistics (a.py:1)"):
        assert not is_stat_frame(frame), frame
    svg = p.svg("t")
    # inferno's graph: one frame per node of the stack tree plus `all`, each with its samples, the
    # stat family (and only it) red — catches a renderer that drops frames, miscounts or colours
    # by name alone.
    frames = dict(re.findall(r'<g><title>([^<]*)</title><rect[^>]*fill="([^"]*)"', svg))
    assert sorted(frames) == sorted([
        "all (100 samples, 100%)", "main (cli.py:1) (100 samples, 100.00%)", "step (tailer.rs:10) (90 samples, 90.00%)",
        "tailrace_core::reader::FileReader::fstat (reader.rs:165) (30 samples, 30.00%)",
        "statx (libc.so.6) (30 samples, 30.00%)", "pread64 (libc.so.6) (60 samples, 60.00%)",
        "epoll (x.py:3) (10 samples, 10.00%)"])
    red = {f.rsplit(" (", 1)[0] for f, fill in frames.items() if fill == "rgb(230,0,0)"}
    assert red == {"statx (libc.so.6)", "tailrace_core::reader::FileReader::fstat (reader.rs:165)"}
    assert "stat-family 30.0% (red)" in svg and "search" in svg.lower()
    assert Profile().svg("t").endswith("t: no samples</text></svg>\n")
    sp = p.speedscope("t")
    assert sum(sp["profiles"][0]["weights"]) == 100  # type: ignore[index]
    # Samples by syscall: the leaf-most wrapper frame, names normalised; unnamed frames and
    # libc's non-syscalls are not syscalls; idle samples are not counted.
    assert p.syscall_samples() == {"statx": 30, "pread": 60}
    assert p.syscall_shares() == {"pread": 0.6, "statx": 0.3}
    # Hot: over the threshold with HOT_MIN_SAMPLES of its own, not the data path's reads.
    judge = Profiler(Path("/nonexistent"), every=1, duration=1, rate=1, threshold=0.5, syscall_threshold=0.10,
                     min_samples=20)
    small = Profile.parse("a;accept4 (libc.so.6) 3\na;x (y.py:1) 22\n")
    big = Profile.parse("a;posix_fadvise64 (libc.so.6) 15\na;pread64 (libc.so.6) 40\na;x (y.py:1) 45\n")
    assert judge.hot_syscalls(small) == [] and judge.hot_syscalls(big) == [("posix_fadvise", 0.15)]
    # A disk wait is in the table but not judged: its samples are the disk's time, not CPU
    # (catches a judge that warns on a slow state_dir disk as on a CPU regression).
    disk = Profile.parse("a;fdatasync (libc.so.6) 30\na;lseek64 (libc.so.6) 20\na;x (y.py:1) 50\n")
    assert disk.syscall_shares() == {"fdatasync": 0.3, "lseek": 0.2}
    assert judge.hot_syscalls(disk) == [("lseek", 0.2)]
    for frame, name in (("posix_fadvise64 (libc.so.6)", "posix_fadvise"), ("__GI___fstatat64 (libc.so.6)", "fstatat"),
                        ("__libc_read (libc.so.6)", "read"), ("lseek64 (libc.so.6)", "lseek"),
                        ("0x7f99f7f278ec (libc.so.6)", None), ("pthread_mutex_lock (libc.so.6)", None),
                        ("read (reader.py:3)", None)):
        assert syscall_of(frame) == name, frame


STAT_SYSCALLS = {"fstat", "fstatat", "newfstatat", "statx", "stat", "lstat", "fxstat", "xstat", "lxstat"}


def _profiled(tmp_path: Path, tailrace: Any, watch: str, rate: int = 250) -> tuple[dict[str, Any], str]:
    require_tool("py-spy", "the profiler")
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(200):
        (logs / f"w{i:04d}.log").write_bytes(b"")
    # The default look cadence for inotify (the test config's 200 ms would stat all 200 files five
    # times a second: the profile would judge the test's setting, not the watcher).
    cfg = base_config(tmp_path, [str(logs / "*.log")], watch=watch, rescan_interval="60s")
    cfg["outputs"] = [{"type": "blackhole"}]
    # min_samples 20: a profile of the inotify run is judged too, so its silence is a finding, not
    # a profile too small to warn about (inotify is sampled at 500 Hz: 27-63 non-idle samples at
    # 250 Hz here once the test's own requests were no longer most of them).
    cfg["profiler"] = {"every": "0s", "duration": "6s", "rate": rate, "min_samples": 20}
    t = tailrace(cfg).start()
    wait_for(lambda: t.get("/stats")[0] == 200, 30, "the admin endpoint")
    w = spawn(logs, 200, 50, 14)  # 10,000 one-line appends per second
    profiles = lambda: json.loads(t.get("/stats")[1])["profiler"]  # noqa: E731
    # (The test's own requests are samples too: accept4, getrusage — slow while py-spy holds the
    # threads — and the admin's work. Asked once a second, not twenty times: at 20/s they were
    # ~10 % of an inotify profile's samples on CI, a share that could cross the threshold.)
    first = wait_for(lambda: (p := profiles())["profiles"] >= 1 and p, 30, "a first profile", interval=1.0)
    # The first profile may include start-up; judge a profile taken wholly under the workload.
    prof = wait_for(lambda: (p := profiles())["profiles"] >= first["profiles"] + 1 and p, 30, "a second profile",
                    interval=1.0)
    w.communicate(timeout=60)
    prof["metrics"] = t.get("/metrics")[1].decode()
    assert t.stop() == 0
    # Warnings of the judged profile only: the first one may have caught start-up's opens.
    prof["warnings_under_load"] = prof["warnings"] - first["warnings"]
    prof["syscall_warnings_under_load"] = prof["syscall_warnings"] - first["syscall_warnings"]
    return prof, t.log()


def test_profiler_catches_the_fstat_regression_in_naive_mode(tmp_path: Path, tailrace: Any) -> None:
    prof, log = _profiled(tmp_path, tailrace, "naive")
    print(f"naive: {prof}")
    assert prof["last_samples"] >= 200
    assert prof["last_share"] > 0.10
    assert prof["warnings_under_load"] == 1 and "stat-family syscalls (threshold 10%)" in log
    # Any hot syscall is named, not only the stat family: Fluent Bit's second one, fadvise, too
    # (the data path's own preads are reported, never warned about).
    hot = set(prof["hot_syscalls"])
    assert hot & STAT_SYSCALLS and "posix_fadvise" in hot and "pread" not in hot, prof["syscall_shares"]
    assert prof["syscall_warnings_under_load"] == 1 and "hot syscalls above the threshold of 5%" in log
    fadvise = re.search(r'^tailrace_profiler_syscall_share\{syscall="posix_fadvise"\} (\S+)$', prof["metrics"], re.M)
    assert fadvise and float(fadvise.group(1)) > 0.05
    svgs = sorted((tmp_path / "state" / "profiles").glob("*.svg"))
    assert svgs and "fstat" in svgs[-1].read_text()


def test_profiler_stays_quiet_for_inotify(tmp_path: Path, tailrace: Any) -> None:
    prof, log = _profiled(tmp_path, tailrace, "inotify", rate=500)
    print(f"inotify: {prof}")
    assert prof["last_share"] is not None and prof["last_share"] < 0.10
    assert prof["last_samples"] >= 20, "a profile big enough to be judged"
    assert prof["warnings_under_load"] == 0
    assert prof["hot_syscalls"] == [] and prof["syscall_warnings_under_load"] == 0, prof["syscall_shares"]
    # (A few stat samples may come from Python's own work, e.g. the profiler's files: not hot.)
    shares = prof["syscall_shares"]
    assert all(shares[k] < 0.10 for k in shares if k in STAT_SYSCALLS | {"posix_fadvise"}), shares


def test_metrics_health_readiness_and_top(tmp_path: Path, tailrace: Any) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    n = 1234
    (logs / "a.log").write_text("".join(f"line {i}\n" for i in range(n)))
    cfg = base_config(tmp_path, [str(logs / "*.log")])
    t = tailrace(cfg).start()
    wait_for(lambda: t.totals()["records_delivered"] == n, 30, f"{n} records")
    assert t.get("/healthz") == (200, b"ok\n")
    assert t.get("/readyz") == (200, b"ready\n")
    status, body = t.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    lines = [s for s in families["tailrace_lines_read"].samples if s.name == "tailrace_lines_read_total"]
    assert [(s.labels, s.value) for s in lines] == [({"input": "test"}, float(n))]
    assert families["tailrace_lines_read"].type == "counter"
    # Every output counts what it delivered (the Output base class), the file output too.
    exported = [s for s in families["tailrace_records_exported"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in exported] == [({"output": "file0"}, float(n))]
    assert families["tailrace_files_watched"].samples[0].value == 1
    assert [s.labels for s in families["tailrace_files_steady"].samples] == [{"input": "test"}]
    assert [s.value for s in families["tailrace_read_passes"].samples if s.name.endswith("_total")][0] >= 1
    assert "tailrace_inotify_events" in families
    assert families["tailrace_lag_bytes"].samples[0].value == 0
    assert {s.labels["kind"] for s in families["tailrace_syscalls"].samples} >= {"read", "fstat", "open"}
    # The loop's wakeups: it slept and woke to read these lines (a metric never fed is 0), and
    # the metric is the counter /stats shows (not above what /stats says after it).
    woke = [s.value for s in families["tailrace_event_loop_wakeups"].samples if s.name.endswith("_total")]
    assert len(woke) == 1 and 1 <= woke[0] <= t.totals()["loop_wakeups"]
    # What alerts are built on: per input error counts (zero here), every output's drops and
    # retries (the file output's too), build info, the process's start and descriptors.
    for name in ("open_errors", "read_errors", "inotify_overflows", "deletions", "parse_errors", "panics"):
        got = [(s.labels, s.value) for s in families[f"tailrace_{name}"].samples if s.name.endswith("_total")]
        assert got == [({"input": "test"}, 0.0)], name
    for name in ("records_dropped", "export_retries"):
        got = [(s.labels, s.value) for s in families[f"tailrace_{name}"].samples if s.name.endswith("_total")]
        assert got == [({"output": "file0"}, 0.0)], name
    from collector import __version__

    build = families["tailrace_build_info"].samples[0]
    assert build.labels["version"] == __version__ and build.value == 1
    assert build.labels["rustc"].startswith("rustc ") and re.fullmatch(r"[0-9a-f]{12}(\+changes)?|unknown",
                                                                       build.labels["commit"])
    started = families["process_start_time_seconds"].samples[0].value
    assert time.time() - 120 < started <= time.time()
    assert 0 < families["process_open_fds"].samples[0].value < families["process_max_fds"].samples[0].value
    assert t.get("/debug/profile/latest.svg")[0] == 404  # the profiler's first profile is 5 min away
    assert t.get("/nope")[0] == 404
    top = subprocess.run(
        [sys.executable, "-m", "collector.cli", "top", "--url", t.admin(), "--once", "--interval", "0.2"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(ROOT)},
    )
    assert top.returncode == 0, top.stderr
    assert re.search(r"CPU \d+\.\d%  wakeups/s \d+\.\d  RSS \d+ MiB", top.stdout), top.stdout
    row = next(ln for ln in top.stdout.splitlines() if ln.strip("│ ").startswith("test "))
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells[0] == "test" and cells[3] == f"{n:,}" and cells[4] == "0" and cells[5] == "1"
    out_row = next(ln for ln in top.stdout.splitlines() if "file0" in ln)
    assert f"{n:,}" in out_row and out_row.rstrip(" │").endswith("ok")
    assert t.stop() == 0


def test_every_export_latency_reaches_the_histogram_held_back_for_the_collection(tmp_path: Path, tailrace: Any) -> None:
    """Export latencies wait in a list until /metrics collects them (`Telemetry.observe_export`:
    a histogram record costs ~16 µs of CPU, on the event loop at every request): the histogram
    counts every answered request exactly once. Fails if held latencies are lost, or recorded
    twice (at the request and at the collection)."""
    import threading

    from collector.harness.receiver import Receiver

    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "a.log"
    log.write_bytes(b"")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with log.open("ab", buffering=0) as f:
            while not stop.wait(0.3):
                f.write(b"line %d\n" % written[0])
                written[0] += 1

    with Receiver() as r:
        cfg = base_config(tmp_path, [str(logs / "*.log")])
        cfg["outputs"] = [{"type": "otlp_http", "name": "near", "endpoint": r.endpoint}]
        t = tailrace(cfg).start()
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait_for(lambda: t.totals()["near.requests"] >= 5, 30, "5 requests")
        finally:
            stop.set()
            thread.join()
        # Nothing in flight: every request sent has been answered.
        wait_for(lambda: t.totals()["records_delivered"] == written[0], 30, f"{written[0]} records")
        families = {f.name: f for f in text_string_to_metric_families(t.get("/metrics")[1].decode())}
        requests = t.totals()["near.requests"]
        counts = [(s.labels, s.value) for s in families["tailrace_export_latency_seconds"].samples
                  if s.name.endswith("_count")]
        assert counts == [({"output": "near", "status": "200"}, float(requests))], (counts, requests)
        assert t.stop() == 0


def test_readyz_says_why_an_output_is_not_ready(tmp_path: Path, tailrace: Any) -> None:
    from collector.harness.receiver import RefusingPort

    refusing = RefusingPort()  # held for the whole test: nobody can listen there
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("one\n")
    cfg = base_config(tmp_path, [str(logs / "*.log")])
    cfg["outputs"] = [{"type": "otlp_http", "name": "down", "endpoint": f"http://127.0.0.1:{refusing.port}",
                       "spool": {"enabled": False}, "retry": {"initial": "100ms", "max": "200ms"}}]
    cfg["shutdown_grace"] = "1s"
    t = tailrace(cfg).start()
    status, body = wait_for(lambda: (r := t.get("/readyz"))[0] == 503 and r, 30, "/readyz to turn 503")
    assert body.decode().startswith("output down: cannot connect to 127.0.0.1:")
    # The export latency says why there was no answer, not `status="0"`.
    metrics = t.get("/metrics")[1].decode()
    assert 'status="connect"' in metrics and 'status="0"' not in metrics
    assert t.get("/healthz")[0] == 200
    assert t.stop() == 0
    refusing.release()


def test_a_py_spy_killed_mid_sample_never_leaves_tailrace_stopped(tmp_path: Path, tailrace: Any) -> None:
    require_tool("py-spy", "the profiler")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("")
    cfg = base_config(tmp_path, [str(logs / "*.log")])
    cfg["profiler"] = {"every": "0s", "duration": "30s", "rate": 1000}
    t = tailrace(cfg).start()
    assert t.proc is not None
    pid = t.proc.pid

    def py_spies() -> list[int]:
        out = subprocess.run(["pgrep", "-x", "py-spy"], capture_output=True, text=True).stdout
        mine = []
        for x in out.split():
            try:
                if f"\0--pid\0{pid}\0" in Path(f"/proc/{x}/cmdline").read_text():
                    mine.append(int(x))
            except OSError:
                pass
        return mine

    def state() -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    kills = landed = 0
    deadline = time.monotonic() + 60
    while kills < 5 and time.monotonic() < deadline:
        for spy in wait_for(py_spies, 30, "py-spy running"):
            # Kill while py-spy holds tailrace stopped (it stops it at every sample, 1000 Hz):
            # the state is read again right after the kill, so a landing mid-sample is seen.
            spin = time.monotonic() + 2
            while state() not in ("T", "t") and time.monotonic() < spin:
                pass
            try:
                os.kill(spy, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
            landed += state() in ("T", "t")
            wait_for(lambda spy=spy: spy not in py_spies(), 10, "the killed py-spy gone")
            # Caught mid-sample, tailrace was stopped; the shell around py-spy continues it.
            wait_for(lambda: state() not in ("T", "t"), 5, "tailrace running again after py-spy was killed")
    assert kills == 5
    assert landed >= 1, "no kill landed while tailrace was stopped: the case was not exercised"
    # Still alive and working: lines written now are delivered.
    with open(logs / "a.log", "a") as f:
        f.write("after the kills\n")
    from tests.conftest import count_records

    wait_for(lambda: count_records(tmp_path / "out" / "logs.jsonl") == 1, 30, "the line after the kills")
    assert t.stop() == 0


def test_a_sampler_killed_while_tailrace_is_stopped_leaves_it_running(tmp_path: Path, tailrace: Any) -> None:
    """py-spy 0.4 resumes its target when it dies; the shell around it makes sure of it for any
    sampler: this fake one stops tailrace (as a native sample does) and is killed right then."""
    fake = tmp_path / "fake-py-spy"
    fake.write_text('#!/bin/sh\necho $$ > "$0.pid"\nkill -STOP "$3"\nexec sleep 60\n')
    fake.chmod(0o755)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("")
    cfg = base_config(tmp_path, [str(logs / "*.log")])
    cfg["profiler"] = {"every": "0s", "duration": "30s"}
    t = tailrace(cfg)
    os.environ["TAILRACE_PY_SPY"] = str(fake)
    try:
        t.start()
    finally:
        del os.environ["TAILRACE_PY_SPY"]
    assert t.proc is not None
    pid = t.proc.pid
    pidfile = Path(f"{fake}.pid")
    state = lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]  # noqa: E731
    wait_for(lambda: pidfile.exists() and state() == "T", 30, "the fake sampler to stop tailrace")
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    wait_for(lambda: state() != "T", 10, "tailrace continued after its sampler was killed")
    with open(logs / "a.log", "a") as f:
        f.write("after\n")
    from tests.conftest import count_records

    wait_for(lambda: count_records(tmp_path / "out" / "logs.jsonl") == 1, 30, "a line after the kill")
    assert t.stop() == 0


def test_tailrace_profile_command_writes_a_flamegraph(tmp_path: Path, tailrace: Any) -> None:
    require_tool("py-spy", "tailrace profile")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("x\n")
    t = tailrace(base_config(tmp_path, [str(logs / "*.log")])).start()
    assert t.proc is not None
    out = tmp_path / "prof"
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "profile", "--pid", str(t.proc.pid), "--duration", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    assert "stat-family share" in r.stdout and "flamegraph:" in r.stdout
    # The table marks hot syscalls by the continuous profiler's rule and default threshold (a
    # table with a threshold of its own said 10 % where the warning said 5 %).
    assert "* hot: over 5%, 10+ samples" in r.stdout, r.stdout
    svg = next(out.glob("*.svg"))
    assert "<svg" in svg.read_text() and "samples" in svg.read_text()
    sp = json.loads(next(out.glob("*.speedscope.json")).read_text())
    assert sp["profiles"][0]["type"] == "sampled"
    assert t.stop() == 0


def test_metrics_are_pushed_as_otlp_when_configured(tmp_path: Path, tailrace: Any) -> None:
    from collector.harness.receiver import Receiver

    logs = tmp_path / "logs"
    logs.mkdir()
    n = 321
    (logs / "a.log").write_text("".join(f"line {i}\n" for i in range(n)))
    with Receiver() as r:
        cfg = base_config(tmp_path, [str(logs / "*.log")])
        cfg["telemetry"] = {"otlp_endpoint": r.endpoint, "interval": "200ms"}
        t = tailrace(cfg).start()

        def pushed_lines() -> float | None:
            with r.lock:
                reqs = list(r.metrics)
            for req in reversed(reqs):
                for rm in req.resource_metrics:
                    for sm in rm.scope_metrics:
                        for m in sm.metrics:
                            if m.name == "tailrace_lines_read":
                                return float(m.sum.data_points[0].as_int)
            return None

        wait_for(lambda: pushed_lines() == n, 30, f"a push with tailrace_lines_read = {n}")
        assert t.stop() == 0
        res = {a.key: a.value.string_value for a in r.metrics[-1].resource_metrics[0].resource.attributes}
        assert res["service.name"] == "tailrace"
        assert res["host.name"] == __import__("socket").gethostname()
