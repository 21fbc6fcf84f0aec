"""A workload writer for tests and benchmarks: N files, one `write(2)` per line, at a steady
total rate; each line starts with its write time (ns) so latency can be measured. With
ROTATE_KIB, each file is rotated by rename (`wNNNN.log` → `wNNNN.log.<k>`) every ROTATE_KIB.
Prints `started` when its files exist and `done <lines>` at the end. With APPENDER_CORPUS=DIR
in the environment, each line's text after its time and position is the next line of the
files under DIR (real content), not padding.

    python -m collector.harness.appender DIR FILES LINES_PER_FILE_PER_SECOND SECONDS [ROTATE_KIB [kubernetes]]

`kubernetes`: the files are containers of a node (`kube_paths`: 3 namespaces × pods × 2
containers, the kubelet's layout), each line a CRI line (`<time> stdout F <message>`), every
1000th message over 16 KiB written as 16 KiB `P` pieces and an `F`; rotation is the
kubelet's: `0.log` → `0.log.<YYYYmmdd-HHMMSS>`, older rotated files gzip-compressed (`.gz.tmp`,
then `.gz`, the original unlinked), at most 4 files per container."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

PIECE = 16 * 1024
# A line's text after its time and position when no corpus is given.
PADDING = b"p" * 160


def line(ns: int, file: int, n: int, body: bytes = PADDING) -> bytes:
    """The workload's line: its write time (ns, read back for latency), file and line numbers,
    then `body` (203 bytes with the padding). The benchmarks' floors read lines of this shape."""
    return b"%d file%04d line%08d %s\n" % (ns, file, n, body)


def kube_paths(directory: str, files: int) -> list[str]:
    """`files` containers: 3 namespaces, pods of 2 containers each."""
    pods = max(1, files // 6)
    out = []
    for i in range(files):
        ns, pod, c = i // (2 * pods), (i // 2) % pods, i % 2
        uid = f"{ns:08x}-{pod:04x}-4000-8000-{i:012x}"
        out.append(os.path.join(directory, f"ns{ns}_pod-{pod}_{uid}", f"c{c}", "0.log"))
    return out


def kubelet_rotate(path: str, generation: int, rotated: list[str], keep: int = 4) -> None:
    """The kubelet's rotation of a container's `path`: renamed to `<path>.<YYYYmmdd-HHMMSS>`
    (unique per `generation` here), every older rotated file gzip-compressed (`.gz.tmp`, then
    renamed to `.gz`, the original unlinked), the oldest deleted beyond `keep` files in all.
    `rotated` is the container's rotated files, oldest first (updated). The caller reopens
    `path`, as the runtime does."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(1_796_119_200 + generation))
    os.rename(path, f"{path}.{stamp}")
    for i, old in enumerate(rotated):
        if not old.endswith(".gz") and os.path.exists(old):
            with open(old, "rb") as src, gzip.open(old + ".gz.tmp", "wb", compresslevel=1) as dst:
                dst.write(src.read())
            os.rename(old + ".gz.tmp", old + ".gz")
            os.unlink(old)
            rotated[i] = old + ".gz"
    rotated.append(f"{path}.{stamp}")
    while len(rotated) > keep - 1:
        os.unlink(rotated.pop(0))


COMMAND = [sys.executable, "-m", "collector.harness.appender"]


def spawn(directory: Path, files: int, rate: float, seconds: float, rotate_kib: int = 0, kubernetes: bool = False,
          corpus: str | None = None, wait_started: bool = True) -> subprocess.Popen[str]:
    """This writer in a process of its own (its CPU is not the measured one's), once its files
    exist (`started` read) unless `wait_started` is False; `done <lines>` is its last output."""
    directory.mkdir(parents=True, exist_ok=True)
    args = [*COMMAND, str(directory), str(files), str(rate), str(seconds)]
    if rotate_kib or kubernetes:
        args.append(str(rotate_kib))
    if kubernetes:
        args.append("kubernetes")
    env = {**os.environ, "APPENDER_CORPUS": corpus} if corpus else None
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    if wait_started:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "started":
            raise RuntimeError(f"the appender did not start: {line!r} (exit {p.wait()})")
    return p


def corpus_lines(directory: str) -> list[bytes]:
    """The lines of every file under `directory` (sorted by path; README and LICENSE files left
    out), without their newlines, empty lines skipped: real content to replay."""
    out: list[bytes] = []
    for root, dirs, names in sorted(os.walk(directory)):
        dirs.sort()
        for name in sorted(names):
            if name.split(".")[0].upper() in ("README", "LICENSE", "NOTICE", "COPYING"):
                continue
            with open(os.path.join(root, name), "rb") as f:
                out.extend(ln for ln in f.read().splitlines() if ln.strip())
    if not out:
        raise SystemExit(f"no lines under {directory}")
    return out


def cri(line: bytes, n: int) -> list[bytes]:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()).encode() + b".%09dZ" % (time.time_ns() % 1_000_000_000)
    if n % 1000 == 999:
        body = line[:-1] + b" " + b"L" * (2 * PIECE + 100)
        pieces = [body[i:i + PIECE] for i in range(0, len(body), PIECE)]
        tags = [b" stdout P "] * (len(pieces) - 1) + [b" stdout F "]
        return [ts + tag + p + b"\n" for tag, p in zip(tags, pieces, strict=True)]
    return [ts + b" stdout F " + line]


def main() -> None:
    directory, files, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    rotate = int(sys.argv[5]) * 1024 if len(sys.argv) > 5 else 0
    kube = len(sys.argv) > 6 and sys.argv[6] == "kubernetes"
    paths = kube_paths(directory, files) if kube else [os.path.join(directory, f"w{i:04d}.log") for i in range(files)]
    rotated: list[list[str]] = [[] for _ in paths]
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    fds = [os.open(p, flags, 0o644) for p in paths]
    written = [0] * files
    generation = [0] * files
    corpus = corpus_lines(os.environ["APPENDER_CORPUS"]) if os.environ.get("APPENDER_CORPUS") else None
    print("started", flush=True)
    total = int(files * rate * seconds)
    interval = 1.0 / (files * rate)
    t0 = time.monotonic()
    for n in range(total):
        f = n % files
        text = line(time.time_ns(), f, n // files, corpus[n % len(corpus)] if corpus else PADDING)
        for out in cri(text, n) if kube else [text]:
            written[f] += os.write(fds[f], out)
        if rotate and written[f] >= rotate:
            generation[f] += 1
            os.close(fds[f])
            if kube:
                kubelet_rotate(paths[f], generation[f], rotated[f])
            else:
                os.rename(paths[f], f"{paths[f]}.{generation[f]}")
            fds[f] = os.open(paths[f], flags, 0o644)
            written[f] = 0
        # Keep the rate: sleep when ahead of schedule (in slices, not per line).
        ahead = t0 + (n + 1) * interval - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)
    for fd in fds:
        os.close(fd)
    print(f"done {total}", flush=True)


if __name__ == "__main__":
    main()
