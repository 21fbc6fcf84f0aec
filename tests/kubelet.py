"""A node's container logs, written the way the runtime and the kubelet write them, for tests and
benchmarks: `/var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log` under any root.

- CRI (containerd, CRI-O): `<RFC3339Nano> <stdout|stderr> <P|F> <message>`; a message longer
  than 16 KiB is written as 16 KiB `P` pieces and an `F`, and the other stream's lines may come
  between them, as containerd writes them.
- docker json-file: `{"log":"…\\n","stream":…,"time":…}` in `<root>/<id>/<id>-json.log`; a long
  `log` is split into 16 KiB pieces without their newline; rotation renames `-json.log` → `.1` →
  `.2`.
- The kubelet's rotation: `0.log` renamed to `0.log.<YYYYmmdd-HHMMSS>`, the runtime reopens
  `0.log`; rotated files older than the newest are gzip-compressed (`.gz.tmp`, renamed to
  `.gz`, the original unlinked); the oldest deleted beyond `keep` files.

Every message is unique (`<container key> <seq> …`), so a receiver can account for each one:
delivered once, lost, or duplicated."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from collector.harness.appender import PIECE, kubelet_rotate


def split(data: bytes, whole_chars: bool) -> list[bytes]:
    """16 KiB pieces: at any byte (containerd), or at character boundaries (docker's JSON
    strings hold characters)."""
    pieces = []
    while len(data) > PIECE:
        cut = PIECE
        while whole_chars and data[cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(data[:cut])
        data = data[cut:]
    return [*pieces, data]


def rfc3339(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


@dataclass
class Message:
    """What a receiver must get: the body, the stream, the runtime's time (of the first piece)."""

    body: str
    stream: str
    time_ns: int
    container: Container


@dataclass
class Container:
    namespace: str
    pod: str
    uid: str
    name: str
    restart: int
    directory: Path
    fmt: str  # cri | docker
    seq: int = 0
    rotations: int = 0
    written: int = 0
    f: object | None = None
    # The kubelet's rotated files, oldest first.
    rotated_names: list[str] = field(default_factory=list)

    @property
    def rotated(self) -> list[Path]:
        return [Path(n) for n in self.rotated_names]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.name}"

    @property
    def path(self) -> Path:
        if self.fmt == "docker":
            return self.directory / f"{self.uid}-json.log"
        return self.directory / f"{self.restart}.log"


class Node:
    """`namespaces × pods × containers` containers under `root`, written by `write`."""

    def __init__(self, root: Path, namespaces: int, pods: int, containers: int, fmt: str = "cri",
                 rotate_bytes: int = 256 * 1024, keep: int = 4, seed: int = 1) -> None:
        self.root = root
        self.fmt = fmt
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.rng = random.Random(seed)
        self.messages: list[Message] = []
        self.containers: list[Container] = []
        self.clock_ns = 1_796_119_200_000_000_000
        # Message bodies are slices of this (quotes, backslashes, tabs, multi-byte characters:
        # what JSON escaping and byte-exact merging must keep).
        self.pool = "".join(self.rng.choice("abcdefghij \t\"\\é€") for _ in range(1 << 16))
        for n in range(namespaces):
            for p in range(pods):
                uid = f"{n:08x}-{p:04x}-4000-8000-{self.rng.getrandbits(48):012x}"
                for c in range(containers):
                    if fmt == "docker":
                        cid = f"{self.rng.getrandbits(256):064x}"
                        d = root / cid
                        ct = Container(f"ns{n}", f"pod-{p}", cid, f"c{c}", 0, d, fmt)
                    else:
                        d = root / f"ns{n}_pod-{p}_{uid}" / f"c{c}"
                        ct = Container(f"ns{n}", f"pod-{p}", uid, f"c{c}", self.rng.randrange(3), d, fmt)
                    d.mkdir(parents=True, exist_ok=True)
                    ct.f = open(ct.path, "ab", buffering=0)  # noqa: SIM115 (held for the run)
                    self.containers.append(ct)

    def tick_ns(self) -> int:
        self.clock_ns += self.rng.randrange(1, 5000)
        return self.clock_ns

    def write(self, n: int, long_every: int = 50) -> None:
        """`n` messages, each to a random container and stream; every `long_every`-th is over
        16 KiB (pieces); the other stream's line sometimes comes between two pieces."""
        for _ in range(n):
            ct = self.rng.choice(self.containers)
            stream = self.rng.choice(("stdout", "stderr"))
            ct.seq += 1
            size = self.rng.randrange(2 * PIECE, 3 * PIECE) if ct.seq % long_every == 0 else self.rng.randrange(10, 300)
            head = f"{ct.key} {ct.seq} {stream} "
            n = max(0, size - len(head))
            at = self.rng.randrange(len(self.pool) - min(n, len(self.pool) - 1))
            body = head + (self.pool * (1 + n // len(self.pool)))[at:at + n]
            t0 = self.tick_ns()
            self.messages.append(Message(body, stream, t0, ct))
            pieces = split(body.encode(), whole_chars=ct.fmt == "docker")
            out = bytearray()
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                out += self._line(ct, stream, t0 if i == 0 else self.tick_ns(), piece, last)
                if not last and self.rng.random() < 0.3:
                    # The other stream writes between two pieces.
                    other = "stderr" if stream == "stdout" else "stdout"
                    ct.seq += 1
                    short = f"{ct.key} {ct.seq} {other} interleaved"
                    ts = self.tick_ns()
                    self.messages.append(Message(short, other, ts, ct))
                    out += self._line(ct, other, ts, short.encode(), True)
            self._append(ct, bytes(out))

    def _line(self, ct: Container, stream: str, ns: int, piece: bytes, last: bool) -> bytes:
        if ct.fmt == "docker":
            log = piece.decode() + ("\n" if last else "")
            return json.dumps({"log": log, "stream": stream, "time": rfc3339(ns)}).encode() + b"\n"
        return f"{rfc3339(ns)} {stream} {'F' if last else 'P'} ".encode() + piece + b"\n"

    def _append(self, ct: Container, data: bytes) -> None:
        assert ct.f is not None
        ct.f.write(data)  # type: ignore[attr-defined]
        ct.written += len(data)
        if ct.written >= self.rotate_bytes:
            self.rotate(ct)

    def rotate(self, ct: Container) -> None:
        ct.f.close()  # type: ignore[attr-defined]
        ct.rotations += 1
        if ct.fmt == "docker":
            # json-file: -json.log.(k) → .(k+1), the current → .1, the oldest deleted.
            base = ct.path
            oldest = Path(f"{base}.{self.keep}")
            if oldest.exists():
                oldest.unlink()
            for k in range(self.keep - 1, 0, -1):
                p = Path(f"{base}.{k}")
                if p.exists():
                    p.rename(f"{base}.{k + 1}")
            base.rename(f"{base}.1")
        else:
            kubelet_rotate(str(ct.path), ct.rotations, ct.rotated_names, self.keep)
        ct.f = open(ct.path, "ab", buffering=0)  # noqa: SIM115
        ct.written = 0

    def close(self) -> None:
        for ct in self.containers:
            if ct.f is not None:
                ct.f.close()  # type: ignore[attr-defined]
