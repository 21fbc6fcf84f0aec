"""The continuous profiler: py-spy against tailrace's own pid, native frames on, at a duty cycle
(`duration` of sampling at `rate` Hz every `every`). Each profile is kept under
`state_dir/profiles` as collapsed stacks and an SVG flamegraph (the newest `keep`), and its
stat-family share (non-idle samples whose stack holds `fstat`, `fstatat64`, `newfstatat`,
`statx`, `__fxstat*`, or the core's `fstat` callers) becomes a metric and, above `threshold`
with at least `min_samples` samples, a warning: the fstat regression, caught by a profile.

py-spy stops the process for each native sample. It runs under a small shell that waits for
it and then sends SIGCONT to tailrace, so a py-spy killed mid-sample never leaves tailrace
stopped. Before py-spy starts, tailrace names that shell as its ptracer
(`prctl(PR_SET_PTRACER)`): nodes run Yama `ptrace_scope=1`, where only an ancestor or a named
process (and its descendants) may attach. Where py-spy is missing or still cannot attach,
that is logged once and tailrace runs on."""

from __future__ import annotations

import ctypes
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from collector import _native, log

PR_SET_PTRACER = 0x59616D61
STAT_FRAME = re.compile(
    r"(?:^|[\s:;_])(?:fstat|fstat64|fstatat|fstatat64|newfstatat|statx|stat|stat64|lstat|lstat64"
    r"|__fxstat\w*|__xstat\w*|__lxstat\w*)\s*\("
    r"|::fstat\b|::stat\b"
)


# With native frames py-spy counts threads blocked in these as active; they are waits, not CPU
# (idle trio workers, the event loop in epoll_wait, threads waiting for the GIL).
IDLE_FRAME = re.compile(
    r"PyThread_acquire_lock|pthread_cond_(?:timed)?wait|\bepoll_wait \(|\bselect \(|\bpoll \(|nanosleep \("
    r"|\bsem_(?:timed)?wait \("
)


# Syscall wrappers, by the name a sample's native frame gives them (`pread64 (libc.so.6)`),
# normalised (`__`, `64`, `_nocancel` dropped). A sample's syscall is its leaf-most such frame.
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


SYSCALLS = _words(
    "read pread readv preadv write pwrite writev pwritev open openat close fstat fstatat newfstatat statx stat "
    "lstat fxstat xstat lxstat lseek llseek posix_fadvise fadvise getdents readdir inotify_add_watch "
    "inotify_rm_watch inotify_init inotify_init1 readlink readlinkat statfs fstatfs fsync fdatasync rename "
    "renameat renameat2 unlink unlinkat mkdir ftruncate truncate mmap munmap mremap madvise mprotect brk "
    "futex sched_yield getrusage clock_gettime gettimeofday sendto recvfrom sendmsg recvmsg send recv "
    "connect accept accept4 socket bind listen getsockopt setsockopt ioctl fcntl dup dup2 dup3 pipe pipe2 "
    "epoll_ctl eventfd prctl kill tgkill getpid gettid syscall"
)
# The work itself (reading files, sending batches): reported, never a warning.
DATA_PATH = _words("read pread readv preadv write pwrite writev pwritev sendto recvfrom sendmsg recvmsg send recv "
                   "futex syscall")
# Waits on the disk: a thread in fdatasync sleeps uninterruptibly (state D), which py-spy counts
# as active, so their samples measure the disk under `state_dir`, not tailrace's CPU (CI's disk
# put fdatasync at 11 % of an inotify run's samples, 6-16 % here). Reported, never a warning:
# how often they happen is bounded by `checkpoint_interval` and guarded as a count (the
# budget's `fsyncs` per second, tests/budgets.yaml).
DISK_WAIT = _words("fsync fdatasync syncfs sync_file_range")
NOT_JUDGED = DATA_PATH | DISK_WAIT
HOT_MIN_SAMPLES = 10
_NATIVE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*) \((?P<module>[^)]*)\)$")


def syscall_of(frame: str) -> str | None:
    """The syscall a native frame is the wrapper of (`posix_fadvise64 (libc.so.6)` →
    `posix_fadvise`), or None."""
    m = _NATIVE.match(frame)
    if not m or not re.match(r"(libc|libpthread|ld-linux)", m.group("module")):
        return None
    name = re.sub(r"^_*(GI_+)?(libc_)?|_nocancel$|(64|_l64|_time64)$", "", m.group("name"))
    name = re.sub(r"64$", "", name)
    return name if name in SYSCALLS else None


