"""What a production shipper must not do, each with exact accounting: wear out the node's disk
with checkpoints, hold unbounded memory for unfinished lines, ship what a symlink points at
outside the tailed tree. (Crash duplicates: test_otlp.py's kill -9 test.)"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from collector._native import read_checkpoints
from tests.conftest import base_config, count_records, records, wait_for


def config(tmp_path: Path, paths: list[str], **top: Any) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"),
        "inputs": [{"name": "in", "paths": paths}],
        "outputs": [{"type": "blackhole"}],
        "progress_interval": "0s",
        "admin": {"address": "127.0.0.1:0"},
        **top,
    }


def proc_io(pid: int) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split(": ") for ln in Path(f"/proc/{pid}/io").read_text().splitlines())}


def unreachable(tmp_path: Path, lines: list[str], top: dict[str, Any], **output: Any) -> tuple[Any, dict[str, Any]]:
    """`lines` in logs/a.log, shipped by OTLP/HTTP to a port where nobody listens yet (held:
    `RefusingPort`, released for the receiver a test starts there): the port and the config."""
    from collector.harness.receiver import RefusingPort

    refusing = RefusingPort()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("".join(f"{ln}\n" for ln in lines))
    cfg = config(tmp_path, [str(logs / "*.log")], **top)
    cfg["outputs"] = [{"type": "otlp_http", "name": "otlp", "endpoint": f"http://127.0.0.1:{refusing.port}",
                       "retry": {"initial": "100ms", "max": "200ms"}, **output}]
    return refusing, cfg


def test_checkpoint_io_grows_with_the_files_that_moved_not_with_the_files_tracked(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """10,000 files tracked (each past its 1 KiB head), 5 of them written: what tailrace writes
    in a 5 s window is the journal's offset records, not every entry every second. A
    checkpointer that rewrites its whole file each `checkpoint_interval` writes ~22 MB/s here
    (10,000 entries with 2 KiB heads); this one must stay under 100 KB/s, with no snapshot
    rewritten in the window."""
    logs = tmp_path / "logs"
    logs.mkdir()
    body = "".join(f"line {i:04d} of a file that is past its fingerprint\n" for i in range(22)).encode()
    assert len(body) > 1024
    for i in range(10_000):
        (logs / f"f{i:05d}.log").write_bytes(body)
    t = tailrace(config(tmp_path, [str(logs / "*.log")], checkpoint_interval="1s")).start()
    assert t.proc is not None
    # Everything read and acknowledged, and the state compacted once with every entry.
    wait_for(lambda: t.totals()["records_delivered"] == 220_000, 120, "every line delivered")
    wait_for(lambda: t.totals()["checkpoint_snapshots"] >= 1 and len(read_checkpoints(str(tmp_path / "state")))
             == 10_000, 60, "10,000 entries in the state")
    stop = threading.Event()
    written = [0] * 5

    def write() -> None:
        fds = [os.open(logs / f"f{i:05d}.log", os.O_WRONLY | os.O_APPEND) for i in range(5)]
        n = 0
        while not stop.wait(0.01):  # 5 files × 100 lines/s
            for i, fd in enumerate(fds):
                os.write(fd, b"written during the window %08d\n" % n)
                written[i] += 1
            n += 1
        for fd in fds:
            os.close(fd)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: t.totals()["records_delivered"] > 220_000, 30, "the writes flowing")
        before, snap0 = proc_io(t.proc.pid), t.totals()["checkpoint_snapshots"]
        time.sleep(5.0)  # the measurement window (nothing is waited for: bytes are counted over it)
        after, snap1 = proc_io(t.proc.pid), t.totals()["checkpoint_snapshots"]
    finally:
        stop.set()
        writer.join()
    per_s = {k: (after[k] - before[k]) / 5.0 for k in ("wchar", "write_bytes")}
    print(f"checkpoint I/O with 10,000 files tracked, 5 written: {per_s['wchar']:.0f} B/s written (wchar), "
          f"{per_s['write_bytes']:.0f} B/s to storage (write_bytes)")
    assert snap1 == snap0, "no snapshot rewritten in the window"
    assert per_s["write_bytes"] <= 100_000
    assert per_s["wchar"] <= 100_000
    # And the offsets moved: each written file's checkpoint covers what was delivered.
    wait_for(lambda: t.totals()["records_delivered"] == 220_000 + sum(written), 30, "the window's lines")
    assert t.stop() == 0
    ends = {Path(str(e["path"])).name: e["offset"] for e in read_checkpoints(str(tmp_path / "state"))}
    assert [ends[f"f{i:05d}.log"] for i in range(5)] == [(logs / f"f{i:05d}.log").stat().st_size for i in range(5)]


def test_unfinished_lines_of_many_files_stay_under_the_memory_bound(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """500 files each ending in an 800 KB line without its newline: 400 MB that a shipper holding
    every partial line keeps in memory (429 MB RSS measured before the bound). With the bound
    (the default, 48 MiB) the largest holders spill flagged pieces: peak RSS stays under
    150 MiB, and every byte is shipped (the core counts the bytes it made records of)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    tail = b"x" * 800_000
    for i in range(500):
        (logs / f"f{i:03d}.log").write_bytes(b"first line\n" + tail)
    total = 500 * (11 + len(tail))
    t = tailrace(config(tmp_path, [str(logs / "*.log")])).start()
    assert t.proc is not None
    wait_for(lambda: t.totals()["lines"] >= 500 and t.totals()["memory_spills"] > 0, 120,
             "every file read, spills made")
    # Partial lines flush after `partial_flush` (5 s) idle: then every byte is in a record.
    wait_for(lambda: t.totals()["bytes"] == total, 60, f"all {total} bytes in records")
    hwm = next(int(ln.split()[1]) for ln in Path(f"/proc/{t.proc.pid}/status").read_text().splitlines()
               if ln.startswith("VmHWM:"))
    s = t.totals()
    print(f"500 × 800 KB unfinished lines: peak RSS {hwm / 1024:.0f} MiB, {s['memory_spills']} spills")
    assert hwm < 150 * 1024
    assert s["pending_bytes"] == 0
    assert t.stop() == 0


