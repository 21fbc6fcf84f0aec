"""A workload writer for tests and benchmarks: N files, one `write(2)` per line, at a steady
total rate; each line starts with its write time (ns) so latency can be measured. With
ROTATE_KIB, each file is rotated by rename (`wNNNN.log` → `wNNNN.log.<k>`) every ROTATE_KIB.
Prints `started` when its files exist and `done <lines>` at the end.

    python tests/appender.py DIR FILES LINES_PER_FILE_PER_SECOND SECONDS [ROTATE_KIB]"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    directory, files, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    rotate = int(sys.argv[5]) * 1024 if len(sys.argv) > 5 else 0
    paths = [os.path.join(directory, f"w{i:04d}.log") for i in range(files)]
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    fds = [os.open(p, flags, 0o644) for p in paths]
    written = [0] * files
    generation = [0] * files
    print("started", flush=True)
    total = int(files * rate * seconds)
    interval = 1.0 / (files * rate)
    t0 = time.monotonic()
    for n in range(total):
        f = n % files
        written[f] += os.write(fds[f], b"%d file%04d line%08d %s\n" % (time.time_ns(), f, n // files, b"p" * 160))
        if rotate and written[f] >= rotate:
            generation[f] += 1
            os.close(fds[f])
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
