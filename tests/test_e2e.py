"""End to end through the CLI: real files, a real tailrace process, its OTLP JSON output."""

from __future__ import annotations

import collections
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, attrs, base_config, count_records, records, require_tool, wait_for


def body(rec: dict) -> str:  # type: ignore[type-arg]
    return str(rec["body"]["stringValue"])


def line(f: int, n: int) -> str:
    return f"file{f:02d} line{n:05d} " + "x" * (60 + (n * 7 + f) % 50)


def write_lines(path: Path, f: int, lines: range) -> None:
    with open(path, "a") as fh:
        fh.writelines(line(f, n) + "\n" for n in lines)


def test_rotation_and_restart_deliver_exactly_once(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """50 files × 2,000 lines, each rotated by rename half-way, SIGTERM and restart in the
    middle: exactly 100,000 records, none twice, none missing."""
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out" / "logs.jsonl"
    files = 50
    for f in range(files):
        write_lines(logs / f"app-{f:02d}.log", f, range(1000))
    cfg = base_config(tmp_path, [f"{logs}/*.log"])
    t = tailrace(cfg).start()
    wait_for(lambda: count_records(out) >= 20_000, 60, "20,000 records before rotation")
    for f in range(files):
        os.rename(logs / f"app-{f:02d}.log", logs / f"app-{f:02d}.log.1")
        write_lines(logs / f"app-{f:02d}.log", f, range(1000, 1500))
    wait_for(lambda: count_records(out) >= 50_000, 60, "50,000 records after rotation")
    assert t.stop() == 0, t.log()
    before = count_records(out)
    assert 50_000 <= before <= 75_000
    # Written while tailrace is down: found through the checkpoints at restart.
    for f in range(files):
        write_lines(logs / f"app-{f:02d}.log", f, range(1500, 2000))
    t.start()
    wait_for(lambda: count_records(out) >= 100_000, 120, "100,000 records after restart")
    assert t.stop() == 0, t.log()
    got = collections.Counter(body(r) for r in records(out))
    expected = {line(f, n) for f in range(files) for n in range(2000)}
    assert len(got) == 100_000
    assert set(got) == expected
    assert [b for b, c in got.items() if c > 1] == []
    assert "Traceback" not in t.log()


def test_missing_and_unreadable_paths_are_reported_and_others_flow(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to run tailrace without CAP_DAC_OVERRIDE")
    logs = tmp_path / "logs"
    logs.mkdir()
    write_lines(logs / "good.log", 1, range(100))
    secret = logs / "secret.log"
    write_lines(secret, 2, range(10))
    secret.chmod(0)
    out = tmp_path / "out" / "logs.jsonl"
    cfg = base_config(tmp_path, [f"{logs}/*.log", f"{tmp_path}/nonexistent/*.log"])
    # Root without the capabilities that bypass file permissions: the kernel refuses the open
    # exactly as it would for an unprivileged user.
    drop = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]
    t = tailrace(cfg).start(preexec=drop)
    wait_for(lambda: count_records(out) == 100, 30, "the readable file's 100 lines")
    log = wait_for(lambda: "Permission denied" in t.log() and t.log(), 10, "the permission report")
    assert f"cannot open {secret}" in log
    assert f"no file matches {tmp_path}/nonexistent/*.log" in log
    # Reported once, not at every look: counted after 40 more steps (a step per 50 ms poll, a
    # look per 200 ms rescan: about ten looks).
    steps = lambda: t.totals()["steps"]  # noqa: E731
    seen = steps()
    wait_for(lambda: steps() >= seen + 40, 30, "40 more steps")
    assert t.log().count(f"cannot open {secret}") == 1
    secret.chmod(0o644)
    wait_for(lambda: count_records(out) == 110, 30, "the file's lines once it became readable")
    assert t.stop() == 0
    assert sorted(body(r) for r in records(out))[-10:] == sorted(line(2, n) for n in range(10))


def test_a_file_or_directory_made_readable_is_read_at_once_not_at_the_next_rescan(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """With inotify and a rescan an hour away, a chmod that makes a refused file or directory
    readable is news of its directory: everything in it is read, what was written while it was
    refused included. (Without that, the retry waited for the rescan: 60 s by default.)"""
    logs = tmp_path / "logs"
    private = logs / "private"
    private.mkdir(parents=True)
    write_lines(logs / "good.log", 1, range(100))
    secret = logs / "secret.log"
    write_lines(secret, 2, range(10))
    write_lines(private / "inner.log", 3, range(20))
    secret.chmod(0)
    private.chmod(0)
    out = tmp_path / "out" / "logs.jsonl"
    cfg = base_config(tmp_path, [f"{logs}/*.log", f"{logs}/*/*.log"], watch="inotify", rescan_interval="1h")
    drop = [require_tool("setpriv", "running tailrace without CAP_DAC_OVERRIDE"),
            "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]
    t = tailrace(cfg).start(preexec=drop)
    wait_for(lambda: count_records(out) == 100, 30, "the readable file's 100 lines")
    log = wait_for(lambda: f"cannot open {secret}" in t.log() and f"cannot read {private}" in t.log() and t.log(),
                   10, "both refusals reported")
    assert "Permission denied" in log
    write_lines(secret, 2, range(10, 15))  # written while refused: read too
    secret.chmod(0o644)
    wait_for(lambda: count_records(out) == 115, 30, "the file's 15 lines once it became readable")
    private.chmod(0o755)
    wait_for(lambda: count_records(out) == 135, 30, "the directory's file once it became readable")
    assert t.stop() == 0
    got = collections.Counter(body(r) for r in records(out))
    expected = [line(1, n) for n in range(100)] + [line(2, n) for n in range(15)] + [line(3, n) for n in range(20)]
    assert sorted(got.elements()) == sorted(expected)


def test_the_file_output_moved_away_or_deleted_is_written_again_at_its_path(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """logrotate's rename, then an operator's `rm`: each batch after either goes to a new file
    at the path, not into the one held open (moved: readable elsewhere; deleted: gone, though
    acknowledged). Every line is in exactly one of the files."""
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out" / "logs.jsonl"
    t = tailrace(base_config(tmp_path, [f"{logs}/*.log"])).start()
    write_lines(logs / "a.log", 1, range(0, 10))
    wait_for(lambda: count_records(out) == 10, 30, "the first 10 lines")
    out.rename(tmp_path / "out" / "logs.jsonl.1")
    write_lines(logs / "a.log", 1, range(10, 20))
    wait_for(lambda: out.exists() and count_records(out) == 10, 30, "the next 10 lines in a new file at the path")
    moved_away = records(tmp_path / "out" / "logs.jsonl.1")
    kept = records(out)
    out.unlink()
    write_lines(logs / "a.log", 1, range(20, 30))
    wait_for(lambda: out.exists() and count_records(out) == 10, 30, "the last 10 lines in a new file again")
    assert t.stop() == 0
    assert sorted(body(r) for r in moved_away) == [line(1, n) for n in range(10)]
    assert sorted(body(r) for r in kept) == [line(1, n) for n in range(10, 20)]
    assert sorted(body(r) for r in records(out)) == [line(1, n) for n in range(20, 30)]


def test_a_log_directory_made_late_or_made_again_is_tailed_at_once(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """inotify, the rescan and the deleted files' drain an hour away: a glob's directory that does
    not exist at the start is seen when it is made (its nearest existing ancestor is watched);
    deleted while a file in it is still held (draining) and made again, the new directory is
    watched at the look its creation asks for (the old watch, kept alive by that file, no
    longer hides it); moved away and made again, likewise. Each file is written after the look,
    so only a watch of the new directory can find it."""
    app = tmp_path / "app" / "logs"
    out = tmp_path / "out" / "logs.jsonl"
    cfg = base_config(tmp_path, [f"{app}/*.log"], watch="inotify", rescan_interval="1h", rotate_wait="1h")
    t = tailrace(cfg).start()
    wait_for(lambda: "no file matches" in t.log(), 30, "the glob matching nothing yet")
    steps = lambda: t.totals()["steps"]  # noqa: E731

    def made_then_written(name: str, n: int) -> None:
        before = steps()
        app.mkdir(parents=True)
        wait_for(lambda: steps() > before, 30, f"the look {name}'s directory asked for")
        write_lines(app / name, n, range(5))
        wait_for(lambda: count_records(out) == 5 * n, 30, f"{name}'s lines")

    made_then_written("a.log", 1)
    shutil.rmtree(tmp_path / "app")  # a.log stays open, drained for an hour
    wait_for(lambda: t.totals()["deletions"] == 1, 30, "a.log's deletion")
    made_then_written("b.log", 2)
    (tmp_path / "app").rename(tmp_path / "app.old")
    made_then_written("c.log", 3)
    assert t.stop() == 0
    assert sorted(body(r) for r in records(out)) == sorted(line(f, n) for f in (1, 2, 3) for n in range(5))


def test_files_past_the_descriptor_limit_are_one_warning_and_read_once_it_is_raised(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """300 files, 200 descriptors (the soft limit, lowered once tailrace runs: it raises its soft
    limit to the hard one at the start): it opens log files up to the limit less a reserve for
    its own files and sockets (the admin endpoint still answers below), and the rest are one
    warning per look (how many, the first, the limit, what to do), not a line each (thousands
    on a node); raised, every line arrives, once."""
    import re
    import resource

    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out" / "logs.jsonl"
    t = tailrace(base_config(tmp_path, [f"{logs}/*.log"])).start()
    assert t.proc is not None
    wait_for(lambda: "running" in t.log(), 30, "the start")
    soft, hard = resource.prlimit(t.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(t.proc.pid, resource.RLIMIT_NOFILE, (200, hard))
    for f in range(300):
        write_lines(logs / f"f{f:03d}.log", f, range(1))
    said = wait_for(lambda: re.findall(r"cannot open (\d+) files \(the first: [^)]*\): too many open files "
                                       r"\(this process may hold 200, some kept for its own files and sockets\); "
                                       r"raise the limit", t.log()), 30, "the warning")
    stats = t.totals()
    # The limit less the reserve (a quarter of 200) is what it holds; the warning counts the
    # files its look could not open (files keep appearing: later looks find more).
    assert (stats["files_open"], t.log().count("Too many open files")) == (150, 0)
    assert 1 <= int(said[0]) <= 150
    steps = stats["steps"]
    wait_for(lambda: t.totals()["steps"] >= steps + 10, 30, "more looks (rescan 200 ms)")
    assert len(re.findall(r"cannot open \d+ files", t.log())) == 1  # said once while it lasts
    resource.prlimit(t.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    wait_for(lambda: count_records(out) == 300, 30, "every file's line once the limit is raised")
    assert t.stop() == 0
    assert sorted(body(r) for r in records(out)) == sorted(line(f, 0) for f in range(300))


def test_binary_invalid_utf8_and_huge_lines(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "bin.log").write_bytes(b"ok before\n\x00\x01\xff\xfe binary \x80\n" + b"after \xc3\x28 bad utf8\n")
    huge = b"H" * (10 * 1024 * 1024 + 512 * 1024)  # a 10.5 MiB line
    (logs / "huge.log").write_bytes(b"small\n" + huge + b"\nnext\n")
    out = tmp_path / "out" / "logs.jsonl"
    t = tailrace(base_config(tmp_path, [f"{logs}/*.log"], max_line_bytes="1MiB")).start()
    recs = wait_for(lambda: (r := records(out)) and len(r) == 16 and r, 60, "16 records")
    assert t.stop() == 0
    by_file: dict[str, list[dict]] = collections.defaultdict(list)  # type: ignore[type-arg]
    for r in recs:
        by_file[attrs(r)["log.file.name"]].append(r)
    b = by_file["bin.log"]
    assert [body(r) for r in b] == ["ok before", "\x00\x01\ufffd\ufffd binary \ufffd", "after \ufffd( bad utf8"]
    assert [attrs(r).get("tailrace.invalid_utf8", False) for r in b] == [False, True, True]
    h = by_file["huge.log"]
    assert [len(body(r)) for r in h] == [5, *[1 << 20] * 10, 512 * 1024, 4]
    assert [attrs(r).get("tailrace.split", False) for r in h] == [False, *[True] * 11, False]
    assert "".join(body(r) for r in h[1:12]) == huge.decode()


def test_partial_line_survives_restart_and_read_from_end(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    logs.mkdir()
    old = logs / "old.log"
    old.write_text("history 1\nhistory 2\n")
    out = tmp_path / "out" / "logs.jsonl"
    t = tailrace(base_config(tmp_path, [f"{logs}/*.log"], read_from="end")).start()
    wait_for(lambda: (tmp_path / "state" / "checkpoints.json").exists(), 30, "the first checkpoint")
    with open(old, "a") as fh:
        fh.write("new 1\nabc")
    (logs / "later.log").write_text("later file is read from its start\n")
    wait_for(lambda: count_records(out) == 2, 30, "2 records")
    assert t.stop() == 0
    with open(old, "a") as fh:
        fh.write("def\n")
    t.start()
    wait_for(lambda: count_records(out) == 3, 30, "the completed partial line")
    assert t.stop() == 0
    assert sorted(body(r) for r in records(out)) == ["abcdef", "later file is read from its start", "new 1"]


def test_every_output_gets_every_batch(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    logs.mkdir()
    write_lines(logs / "a.log", 1, range(500))
    cfg = base_config(tmp_path, [f"{logs}/*.log"])
    cfg["outputs"].append({"type": "file", "path": str(tmp_path / "out" / "second.jsonl")})
    cfg["outputs"].append({"type": "blackhole"})
    t = tailrace(cfg).start()
    wait_for(lambda: count_records(tmp_path / "out" / "second.jsonl") == 500, 30, "500 records in the second output")
    assert t.stop() == 0
    first = [body(r) for r in records(tmp_path / "out" / "logs.jsonl")]
    second = [body(r) for r in records(tmp_path / "out" / "second.jsonl")]
    assert first == second == [line(1, n) for n in range(500)]


def test_stdout_output_and_sigint(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    import orjson
    import yaml

    from tests.conftest import ROOT

    logs = tmp_path / "logs"
    logs.mkdir()
    write_lines(logs / "a.log", 3, range(20))
    cfg = base_config(tmp_path, [f"{logs}/*.log"])
    cfg["outputs"] = [{"type": "stdout"}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "run", "--config", str(tmp_path / "c.yaml")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,  # unbuffered: `select` sees every byte not yet read
    ) as proc:
        assert proc.stdout is not None
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < 20:
            # A line is written whole; wait for one with a deadline, never block forever.
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no request on stdout within 30 s (got {len(got)} records)"
            req = orjson.loads(proc.stdout.readline())
            got += [body(r) for r in req["resourceLogs"][0]["scopeLogs"][0]["logRecords"]]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert got == [line(3, n) for n in range(20)]


def test_a_second_tailrace_on_the_same_state_dir_is_refused(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("one\n")
    cfg = base_config(tmp_path, [str(logs / "*.log")])
    first = tailrace(cfg).start()
    wait_for(lambda: count_records(tmp_path / "out" / "logs.jsonl") == 1, 30, "the first instance running")
    assert first.proc is not None
    second = subprocess.run(
        [sys.executable, "-m", "collector.cli", "run", "--config", str(first.config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert second.returncode == 1
    assert f"is in use by another tailrace (pid {first.proc.pid})" in second.stderr
    first.kill()  # kill -9: the kernel releases the lock
    again = tailrace(cfg).start()
    wait_for(lambda: again.log().count(" running ") == 2, 30, "a new instance after the first died")
    assert again.stop() == 0


def test_debug_logs_say_what_a_look_changed(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    logs.mkdir()
    write_lines(logs / "a.log", 1, range(3))
    t = tailrace(base_config(tmp_path, [f"{logs}/*.log"]), extra_args=["--log-level", "debug"]).start()
    wait_for(lambda: count_records(tmp_path / "out" / "logs.jsonl") == 3, 30, "the first lines")
    os.rename(logs / "a.log", logs / "a.log.1")
    write_lines(logs / "a.log", 1, range(3, 5))
    line = wait_for(lambda: [ln for ln in t.log().splitlines() if "files changed" in ln and "rotations=1" in ln],
                    30, "a debug line for the rotation")
    assert t.stop() == 0
    assert " tailrace debug: files changed input=test " in line[0] and "files_opened=1" in line[0], line


def test_file_attributes_name_by_default_and_path_opt_in(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """The semantic conventions' rule (and the filelog receiver's defaults): `log.file.name` on
    every record, `log.file.path` (absolute) only with `include_file_path`; with neither, a
    record has no file attribute and its JSON stays valid (a stray comma would not parse)."""
    got = {}
    for name, opts in (("default", {}), ("both", {"include_file_path": True}),
                       ("neither", {"include_file_name": False}), ("path", {"include_file_path": True,
                                                                             "include_file_name": False})):
        logs = tmp_path / name / "logs"
        logs.mkdir(parents=True)
        (logs / "a.log").write_bytes(b"one\n\xfftwo\n")  # the second is flagged invalid_utf8
        cfg = base_config(tmp_path / name, [f"{logs}/*.log"], **opts)
        out = tmp_path / name / "out" / "logs.jsonl"
        t = tailrace(cfg).start()
        wait_for(lambda out=out: count_records(out) == 2, 30, "two records")  # type: ignore[misc]
        assert t.stop() == 0
        got[name] = [attrs(r) for r in records(out)]
    path = str(tmp_path / "path" / "logs" / "a.log")
    assert got["default"] == [{"log.file.name": "a.log"}, {"log.file.name": "a.log", "tailrace.invalid_utf8": True}]
    assert got["both"][0] == {"log.file.path": str(tmp_path / "both" / "logs" / "a.log"), "log.file.name": "a.log"}
    assert got["neither"] == [{}, {"tailrace.invalid_utf8": True}]
    assert got["path"] == [{"log.file.path": path}, {"log.file.path": path, "tailrace.invalid_utf8": True}]