def is_stat_frame(frame: str) -> bool:
    return bool(STAT_FRAME.search(frame))


def is_idle(stack: str) -> bool:
    return bool(IDLE_FRAME.search(stack))


@dataclass
class Profile:
    """Collapsed stacks: `frames;...;leaf` → samples."""

    stacks: Counter[str] = field(default_factory=Counter)
    idle: int = 0  # samples of threads blocked in a wait, left out of `stacks`

    @classmethod
    def parse(cls, text: str) -> Profile:
        p = cls()
        for line in text.splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                if is_idle(stack):
                    p.idle += int(n)
                else:
                    p.stacks[stack] += int(n)
        return p

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def stat_samples(self) -> int:
        return sum(n for s, n in self.stacks.items() if any(is_stat_frame(f) for f in s.split(";")))

    def stat_share(self) -> float:
        total = self.samples
        return self.stat_samples() / total if total else 0.0

    def hot_syscalls(self, threshold: float) -> list[tuple[str, float]]:
        """Syscalls over `threshold` of the samples with at least `HOT_MIN_SAMPLES` of their own
        (3 samples of 25 are not a finding), the data path's own (reads, sends) and the disk
        waits (fsync) left out; the one rule for the continuous profiler and `tailrace profile`."""
        counts = self.syscall_samples()
        return [(k, n / self.samples) for k, n in counts.most_common()
                if n / self.samples > threshold and n >= HOT_MIN_SAMPLES and k not in NOT_JUDGED]

    def syscall_samples(self) -> Counter[str]:
        """Non-idle samples by the syscall they were in (their leaf-most wrapper frame)."""
        out: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            for frame in reversed(stack.split(";")):
                name = syscall_of(frame)
                if name:
                    out[name] += n
                    break
        return out

    def syscall_shares(self) -> dict[str, float]:
        total = self.samples
        return {k: v / total for k, v in self.syscall_samples().most_common()} if total else {}

    def top(self, n: int = 15) -> list[tuple[str, int, int]]:
        """(frame, self samples, total samples), by total."""
        self_c: Counter[str] = Counter()
        total_c: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            frames = stack.split(";")
            self_c[frames[-1]] += count
            for f in set(frames):
                total_c[f] += count
        return [(f, self_c[f], t) for f, t in total_c.most_common(n)]

    def collapsed(self) -> str:
        return "".join(f"{s} {n}\n" for s, n in sorted(self.stacks.items()))

    def svg(self, title: str) -> str:
        """The flamegraph (inferno's, through the extension: search, zoom, frame details), the
        stat family in red."""
        subtitle = f"{self.samples} samples, stat-family {100 * self.stat_share():.1f}% (red)"
        if not self.stacks:
            return (
                '<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="40" font-family="monospace">'
                f'<text x="4" y="20">{html.escape(title)}: no samples</text></svg>\n'
            )
        frames = {f for stack in self.stacks for f in stack.split(";")}
        return _native.flamegraph_svg(self.collapsed(), title, subtitle, sorted(filter(is_stat_frame, frames)))

    def speedscope(self, name: str) -> dict[str, object]:
        frames: dict[str, int] = {}
        samples, weights = [], []
        for stack, n in self.stacks.items():
            samples.append([frames.setdefault(f, len(frames)) for f in stack.split(";")])
            weights.append(n)
        return {
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": [{"name": f} for f in frames]},
            "profiles": [
                {"type": "sampled", "name": name, "unit": "none", "startValue": 0, "endValue": sum(weights),
                 "samples": samples, "weights": weights}
            ],
            "name": name,
        }


