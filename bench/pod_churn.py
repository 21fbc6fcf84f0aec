"""What a pod deleted or created, or a log rotated, costs a node's tailrace: the core's CPU
and syscalls in the steps after a pod's directory is removed (or made, with a container's
`0.log`; or a container's `0.log` renamed and made again), on a node of `--pods` pods × 2
containers (one `0.log` each, four rotated names beside it), against the same steps with
nothing changed.

    python -m bench.pod_churn --pods 5000 [--trials 3] [--json OUT]

A tailer built as `run` builds it (`standalone_tailer`, inotify, rescan an hour away), stepped
by hand every 50 ms for 2 s after each change. Prints and writes, per trial, the CPU of
those steps, their largest step, and the counters that moved (listings, stats, looks).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    from collector.flow import config
    from collector.flow.pipeline import standalone_tailer

    root = Path(tempfile.mkdtemp(prefix="pod-churn-"))
    pods = root / "pods"
    try:
        for p in range(a.pods):
            for c in range(2):
                d = pods / f"ns_pod{p}_uid{p:08d}" / f"c{c}"
                d.mkdir(parents=True)
                for k in range(5):
                    (d / ("0.log" if k == 0 else f"0.log.2026120{k}-000000")).write_text("x\n")
        cfg = config.parse(f"state_dir: {root}/state\ninputs: [{{name: k, paths: ['{pods}/*/*/*.log'], "
                           "rescan_interval: 1h}]\noutputs: [{type: blackhole}]\n")
        _, t = standalone_tailer(cfg)

        def step() -> float:
            t0 = time.process_time()
            for b in t.step():
                t.commit(b.id)
            return time.process_time() - t0

        first = step()
        for _ in range(5):
            time.sleep(0.05)
            step()

        def window(delete: int | None, create: int | None = None, rotate: int | None = None) -> dict[str, Any]:
            s0 = dict(t.stats())
            if delete is not None:
                shutil.rmtree(pods / f"ns_pod{delete}_uid{delete:08d}")
            if rotate is not None:
                c0 = pods / f"ns_pod{rotate}_uid{rotate:08d}" / "c1"
                (c0 / "0.log").rename(c0 / "0.log.20261203-000000")
                (c0 / "0.log").write_text("y\n")
            if create is not None:
                new = pods / f"ns_new{create}_uid{create:08d}" / "c0"
                new.mkdir(parents=True)
                (new / "0.log").write_text("x\n")
            steps = []
            for _ in range(40):
                time.sleep(0.05)
                steps.append(step())
            s1 = t.stats()
            moved = {k: s1[k] - s0[k] for k in s1 if isinstance(s1[k], int) and s1[k] != s0[k]}
            return {"deleted": delete is not None, "created": create is not None, "rotated": rotate is not None,
                    "cpu_ms": round(sum(steps) * 1e3, 1),
                    "largest_step_ms": round(max(steps) * 1e3, 1), "counters": moved}

        rows = [window(i) for i in range(a.trials)] + [window(None)]
        rows += [window(None, i) for i in range(a.trials)] + [window(None)]
        rows += [window(None, None, 100 + i) for i in range(a.trials)]
        out = {"pods": a.pods, "files_open": t.stats()["files_open"], "first_look_s": round(first, 3), "windows": rows}
        for r in rows:
            c = r["counters"]
            what = ("pod deleted" if r["deleted"] else "pod created" if r["created"] else "log rotated" if r["rotated"]
                    else "nothing changed")
            print(f"{what}: {r['cpu_ms']} ms of CPU in 40 steps "
                  f"(largest {r['largest_step_ms']}), {c.get('syscalls_readdir', 0)} listings, "
                  f"{c.get('stat_family', 0)} stats, {c.get('scoped_looks', 0)} scoped looks")
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
