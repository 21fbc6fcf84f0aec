"""`tailrace top`: a live terminal view of a running tailrace through its admin endpoint
(`/stats`, polled every `interval`): per input the line and byte rates and the lag (bytes read
but not yet acknowledged), CPU, the event loop's wakeups per second, syscalls per line, the
profiler's stat-family share, and each output's state and spool."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def fetch(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.rstrip("/") + "/stats", timeout=5) as r:
        return dict(orjson.loads(r.read()))


def view(prev: dict[str, Any], now: dict[str, Any]) -> Group:
    dt = max(now["time"] - prev["time"], 1e-9)
    cpu = 100 * (now["cpu_s"] - prev["cpu_s"]) / dt
    prof = now.get("profiler") or {}
    share = prof.get("last_share")
    woke = now["totals"].get("loop_wakeups", 0) - prev["totals"].get("loop_wakeups", 0)
    head = Text(
        f"tailrace {now['version']}  up {now['uptime_s']:.0f}s  CPU {cpu:.1f}%  wakeups/s {woke / dt:.1f}  "
        f"RSS {now['rss_bytes'] / 2**20:.0f} MiB  "
        f"stat-family share {'-' if share is None else f'{100 * share:.1f}%'}"
        f"{'  (profiler: ' + prof['unavailable'] + ')' if prof.get('unavailable') else ''}"
    )
    inputs = Table(title="inputs", expand=True)
    for col in ("input", "lines/s", "MB/s", "lines", "lag bytes", "files", "syscalls/line", "stat/line", "rotations"):
        inputs.add_column(col, justify="left" if col == "input" else "right")
    for name, s in now["inputs"].items():
        p = prev["inputs"].get(name, s)
        lines = s["lines"] - p["lines"]
        calls = sum(s[k] - p[k] for k in s if k.startswith("syscalls_"))
        stat = s["stat_family"] - p["stat_family"]

        def per(n: int, lines: int = lines) -> str:
            return f"{n / lines:.3f}" if lines else "-"

        inputs.add_row(
            name, f"{lines / dt:,.0f}", f"{(s['bytes'] - p['bytes']) / dt / 1e6:.2f}", f"{s['lines']:,}",
            f"{s['lag_bytes']:,}", str(s["files_open"]), per(calls), per(stat), str(s["rotations"]),
        )
    outputs = Table(title="outputs", expand=True)
    for col in ("output", "records/s", "delivered", "retries", "dropped", "spool batches", "spool bytes", "state"):
        outputs.add_column(col, justify="left" if col in ("output", "state") else "right")
    for name, o in now["outputs"].items():
        p = prev["outputs"].get(name, o)
        rate = (o.get("delivered_records", 0) - p.get("delivered_records", 0)) / dt
        state = o.get("not_ready") or ("spooling" if o.get("spooling") else "ok")
        outputs.add_row(
            name, f"{rate:,.0f}", f"{o.get('delivered_records', now['totals']['records_delivered']):,}",
            str(o.get("retries", 0)), str(o.get("dropped_records", 0)), str(o.get("spool_batches", "-")),
            f"{o['spool_bytes']:,}" if "spool_bytes" in o else "-", state,
        )
    return Group(head, inputs, outputs)


def main(url: str, interval: float, once: bool) -> int:
    console = Console()
    try:
        prev = fetch(url)
        if once:
            time.sleep(interval)
            console.print(view(prev, fetch(url)))
            return 0
        with Live(console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                now = fetch(url)
                live.update(view(prev, now))
                prev = now
    except (urllib.error.URLError, OSError) as e:
        print(f"tailrace top: cannot read {url}/stats: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
