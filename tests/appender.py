"""A workload writer for tests and benchmarks: N files, one `write(2)` per line, at a steady
total rate. Prints `started` when its files exist and `done <lines>` at the end.

    python tests/appender.py DIR FILES LINES_PER_FILE_PER_SECOND SECONDS"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    directory, files, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    fds = [
        os.open(os.path.join(directory, f"w{i:04d}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for i in range(files)
    ]
    print("started", flush=True)
    total = int(files * rate * seconds)
    interval = 1.0 / (files * rate)
    t0 = time.monotonic()
    for n in range(total):
        f = n % files
        os.write(fds[f], b"%d %.6f file%04d line%08d %s\n" % (time.time_ns(), time.time(), f, n // files, b"p" * 100))
        # Keep the rate: sleep when ahead of schedule (in slices, not per line).
        ahead = t0 + (n + 1) * interval - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)
    for fd in fds:
        os.close(fd)
    print(f"done {total}", flush=True)


if __name__ == "__main__":
    main()
