"""Demo traffic for the README's first command: a few applications writing lines into the
embedded default's `./var/log/*.log`, one rotated by rename now and then, so a newcomer sees
lines flow, rotations handled, and the output file grow."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

APPS = ("web", "worker", "cron")


def prepare(directory: Path) -> None:
    """Create the demo files before tailrace's first look, so it finds them at once."""
    directory.mkdir(parents=True, exist_ok=True)
    for app in APPS:
        (directory / f"{app}.log").touch()


async def write_traffic(directory: Path, *, lines_per_second: float = 50.0, rotate_every: int = 2000) -> None:
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start
    seq = 0
    # Small unbuffered appends at demo rates: not worth a worker thread each.
    files = {app: open(directory / f"{app}.log", "ab", buffering=0) for app in APPS}  # noqa: ASYNC230, SIM115
    try:
        while True:
            app = APPS[seq % len(APPS)]
            line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {app} demo line {seq} level=info\n"
            files[app].write(line.encode())
            seq += 1
            if seq % rotate_every == 0:
                # Rotate by rename, as logrotate does; tailrace drains the old file.
                path = directory / f"{app}.log"
                files[app].close()
                os.replace(path, directory / f"{app}.log.1")
                files[app] = open(path, "ab", buffering=0)  # noqa: ASYNC230, SIM115
            await trio.sleep(1.0 / lines_per_second)
    finally:
        for f in files.values():
            f.close()
