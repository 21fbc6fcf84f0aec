"""The harness that compares watch modes, side by side in one run.

Workloads: `appends` (N files × one-line writes at a total rate), `bulk` (RATE × SECONDS lines
written at once across the files, then read as fast as the mode can: a read from head),
`rotate` (appends, each file renamed away every K KiB), `idle` (many files, no writes). Per run: lines, CPU µs per line
(tailrace's CPU-time clock: all threads, in ns), syscalls per line by kind (tailrace's
own counters, dumped with SIGUSR1), delivery latency p50/p99 (the write time embedded in each
line → the arrival of its request at the receiver; with `--output file`, → the record's
observedTimeUnixNano, i.e. read latency), peak RSS, lost and duplicated lines, and the backlog when
a mode cannot keep up (reported, not hung). `--output otlp_http` (the default) ships OTLP/HTTP
protobuf with zstd into a loopback receiver (collector/harness/receiver.py, a trio server of this harness, not
of tailrace); `--output file` writes OTLP JSON. Either way every line is accounted for.

    tailrace bench watchmodes --quick --dir /var/log/bench   # which mode for this filesystem?
    tailrace bench watchmodes --workload appends --files 20,200,1000 --rate 20000 --seconds 10
    tailrace bench watchmodes --workload bulk --files 1,100 --rate 200000 --seconds 5
    tailrace bench watchmodes --workload rotate --files 1 --rate 20000 --rotate-kib 1024
    tailrace bench watchmodes --workload idle --files 10000 --seconds 10
    tailrace bench watchmodes --workload kubernetes --files 120 --rate 20000 --rotate-kib 1024

(`python -m bench.watchmodes ...` from a checkout.) It ships in the package: run it where it
matters, with `--dir` on the filesystem to be judged (a node's log filesystem: overlay, NFS,
ext4/xfs). `--quick` runs a short appends workload in `auto`, `inotify` and `poll` there and
prints a recommendation with the figures behind it. `--corpus DIR` replays your own logs.
`--warmup S` opens the measured window after S seconds of writes: the figures of a tailrace that
has been running, without each file's first writes (its events before it turns steady, its
head's checkpoint records); every line, warmup's included, is still accounted for.

`--modes ...,otelcol` adds the peer row (from a source checkout): the OpenTelemetry Collector's
filelog receiver (tests/otelcol/filelog, built on first use) on the same files, shipping
OTLP/HTTP with zstd into the same kind of receiver (its CPU from /proc; no syscall counters).

Writes `<results>/watchmodes-<workload>-<time>.json` (bench/results in a checkout, else
./tailrace-bench) and prints a Markdown table."""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from collector.harness.appender import COMMAND, PADDING, corpus_lines, kube_paths, line
from collector.harness.receiver import Receiver

# A source checkout (the repository: its bench/results and tests/otelcol), or an installed wheel.
ROOT = Path(__file__).resolve().parent.parent.parent
CHECKOUT = (ROOT / "bench" / "results").is_dir() and (ROOT / "tests" / "otelcol").is_dir()
RESULTS = ROOT / "bench" / "results" if CHECKOUT else Path.cwd() / "tailrace-bench"
TICK = os.sysconf("SC_CLK_TCK")


def trees(given: list[str]) -> list[Path | None]:
    """The checkouts to run tailrace from (`--tree`), or None: this installation."""
    return [Path(t).resolve() for t in given] or [None]


