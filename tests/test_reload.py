"""SIGHUP reloads the configuration: validated first (an invalid one is logged and the running
one goes on), then applied with a clean stop of the running pipeline and a start on the same
state, so nothing is lost or sent twice across it."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import yaml

from collector.harness.receiver import Receiver
from tests.conftest import wait_for
from tests.test_otlp import account, all_lines, appender, finish


def test_sighup_adds_an_input_changes_the_output_then_refuses_an_invalid_file(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    a_logs, b_logs = tmp_path / "a", tmp_path / "b"
    with Receiver() as first, Receiver() as second:
        cfg = {
            "state_dir": str(tmp_path / "state"),
            "inputs": [{"name": "a", "paths": [str(a_logs / "*.log")]}],
            "outputs": [{"type": "otlp_http", "name": "otlp", "endpoint": first.endpoint}],
            "batch": {"max_age": "50ms"},
            "progress_interval": "0s",
            "admin": {"address": "127.0.0.1:0"},
        }
        t = tailrace(cfg).start()
        assert t.proc is not None
        wa = appender(a_logs, 5, 200, 8)  # 1,000 lines/s into the first input
        wb = appender(b_logs, 5, 200, 8)  # into a directory no input reads yet
        wait_for(lambda: first.records() >= 1000, 30, "the first input flowing")
        # Reload 1: an input added, the output moved to another receiver (and to gzip).
        cfg["inputs"].append({"name": "b", "paths": [str(b_logs / "*.log")]})
        cfg["outputs"] = [{"type": "otlp_http", "name": "otlp", "endpoint": second.endpoint, "compression": "gzip"}]
        t.config.write_text(yaml.safe_dump(cfg))
        t.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: second.records() >= 1000, 30, "the new output receiving")
        # Reload 2: a file that does not load: logged, the running configuration goes on.
        t.config.write_text("inputs: [{paths: 5}]\noutputs: []\n")
        t.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration not reloaded" in t.log(), 30, "the invalid reload reported")
        written = finish(wa) + finish(wb)
        wait_for(lambda: first.records() + second.records() >= written, 60, f"{written} lines")
        status, body = t.get("/metrics")
        assert t.proc.poll() is None, "still running after the invalid reload"
        assert t.stop() == 0
    got = collections.Counter(b.decode() for b in first.bodies() + second.bodies())
    expected = all_lines(a_logs) + all_lines(b_logs)
    assert account(expected, got) == (0, 0, 0)
    assert set(second.got.encodings) == {"gzip"} and set(first.got.encodings) == {"zstd"}
    text = body.decode()
    assert 'tailrace_config_reloads_total{result="ok"} 1' in text
    assert 'tailrace_config_reloads_total{result="invalid"} 1' in text
    log = t.log()
    assert log.count("configuration reloaded") == 1 and log.count("stopped for the reload") == 1
    assert "$.inputs[0].paths" in log and "Traceback" not in log