def test_a_symlink_to_etc_passwd_ships_nothing_and_is_reported_once(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("mine\n")
    (logs / "evil.log").symlink_to("/etc/passwd")
    out = tmp_path / "out.jsonl"
    cfg = config(tmp_path, [str(logs / "*.log")], outputs=[{"type": "file", "path": str(out)}])
    cfg["inputs"][0]["rescan_interval"] = "100ms"
    t = tailrace(cfg).start()
    wait_for(lambda: out.exists() and b"mine" in out.read_bytes(), 30, "the real file's line")
    # Looked at again at every rescan (100 ms): still refused, still reported once.
    wait_for(lambda: t.totals()["steps"] >= 20, 30, "20 steps")
    assert t.stop() == 0
    bodies = [r["body"]["stringValue"] for doc in out.read_text().splitlines()
              for rl in json.loads(doc)["resourceLogs"] for r in rl["scopeLogs"][0]["logRecords"]]
    assert bodies == ["mine"]
    reports = [ln for ln in t.log().splitlines() if "outside the allowed roots" in ln]
    assert len(reports) == 1, reports
    assert f"not reading {logs}/evil.log: it resolves to /etc/passwd" in reports[0]


def test_readyz_turns_503_on_a_full_spool_and_back_once_delivered(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """The README's readiness claim: an output that cannot deliver and whose spool is full makes
    /readyz answer 503 naming it; once the receiver is back, everything is delivered exactly
    once and /readyz answers 200."""
    from collector.harness.receiver import Receiver

    refusing, cfg = unreachable(tmp_path, [f"line {i:05d} {'x' * 200}" for i in range(2000)],
                                {"batch": {"max_records": 100}}, spool={"after": "100ms", "max_bytes": "4KiB"})
    t = tailrace(cfg).start()
    wait_for(lambda: t.get("/readyz")[0] == 503, 30, "/readyz 503")
    status, body = t.get("/readyz")
    assert status == 503 and body.startswith(b"output otlp: spool full"), body
    r = Receiver(port=refusing.release()).start()
    wait_for(lambda: r.records() >= 2000, 60, "every line once the receiver is back")
    wait_for(lambda: t.get("/readyz") == (200, b"ready\n"), 30, "/readyz 200 again")
    assert t.stop() == 0
    r.stop()
    assert sorted(b.decode() for b in r.bodies()) == [f"line {i:05d} {'x' * 200}" for i in range(2000)]


def test_a_second_sigterm_stops_at_once_and_a_restart_loses_nothing(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """The README's claim: the first SIGTERM waits up to `shutdown_grace` (120 s here) for the
    outputs; a second one stops now, leaving what was not acknowledged behind its checkpoint,
    so the next start sends it."""
    import signal

    from collector.harness.receiver import Receiver

    refusing, cfg = unreachable(tmp_path, [f"line {i}" for i in range(500)], {"shutdown_grace": "120s"},
                                spool={"enabled": False})
    t = tailrace(cfg).start()
    assert t.proc is not None
    wait_for(lambda: t.totals()["lines"] == 500, 30, "every line read (none deliverable)")
    t.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping; flushing" in t.log(), 10, "the first signal's stop")
    t.proc.send_signal(signal.SIGTERM)
    # Well inside the 120 s grace: the second signal did not wait for it.
    rc = t.proc.wait(timeout=30)
    t.proc = None
    assert "second signal: stopping now" in t.log()
    assert rc == 0  # a stop asked for twice is still a clean stop: nothing is lost (below)
    r = Receiver(port=refusing.release()).start()
    t.start()
    wait_for(lambda: r.records() >= 500, 60, "every line after the restart")
    assert t.stop() == 0
    r.stop()
    assert sorted(b.decode() for b in r.bodies()) == sorted(f"line {i}" for i in range(500))


def test_a_full_disk_under_the_spool_loses_nothing(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """The spool's filesystem is full (RLIMIT_FSIZE below one segment: each write past it fails
    with EFBIG, as on a full disk): the batch stays in memory, retried and reported, reading
    waits behind it; once there is room and the receiver is back, every line arrives once."""
    import subprocess

    from collector.harness.receiver import Receiver
    from tests.conftest import require_tool

    prlimit = require_tool("prlimit", "to make the spool's writes fail as on a full disk")
    refusing, cfg = unreachable(tmp_path, [f"line {i:04d} {'y' * 1000}" for i in range(400)],
                                {"batch": {"max_records": 200}}, compression="none", spool={"after": "100ms"})
    # 64 KiB: the checkpoint journal and snapshot fit, a 200 KB spool segment does not.
    t = tailrace(cfg).start(preexec=[prlimit, "--fsize=65536:unlimited", "--"])
    assert t.proc is not None
    wait_for(lambda: "File too large" in t.log(), 30, "the spool's write failing")
    assert list((tmp_path / "state" / "spool" / "otlp").glob("*.seg")) == []
    subprocess.run([prlimit, "--pid", str(t.proc.pid), "--fsize=unlimited:unlimited"], check=True)
    r = Receiver(port=refusing.release()).start()
    wait_for(lambda: r.records() >= 400, 60, "every line once there is room")
    assert t.stop() == 0
    r.stop()
    assert sorted(b.decode() for b in r.bodies()) == [f"line {i:04d} {'y' * 1000}" for i in range(400)]


def test_checkpoints_that_cannot_be_written_are_said_and_retried_until_there_is_room(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """The state's filesystem is full for the snapshot (RLIMIT_FSIZE: 200 files' heads make a
    ~200 KB snapshot, the limit is 150 KB; the journal and the output fit): the error names the
    state directory, the write is retried (backing off from `checkpoint_interval`) with nothing new
    acknowledged (before, it waited for the next acknowledgement: a quiet node kept its state
    unwritten), recovery is said, and a kill -9 after it costs no line."""
    import subprocess

    from tests.conftest import require_tool

    prlimit = require_tool("prlimit", "to make the snapshot's write fail as on a full disk")
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = {f"f{i:03d}.log": f"file {i:03d} " + "z" * 390 for i in range(200)}
    for name, text in lines.items():
        (logs / name).write_text(text + "\n")
    out = tmp_path / "out" / "logs.jsonl"
    cfg = base_config(tmp_path, [f"{logs}/*.log"], watch="inotify", rescan_interval="1h")
    t = tailrace(cfg).start(preexec=[prlimit, "--fsize=150000:unlimited", "--"])
    assert t.proc is not None
    wait_for(lambda: count_records(out) == 200, 30, "every line delivered")
    state = tmp_path / "state"
    wait_for(lambda: "cannot write checkpoints" in t.log(), 30, "the snapshot's write failing")
    assert f"write checkpoints in {state}: File too large" in t.log()
    assert not (state / "checkpoints.json.tmp").exists()  # no partial snapshot holding the room
    # Retried with nothing new to acknowledge (every line was delivered before the first try).
    wait_for(lambda: t.totals()["checkpoint_write_errors"] >= 4, 30, "four tries")
    subprocess.run([prlimit, "--pid", str(t.proc.pid), "--fsize=unlimited:unlimited"], check=True)
    wait_for(lambda: "checkpoints written again" in t.log(), 30, "the write retried with nothing new")
    assert (state / "checkpoints.json").stat().st_size > 150_000
    t.kill()
    t.start()
    wait_for(lambda: t.log().count("admin endpoint on") == 2, 30, "the restart's admin endpoint")
    steps = lambda: t.totals()["steps"]  # noqa: E731
    wait_for(lambda: steps() >= 1, 30, "the restart's first step (its look reads what the state says is unread)")
    assert t.stop() == 0
    assert sorted(str(r["body"]["stringValue"]) for r in records(out)) == sorted(lines.values())


def test_a_journal_record_of_a_newer_version_is_cut_off_named_and_costs_no_line(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """A tailrace downgraded after a newer one crashed finds records in the journal that it does
    not read. It starts, says so naming the journal and the record's kind (not "torn by a
    crash"), and loses nothing: reading the journal stops there, so the offsets before it hold
    and the second run ships exactly the lines written since. Catches: refusing to start on
    it; calling it torn; reading past it (the offset record after it skips the 30 new lines);
    damaging what came before it (the first 50 again)."""
    import struct
    import zlib

    from tests.conftest import records

    def record(payload: bytes) -> bytes:
        return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload

    logs, out = tmp_path / "logs", tmp_path / "out.jsonl"
    logs.mkdir()
    a = logs / "a.log"
    a.write_text("".join(f"first {i}\n" for i in range(50)))
    cfg = config(tmp_path, [str(logs / "*.log")])
    cfg["outputs"] = [{"type": "file", "path": str(out)}]
    t = tailrace(cfg).start()
    wait_for(lambda: len(records(out)) == 50, 30, "the first 50 lines")
    assert t.stop() == 0
    journal = tmp_path / "state" / "checkpoints.journal"
    assert len(journal.read_bytes()) == 16  # the shutdown snapshot left an empty journal (a header)
    with open(a, "a") as f:
        f.write("".join(f"second {i}\n" for i in range(30)))
    st = a.stat()
    # A record of a kind this version does not have (9), then one it reads that would put
    # a.log's offset at its end.
    skip_all = bytes([2]) + struct.pack("<I", 2) + b"in" + struct.pack("<QQQ", st.st_dev, st.st_ino, st.st_size)
    with open(journal, "ab") as f:
        f.write(record(bytes([9]) + b"from a newer tailrace") + record(skip_all))
    t.start()
    wait_for(lambda: len(records(out)) >= 80, 30, "the 30 new lines")
    assert t.stop() == 0
    bodies = sorted(r["body"]["stringValue"] for r in records(out))
    assert bodies == sorted([f"first {i}" for i in range(50)] + [f"second {i}" for i in range(30)])
    warned = [ln for ln in t.log().splitlines() if "checkpoint journal" in ln]
    assert len(warned) == 1 and "does not read" in warned[0] and "kind=9" in warned[0], warned
    assert str(journal) in warned[0]


def test_an_input_renamed_by_a_reload_ships_nothing_again(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """Checkpoints are kept per input name. An input renamed (here by SIGHUP; a restart goes
    through the same start) takes over its old name's entries: what was shipped under the old
    name is not shipped again, what was written after is. Without the take-over the new name
    finds no checkpoint and reads all three files from their start again (`read_from: beginning`):
    300 lines twice. A second input added in the same reload on other files keeps nothing of
    the old name's (its file is read whole)."""
    import signal

    import yaml

    logs, other = tmp_path / "logs", tmp_path / "other"
    logs.mkdir()
    other.mkdir()
    for i in range(3):
        (logs / f"{i}.log").write_text("".join(f"{i} before {n}\n" for n in range(100)))
    (other / "o.log").write_text("".join(f"o {n}\n" for n in range(20)))
    cfg = base_config(tmp_path, [str(logs / "*.log")], read_from="beginning")
    out = Path(cfg["outputs"][0]["path"])
    t = tailrace(cfg).start()
    assert t.proc is not None
    wait_for(lambda: count_records(out) >= 300, 30, "the first 300 lines")
    cfg["inputs"][0]["name"] = "renamed"
    cfg["inputs"].append({"name": "added", "paths": [str(other / "*.log")], "read_from": "beginning"})
    t.config.write_text(yaml.safe_dump(cfg))
    t.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in t.log() and count_records(out) >= 320, 30, "the reload")
    for i in range(3):
        with open(logs / f"{i}.log", "a") as f:
            f.write("".join(f"{i} after {n}\n" for n in range(50)))
    wait_for(lambda: count_records(out) >= 470, 30, "the 150 lines written after the reload")
    assert t.stop() == 0
    want = [f"{i} {when} {n}" for i in range(3) for when, m in (("before", 100), ("after", 50)) for n in range(m)]
    want += [f"o {n}" for n in range(20)]
    assert sorted(r["body"]["stringValue"] for r in records(out)) == sorted(want)
    taken = [ln for ln in t.log().splitlines() if "taken over" in ln]
    assert len(taken) == 1 and "input=renamed" in taken[0] and "was=test" in taken[0] and "files=3" in taken[0], taken