def py_spy() -> str | None:
    """py-spy beside this interpreter (the venv's), or on PATH; TAILRACE_PY_SPY overrides."""
    if os.environ.get("TAILRACE_PY_SPY"):
        return os.environ["TAILRACE_PY_SPY"]
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def allow_ptracer(pid: int) -> bool:
    """Let `pid` (and its descendants) ptrace this process under Yama ptrace_scope=1."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


async def record(pid: int, duration: float, rate: int, out: Path, native: bool = True) -> Profile:
    """Sample `pid` with py-spy for `duration` seconds; raw collapsed stacks go to `out`.

    py-spy runs under `sh`, which waits for it to end however it ends, then sends SIGCONT to
    `pid`. When `pid` is this process, the shell is named its ptracer before py-spy starts."""
    exe = py_spy()
    if exe is None:
        raise OSError("py-spy is not installed")
    cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(max(1, round(duration))),
           "--format", "raw", "--output", str(out), "--nonblocking" if not native else "--native"]
    script = 'read go; "$@"; rc=$?; kill -CONT ' + str(pid) + " 2>/dev/null; exit $rc"
    proc = await trio.lowlevel.open_process(
        ["sh", "-c", script, "sh", *cmd], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        if pid == os.getpid():
            allow_ptracer(proc.pid)
        assert proc.stdin is not None and proc.stderr is not None
        await proc.stdin.send_all(b"go\n")
        await proc.stdin.aclose()
        err = bytearray()
        async with proc.stderr:
            async for chunk in proc.stderr:
                err += chunk
        rc = await proc.wait()
    except BaseException:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            if pid != os.getpid():
                os.kill(pid, signal.SIGCONT)
        raise
    text = await trio.to_thread.run_sync(lambda: out.read_text() if out.exists() else None)
    if rc != 0 or text is None:
        msg = err.decode(errors="replace").strip().splitlines()
        raise OSError(f"py-spy exited with {rc}: {msg[-1] if msg else 'no output'}")
    return Profile.parse(text)


class Profiler:
    """The trio service: a profile every `every`, the newest `keep` kept on disk."""

    def __init__(self, directory: Path, *, every: float, duration: float, rate: int, threshold: float,
                 syscall_threshold: float, min_samples: int = 200, keep: int = 12) -> None:
        self.dir = directory
        self.every, self.duration, self.rate = every, duration, rate
        self.threshold, self.min_samples, self.keep = threshold, min_samples, keep
        self.syscall_threshold = syscall_threshold
        self.profiles = 0
        self.failures = 0
        self.last_share: float | None = None
        self.last_samples = 0
        self.last_stat_samples = 0
        self.last_syscall_shares: dict[str, float] = {}
        self.last_hot: list[str] = []  # the last profile's hot syscalls (warned about)
        self.warnings = 0
        self.syscall_warnings = 0
        self.latest_svg: Path | None = None
        self.unavailable: str | None = None

    async def run(self) -> None:
        """A profile every `every`, the first one `every` after start (start-up is not the
        steady state; with `every: 0s`, sampling is continuous from the start)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            await trio.sleep(self.every)
            await self.once()
            if self.unavailable:
                return

    async def once(self) -> Profile | None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{self.profiles:06d}"
        raw = self.dir / f"{stamp}.collapsed"
        try:
            prof = await record(os.getpid(), self.duration, self.rate, raw)
        except OSError as e:
            self.failures += 1
            if any(w in str(e) for w in ("not installed", "Permission denied", "Operation not permitted")):
                self.unavailable = str(e)  # said once; no point trying again
                log.warning(f"profiler: {e}; tailrace runs on without profiles")
            else:
                log.log("warning", f"profiler: {e}", every=600.0, key="profiler")
                await trio.sleep(1.0)  # never a tight loop of failing py-spys
            return None
        self.profiles += 1
        self.last_samples, self.last_stat_samples = prof.samples, prof.stat_samples()
        self.last_share = prof.stat_share()
        self.last_syscall_shares = prof.syscall_shares()
        raw.write_text(prof.collapsed())
        svg = self.dir / f"{stamp}.svg"
        svg.write_text(prof.svg(f"tailrace pid {os.getpid()} {stamp}"))
        self.latest_svg = svg
        self._prune()
        if prof.samples >= self.min_samples and self.last_share > self.threshold:
            self.warnings += 1
            log.warning(
                f"profiler: {100 * self.last_share:.1f}% of samples are in stat-family syscalls "
                f"(threshold {100 * self.threshold:.0f}%): the fstat regression? see {svg}",
                samples=prof.samples, stat_samples=self.last_stat_samples,
            )
        hot = self.hot_syscalls(prof)
        self.last_hot = [name for name, _ in hot]
        if hot:
            self.syscall_warnings += 1
            log.warning(
                "profiler: hot syscalls above the threshold of "
                f"{100 * self.syscall_threshold:.0f}% of samples: "
                + ", ".join(f"{name} {100 * share:.1f}%" for name, share in hot)
                + f"; see {svg}", samples=prof.samples,
            )
        return prof

    def hot_syscalls(self, prof: Profile) -> list[tuple[str, float]]:
        """`Profile.hot_syscalls` at this profiler's threshold, for profiles big enough to judge."""
        return prof.hot_syscalls(self.syscall_threshold) if prof.samples >= self.min_samples else []

    def _prune(self) -> None:
        for suffix in (".collapsed", ".svg"):
            files = sorted(self.dir.glob(f"*{suffix}"))
            for old in files[: max(0, len(files) - self.keep)]:
                old.unlink(missing_ok=True)
