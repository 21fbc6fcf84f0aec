"""`tailrace bench`: the watch-mode harness end to end at a small scale, every line accounted for
(the figures themselves are machine-dependent and are never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT, require_tool


def test_tailrace_bench_watchmodes_accounts_for_every_line(tmp_path: Path) -> None:
    results = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "bench", "watchmodes", "--workload", "appends", "--files", "3",
         "--rate", "300", "--seconds", "1", "--modes", "inotify,naive", "--runs", "1", "--results", str(results)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (out,) = results.glob("watchmodes-appends-*.json")
    rows = {row["mode"]: row for row in orjson.loads(out.read_bytes())["rows"]}
    assert set(rows) == {"inotify", "naive"}
    for row in rows.values():
        counts = (row["expected_lines"], row["delivered"], row["lost"], row["duplicated"], row["backlog"])
        assert counts == (300, 300, 0, 0, 0), row
        assert row["latency"] == "delivery" and row["latency_ms_p99"] is not None
    assert rows["inotify"]["stat_family_per_line"] == 0
    assert rows["naive"]["stat_family_per_line"] >= 2
    assert "| inotify |" in r.stdout and f"raw: {out}" in r.stdout


def test_a_warmup_keeps_the_first_writes_out_of_the_window_and_every_line_accounted_for(tmp_path: Path) -> None:
    """`--warmup 1`: the appender writes 1 + 1 s of lines, the figures count only the lines read
    after the first second, and lost/duplicated still cover every line. Catches a warmup that is
    not written (expected 300, not 600), a window that still opens before it (lines == 600), and
    accounting that forgets the warmup's lines (delivered 300, or lost > 0)."""
    results = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "bench", "watchmodes", "--workload", "appends", "--files", "3",
         "--rate", "300", "--seconds", "1", "--warmup", "1", "--modes", "inotify", "--runs", "1",
         "--results", str(results)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = orjson.loads(next(results.glob("watchmodes-appends-*.json")).read_bytes())["rows"]
    counts = (row["warmup_s"], row["expected_lines"], row["delivered"], row["lost"], row["duplicated"], row["backlog"])
    assert counts == (1.0, 600, 600, 0, 0, 0), row
    assert 0 < row["lines"] < 600, row


def test_tailrace_bench_names_the_harnesses(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "collector.cli", "bench", "nope"], capture_output=True, text=True)
    assert r.returncode == 64 and "watchmodes" in r.stderr and "throughput" in r.stderr  # a usage error


