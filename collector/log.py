"""tailrace's own logs: one line per event on stderr, text or JSON lines (orjson), with
repeating warnings rate-limited. Secrets never reach here: callers pass names, not values."""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson

_json = False
_level = 20
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_last: dict[str, float] = {}


def configure(level: str = "info", json: bool = False) -> None:
    global _json, _level
    _json = json
    _level = _LEVELS["warning" if level == "warn" else level]


def log(level: str, msg: str, *, every: float = 0.0, key: str | None = None, **fields: Any) -> None:
    """Log `msg`; with `every`, at most once per `every` seconds per `key` (default: msg)."""
    if _LEVELS[level] < _level:
        return
    if every:
        k = key or msg
        now = time.monotonic()
        if now - _last.get(k, -1e18) < every:
            return
        _last[k] = now
    ts = _rfc3339(time.time())
    if _json:
        rec = {"time": ts, "level": level, "msg": msg, **fields}
        sys.stderr.buffer.write(orjson.dumps(rec, default=str) + b"\n")
        sys.stderr.flush()
    else:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"{ts} tailrace {level}: {msg}{' ' + extra if extra else ''}", file=sys.stderr, flush=True)


def _rfc3339(t: float) -> str:
    """UTC, milliseconds: `2026-12-02T05:33:01.123Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def enabled(level: str) -> bool:
    return _LEVELS[level] >= _level


def debug(msg: str, **fields: Any) -> None:
    log("debug", msg, **fields)


def info(msg: str, **fields: Any) -> None:
    log("info", msg, **fields)


def warning(msg: str, **fields: Any) -> None:
    log("warning", msg, **fields)


def error(msg: str, **fields: Any) -> None:
    log("error", msg, **fields)
