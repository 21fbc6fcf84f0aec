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
    _level = _LEVELS[level]


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
    if _json:
        rec = {"ts": time.time(), "level": level, "msg": msg, **fields}
        sys.stderr.buffer.write(orjson.dumps(rec, default=str) + b"\n")
        sys.stderr.flush()
    else:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"tailrace {level}: {msg}{' ' + extra if extra else ''}", file=sys.stderr, flush=True)


def info(msg: str, **fields: Any) -> None:
    log("info", msg, **fields)


def warning(msg: str, **fields: Any) -> None:
    log("warning", msg, **fields)


def error(msg: str, **fields: Any) -> None:
    log("error", msg, **fields)
