"""`tailrace doctor`: each check made to fail on purpose (a watch limit read from a fake /proc
root, a lowered RLIMIT_NOFILE, Yama and capabilities, an overlay and a tiny tmpfs mounted in a
private mount namespace, a port in use), and a sound node that needs nothing changed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from collector.harness.receiver import free_port
from tests.conftest import ROOT, require_tool


def fake_proc(tmp_path: Path, watches: int, instances: int, ptrace_scope: int | None) -> Path:
    proc = tmp_path / "proc"
    (proc / "sys" / "fs" / "inotify").mkdir(parents=True)
    (proc / "sys" / "fs" / "inotify" / "max_user_watches").write_text(f"{watches}\n")
    (proc / "sys" / "fs" / "inotify" / "max_user_instances").write_text(f"{instances}\n")
    if ptrace_scope is not None:
        (proc / "sys" / "kernel" / "yama").mkdir(parents=True)
        (proc / "sys" / "kernel" / "yama" / "ptrace_scope").write_text(f"{ptrace_scope}\n")
    return proc


def logs(directory: Path, n: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (directory / f"f{i:03d}.log").write_text("x\n")
    return directory


def doctor(tmp_path: Path, cfg: dict[str, Any], proc: Path, prefix: list[str] | None = None,
           script: str | None = None) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "collector.cli", "doctor", "-c", str(path), "--json", "--proc-root", str(proc)]
    if script is not None:  # run inside a shell that prepares the node first (mounts)
        cmd = ["sh", "-ec", f'{script}\nexec "$@"', "sh", *cmd]
    r = subprocess.run([*(prefix or []), *cmd], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def by_check(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in doc["checks"]:
        out.setdefault(c["check"], []).append(c)
    return out


def config(tmp_path: Path, paths: list[str], **extra: Any) -> dict[str, Any]:
    return {"state_dir": str(tmp_path / "state"), "inputs": [{"name": "app", "paths": paths}],
            "outputs": [{"type": "file", "path": str(tmp_path / "out.jsonl")}],
            "admin": {"address": f"127.0.0.1:{free_port()}"}, **extra}


def test_doctor_finds_nothing_to_change_on_a_sound_node(tmp_path: Path) -> None:
    require_tool("py-spy", "the profiler check")
    d = logs(tmp_path / "logs", 20)
    code, doc = doctor(tmp_path, config(tmp_path, [f"{d}/*.log"]), fake_proc(tmp_path, 100_000, 128, 1))
    checks = by_check(doc)
    # Exact needs: a watch per file and one for the directory (a count off by the directory, or
    # one that forgets polled files, fails); descriptors: files + the input's inotify + reserve.
    watches = checks["inotify_watches"][0]["values"]
    assert (watches["needed"], watches["limit"]) == (21, 100_000)
    assert checks["inotify_instances"][0]["values"]["needed"] == 1
    assert checks["open_files"][0]["values"]["needed"] == 20 + 1 + 64
    assert checks["files"][0]["values"] == {"input": "app", "files": 20, "unmatched": [], "unreadable": 0}
    assert "ptrace_scope 1" in checks["profiler"][0]["message"]
    assert [c["check"] for c in doc["checks"] if c["status"] == "problem"] == []
    assert (code, doc["ok"]) == (0, True)


def test_doctor_names_each_limit_to_change_with_the_numbers(tmp_path: Path) -> None:
    require_tool("py-spy", "the profiler check")
    prlimit = require_tool("prlimit", "a lowered RLIMIT_NOFILE")
    d = logs(tmp_path / "logs", 50)
    (d / "f000.log").chmod(0)
    with socket.socket() as held:  # the admin address is taken
        held.bind(("127.0.0.1", 0))
        held.listen()
        cfg = config(tmp_path, [f"{d}/*.log"], admin={"address": f"127.0.0.1:{held.getsockname()[1]}"})
        # A watch limit of 10 and no instances, Yama 3, 40 descriptors, and root without the
        # capabilities that bypass file permissions (the kernel refuses the open as for a user).
        drop = [require_tool("setpriv", "dropping capabilities"), "--inh-caps=-all",
                "--bounding-set=-dac_override,-dac_read_search", "--"]
        code, doc = doctor(tmp_path, cfg, fake_proc(tmp_path, 10, 0, 3), prefix=[prlimit, "--nofile=40:40", *drop])
    checks = by_check(doc)
    problems = {c["check"]: c for c in doc["checks"] if c["status"] == "problem"}
    assert sorted(problems) == ["admin", "files", "inotify_instances", "inotify_watches", "open_files", "profiler"]
    assert (code, doc["ok"]) == (1, False)
    assert problems["inotify_watches"]["values"] == {"needed": 51, "in_use": 0, "limit": 10}
    assert problems["inotify_watches"]["fix"].startswith("sysctl -w fs.inotify.max_user_watches=8192")
    assert problems["inotify_instances"]["values"] == {"needed": 1, "in_use": 0, "limit": 0}
    assert problems["open_files"]["values"] == {"needed": 115, "soft": 40, "hard": 40}
    assert "LimitNOFILE=65536" in problems["open_files"]["fix"]
    assert problems["files"]["values"]["unreadable"] == 1 and str(d / "f000.log") in problems["files"]["message"]
    assert "ptrace_scope is 3" in problems["profiler"]["message"]
    assert "cannot be bound" in problems["admin"]["message"]
    assert checks["filesystems"][0]["status"] == "ok"


def test_doctor_judges_a_running_tailraces_limit_and_port(tmp_path: Path) -> None:
    # A service's limit is its unit's LimitNOFILE, not the shell's where doctor runs: with a
    # tailrace holding the state_dir, its /proc/PID/limits count. Catches a doctor that checks
    # only its own limit (ok here: it runs with the machine's) while the service would run out.
    prlimit = require_tool("prlimit", "a lowered RLIMIT_NOFILE")
    d = logs(tmp_path / "logs", 30)
    cfg = config(tmp_path, [f"{d}/*.log"])
    holder = subprocess.Popen(
        [prlimit, "--nofile=64:80", sys.executable, "-c",
         "import socket, sys, time; from collector.flow.pipeline import lock_state_dir; lock_state_dir(sys.argv[1]); "
         "s = socket.create_server(('127.0.0.1', int(sys.argv[2]))); print('locked', flush=True); time.sleep(120)",
         cfg["state_dir"], cfg["admin"]["address"].rsplit(":", 1)[1]],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc = fake_proc(tmp_path, 100_000, 128, 1)
    assert holder.stdout is not None
    with holder.stdout:
        try:
            assert holder.stdout.readline() == "locked\n"
            code, doc = doctor(tmp_path, cfg, proc)
        finally:
            holder.kill()
            holder.wait()
    # Its admin port is taken by it, as it should be: not a problem (doctor run beside the
    # tailrace it checks, `kubectl exec` into the pod). Catches a doctor that flags its own
    # service's listener, and one that trusts any listener there (the next test's is not it).
    admin = by_check(doc)["admin"][0]
    assert (admin["status"], admin["message"]) == (
        "ok", f"admin: {cfg['admin']['address']} is served by the running tailrace (pid {holder.pid})")
    assert [c["check"] for c in doc["checks"] if c["status"] == "problem"] == ["open_files"]
    fds = by_check(doc)["open_files"][0]
    assert fds["status"] == "problem" and (code, doc["ok"]) == (1, False)
    assert fds["values"] == {"needed": 30 + 1 + 64, "soft": 64, "hard": 80, "pid": holder.pid}
    assert f"the running tailrace's (pid {holder.pid}) hard limit of 80" in fds["message"]
    # Without it, doctor's own limit (prlimit's 200 here) is the one judged.
    code, doc = doctor(tmp_path, cfg, proc, prefix=[prlimit, "--nofile=150:200"])
    fds = by_check(doc)["open_files"][0]
    assert (fds["status"], fds["values"]) == ("ok", {"needed": 95, "soft": 150, "hard": 200})


def test_doctor_yama_2_needs_cap_sys_ptrace(tmp_path: Path) -> None:
    require_tool("py-spy", "the profiler check")
    setpriv = require_tool("setpriv", "dropping CAP_SYS_PTRACE")
    d = logs(tmp_path / "logs", 1)
    cfg = config(tmp_path, [f"{d}/*.log"])
    proc = fake_proc(tmp_path, 100_000, 128, 2)
    with_cap = by_check(doctor(tmp_path, cfg, proc)[1])["profiler"][0]
    without = by_check(doctor(tmp_path, cfg, proc, prefix=[setpriv, "--inh-caps=-all", "--bounding-set=-sys_ptrace",
                                                             "--"])[1])["profiler"][0]
    assert (with_cap["status"], with_cap["values"]["cap_sys_ptrace"]) == ("ok", True)
    assert (without["status"], without["values"]["cap_sys_ptrace"]) == ("problem", False)
    assert "CAP_SYS_PTRACE" in without["fix"]


def test_doctor_filesystems_overlay_tmpfs_and_a_small_state_dir(tmp_path: Path) -> None:
    """An overlay and a 1 MiB tmpfs mounted in a private mount namespace (`unshare -m`): files on
    overlay are polled by `auto` (a note) and missed by `inotify` (a problem); tmpfs is trusted;
    a state_dir with 1 MiB free cannot hold a 1 GiB spool."""
    unshare = require_tool("unshare", "a private mount namespace")
    ov, small = tmp_path / "ov", tmp_path / "small"
    for p in ("lower", "upper", "work", "merged"):
        (ov / p).mkdir(parents=True)
    logs(ov / "lower", 3)
    small.mkdir()
    script = (f"mount -t overlay overlay -o lowerdir={ov}/lower,upperdir={ov}/upper,workdir={ov}/work {ov}/merged\n"
              f"mount -t tmpfs -o size=1m tmpfs {small}\nmkdir {small}/logs && echo x > {small}/logs/a.log")
    cfg = config(tmp_path, [])
    cfg["inputs"] = [{"name": "auto-ov", "paths": [f"{ov}/merged/*.log"], "watch": "auto"},
                     {"name": "inotify-ov", "paths": [f"{ov}/merged/*.log"], "watch": "inotify"},
                     {"name": "tmpfs", "paths": [f"{small}/logs/*.log"], "watch": "inotify"}]
    cfg["state_dir"] = str(small / "state")
    cfg["outputs"] = [{"type": "otlp_http", "endpoint": "http://127.0.0.1:4318", "spool": {"max_bytes": "1GiB"}}]
    cfg["profiler"] = {"enabled": False}
    code, doc = doctor(tmp_path, cfg, fake_proc(tmp_path, 100_000, 128, 1), prefix=[unshare, "-m", "--"],
                       script=script)
    fs = {c["values"]["input"]: c for c in by_check(doc)["filesystems"]}
    assert (fs["auto-ov"]["status"], fs["auto-ov"]["values"]["polled"]) == ("note", 3)
    assert "auto polls the 3 files on overlay" in fs["auto-ov"]["message"]
    assert (fs["inotify-ov"]["status"], fs["inotify-ov"]["values"]["filesystems"]) == ("problem", {"overlay": 3})
    assert (fs["tmpfs"]["status"], fs["tmpfs"]["values"]["filesystems"]) == ("ok", {"tmpfs": 1})
    state = by_check(doc)["state_dir"][0]
    assert state["status"] == "problem" and state["values"]["filesystem"] == "tmpfs"
    assert state["values"]["free"] <= 1 << 20 < state["values"]["needed"]
    # auto's polled files take no watch: 3 + 1 dir (inotify-ov), 0 + 1 (auto-ov), 1 + 1 (tmpfs).
    assert by_check(doc)["inotify_watches"][0]["values"]["needed"] == 7
    assert code == 1
    assert os.path.ismount(small) is False  # the namespace was private: nothing left mounted here
