"""A/B of the harness's receiver (session 12): decoding every record inside the measured window,
as it does (`inline`), or only counting them there and decoding after the run (`defer`), runs
interleaved, the appends workload at FILES files. Prints each run and the medians; writes
/tmp/recv-<files>-<time>.json.

    python bench/results/issue13/session12_scripts/receiver_ab.py --files 1000 --runs 3
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
import zstandard  # noqa: E402
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2  # noqa: E402

from collector.harness import receiver as rv  # noqa: E402
from collector.harness import watchmodes as wm  # noqa: E402

ORIG_ANSWER = rv.Receiver._answer
ORIG_RECORDS = wm.Run.records
MODE = {"defer": False}
DEFERRED: dict[int, list[Any]] = {}


def answer(self: Any, path: str, h: dict[str, str], raw: bytes, arrived: int, fault: Any) -> Any:
    if not MODE["defer"] or path != "/v1/logs" or h.get("content-encoding") != "zstd":
        return ORIG_ANSWER(self, path, h, raw, arrived, fault)
    req = logs_service_pb2.ExportLogsServiceRequest()
    req.ParseFromString(zstandard.ZstdDecompressor().decompress(raw))
    n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
    with self.lock:
        self.got.records += n
        self.got.accepted += 1
        DEFERRED.setdefault(id(self), []).append((path, h, raw, arrived))
    return (200, {"Content-Type": "application/x-protobuf"}, b""), False


def records(self: Any) -> Any:
    if self.receiver is not None and DEFERRED.get(id(self.receiver)):
        self.receiver.got.records = 0
        for path, h, raw, arrived in DEFERRED.pop(id(self.receiver)):
            ORIG_ANSWER(self.receiver, path, h, raw, arrived, None)
    return ORIG_RECORDS(self)


rv.Receiver._answer = answer  # type: ignore[method-assign]
wm.Run.records = records  # type: ignore[method-assign]

ap = argparse.ArgumentParser()
ap.add_argument("--files", type=int, default=1000)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--seconds", type=float, default=10)
a = ap.parse_args()
args = argparse.Namespace(workload="appends", rate=20000, seconds=a.seconds, warmup=0, rotate_kib=1024,
                          coalesce="auto", output="otlp_http", drain_timeout=30, work_dir=None, corpus=None,
                          results="/tmp")
res: dict[str, list[dict[str, Any]]] = {"inline": [], "defer": []}
for _ in range(a.runs):
    for v in ("inline", "defer"):
        MODE["defer"] = v == "defer"
        h0 = time.process_time()
        r = wm.one(args, "inotify", a.files)
        res[v].append({"us": r["cpu_us_per_line"], "lost": r["lost"], "dup": r["duplicated"],
                       "p99": r["latency_ms_p99"], "harness_cpu_s": round(time.process_time() - h0, 2),
                       "wakeups": r["wakeups_per_second"]})
        print(v, res[v][-1], flush=True)
for v, runs in res.items():
    print(v, "median us/line", statistics.median(x["us"] for x in runs))
with open(f"/tmp/recv-{a.files}-{int(time.time())}.json", "w") as f:
    json.dump(res, f)
