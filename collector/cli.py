"""The `tailrace` command: run, demo, check-config, doctor, profile, top, bench, completion,
--version. Exit codes: 0 done (also after SIGINT/SIGTERM), 2 configuration error, 64 usage error
(a command line it does not understand), 1 anything else (a state_dir in use, a corrupt
checkpoint file: named; `doctor`: something on the node to change)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import typing
from pathlib import Path
from typing import Any

import trio

from collector import __version__, log
from collector._native import CorruptState
from collector.flow import config
from collector.flow.pipeline import Pipeline, StateDirInUse, progress, state_dir_holder

# Where `run` (and `check-config`) look for a configuration when none is given.
SYSTEM_CONFIG = "/etc/tailrace/tailrace.yaml"

# `--log-level` / `--log-format`: over the file's `log`, at start and at every reload.
_log_flags: dict[str, str] = {}


def _load(path: str | None) -> config.Config:
    source = path or str(config.DEFAULT_CONFIG)
    cfg = config.load(source)
    if "level" in _log_flags:
        cfg.log.level = "warning" if _log_flags["level"] == "warn" else _log_flags["level"]  # type: ignore[assignment]
    if "format" in _log_flags:
        cfg.log.format = _log_flags["format"]  # type: ignore[assignment]
    problems = config.check(cfg)
    if problems:
        raise config.ConfigError("\n".join(config.located(str(source), problems)))
    return cfg


async def _serve(cfg: config.Config, demo: bool, source: str | None = None) -> None:
    """Run until SIGINT/SIGTERM. SIGHUP reloads `source`: a configuration that does not load is
    logged (every error) and the running one goes on; one that loads replaces it after a clean
    stop of the running pipeline (its outputs deliver or spool what they hold, checkpoints are
    written), then a new pipeline starts on the same state: inputs kept resume from their
    checkpoints (nothing read twice), inputs added start, outputs are the new ones."""
    reloads = {"ok": 0, "invalid": 0}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP) as signals:
        next_cfg: config.Config | None = cfg
        while next_cfg is not None:
            next_cfg = await _run(next_cfg, demo, source, signals, reloads)
            demo = False  # the demo's traffic is started once


async def _reload(source: str | None, reloads: dict[str, int]) -> config.Config | None:
    """The configuration at `source`, validated as `run` would (None, logged, when it is not)."""
    try:
        new = await trio.to_thread.run_sync(_load, source)
    except config.ConfigError as e:
        reloads["invalid"] += 1
        for line in str(e).splitlines():
            log.error(f"SIGHUP: configuration not reloaded, the running one goes on: {line}")
        return None
    reloads["ok"] += 1
    return new


async def _run(
    cfg: config.Config, demo: bool, source: str | None, signals: Any, reloads: dict[str, int]
) -> config.Config | None:
    """One pipeline on `cfg`, until stopped (None) or replaced by a reload (the new config)."""
    log.configure(cfg.log.level, cfg.log.format == "json")
    if demo:
        from collector.demo import prepare

        prepare(Path(cfg.inputs[0].paths[0]).parent)
    pipeline = Pipeline(cfg)
    profiler = None
    if cfg.profiler.enabled:
        from collector.observe.profiler import Profiler

        pc = cfg.profiler
        profiler = Profiler(Path(cfg.state_dir) / "profiles", every=pc.every, duration=pc.duration,
                            rate=pc.rate, threshold=pc.threshold, syscall_threshold=pc.syscall_threshold,
                            min_samples=pc.min_samples, keep=pc.keep)
    from collector.observe.telemetry import Telemetry

    telemetry = Telemetry(pipeline, profiler, reloads)
    for out in pipeline.outputs:
        out.observe = telemetry.observe_export
    replaced: list[config.Config] = []
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            async for sig in signals:
                if sig == signal.SIGUSR1:
                    # Dump every counter (syscalls by kind included) on request.
                    log.info("stats", **pipeline.stats())
                    continue
                if sig == signal.SIGHUP:
                    if pipeline.stopping:
                        continue
                    new = await _reload(source, reloads)
                    if new is not None:
                        log.info("SIGHUP: configuration reloaded; restarting the pipeline on it",
                                 inputs=len(new.inputs), outputs=len(new.outputs))
                        _notify("RELOADING=1")
                        replaced.append(new)
                        pipeline.request_stop()
                    continue
                if pipeline.stopping and not replaced:
                    log.warning("second signal: stopping now")
                    nursery.cancel_scope.cancel()
                    return
                replaced.clear()  # a stop asked for during a reload wins
                log.info(f"{signal.Signals(sig).name}: stopping; flushing and committing")
                _notify("STOPPING=1")
                pipeline.request_stop()

        nursery.start_soon(on_signal)
        await nursery.start(pipeline.run)
        tc = cfg.telemetry
        if tc.otlp_endpoint:
            nursery.start_soon(telemetry.push, tc.otlp_endpoint, tc.interval, tc.headers, tc.tls)
        if cfg.admin.enabled:
            from collector.observe.admin import Admin

            await nursery.start(Admin(pipeline, telemetry, profiler).serve, cfg.admin.address)
        if profiler is not None:
            nursery.start_soon(profiler.run)
        if cfg.progress_interval:
            nursery.start_soon(progress, pipeline, cfg.progress_interval)
        if demo:
            from collector.demo import write_traffic

            directory = Path(cfg.inputs[0].paths[0]).parent
            nursery.start_soon(write_traffic, directory)
            log.info(f"demo: writing lines into {directory}/; Ctrl-C to stop")
        outs = ", ".join(o.name for o in pipeline.outputs)
        log.info(f"tailrace {__version__} running", inputs=len(pipeline.tailers), outputs=outs)

        async def ready() -> None:
            await pipeline.looked.wait()
            _notify("READY=1\nSTATUS=tailing")

        nursery.start_soon(ready)
        await pipeline.finished()
        s = pipeline.stats()
        log.info(
            "stopped for the reload" if replaced else "stopped",
            **{
                k: v
                for k, v in s.items()
                if k in ("lines", "records_delivered", "rotations", "truncations", "deletions", "open_errors")
                or "." in k  # per-output counters: delivered, retries, dropped, spooled, ...
            },
        )
        nursery.cancel_scope.cancel()
    return replaced[-1] if replaced else None


def _bench(harness: str, argv: list[str]) -> int:
    """The harnesses ship in the package (`collector.harness`): they run from a wheel too."""
    import importlib

    importlib.import_module(f"collector.harness.{harness}").main(argv)
    return 0


def _completion(shell: str, sub: Any) -> str:
    """Completion of commands, their options, and files after -c/--config, from the parser
    itself (so it cannot drift); zsh through its bash compatibility."""
    cases = []
    for name, parser in sub.choices.items():
        opts = sorted({o for a in parser._actions for o in a.option_strings})
        choices = [c for a in parser._actions if not a.option_strings and a.choices for c in a.choices]
        cases.append(f'    {name}) opts="{" ".join(opts + choices)}";;')
    script = "\n".join([
        "# tailrace completion (tailrace completion bash|zsh)",
        "_tailrace() {",
        '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" opts',
        "  if [[ $COMP_CWORD -eq 1 ]]; then",
        f'    COMPREPLY=( $(compgen -W "{" ".join(sub.choices)} --help --version" -- "$cur") ); return',
        "  fi",
        '  case "$prev" in -c|--config|--out) COMPREPLY=( $(compgen -f -- "$cur") ); return;; esac',
        '  case "${COMP_WORDS[1]}" in',
        *cases,
        '    *) opts="";;',
        "  esac",
        '  COMPREPLY=( $(compgen -W "$opts" -- "$cur") )',
        "}",
        "complete -o default -F _tailrace tailrace",
    ])
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def _notify(state: str) -> None:
    """Tell systemd (`Type=notify`, `$NOTIFY_SOCKET`) how the service is; nothing without it."""
    import socket

    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError as e:
        log.log("warning", f"cannot notify systemd at {addr!r}: {e}", every=60.0)


EXIT_USAGE = 64  # a command line tailrace does not understand (EX_USAGE); 2 is for configurations


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: usage error: {message}\n")


class _PrintVersion(argparse.Action):
    """`--version` on one line, as printed (argparse's own action wraps it)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(_version())
        parser.exit()


def _version() -> str:
    from collector._native import BUILD_COMMIT, BUILD_RUSTC, CORE_VERSION

    return f"tailrace {__version__} (core {CORE_VERSION}, commit {BUILD_COMMIT}, {BUILD_RUSTC})"


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="tailrace", description="Tail log files, ship OpenTelemetry logs.")
    ap.add_argument("--version", action=_PrintVersion, nargs=0, help="the version, its commit and toolchain")
    sub = ap.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser("run", help="tail and ship until SIGINT/SIGTERM (SIGHUP reloads the file)",
                         formatter_class=fmt,
                         epilog="example:\n  tailrace run -c /etc/tailrace/tailrace.yaml --log-level debug\n"
                                "  kill -HUP $(pidof tailrace)   # reload after editing the file")
    run.add_argument("-c", "--config", help=f"YAML file (default: $TAILRACE_CONFIG, else {SYSTEM_CONFIG})")
    for p in (run,):
        p.add_argument("--log-level", choices=["debug", "info", "warn", "warning", "error"],
                       help="tailrace's own logs (over the file's log.level)")
        p.add_argument("--log-format", choices=["text", "json"], help="tailrace's own logs (over log.format)")
    demo = sub.add_parser("demo", help="run the embedded default with generated demo traffic", formatter_class=fmt,
                          epilog="example:\n  tailrace demo   # writes ./var/log, ships to ./out/logs.jsonl; Ctrl-C")
    demo.add_argument("--config", help=argparse.SUPPRESS)
    chk = sub.add_parser("check-config", help="validate a configuration and exit", formatter_class=fmt,
                         epilog="example:\n  tailrace check-config /etc/tailrace/tailrace.yaml "
                                "&& systemctl reload tailrace")
    chk.add_argument("file", nargs="?", help="YAML file (or -c FILE; default as for run)")
    chk.add_argument("-c", "--config", dest="config_opt", help=argparse.SUPPRESS)
    doc = sub.add_parser("doctor", help="check this node for a configuration: limits, filesystems, permissions",
                         formatter_class=fmt,
                         description="Checks what the configuration needs against this node: inotify watches and "
                         "instances, open files, the filesystem under each input (what auto polls), unreadable "
                         "files, the profiler's ptrace needs, state_dir's space and filesystem, the admin "
                         "address. Exit 0: nothing to change; 1: the list of what to change; 2: the "
                         "configuration is invalid.",
                         epilog="example:\n  tailrace doctor -c /etc/tailrace/tailrace.yaml\n"
                                "  tailrace doctor -c tailrace.yaml --json --proc-root /host/proc   # in a container")
    doc.add_argument("-c", "--config", help=f"YAML file (default: $TAILRACE_CONFIG, else {SYSTEM_CONFIG})")
    doc.add_argument("--json", action="store_true", help="one JSON document (ok, checks[]) on stdout")
    doc.add_argument("--proc-root", default="/proc", help="read kernel limits and other processes from here "
                     "(default /proc; the host's when mounted into a container)")
    prof = sub.add_parser("profile", help="a py-spy flamegraph of a running tailrace (or one started here)",
                          formatter_class=fmt,
                          epilog="example:\n  tailrace profile --pid $(pidof tailrace) --duration 30")
    who = prof.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="profile this running process")
    who.add_argument("-c", "--config", help="start tailrace on this configuration and profile it")
    prof.add_argument("--duration", type=float, default=10.0, help="seconds of sampling (default 10)")
    prof.add_argument("--rate", type=int, default=100, help="samples per second (default 100)")
    prof.add_argument("--out", default="profiles", help="directory for the SVG and speedscope JSON")
    top = sub.add_parser("top", help="a live view of a running tailrace, through its admin endpoint",
                         formatter_class=fmt, epilog="example:\n  tailrace top --url http://127.0.0.1:2020")
    top.add_argument("--url", default="http://127.0.0.1:2020", help="its admin endpoint")
    top.add_argument("--interval", type=float, default=1.0)
    top.add_argument("--once", action="store_true", help="print one view (two samples `interval` apart) and exit")
    bench = sub.add_parser(
        "bench",
        help="the benchmark harnesses: watchmodes or throughput",
        description="Runs the watch-mode harness (watch modes side by side; --quick --dir DIR recommends one "
        "for DIR's filesystem; the OpenTelemetry Collector's filelog receiver with --modes ...,otelcol from a "
        "checkout) or the bulk-read throughput harness (--corpus DIR replays your logs). "
        "`tailrace bench watchmodes --help` lists the workloads and options.",
        formatter_class=fmt,
        epilog="example:\n  tailrace bench watchmodes --quick --dir /var/log/bench\n"
               "  tailrace bench watchmodes --workload appends --files 200 --modes inotify,poll",
    )
    bench.add_argument("harness", choices=["watchmodes", "throughput"])
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the harness")
    comp = sub.add_parser("completion", help="a shell completion script: bash or zsh", formatter_class=fmt,
                          epilog="example:\n  tailrace completion bash > /etc/bash_completion.d/tailrace")
    comp.add_argument("shell", choices=["bash", "zsh"])
    args = ap.parse_args(argv)
    if args.command == "completion":
        print(_completion(args.shell, sub))
        return 0
    if args.command == "bench":
        return _bench(args.harness, args.args)
    if args.command == "profile":
        from collector.observe.profile_cmd import main as profile_main

        return profile_main(args)
    if args.command == "top":
        from collector.observe.top import main as top_main

        return top_main(args.url, args.interval, args.once)

    for key in ("level", "format"):
        if getattr(args, f"log_{key}", None):
            _log_flags[key] = getattr(args, f"log_{key}")
    if args.command == "demo":
        source: str | None = args.config or str(config.DEFAULT_CONFIG)  # the embedded default
    else:
        given = (args.file or args.config_opt) if args.command == "check-config" else args.config
        source = given or os.environ.get("TAILRACE_CONFIG") or None
        if source is None and os.path.exists(SYSTEM_CONFIG):
            source = SYSTEM_CONFIG
        if source is None:
            print(f"tailrace: configuration error: no configuration: none given (-c FILE), $TAILRACE_CONFIG is not "
                  f"set, and {SYSTEM_CONFIG} does not exist ({sys.argv[0]} demo runs the embedded example)",
                  file=sys.stderr)
            return 2
    try:
        cfg = _load(source)
    except config.ConfigError as e:
        for line in str(e).splitlines():  # every error found, each on its own line
            print(f"tailrace: configuration error: {line}", file=sys.stderr)
        return 2
    log.configure(cfg.log.level, cfg.log.format == "json")  # its warnings in its own format
    for w in config.warnings(cfg):
        log.warning(w)
    if args.command == "doctor":
        from collector.observe.doctor import main as doctor_main

        return doctor_main(str(source), cfg, args.json, Path(args.proc_root))
    if args.command == "check-config":
        holder = state_dir_holder(cfg.state_dir)
        if holder:
            print(f"{source}: note: {cfg.state_dir} is held by a running tailrace ({holder}); `run` on this "
                  "configuration waits for nothing: it exits 1 while that one runs")
        print(f"{source}: ok ({len(cfg.inputs)} inputs, {len(cfg.outputs)} outputs)")
        return 0
    log.configure(cfg.log.level, cfg.log.format == "json")
    try:
        trio.run(_serve, cfg, args.command == "demo", source)
    except Exception as e:  # noqa: BLE001 (sorted by kind below; anything else is re-raised)
        leaf = _leaf(e)
        if isinstance(leaf, ValueError):  # the core refuses a setting (ConfigError: a bad glob, ...)
            print(f"tailrace: configuration error: {leaf}", file=sys.stderr)
            return 2
        if isinstance(leaf, CorruptState):
            print(f"tailrace: corrupt state, not guessing (move the file aside to start over): {leaf}", file=sys.stderr)
            return 1
        if isinstance(leaf, StateDirInUse):
            print(f"tailrace: {leaf}", file=sys.stderr)
            return 1
        if isinstance(leaf, OSError):  # an output's file, a TLS file, a directory: the configuration's
            print(f"tailrace: configuration error: cannot start: {leaf}", file=sys.stderr)
            return 2
        raise
    return 0


def _leaf(e: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups (trio's nurseries wrap them)."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


if __name__ == "__main__":
    sys.exit(main())
