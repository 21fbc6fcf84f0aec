"""What the before/after benchmarks share (`crash`, `checkpoint_io`, `memory`): tailrace run
from a given checkout (`--tree`: its `collector` package and build, so two versions run under
one invocation's conditions), and the raw result written beside the figures."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from collector.harness.watchmodes import warm_bytecode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def start(tree: Path, work: Path, cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
    """`tailrace run` of checkout `tree` on `cfg` (written to `work/c.yaml`), stderr discarded."""
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    warm_bytecode(tree)
    return subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "run", "--config", str(work / "c.yaml")],
        cwd=tree, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(tree)},
    )


def trees(given: list[str]) -> list[Path]:
    return [Path(t).resolve() for t in given] or [ROOT]


def save(name: str, benchmark: str, argv: list[str] | None, rows: list[dict[str, Any]], results: str) -> Path:
    """Write `results/<name>-<UTC time>.json` with the command that made it; returns its path."""
    when = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    result = {
        "benchmark": benchmark,
        "command": f"python -m bench.{name.replace('-', '_')} " + " ".join(sys.argv[1:] if argv is None else argv),
        "when": when,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
    }
    out = Path(results) / f"{name}-{when}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return out


def compare(name: str, benchmark: str, argv: list[str] | None, given: list[str], results: str,
            measure: Any, columns: list[tuple[str, str]]) -> None:
    """Measure each checkout (`measure(tree) -> row`), save the rows, print them as a Markdown
    table of `columns` (header, row key)."""
    rows = []
    for tree in trees(given):
        print(f"[{tree}]", file=sys.stderr, flush=True)
        rows.append({"tree": str(tree), **measure(tree)})
        print(f"    {rows[-1]}", file=sys.stderr, flush=True)
    out = save(name, benchmark, argv, rows, results)
    print("| tree | " + " | ".join(h for h, _ in columns) + " |\n|---|" + "---|" * len(columns))
    for r in rows:
        print(f"| {r['tree']} | " + " | ".join(f"{r[k]:,}" for _, k in columns) + " |")
    print(f"\nraw: {out}")