def warm_bytecode(tree: Path | None) -> None:
    """Compile the `collector` package a run imports (`tree`'s, else this one's) before the run
    starts, outside what is measured. An installed tailrace has its modules' bytecode (pip
    compiles a wheel's at install); a checkout on a machine that sets PYTHONDONTWRITEBYTECODE
    (this one does) has none, and every start compiled tailrace's modules from source: ~30 ms
    of a ~0.28 s start counted as tailrace's. Up to date is a quick check; nothing is said if
    it cannot write there."""
    pkg = tree / "collector" if tree else Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`, all its threads, exited ones too, in nanoseconds: its CPU-time
    clock (`clock_getcpuclockid(3)`: `((~pid) << 3) | CPUCLOCK_SCHED`). utime + stime in
    /proc/<pid>/stat count clock ticks (10 ms: 0.05 µs per line of a 10-s run at 20,000 lines/s),
    too coarse to see a change of a few per cent; they are the fallback."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9
    except OSError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (all threads)


def peak_rss_mib(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


class Run:
    def __init__(
        self, work: Path, mode: str, paths: str, coalesce: str, output: str, profiler: bool = False, fmt: str = "plain",
        tree: Path | None = None,
    ) -> None:
        self.work = work
        self.err = work / "tailrace.stderr"
        self.out = work / "out.jsonl"
        self.receiver: Receiver | None = None
        if output == "otlp_http":
            self.receiver = Receiver().start()
            out = f"{{type: otlp_http, endpoint: '{self.receiver.endpoint}'}}"
        else:
            out = f"{{type: file, path: {self.out}}}"
        (work / "c.yaml").write_text(
            f"state_dir: {work}/state\n"
            f"inputs: [{{name: bench, paths: ['{paths}'], watch: {mode}, coalesce: {coalesce}, format: {fmt}}}]\n"
            f"outputs: [{out}]\n"
            "progress_interval: 0s\n"
            "admin: {address: '127.0.0.1:0'}\n"
            # Continuous sampling (the default duty cycle is 10 s every 5 min): the worst case.
            + ("profiler: {every: 0s, duration: 5s, rate: 50}\n" if profiler else "profiler: {enabled: false}\n")
        )
        warm_bytecode(tree)
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector.cli", "run", "--config", str(work / "c.yaml")],
                cwd=tree or work,
                stderr=err,
                env={**os.environ, "PYTHONPATH": str(tree)} if tree else None,
            )
        self.dumps = 0

    def stats(self) -> dict[str, int]:
        self.dumps += 1
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.findall(r"^\S+ tailrace info: stats (.*)$", self.err.read_text(), re.M)
            if len(found) >= self.dumps:
                return {k: int(v) for k, v in (kv.split("=") for kv in found[self.dumps - 1].split())}
            time.sleep(0.05)
        raise RuntimeError("no stats from tailrace")

    def records(self) -> list[dict[str, Any]]:
        """Every record delivered, as OTLP JSON would have it, plus `arrivedUnixNano` (when its
        request reached the receiver) with the OTLP/HTTP output."""
        if self.receiver is not None:
            got = self.receiver.got
            return [
                {"body": {"stringValue": b.decode()}, "observedTimeUnixNano": str(t), "arrivedUnixNano": a}
                for b, t, a in zip(got.bodies, got.observed_ns, got.arrived_ns, strict=True)
            ]
        out = []
        if self.out.exists():
            for line in self.out.read_bytes().splitlines():
                for rl in orjson.loads(line)["resourceLogs"]:
                    for sl in rl["scopeLogs"]:
                        out.extend(sl["logRecords"])
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        if self.receiver is not None:
            self.receiver.stop()


OTELCOL_FILELOG = ROOT / "target" / "otelcol" / "otelcol-filelog"


class PeerRun(Run):
    """The OpenTelemetry Collector's filelog receiver on the same files, shipping OTLP/HTTP (zstd)
    to the same kind of loopback receiver: the peer row. It has no syscall counters; its
    "lines" are what the receiver got."""

    def __init__(self, work: Path, paths: str) -> None:
        if not CHECKOUT:
            raise SystemExit("tailrace bench: --modes otelcol needs a source checkout (tests/otelcol builds the peer)")
        subprocess.run([str(ROOT / "tests" / "otelcol" / "build.sh"), "filelog"], check=True)
        self.work = work
        self.err = work / "otelcol.stderr"
        self.out = work / "unused"
        self.receiver = Receiver().start()
        cfg = {
            "receivers": {"filelog": {"include": [paths], "start_at": "beginning", "poll_interval": "200ms"}},
            "exporters": {"otlphttp": {"endpoint": self.receiver.endpoint, "compression": "zstd"}},
            "service": {
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                "pipelines": {"logs": {"receivers": ["filelog"], "exporters": ["otlphttp"]}},
            },
        }
        (work / "otelcol.yaml").write_bytes(orjson.dumps(cfg))  # JSON is YAML
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen([str(OTELCOL_FILELOG), "--config", str(work / "otelcol.yaml")], stderr=err)
        self.dumps = 0
        self.files = len(list((work / "logs").iterdir()))

    def stats(self) -> dict[str, int]:
        n = self.receiver.records() if self.receiver else 0
        return {"lines": n, "records_delivered": n, "files_open": self.files, "steps": 0, "rotations": 0}


def wait_delivered(run: Run, expected: int, deadline: float) -> int:
    """Wait for `expected` records at the receiver (counted there: asking tailrace for its stats
    costs it CPU inside the measured window), or at the output file."""
    while True:
        n = run.receiver.records() if run.receiver is not None else int(run.stats()["records_delivered"])
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def one(args: argparse.Namespace, mode: str, files: int, profiler: bool = False, tree: Path | None = None
        ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=args.work_dir) as w:
        work = Path(w)
        logs = work / "logs"
        logs.mkdir()
        kube = args.workload == "kubernetes"
        names = kube_paths(str(logs), files) if kube else [str(logs / f"w{i:04d}.log") for i in range(files)]
        for name in names:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            Path(name).write_bytes(b"")
        paths = f"{logs}/*.log*" if args.workload == "rotate" else f"{logs}/*/*/*.log" if kube else f"{logs}/*.log"
        peer = mode == "otelcol"
        fmt = "cri" if kube else "plain"
        run = (PeerRun(work, f"{logs}/*.log") if peer
               else Run(work, mode, paths, args.coalesce, args.output, profiler, fmt, tree))
        try:
            # SIGUSR1 kills a process that has not installed its handler yet: wait for it.
            deadline = time.monotonic() + 60
            if peer:
                time.sleep(2.0)  # its first poll finds the (empty) files
            while not peer and "running" not in run.err.read_text():
                if time.monotonic() > deadline or run.proc.poll() is not None:
                    raise RuntimeError(f"tailrace did not start: {run.err.read_text()}")
                time.sleep(0.05)
            while run.stats()["files_open"] < files:
                time.sleep(0.2)
            base = first = run.stats()
            cpu0, t0 = cpu_seconds(run.proc.pid), time.monotonic()
            expected = 0
            if args.workload == "idle":
                time.sleep(args.seconds)
            elif args.workload == "bulk":
                # A backlog at once (what a read from head sees): RATE × SECONDS lines in all,
                # written to each file in one go, then read as fast as each mode can.
                per_file = int(args.rate * args.seconds / files)
                corpus = corpus_lines(args.corpus) if args.corpus else [PADDING]
                for f in range(files):
                    with open(logs / f"w{f:04d}.log", "ab") as fh:
                        fh.write(b"".join(line(time.time_ns(), f, n, corpus[n % len(corpus)])
                                          for n in range(per_file)))
                expected = files * per_file
            else:
                per_file = args.rate / files
                total = args.warmup + args.seconds
                cmd = [*COMMAND, str(logs), str(files), str(per_file), str(total)]
                if args.workload in ("rotate", "kubernetes"):
                    cmd.append(str(args.rotate_kib))
                if kube:
                    cmd.append("kubernetes")
                env = {**os.environ, "APPENDER_CORPUS": args.corpus} if args.corpus else None
                with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as writer:
                    if args.warmup:
                        # The window opens once every file has been written for `warmup` seconds:
                        # the figures are then what a tailrace that has been running pays, without
                        # each file's first writes (its events before it turns steady, its head's
                        # checkpoint records). Every line is still accounted for.
                        assert writer.stdout is not None
                        writer.stdout.readline()  # "started"
                        time.sleep(args.warmup)
                        base = run.stats()
                        cpu0, t0 = cpu_seconds(run.proc.pid), time.monotonic()
                    _, err = writer.communicate()
                    if writer.returncode:
                        raise RuntimeError(f"the appender failed: {err.decode()[-2000:]}")
                expected = int(files * per_file * total)
            deadline = time.monotonic() + args.drain_timeout
            delivered = wait_delivered(run, first["records_delivered"] + expected, deadline)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(run.proc.pid) - cpu0
            end = run.stats()
            rss = peak_rss_mib(run.proc.pid)
        finally:
            run.stop()
        flamegraph, flamegraph_share = None, None
        if profiler:
            svgs = sorted((work / "state" / "profiles").glob("*.svg"))
            if svgs:  # the newest whole profile taken under the workload
                flamegraph = Path(args.results) / f"flamegraph-{args.workload}-{mode}-{files}files.svg"
                flamegraph.parent.mkdir(parents=True, exist_ok=True)
                flamegraph.write_bytes(svgs[-1].read_bytes())
                share = re.search(r"stat-family ([0-9.]+)%", svgs[-1].read_text())
                flamegraph_share = float(share.group(1)) if share else None
        d = {k: end[k] - base[k] for k in end}
        # Per line, or (idle) per second.
        lines = max(d["lines"], 1) if expected else max(wall, 1e-9)
        bodies: collections.Counter[str] = collections.Counter()
        lat: list[float] = []
        for r in run.records():
            b = r["body"]["stringValue"]
            bodies[b] += 1
            head = b.split(" ", 1)[0]
            if head.isdigit():
                lat.append((int(r.get("arrivedUnixNano") or r["observedTimeUnixNano"]) - int(head)) / 1e6)
        written = [b for b in bodies if b.split(" ", 1)[0].isdigit()]
        lat.sort()

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

        return {
            "mode": mode,
            "tree": str(tree) if tree else "installed",
            "profiler": "continuous, 50 Hz, native" if profiler else "off",
            "flamegraph": _shown(flamegraph) if flamegraph else None,
            "stat_family_share_pct": flamegraph_share,
            "coalesce": args.coalesce,
            "corpus": args.corpus,
            "output": args.output,
            "workload": args.workload,
            "files": files,
            "rate": args.rate if args.workload != "idle" else 0,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "expected_lines": expected,
            "lines": d["lines"],
            "delivered": delivered - first["records_delivered"],
            "backlog": max(0, expected - (delivered - first["records_delivered"])),
            # Behind (a backlog at the drain timeout): what is missing may still come, so lost is
            # not known.
            "lost": max(0, expected - len(written)) if expected <= delivered - first["records_delivered"] else None,
            "duplicated": sum(c - 1 for b, c in bodies.items() if c > 1),
            "cpu_s": round(cpu, 6),
            "cpu_us_per_line": round(cpu * 1e6 / lines, 3) if expected else None,
            "cpu_pct_of_core": round(100 * cpu / wall, 2),
            "syscalls_per_line": {
                k[len("syscalls_") :]: round(v / lines, 4) for k, v in d.items() if k.startswith("syscalls_")
            },
            "stat_family_per_line": None if peer else round(d["stat_family"] / lines, 4),
            "latency": "delivery" if args.output == "otlp_http" else "read",
            "latency_ms_p50": q(0.5),
            "latency_ms_p99": q(0.99),
            "peak_rss_mib": round(rss, 1),
            "rotations": d["rotations"],
            "steps_per_second": round(d["steps"] / wall, 1),
            # The event loop's sleeps and wakeups (~0.4 ms of CPU each on a VM); None from a
            # tree that does not count them.
            "wakeups_per_second": round(d["loop_wakeups"] / wall, 1) if "loop_wakeups" in d else None,
            # Every counter tailrace keeps, as its change over the run (gauges: their end value).
            "counters": d,
        }


def table(rows: list[dict[str, Any]]) -> str:
    per = "second" if rows and rows[0]["workload"] == "idle" else "line"
    head = (
        f"| mode | profiler | files | lines | CPU µs/line | % core | stat/{per} | read/{per} | p50 ms | p99 ms "
        "| lost | dup | backlog | RSS MiB | stat share % |"
    )
    out = [head, "|---" * 15 + "|"]
    several = len({r.get("tree") for r in rows}) > 1
    for r in rows:
        s = r["syscalls_per_line"]
        mode = f"{r['mode']} ({Path(r['tree']).name})" if several else r["mode"]
        out.append(
            f"| {mode} | {r['profiler'].split(',')[0]} | {r['files']} |"
            f" {r['lines']} | {r['cpu_us_per_line']} | {r['cpu_pct_of_core']} | "
            f"{r['stat_family_per_line']} | {s.get('read')} | {r['latency_ms_p50']} | {r['latency_ms_p99']} | "
            f"{r['lost']} | {r['duplicated']} | {r['backlog']} | {r['peak_rss_mib']} | {r['stat_family_share_pct']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="tailrace bench watchmodes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workload", choices=["appends", "bulk", "rotate", "idle", "kubernetes"], default="appends")
    ap.add_argument("--modes", default="inotify,auto,poll,naive",
                    help="watch modes, and `otelcol` for the OpenTelemetry Collector's filelog receiver (the peer)")
    ap.add_argument("--files", default="20,200")
    ap.add_argument("--rate", type=float, default=20000, help="total lines per second")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=0,
                    help="appends, rotate, kubernetes: seconds of writes before the measured window opens "
                         "(0: the window holds each file's first writes)")
    ap.add_argument("--rotate-kib", type=int, default=1024)
    ap.add_argument("--coalesce", default="auto", help="the inputs' coalesce setting (auto: the default)")
    ap.add_argument("--output", choices=["otlp_http", "file"], default="otlp_http")
    ap.add_argument("--runs", type=int, default=1, help="runs per cell; the median by CPU is kept")
    ap.add_argument("--drain-timeout", type=float, default=20, help="seconds to wait for a backlog")
    ap.add_argument("--dir", "--work-dir", dest="work_dir", default=None,
                    help="where the workload's files go (a temporary directory inside it): the filesystem judged")
    ap.add_argument("--quick", action="store_true",
                    help="a short appends run in auto, inotify and poll under --dir, then a recommendation")
    ap.add_argument("--profiler", choices=["off", "on", "both"], default="off",
                    help="tailrace's own profiler sampling continuously (on), or side by side with off (both); "
                    "keeps each cell's flamegraph beside the results")
    ap.add_argument("--results", default=str(RESULTS), help="directory for the raw JSON (and plots, flamegraphs)")
    ap.add_argument("--corpus", default=None,
                    help="a directory of log files whose lines the writers replay (real content instead of padding)")
    ap.add_argument("--tree", action="append", default=[],
                    help="run tailrace from this checkout (its collector and build; repeat to compare versions "
                    "side by side, runs interleaved); default: this one")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.quick:  # a short appends run of the three modes a user chooses between
        args.workload, args.modes, args.files, args.rate, args.seconds = "appends", "auto,inotify,poll", "200", 10000, 5
        args.runs, args.output, args.profiler = 1, "otlp_http", "off"
    results = Path(args.results)
    rows = []
    profs = {"off": [False], "on": [True], "both": [False, True]}[args.profiler]
    cells = [(m, int(f), p, t) for f in args.files.split(",") for m in args.modes.split(",") for p in profs
             for t in trees(args.tree)]
    # Runs interleaved (run 1 of every cell, then run 2, ...): a noisy spell hits every cell.
    by_cell: list[list[dict[str, Any]]] = [[] for _ in cells]
    for k in range(args.runs):
        for i, (mode, files, prof, tree) in enumerate(cells):
            print(
                f"[{i + 1}/{len(cells)}] {args.workload} {mode} {files} files{', profiler on' if prof else ''}"
                f"{f' [{tree}]' if args.tree else ''}, run {k + 1}", file=sys.stderr, flush=True
            )
            by_cell[i].append(one(args, mode, files, prof, tree))
            r = by_cell[i][-1]
            print(
                f"    {r['lines']} lines, {r['cpu_us_per_line']} µs/line, {r['cpu_pct_of_core']}% core, "
                f"p99 {r['latency_ms_p99']} ms, {r['steps_per_second']} steps/s, {r['wakeups_per_second']} wakeups/s, "
                f"lost {r['lost']}, dup {r['duplicated']}, backlog {r['backlog']}",
                file=sys.stderr,
                flush=True,
            )
    for runs in by_cell:
        runs.sort(key=lambda r: r["cpu_s"])
        med = runs[len(runs) // 2]
        med["all_runs_cpu_s"] = [r["cpu_s"] for r in runs]
        med["all_runs_us_per_line"] = [r["cpu_us_per_line"] for r in runs]
        rows.append(med)
    when = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    result = {
        "benchmark": "watch modes",
        "command": "python -m bench.watchmodes " + " ".join(argv),
        "when": when,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
        "median_note": "per cell, the run with the median CPU of --runs runs",
    }
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"watchmodes-{args.workload}-{when}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(table(rows))
    if args.quick:
        print("\n" + recommend(rows, Path(args.work_dir or tempfile.gettempdir())))
    print(f"\nraw: {_shown(out)}")
    for png in plots(rows, out.with_suffix("")):
        print(f"plot: {_shown(png)}")


def filesystem_of(directory: Path) -> tuple[str, str | None]:
    """(the filesystem type under `directory`, the name `auto` polls it by or None)."""
    from collector import _native
    from collector.observe.doctor import mount_of

    with tempfile.NamedTemporaryFile(dir=directory, suffix=".log") as probe:
        polled = _native.survey([probe.name], [], [])["polled"].get(probe.name)
        fstype = mount_of(os.path.realpath(probe.name), Path("/proc/self/mountinfo").read_text())[1]
    return fstype, polled


def recommend(rows: list[dict[str, Any]], directory: Path) -> str:
    """The watch mode to use for files under `directory`, with the figures of a quick run."""
    fstype, polled = filesystem_of(directory)
    by = {r["mode"]: r for r in rows}
    sound = {m for m, r in by.items() if r["lost"] == 0 and r["duplicated"] == 0 and r["backlog"] == 0}

    def fig(m: str) -> str:
        r = by[m]
        return (f"{m}: {r['cpu_us_per_line']} µs of CPU per line, p99 delivery {r['latency_ms_p99']} ms, "
                f"lost {r['lost']}, duplicated {r['duplicated']}")

    lines = [f"Filesystem under {directory}: {fstype}.",
             *(f"  {fig(m)}" for m in ("auto", "inotify", "poll") if m in by)]
    if polled:
        pick = "auto" if "auto" in sound else "poll"
        why = (f"{fstype} is a filesystem whose changes made elsewhere (other hosts, a userspace server) raise "
               f"no inotify event, so `inotify` would miss lines there even though this local test saw them; "
               f"`auto` polls files on {polled} (every poll_interval) and watches the rest by inotify")
    elif "auto" in sound:
        pick = "auto"
        poll = by.get("poll")
        ratio = (f"; poll costs {poll['cpu_us_per_line'] / by['auto']['cpu_us_per_line']:.1f}x its CPU per line "
                 f"with a p99 of {poll['latency_ms_p99']} ms against {by['auto']['latency_ms_p99']}"
                 if poll and by["auto"]["cpu_us_per_line"] else "")
        why = f"inotify events are trusted on {fstype}: `auto` reads on them (no polling){ratio}"
    elif "poll" in sound:
        pick, why = "poll", "the inotify modes lost or repeated lines here, polling did not"
    else:
        return "\n".join([*lines, "No mode delivered every line exactly once here: see the table above."])
    return "\n".join([*lines, f"Recommendation: watch: {pick} ({why})."])


def _shown(p: Path) -> str:
    """A path relative to the repository when it is inside it."""
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def plots(rows: list[dict[str, Any]], stem: Path) -> list[Path]:
    """PNG plots beside the JSON: CPU µs per line against file count (one line per mode), and
    delivery latency p50/p99 by mode. Needs matplotlib (`pip install matplotlib`; not a test or
    runtime dependency); without it, says so and writes none."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("(no plots: pip install matplotlib)", file=sys.stderr)
        return []
    rows = [r for r in rows if r["cpu_us_per_line"] is not None and r.get("profiler", "off") == "off"]
    if not rows:
        return []
    out = []
    modes = sorted({r["mode"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in modes:
        pts = sorted((r["files"], r["cpu_us_per_line"]) for r in rows if r["mode"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("files")
    ax.set_ylabel("CPU µs per line")
    ax.set_title(f"{rows[0]['workload']}: CPU per line ({rows[0]['rate']:.0f} lines/s in total)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.append(stem.with_name(stem.name + "-cpu.png"))
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [f"{r['mode']}\n{r['files']} files" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["latency_ms_p50"] or 0 for r in rows], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [r["latency_ms_p99"] or 0 for r in rows], width=0.4, label="p99")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("write → " + ("arrival at the receiver" if rows[0].get("latency") == "delivery" else "read") + ", ms")
    ax.set_title(f"{rows[0]['workload']}: latency by mode")
    ax.legend()
    fig.tight_layout()
    out.append(stem.with_name(stem.name + "-latency.png"))
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    main()
