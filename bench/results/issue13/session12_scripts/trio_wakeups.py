"""CPU per wakeup of a loop that sleeps PERIOD seconds N times (session 12): a bare
`epoll_wait` with a timeout, `time.sleep`, and trio woken three ways — by a deadline
(`trio.sleep`), by a deadline around a wait that never ends (`move_on_after` over
`wait_readable`, tailrace's tail loop without inotify news), and by a readable timerfd
(`wait_readable`, no deadline). µs of this process's CPU clock per wakeup, each twice.

    python bench/results/issue13/session12-scripts/trio_wakeups.py 0.2 25
"""
import ctypes
import json
import os
import select
import sys
import time
from collections.abc import Callable

import trio

PERIOD, N = float(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)


class Ts(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]  # noqa: RUF012


class Its(ctypes.Structure):
    _fields_ = [("interval", Ts), ("value", Ts)]


def per_wakeup(f: Callable[[], object]) -> float:
    t0 = time.process_time()
    f()
    return round((time.process_time() - t0) / N * 1e6, 1)


def bare_epoll() -> None:
    ep = select.epoll()
    for _ in range(N):
        ep.poll(PERIOD)


def plain_sleep() -> None:
    for _ in range(N):
        time.sleep(PERIOD)


async def by_deadline() -> None:
    for _ in range(N):
        await trio.sleep(PERIOD)


async def by_deadline_around_a_wait() -> None:
    r, _w = os.pipe()
    for _ in range(N):
        with trio.move_on_after(PERIOD):
            await trio.lowlevel.wait_readable(r)


async def by_timerfd() -> None:
    fd = libc.timerfd_create(1, os.O_NONBLOCK)  # CLOCK_MONOTONIC
    s, ns = int(PERIOD), int((PERIOD - int(PERIOD)) * 1e9)
    assert libc.timerfd_settime(fd, 0, ctypes.byref(Its(Ts(s, ns), Ts(s, ns))), None) == 0
    for _ in range(N):
        await trio.lowlevel.wait_readable(fd)
        os.read(fd, 8)


out: dict[str, list[float]] = {}
for _ in range(2):
    for name, f in [("epoll_wait", bare_epoll), ("time.sleep", plain_sleep),
                    ("trio deadline (trio.sleep)", lambda: trio.run(by_deadline)),
                    ("trio deadline around wait_readable", lambda: trio.run(by_deadline_around_a_wait)),
                    ("trio timerfd wait_readable", lambda: trio.run(by_timerfd))]:
        out.setdefault(name, []).append(per_wakeup(f))
print(json.dumps({"period_s": PERIOD, "wakeups": N, "us_per_wakeup": out}, indent=1))
