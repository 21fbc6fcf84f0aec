"""`tailrace doctor`: checks the node a configuration is to run on and says what to change,
with the numbers. None of the peers has it; each check is a limit tailrace meets in production:

- inotify watches and instances needed (every tailed file and every directory a file may
  appear in, one instance per input) against `fs.inotify.max_user_watches` / `max_user_instances`
  less what this user's other processes hold;
- descriptors needed (one per file, one per input, a reserve) against the open-files limit
  (tailrace raises its soft limit to the hard one);
- the filesystem under each input's files, and so which files `auto` polls (nfs, fuse, overlay,
  cifs, ceph, 9p) or `inotify` would miss changes on;
- files matched that this user cannot read;
- Yama `ptrace_scope`, py-spy and `CAP_SYS_PTRACE`, which the profiler needs;
- the free space and the filesystem of `state_dir` (the spool's limit must fit; on tmpfs the
  checkpoints do not survive a reboot);
- whether the admin address can be bound.

Exit 0 when nothing needs changing (notes are information), 1 with the list otherwise; `--json`
for automation. `--proc-root` reads the kernel's limits and other processes' inotify use from
another `/proc` (the host's, mounted into a container)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from collector import _native
from collector.flow import config
from collector.flow.pipeline import state_dir_holder
from collector.observe.profiler import py_spy

RESERVE_FDS = 64  # sockets, spool segments, the state dir's files, Python's own
CHECKPOINT_BYTES_PER_FILE = 4608  # a snapshot entry (2 KiB of hex head and more), twice at compaction
CAP_SYS_PTRACE = 19
CAP_DAC_READ_SEARCH = 2


@dataclass
class Finding:
    check: str
    status: str  # "ok", "note" (information) or "problem" (something to change)
    message: str
    fix: str = ""
    values: dict[str, Any] = field(default_factory=dict)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def inotify_in_use(proc: Path, euid: int, skip_pid: int) -> tuple[int, int, bool]:
    """(instances, watches, complete) held by `euid`'s processes other than `skip_pid`, from
    their descriptors (`anon_inode:inotify`) and fdinfo (`inotify wd:` lines). `complete` is
    False when some process could not be looked at (not root)."""
    instances = watches = 0
    complete = True
    for pid_dir in proc.iterdir() if proc.is_dir() else []:
        if not pid_dir.name.isdigit() or int(pid_dir.name) == skip_pid:
            continue
        try:
            uids = next(ln for ln in (pid_dir / "status").read_text().splitlines() if ln.startswith("Uid:"))
            if int(uids.split()[2]) != euid:
                continue
            fds = list((pid_dir / "fd").iterdir())
        except (OSError, StopIteration, ValueError, IndexError):
            complete = False
            continue
        for fd in fds:
            try:
                if os.readlink(fd) != "anon_inode:inotify":
                    continue
                info = (pid_dir / "fdinfo" / fd.name).read_text()
            except OSError:
                continue
            instances += 1
            watches += sum(1 for ln in info.splitlines() if ln.startswith("inotify wd:"))
    return instances, watches, complete


def _fd_links(proc: Path) -> list[str]:
    """What each descriptor of the process at `proc` (`/proc/PID`) points to; one closed while
    listed is skipped (a running tailrace opens and closes files all the time)."""
    links = []
    for fd in os.listdir(proc / "fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(proc / "fd" / fd))
    return links


def open_files_limit(pid: str, lock: str) -> tuple[int, int] | None:
    """The (soft, hard) open-files limit of process `pid` from `/proc/PID/limits`, if it is the
    one holding `lock` open in this PID namespace (the lock file names its holder by the pid
    it had where it runs: another namespace's pid is not trusted)."""
    proc = Path("/proc") / pid
    try:
        if os.path.realpath(lock) not in _fd_links(proc):
            return None
        text = (proc / "limits").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft, hard = (resource.RLIM_INFINITY if v == "unlimited" else int(v) for v in line.split()[3:5])
            return soft, hard
    return None


def serves_port(pid: str, port: int) -> bool:
    """Whether process `pid` holds the TCP socket listening on `port` (its descriptors' socket
    inodes against `/proc/PID/net/tcp` and `tcp6`, state 0A: LISTEN)."""
    proc = Path("/proc") / pid
    try:
        inodes = {link[8:-1] for link in _fd_links(proc) if link.startswith("socket:[")}
    except OSError:
        return False
    for table in ("tcp", "tcp6"):
        try:
            rows = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                return True
    return False


def mount_of(path: str, mountinfo: str) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding `path` (its longest mount prefix)."""
    best = ("/", "unknown")
    for ln in mountinfo.splitlines():
        left, _, right = ln.partition(" - ")
        parts = left.split()
        if len(parts) < 5 or not right:
            continue
        point = parts[4].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, right.split()[0])
    return best


def _can_open(path: str) -> bool:
    """Whether this process can open `path` for reading, as tailrace would (an open says what
    access(2) can get wrong: capabilities, ACLs, LSMs)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def _effective_caps() -> int:
    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("CapEff:"))
        return int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return 0


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def examine(cfg: config.Config, proc: Path = Path("/proc")) -> list[Finding]:
    out: list[Finding] = []
    mountinfo = ""
    for candidate in (proc / "self" / "mountinfo", Path("/proc/self/mountinfo")):
        try:
            mountinfo = candidate.read_text()
            break
        except OSError:
            continue

    # What each input finds now, as run's first look would.
    surveys = []
    for i, inp in enumerate(cfg.inputs):
        name = inp.name or f"inputs[{i}]"
        s = _native.survey(inp.paths, inp.exclude, inp.allowed_roots)
        surveys.append((name, inp, s))
        files: list[str] = s["files"]
        unreadable = [f for f in files if not _can_open(f)]
        values = {"input": name, "files": len(files), "unmatched": s["unmatched"], "unreadable": len(unreadable)}
        if unreadable:
            out.append(Finding(
                "files", "problem",
                f"input {name}: {len(unreadable)} of {len(files)} files cannot be read by uid {os.geteuid()} "
                f"(first: {unreadable[0]})",
                "run as root, or give the service CAP_DAC_READ_SEARCH (the shipped unit does)", values))
        else:
            extra = f"; patterns matching nothing yet: {', '.join(s['unmatched'])}" if s["unmatched"] else ""
            out.append(Finding("files", "ok", f"input {name}: {len(files)} files, all readable{extra}", values=values))

    # inotify: one instance per input that uses it, a watch per file it does not poll and per directory.
    uses_inotify = [(n, inp, s) for n, inp, s in surveys if inp.watch != "poll"]
    if uses_inotify:
        watches = sum(len(s["watch_dirs"]) + len(s["files"]) - (len(s["polled"]) if inp.watch == "auto" else 0)
                      for _, inp, s in uses_inotify)
        instances = len(uses_inotify)
        used_instances, used_watches, complete = inotify_in_use(proc, os.geteuid(), os.getpid())
        known = "" if complete else " (some processes could not be looked at: run as root for the whole count)"
        for what, need, used, key in (("watches", watches, used_watches, "max_user_watches"),
                                      ("instances", instances, used_instances, "max_user_instances")):
            limit = _read_int(proc / "sys" / "fs" / "inotify" / key)
            values = {"needed": need, "in_use": used, "limit": limit}
            if limit is None:
                out.append(Finding(f"inotify_{what}", "note", f"inotify {what}: {need} needed; "
                                   f"fs.inotify.{key} unreadable under {proc}", values=values))
                continue
            msg = (f"inotify {what}: {need} needed + {used} in use by uid {os.geteuid()} of {limit} "
                   f"(fs.inotify.{key}){known}")
            if need + used > limit:
                want = max(2 * (need + used), 8192 if what == "watches" else 128)
                out.append(Finding(f"inotify_{what}", "problem", msg,
                                   f"sysctl -w fs.inotify.{key}={want} (and persist it in /etc/sysctl.d/)", values))
            else:
                out.append(Finding(f"inotify_{what}", "ok", msg, values=values))

    # Descriptors: every open file, each input's inotify descriptor, a reserve; against the
    # limit of the tailrace running on this state_dir when there is one (a service has its
    # unit's LimitNOFILE, not the shell's), else this process's own.
    total_files = sum(len(s["files"]) for _, _, s in surveys)
    need_fds = total_files + len(cfg.inputs) + RESERVE_FDS
    holder = state_dir_holder(cfg.state_dir)
    running = open_files_limit(holder, os.path.join(cfg.state_dir, "lock")) if holder and holder.isdigit() else None
    soft, hard = running or resource.getrlimit(resource.RLIMIT_NOFILE)
    values = {"needed": need_fds, "soft": soft, "hard": hard}
    whose = "a hard limit"
    if running:
        values["pid"] = int(str(holder))
        whose = f"the running tailrace's (pid {holder}) hard limit"
    msg = (f"open files: {need_fds} needed ({total_files} files + {len(cfg.inputs)} inputs + {RESERVE_FDS} reserve) "
           f"of {whose} of {hard} (soft {soft}; tailrace raises the soft one to it)")
    if hard != resource.RLIM_INFINITY and need_fds > hard:
        out.append(Finding("open_files", "problem", msg,
                           f"raise the limit: LimitNOFILE={max(2 * need_fds, 65536)} in the unit (or ulimit -Hn)",
                           values))
    else:
        out.append(Finding("open_files", "ok", msg, values=values))

    # Filesystems under each input's files.
    for name, inp, s in surveys:
        by_fs: dict[str, int] = {}
        for f in s["files"]:
            fs = mount_of(os.path.realpath(f), mountinfo)[1]
            by_fs[fs] = by_fs.get(fs, 0) + 1
        polled = len(s["polled"])
        kinds = sorted(set(s["polled"].values()))
        values = {"input": name, "filesystems": by_fs, "polled": polled, "watch": inp.watch}
        shown = ", ".join(f"{n} on {fs}" for fs, n in sorted(by_fs.items())) or "no files yet"
        if polled and inp.watch == "inotify":
            out.append(Finding(
                "filesystems", "problem",
                f"input {name}: {shown}; {polled} files are on {', '.join(kinds)}, where changes made "
                f"elsewhere raise no inotify event", "watch: auto (polls those files) or watch: poll", values))
        elif polled and inp.watch == "auto":
            out.append(Finding(
                "filesystems", "note",
                f"input {name}: {shown}; auto polls the {polled} files on {', '.join(kinds)} every "
                f"{inp.poll_interval:g}s (the others by inotify)", values=values))
        else:
            out.append(Finding("filesystems", "ok", f"input {name}: {shown} (watch: {inp.watch})", values=values))

    # The profiler's needs.
    if cfg.profiler.enabled:
        scope = _read_int(proc / "sys" / "kernel" / "yama" / "ptrace_scope")
        caps = _effective_caps()
        has_ptrace = bool(caps >> CAP_SYS_PTRACE & 1)
        spy = py_spy()
        values = {"ptrace_scope": scope, "cap_sys_ptrace": has_ptrace, "py_spy": spy}
        off = "or profiler.enabled: false"
        if spy is None:
            out.append(Finding("profiler", "problem",
                               "profiler: py-spy not found (beside the interpreter, on PATH or $TAILRACE_PY_SPY)",
                               f"pip install py-spy, {off}", values))
        elif scope == 3:
            out.append(Finding("profiler", "problem", "profiler: Yama ptrace_scope is 3 (no process may attach)",
                               f"kernel.yama.ptrace_scope=1 (takes a reboot from 3), {off}", values))
        elif scope == 2 and not has_ptrace:
            out.append(Finding("profiler", "problem",
                               "profiler: Yama ptrace_scope is 2 (admin-only attach) and CAP_SYS_PTRACE is not held",
                               f"give the service CAP_SYS_PTRACE (the shipped unit and DaemonSet do), {off}", values))
        else:
            how = {None: "no Yama", 0: "ptrace_scope 0", 1: "ptrace_scope 1: tailrace names py-spy its ptracer"}
            out.append(Finding("profiler", "ok", f"profiler: py-spy at {spy}, {how.get(scope, f'ptrace_scope {scope}')}"
                               + (", CAP_SYS_PTRACE held" if has_ptrace else ""), values=values))

    # state_dir: room for the spools and the checkpoints, and a filesystem that outlives a reboot.
    state = Path(cfg.state_dir).absolute()
    at = _existing_ancestor(state)
    vfs = os.statvfs(at)
    free = vfs.f_bavail * vfs.f_frsize
    spools = sum(o.spool.max_bytes for o in cfg.outputs if isinstance(o, config.OtlpHttpOutput) and o.spool.enabled)
    need = spools + total_files * CHECKPOINT_BYTES_PER_FILE
    point, fstype = mount_of(os.path.realpath(at), mountinfo)
    values = {"path": str(state), "free": free, "needed": need, "filesystem": fstype}
    msg = (f"state_dir {state}: {_size(free)} free on {fstype} ({point}); the spools may take {_size(spools)}, "
           f"checkpoints ~{_size(total_files * CHECKPOINT_BYTES_PER_FILE)}")
    if free < need:
        out.append(Finding("state_dir", "problem", msg,
                           "free space there, lower outputs[].spool.max_bytes, or move state_dir", values))
    elif fstype in ("tmpfs", "ramfs"):
        out.append(Finding("state_dir", "note", msg + ": checkpoints there do not survive a reboot "
                           "(every file is read again after one)", values=values))
    else:
        out.append(Finding("state_dir", "ok", msg, values=values))
    if holder:
        out.append(Finding("state_dir", "note", f"state_dir {state} is held by a running tailrace ({holder})",
                           values={"holder": holder}))

    # The admin address.
    if cfg.admin.enabled:
        host, _, port = cfg.admin.address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        values = {"address": cfg.admin.address}
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, int(port)))
            out.append(Finding("admin", "ok", f"admin: {cfg.admin.address} can be bound", values=values))
        except OSError as e:
            also = f" (a running tailrace holds this state_dir: {holder})" if holder else ""
            if running and holder and port.isdigit() and serves_port(holder, int(port)):
                # doctor run beside the tailrace it checks (`kubectl exec` into its pod)
                out.append(Finding("admin", "ok", f"admin: {cfg.admin.address} is served by the running tailrace "
                                   f"(pid {holder})", values=values))
            else:
                out.append(Finding("admin", "problem",
                                   f"admin: {cfg.admin.address} cannot be bound: {e.strerror}{also}",
                                   "stop what listens there, or set admin.address to a free port", values))
    return out


def main(source: str, cfg: config.Config, as_json: bool, proc: Path) -> int:
    findings = examine(cfg, proc)
    problems = [f for f in findings if f.status == "problem"]
    if as_json:
        doc = {"config": source, "ok": not problems, "checks": [asdict(f) for f in findings]}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return 1 if problems else 0
    for f in findings:
        print(f"{f.status:<8} {f.message}")
    if problems:
        print(f"\n{len(problems)} to change:")
        for f in problems:
            print(f"  - {f.check}: {f.fix}")
        return 1
    print(f"\n{source}: nothing to change on this node")
    return 0
