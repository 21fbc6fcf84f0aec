"""A `tailrace run` on an empty input, CPU of the whole process (start-up, first look, first
checkpoints, shutdown), in interleaved pairs, PYTHONDONTWRITEBYTECODE=1 as this machine sets
it: (a) the checkout without bytecode, so tailrace's modules are compiled from source at every
start (the harnesses before `warm_bytecode`), and (b) after `warm_bytecode`, as an installed
wheel starts (session 12). Deletes and rewrites the checkout's `collector/**/__pycache__`.

    python bench/results/issue13/session12-scripts/startup_bytecode.py 8
"""
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
from collector.harness import throughput, watchmodes  # noqa: E402

pairs = int(sys.argv[1])
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
work = Path(tempfile.mkdtemp())
real_warm = watchmodes.warm_bytecode


def cold(tree: Path | None) -> None:
    for d in (ROOT / "collector").rglob("__pycache__"):
        shutil.rmtree(d)


a, b = [], []
for _ in range(pairs):
    setattr(throughput, "warm_bytecode", cold)  # noqa: B010
    a.append(round(throughput.idle_cpu_s(work, "otlp_http"), 3))
    setattr(throughput, "warm_bytecode", real_warm)  # noqa: B010
    b.append(round(throughput.idle_cpu_s(work, "otlp_http"), 3))
print(json.dumps({"compiled_each_start_cpu_s": a, "median_compiled": statistics.median(a),
                  "bytecode_cpu_s": b, "median_bytecode": statistics.median(b)}, indent=1))
