"""Shared helpers: run tailrace as a real process, wait on conditions with a deadline, decode
the OTLP JSON it writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `cond` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def records(path: Path) -> list[dict[str, Any]]:
    """Every LogRecord in an OTLP JSON lines file (complete lines only)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        req = orjson.loads(line)
        for rl in req["resourceLogs"]:
            for sl in rl["scopeLogs"]:
                out.extend(sl["logRecords"])
    return out


def count_records(path: Path) -> int:
    return len(records(path))


def attrs(rec: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in rec.get("attributes", [])}


class Tailrace:
    """A tailrace process on a config written into a temporary directory."""

    def __init__(
        self, workdir: Path, cfg: dict[str, Any], extra_args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.config = workdir / "tailrace.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.stderr = workdir / "tailrace.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args = extra_args or []
        self.env = env or {}

    def start(self, preexec: list[str] | None = None) -> Tailrace:
        cmd = [*(preexec or []), sys.executable, "-m", "collector.cli", "run", "--config", str(self.config)]
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(
                cmd + self.extra_args,
                cwd=self.workdir,
                stderr=err,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.proc = None
        return rc

    def log(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""

    def admin(self) -> str:
        """The admin endpoint's base URL, from the start-up log line (waits for it)."""
        import re

        found = wait_for(lambda: re.findall(r"admin endpoint on (http://[0-9.:]+)/", self.log()), 30, "the admin line")
        return str(found[-1])

    def totals(self) -> dict[str, Any]:
        """The admin endpoint's `/stats` totals (the core's counters, deliveries, checkpoints)."""
        import json

        return dict(json.loads(self.get("/stats")[1])["totals"])

    def get(self, path: str) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.admin() + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(autouse=True)
def _collect_what_the_test_left() -> Iterator[None]:
    """A cycle collection after each test: an object a test left unclosed (a socket, a file) is
    reported (as an error: `filterwarnings = error`) in the test that left it, not in whichever
    test the collector happens to run in later."""
    yield
    import gc

    gc.collect()


@pytest.fixture
def tailrace(tmp_path: Path) -> Iterator[Callable[..., Tailrace]]:
    started: list[Tailrace] = []

    def make(cfg: dict[str, Any], **kw: Any) -> Tailrace:
        t = Tailrace(tmp_path, cfg, **kw)
        started.append(t)
        return t

    yield make
    for t in started:
        t.kill()


def base_config(tmp_path: Path, paths: list[str], **input_opts: Any) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"),
        "inputs": [{"name": "test", "paths": paths, "poll_interval": "50ms", "rescan_interval": "200ms", **input_opts}],
        "outputs": [{"type": "file", "path": str(tmp_path / "out" / "logs.jsonl")}],
        "batch": {"max_age": "50ms"},
        "checkpoint_interval": "200ms",
        "progress_interval": "0s",
        "admin": {"address": "127.0.0.1:0"},
    }


def in_ci() -> bool:
    """Under CI (`CI` set to true, 1 or yes, in any case: what CI services set; `.ci/run`
    sets it too), a missing tool fails its test instead of skipping it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_tool(name: str, why: str) -> str:
    """The tool's path; without it the test skips, except under CI=true where it fails."""
    import shutil

    beside = Path(sys.executable).with_name(name)  # tools installed into the venv (py-spy)
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        if in_ci():
            pytest.fail(f"{name} is required under CI=true ({why}) but is not installed")
        pytest.skip(f"{name} not installed ({why})")
    return path


def stopped_stats(log_text: str) -> dict[str, str]:
    """The key=value counters of tailrace's final `stopped` log line."""
    for line in reversed(log_text.splitlines()):
        if " stopped " in f" {line} " or line.rstrip().endswith("stopped"):
            return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    raise AssertionError(f"no 'stopped' line in:\n{log_text[-2000:]}")


class Otelcol:
    """The OpenTelemetry Collector (tests/otelcol, v0.161.0): OTLP/HTTP receiver → file exporter
    (OTLP JSON lines, appended, flushed every 10 ms)."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        from collector.harness.receiver import free_port

        self.binary = binary
        self.port = free_port()
        self.out = workdir / "otelcol.jsonl"
        self.log = workdir / "otelcol.log"
        self.config = workdir / "otelcol.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{self.port}"}}}},
                    "exporters": {"file": {"path": str(self.out), "append": True, "flush_interval": "10ms"}},
                    "service": {
                        "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                        "pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["file"]}},
                    },
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Otelcol:
        import socket

        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([str(self.binary), "--config", str(self.config)], stderr=err, stdout=err)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(up, 30, "the OpenTelemetry Collector to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None

    def bodies(self) -> list[str]:
        return [r["body"]["stringValue"] for r in records(self.out)]


@pytest.fixture(scope="session")
def otelcol_binary() -> Path:
    require_tool("go", "the OpenTelemetry Collector is built from Go modules")
    subprocess.run([str(ROOT / "tests" / "otelcol" / "build.sh"), "tailrace"], check=True)
    return ROOT / "target" / "otelcol" / "otelcol-tailrace"


@pytest.fixture
def otelcol(otelcol_binary: Path, tmp_path: Path) -> Iterator[Otelcol]:
    oc = Otelcol(otelcol_binary, tmp_path)
    yield oc.start()
    if oc.proc is not None:
        oc.proc.kill()
        oc.proc.wait()
