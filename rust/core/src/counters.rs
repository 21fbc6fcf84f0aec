//! Counters the core keeps about its own work. Observation is injected, never logged: the
//! owner reads these and turns them into metrics. Syscall counts are deterministic for a given
//! workload, so tests guard them (the fstat regression guard is such a count).

/// System calls made by the core, by kind.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscalls {
    pub open: u64,
    pub close: u64,
    /// `read(2)` and `pread(2)` on log files.
    pub read: u64,
    /// `fstat` on an open descriptor.
    pub fstat: u64,
    /// `stat`/`statx` of a path.
    pub stat: u64,
    pub lseek: u64,
    /// Directory listings (`getdents`, one per directory scanned).
    pub readdir: u64,
    /// `read(2)` on the inotify descriptor.
    pub inotify_read: u64,
    /// `posix_fadvise(DONTNEED)` (only `naive` makes it, as Fluent Bit does on every read).
    pub fadvise: u64,
    /// `inotify_add_watch` on a file already watched: its mask changed (a file turning steady,
    /// read on the cadence without write events, or back).
    pub inotify_remask: u64,
    /// `readlink` of `/proc/self/fd/N`: where a file just opened leads (the allowed-roots check).
    pub readlink: u64,
}

impl Syscalls {
    /// All stat-family calls: what the fstat regression guard counts.
    pub fn stat_family(&self) -> u64 {
        self.fstat + self.stat
    }
}

/// What happened to the files and lines the core handled.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub syscalls: Syscalls,
    /// Records emitted (complete lines, split pieces and flushed partials).
    pub lines: u64,
    /// Input bytes consumed into records, newlines included.
    pub bytes: u64,
    pub files_opened: u64,
    pub files_closed: u64,
    pub rotations: u64,
    pub truncations: u64,
    pub deletions: u64,
    /// Lines longer than `max_line_bytes`, emitted as flagged pieces.
    pub split_lines: u64,
    /// Trailing partial lines flushed after `partial_flush` of idleness or at rotation.
    pub partial_flushes: u64,
    pub invalid_utf8: u64,
    /// Lines the parser could not read (shipped whole, flagged `tailrace.parse_error`).
    pub parse_errors: u64,
    /// Files that matched but could not be opened or read (permissions, races).
    pub open_errors: u64,
    pub read_errors: u64,
    pub batches: u64,
    /// Passes (`step` calls): wakeups of the owner.
    pub steps: u64,
    /// inotify queue overflows (each forces a full look and a read of every file).
    pub inotify_overflows: u64,
    /// inotify events drained (the read delay is bounded by their rate).
    pub inotify_events: u64,
    /// Passes that read files (the others only drained events or ran timers).
    pub read_passes: u64,
    /// Bugs hit while reading a file, contained to that file (it is no longer read).
    pub panics: u64,
    /// Files that emitted what they held for unfinished lines early (flagged pieces): the
    /// memory bound across files was reached.
    pub memory_spills: u64,
    /// Matched files not read because they resolve outside the allowed roots (a symlink out).
    pub outside_roots: u64,
    /// Files finished from their compressed copy after a restart (rotation rule 9).
    pub recovered_from_gzip: u64,
    /// Looks of only the directories whose events asked for one (a rotation), not every path.
    pub scoped_looks: u64,
    /// Files turned steady (written at every read, so read on the cadence without write
    /// events), and turned back.
    pub steady_on: u64,
    pub steady_off: u64,
}