def test_both_harnesses_replay_a_corpus_of_real_logs(tmp_path: Path) -> None:
    """`--corpus DIR`: the writers replay the lines of DIR's files (README/LICENSE left out);
    every line is accounted for, and the bulk file is whole lines of the corpus in order."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.log").write_text("GET /index 200\n\nPOST /login 401\n")
    (corpus / "b.log").write_text("kernel: eth0 up\n")
    (corpus / "LICENSE").write_text("not a log line\n")
    from collector.harness.appender import corpus_lines
    from collector.harness.throughput import make_corpus_file

    assert corpus_lines(str(corpus)) == [b"GET /index 200", b"POST /login 401", b"kernel: eth0 up"]
    one = b"GET /index 200\nPOST /login 401\nkernel: eth0 up\n"
    data = tmp_path / "bulk.log"
    # 2.5 periods of the corpus, cut at a whole line (the half period holds one line of 15 bytes
    # + newline, not the second, which would pass the limit).
    assert make_corpus_file(data, 2 * len(one) + 20, str(corpus)) == 7
    assert data.read_bytes() == one * 2 + b"GET /index 200\n"
    results = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "bench", "watchmodes", "--workload", "appends", "--files", "2",
         "--rate", "200", "--seconds", "1", "--modes", "inotify", "--runs", "1", "--results", str(results),
         "--corpus", str(corpus)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = orjson.loads(next(results.glob("watchmodes-appends-*.json")).read_bytes())["rows"]
    assert (row["expected_lines"], row["lost"], row["duplicated"], row["corpus"]) == (200, 0, 0, str(corpus))
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "bench", "throughput", "--gib", "0.0001", "--runs", "1", "--outputs",
         "otlp_http", "--corpus", str(corpus), "--dir", str(tmp_path / "work"), "--results", str(results)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]  # the receiver counted every line of the file, or it exits non-zero
    (res,) = [orjson.loads(p.read_bytes()) for p in results.glob("throughput-*.json")]
    assert res["input"]["content"] == f"corpus {corpus}" and res["input"]["lines"] == 107_374 // len(one) * 3 + 1
    # Each run is paired with one on an empty input (start-up and shutdown), and that is what the
    # reading-only figure leaves out (catches no idle run, or another figure subtracted).
    (idle,) = res["startup_shutdown_runs_cpu_s"]["otlp_http"]
    (run,) = res["runs"]["otlp_http"]
    assert idle > 0 and run["startup_shutdown_cpu_s"] == idle
    assert run["mb_per_reading_cpu_s"] == res["input"]["bytes"] / 1e6 / max(run["cpu_s"] - idle, 1e-9)


def test_the_harness_reads_a_process_cpu_in_nanoseconds_exited_threads_included() -> None:
    """The watch-mode figures divide tailrace's CPU by its lines: a 10-s run at 20,000 lines/s
    needs the CPU to well under the 10 ms clock tick of /proc/<pid>/stat, and trio's worker
    threads exit after a while (their CPU must still count). The child spins ~0.15 s in a thread
    that exits, then reports its own `process_time` and sleeps: the harness's figure must match
    it within 2 ms. Catches a sum over /proc/<pid>/task/* (misses the exited thread's 0.15 s)
    and, but for a lucky rounding, utime + stime in ticks (off by up to 20 ms)."""
    from collector.harness.watchmodes import cpu_seconds

    with subprocess.Popen(
        [sys.executable, "-c",
         "import threading, time\n"
         "def spin():\n"
         "    t = time.thread_time()\n"
         "    while time.thread_time() - t < 0.15: pass\n"
         "th = threading.Thread(target=spin); th.start(); th.join()\n"
         "print(time.process_time(), flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    ) as child:
        try:
            assert child.stdout is not None
            own = float(child.stdout.readline())
            seen = cpu_seconds(child.pid)
        finally:
            child.kill()
    assert own >= 0.15 and abs(seen - own) < 0.002, (seen, own)


def test_the_floors_run_and_measure_reads_of_another_process_writes(tmp_path: Path) -> None:
    """`bench.floors` at a tiny scale: every measure it prints is in its JSON, the reads of lines
    another process wrote included (a writer forked and pinned to the other CPU: on 2 CPUs the
    figure must be there, not the 0.0 of a 1-CPU machine). Catches the writer never answering
    (the run hangs: the timeout), a figure left out of the JSON."""
    r = subprocess.run(
        [sys.executable, "-m", "bench.floors", "--files", "10", "--passes", "2", "--runs", "1", "--wakeups", "2",
         "--period", "0.01", "--bulk-gib", "0", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (out,) = tmp_path.glob("floors-*.json")
    rows = orjson.loads(out.read_bytes())["rows"]
    (pread,) = [row for row in rows if row["measure"] == "pread"]
    assert pread["files"] == 10 and pread["pread_us_round_robin"] > 0 and pread["pread_us_one_file"] > 0
    two = len(os.sched_getaffinity(0)) >= 2
    assert (pread["pread_us_written_elsewhere"] > 0, pread["pread_us_written_elsewhere_scrubbed"] > 0,
            pread["pread_us_written_elsewhere_atime"] > 0) == (two, two, two)
    assert {row["measure"] for row in rows} == {"pread", "wakeup time.sleep", "wakeup trio.sleep", "appends floor"}
    # The goal's floor is its pieces: 10 files at the default 20,000 lines/s read every 0.01 s is
    # 0.05 reads per line, each at the reads' range; then the encoding and one wakeup a period.
    (floor,) = [row for row in rows if row["measure"] == "appends floor"]
    (trio_row,) = [row for row in rows if row["measure"] == "wakeup trio.sleep"]
    assert (floor["files"], floor["reads_per_line"], floor["read_us"]) == (
        10, 0.05, sorted([pread["pread_us_written_elsewhere"], pread["pread_us_written_elsewhere_scrubbed"]]))
    assert floor["wakeups_us_per_line"] == round(trio_row["us_per_wakeup"] / 0.01 / 20000, 3)
    assert floor["encode_zstd_us_per_line"] > 0
    enc, wake = floor["encode_zstd_us_per_line"], floor["wakeups_us_per_line"]
    assert (floor["us_per_line_low"], floor["us_per_line_high"]) == tuple(
        round(0.05 * us + enc + wake, 3) for us in floor["read_us"])


def test_the_floors_read_through_descriptors_opened_as_the_core_opens_a_log_file(tmp_path: Path) -> None:
    """The floor's reads skip access-time updates as tailrace's do (`O_NOATIME`, the file's
    owner): measured with a plain descriptor, a read of a file written since the last read
    journals an atime update (relatime) and the floor came out ~1 µs per read too high, twice
    tailrace's own reads. Catches descriptors opened without it, and a reader that refuses a file
    it does not own (tailrace falls back to a plain open there; checked as another user)."""
    import fcntl

    from bench.floors import reader_fd

    f = tmp_path / "a.log"
    f.write_bytes(b"x\n")
    fd = reader_fd(f)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_NOATIME | os.O_ACCMODE) == os.O_NOATIME | os.O_RDONLY
    finally:
        os.close(fd)
    fd = reader_fd(f, noatime=False)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NOATIME == 0
    finally:
        os.close(fd)
    # Not the owner and without CAP_FOWNER: the kernel refuses O_NOATIME, the read still works.
    os.chown(f, 65534, 65534)
    drop = [require_tool("setpriv", "dropping CAP_FOWNER"), "--inh-caps=-all", "--bounding-set=-fowner", "--"]
    r = subprocess.run(
        [*drop, sys.executable, "-c",
         "import fcntl, os, sys; from bench.floors import reader_fd; fd = reader_fd(sys.argv[1]); "
         "print(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NOATIME, os.read(fd, 10))", str(f)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "0 b'x\\n'"), r.stderr[-2000:]


def test_a_measured_tailrace_starts_from_bytecode_as_an_installed_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harnesses compile the checkout a run imports before it starts (`warm_bytecode`), so
    a start measured as tailrace's does not include compiling tailrace's modules from source —
    which an installed wheel never does, and which every start did here, where the machine sets
    PYTHONDONTWRITEBYTECODE (~30 ms of a ~0.28 s start). A copy of the package without bytecode,
    that variable set: after the warm-up, a start imports each of the run's modules from
    bytecode, none from source. Catches a harness that starts tailrace cold."""
    import shutil

    from collector.harness.watchmodes import warm_bytecode

    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "collector", tree / "collector", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    warm_bytecode(tree)
    r = subprocess.run(
        [sys.executable, "-v", "-c", "import collector.cli, collector.flow.pipeline, collector.flow.outputs.otlp_http"],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ours = [line for line in r.stderr.splitlines() if line.startswith("# code object from") and str(tree) in line]
    from_source = [line for line in ours if ".pyc" not in line]
    assert (from_source, len(ours) >= 10) == ([], True), ours
