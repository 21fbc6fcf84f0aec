//! Discovery: which paths an input tails. Expands include globs (`**` crosses directories),
//! drops excluded paths and non-regular files, and stats what is left so the tailer can compare
//! identities. It knows nothing of readers or offsets; the tailer decides what a path means.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::counters::Syscalls;
use crate::error::Error;
use crate::identity::FileKey;

/// One regular file found at a path.
#[derive(Clone, Debug)]
pub struct Found {
    pub path: PathBuf,
    pub key: FileKey,
    pub size: u64,
    pub mtime: SystemTime,
}

/// What a scan found, and what it could not look at.
#[derive(Default, Debug)]
pub struct Scan {
    pub files: Vec<Found>,
    /// Paths or patterns that could not be read (permission denied, races), with the reason.
    pub errors: Vec<(String, String)>,
    /// Include patterns that matched no file at all.
    pub unmatched: Vec<String>,
}

pub struct Discoverer {
    include: Vec<String>,
    patterns: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    pub roots: Roots,
}

/// Where the files an input reads may lie: each include glob's fixed directory part
/// (`/var/log/pods` for `/var/log/pods/*/*/*.log`) and the configured `allowed_roots`, resolved
/// once. A matched path is opened, then where its descriptor leads is checked (one `readlink`
/// of `/proc/self/fd/N`: the file actually opened, no race with a symlink swapped after the
/// check): a symlink out of these trees (`evil.log -> /etc/passwd`) is not read.
#[derive(Debug, Clone)]
pub struct Roots(Vec<PathBuf>);

impl Roots {
    pub fn new(include: &[String], allowed: &[String]) -> Self {
        let fixed = include.iter().map(|p| {
            let literal = literal_prefix(Path::new(p));
            if literal.as_os_str() == p.as_str() {
                literal.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                literal
            }
        });
        let roots = fixed
            .chain(allowed.iter().map(PathBuf::from))
            .map(|r| {
                let r = if r.as_os_str().is_empty() { PathBuf::from(".") } else { r };
                // Not there yet: as an absolute path (created later, it is found as such).
                std::fs::canonicalize(&r).or_else(|_| std::path::absolute(&r)).unwrap_or(r)
            })
            .collect();
        Roots(roots)
    }

    /// Where the open descriptor `fd` leads, when that is outside every root (`None`: inside,
    /// or unknown because `/proc` is not mounted).
    pub fn outside(&self, fd: std::os::fd::RawFd, sys: &mut Syscalls) -> Option<PathBuf> {
        sys.readlink += 1;
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
        (!self.0.iter().any(|r| target.starts_with(r))).then_some(target)
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.0
    }
}

/// Matching one path against the include globs as `glob()` expands them: `*` stays within a
/// path component.
const MATCH: glob::MatchOptions = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

impl Discoverer {
    /// Relative globs are taken from the working directory and kept absolute: every path found
    /// is absolute (`log.file.path` as the semantic conventions want it).
    pub fn new(include: &[String], exclude: &[String], allowed_roots: &[String]) -> crate::error::Result<Self> {
        let absolute = |p: &String| std::path::absolute(p).map(|a| a.to_string_lossy().into_owned()).unwrap_or_else(|_| p.clone());
        let include: Vec<String> = include.iter().map(absolute).collect();
        // An exclude starting with a wildcard (`**/skip.log`) matches anywhere: kept as it is.
        let exclude: Vec<String> = exclude.iter().map(|p| if p.starts_with(['*', '?', '[']) { p.clone() } else { absolute(p) }).collect();
        let (include, exclude) = (include.as_slice(), exclude.as_slice());
        let bad = |key: &str, i: usize, p: &str, e: glob::PatternError| Error::Config(format!("{key}[{i}]: bad glob {p:?}: {e}"));
        let patterns = include.iter().enumerate().map(|(i, p)| glob::Pattern::new(p).map_err(|e| bad("paths", i, p, e))).collect::<Result<_, _>>()?;
        let exclude = exclude
            .iter()
            .enumerate()
            .map(|(i, p)| glob::Pattern::new(p).map_err(|e| bad("exclude", i, p, e)))
            .collect::<Result<_, _>>()?;
        Ok(Discoverer { include: include.to_vec(), patterns, exclude, roots: Roots::new(include, allowed_roots) })
    }

    /// The directories a directory glob without `**` names (`dir`: a pattern's directory part),
    /// walked level by level from its literal base: at each level the subdirectories of the
    /// level above whose names match, from their listing (`cache`; a name's kind from the
    /// listing, a stat only for a symlink or an unknown kind). Each directory is given to
    /// `watch` before it is listed, so what appears in it after its listing is an event.
    /// Names match as text with invalid UTF-8 replaced (`glob`'s own walk skips such a name).
    fn walk(&self, dir: &Path, cache: &mut DirCache, sys: &mut Syscalls, errors: &mut Vec<(String, String)>, watch: &mut dyn FnMut(&Path)) -> Result<Vec<PathBuf>, glob::PatternError> {
        let parts: Vec<_> = dir.components().collect();
        let literal = literal_len(&parts);
        let base: PathBuf = parts[..literal].iter().collect();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        sys.stat += 1;
        if !base.is_dir() {
            return Ok(Vec::new());
        }
        Self::walk_from(vec![base], &parts[literal..], cache, sys, errors, watch)
    }

    /// `walk`'s levels below `level`, `parts` the directory glob's components still to walk.
    fn walk_from(
        mut level: Vec<PathBuf>,
        parts: &[std::path::Component<'_>],
        cache: &mut DirCache,
        sys: &mut Syscalls,
        errors: &mut Vec<(String, String)>,
        watch: &mut dyn FnMut(&Path),
    ) -> Result<Vec<PathBuf>, glob::PatternError> {
        for part in parts {
            let name = part.as_os_str().to_string_lossy();
            let pattern = if has_wildcard(&name) { Some(glob::Pattern::new(&name)?) } else { None };
            let mut next = Vec::new();
            for d in &level {
                watch(d);
                match &pattern {
                    Some(p) => match cache.subdirs(d, sys) {
                        Ok(subs) => next.extend(subs.into_iter().filter(|s| s.file_name().is_some_and(|n| p.matches_with(&n.to_string_lossy(), MATCH)))),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => errors.push((d.display().to_string(), e.to_string())),
                    },
                    None => {
                        let sub = d.join(part);
                        sys.stat += 1;
                        if sub.is_dir() {
                            next.push(sub);
                        }
                    }
                }
            }
            next.sort();
            level = next;
        }
        for d in &level {
            watch(d);
        }
        Ok(level)
    }

    /// A directory that appeared at `root` (a new pod's, a new container's): the directories
    /// below it where the globs' files may be, each watched before it is listed (as `walk`
    /// does from a glob's base), for a look of those only. `None` when only a look everywhere
    /// will do: a glob with `**`, a directory on the way to a glob's base, or one that could
    /// not be listed (the look everywhere says so).
    pub fn dirs_under(&self, root: &Path, cache: &mut DirCache, sys: &mut Syscalls, watch: &mut dyn FnMut(&Path)) -> Option<Vec<PathBuf>> {
        if self.leads_to_a_base(root) {
            return None;
        }
        let at: Vec<_> = root.components().collect();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for p in &self.include {
            let dir = Path::new(p).parent()?;
            if dir.to_string_lossy().contains("**") {
                return None;
            }
            let parts: Vec<_> = dir.components().collect();
            // `root` is at one of the glob's directory levels, and each of its components
            // matches that level's.
            let fits = at.len() <= parts.len()
                && at.iter().zip(&parts).all(|(a, g)| {
                    let g = g.as_os_str().to_string_lossy();
                    let a = a.as_os_str().to_string_lossy();
                    if has_wildcard(&g) { glob::Pattern::new(&g).is_ok_and(|g| g.matches_with(&a, MATCH)) } else { g == a }
                });
            if fits {
                out.extend(Self::walk_from(vec![root.to_path_buf()], &parts[at.len()..], cache, sys, &mut errors, watch).ok()?);
            }
        }
        errors.is_empty().then_some(out)
    }

    /// Whether `path` is one the include globs match (and no exclude glob does), as text with
    /// invalid UTF-8 replaced (as `scan` matches names).
    pub fn matches(&self, path: &Path) -> bool {
        let text = path.to_string_lossy();
        self.patterns.iter().any(|p| p.matches_with(&text, MATCH)) && !self.is_excluded(path)
    }

    /// `scan` for the files directly in `dirs` only (a look their events asked for): one
    /// listing per directory, one stat per matching name.
    pub fn scan_dirs<'a>(&self, dirs: impl Iterator<Item = &'a PathBuf>, cache: &mut DirCache, sys: &mut Syscalls) -> Scan {
        let mut scan = Scan::default();
        for dir in dirs {
            let names: Vec<PathBuf> = cache.names(dir, sys).iter().map(|n| dir.join(n)).collect();
            for path in names {
                if self.matches(&path) {
                    if let Some(found) = stat_path(&path, sys, &mut scan.errors) {
                        scan.files.push(found);
                    }
                }
            }
        }
        scan
    }

    /// The directories the include globs start from (their literal prefix): watched so that a
    /// first file appearing there is seen without waiting for a rescan. One that does not
    /// exist (yet, or any more) gives its nearest existing ancestor instead: its creation, or
    /// that of a directory on the way to it, is then seen when it happens.
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        self.include
            .iter()
            .filter_map(|p| {
                let literal = literal_prefix(Path::new(p));
                let dir = if literal.as_os_str() == p.as_str() { literal.parent()?.to_path_buf() } else { literal };
                dir.ancestors().find(|d| d.is_dir()).map(Path::to_path_buf)
            })
            .collect()
    }

    /// Whether `dir` is a glob's literal base directory or on the way to one: when it leaves,
    /// only a look everywhere watches what is left of the way (its return is then seen).
    pub fn leads_to_a_base(&self, dir: &Path) -> bool {
        self.include.iter().any(|p| literal_prefix(Path::new(p)).starts_with(dir))
    }

    pub fn is_excluded(&self, path: &Path) -> bool {
        let text = path.to_string_lossy();
        self.exclude.iter().any(|p| p.matches(&text))
    }

    /// The paths `pattern` matches, sorted: its directory part walked (`walk`; through `glob`
    /// where it holds `**`, or wholly when the last component does), the last component
    /// against each directory's listing. The directories are given to `watch` on the way.
    fn expand(&self, pattern: &str, cache: &mut DirCache, sys: &mut Syscalls, errors: &mut Vec<(String, String)>, watch: &mut dyn FnMut(&Path)) -> Result<Vec<PathBuf>, glob::PatternError> {
        let path = Path::new(pattern);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().map(|n| n.to_string_lossy())) else {
            return Ok(vec![path.to_path_buf()]);
        };
        let dir_text = dir.to_string_lossy();
        let dirs = if name.contains("**") || dir_text.contains("**") {
            // `**` crosses any number of directories: `glob` walks it, and each directory it
            // names is watched (as the levels above it are).
            let dirs = self.expand_dirs(&dir_text, sys, errors)?;
            for d in self.deep_watch_dirs(dir, sys) {
                watch(&d);
            }
            if name.contains("**") {
                return globbed(pattern, sys, errors);
            }
            dirs
        } else {
            self.walk(dir, cache, sys, errors, watch)?
        };
        if !has_wildcard(&name) {
            // A literal name: the path itself (a missing one is not found by its stat).
            return Ok(dirs.into_iter().map(|d| d.join(&*name)).collect());
        }
        let last = glob::Pattern::new(&name)?;
        let mut out = Vec::new();
        for dir in dirs {
            match cache.listing(&dir, sys) {
                Ok(names) => {
                    let mut here: Vec<PathBuf> = names.iter().filter(|n| last.matches_with(&n.to_string_lossy(), MATCH)).map(|n| dir.join(n)).collect();
                    here.sort();
                    out.extend(here);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push((dir.display().to_string(), e.to_string())),
            }
        }
        Ok(out)
    }

    /// The directories `dir` (a glob, or a literal path) names: through `glob` when it has a
    /// wildcard (a directory it cannot read is an error with its path).
    fn expand_dirs(&self, dir: &str, sys: &mut Syscalls, errors: &mut Vec<(String, String)>) -> Result<Vec<PathBuf>, glob::PatternError> {
        if !has_wildcard(dir) {
            return Ok(vec![PathBuf::from(if dir.is_empty() { "." } else { dir })]);
        }
        // `x/**/*.log` matches `x/a.log` too (`**` is zero directories or more), but `glob`
        // expands `x/**` to what is below `x` only.
        let mut out = match dir.strip_suffix("/**") {
            Some(above) => self.expand_dirs(above, sys, errors)?,
            None => Vec::new(),
        };
        out.extend(globbed(dir, sys, errors)?.into_iter().filter(|p| p.is_dir()));
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every path the include globs match. The directories are walked here (`walk`; `glob`
    /// only for `**`) and listed through `cache`, shared with the rest of the look, their
    /// names matched as text with invalid UTF-8 replaced: `glob`'s own walk skips a name that
    /// is not UTF-8, and a log file so named would never be read, and never said.
    pub fn scan(&self, cache: &mut DirCache, sys: &mut Syscalls) -> Scan {
        self.scan_watching(cache, sys, &mut |_| {})
    }

    /// `scan`, giving `watch` on the way every directory a matching file could appear in or
    /// below — each glob's literal base (or its nearest existing ancestor) and every directory
    /// its directory part expands to (`/var/log/pods`, `/var/log/pods/*`, `/var/log/pods/*/*`
    /// for `/var/log/pods/*/*/*.log`) — each before it is listed, so a new pod's or container's
    /// directory is seen when it appears: one walk of the tree per look everywhere (each
    /// directory listed once, no stat of a directory's entries to tell subdirectories).
    pub fn scan_watching(&self, cache: &mut DirCache, sys: &mut Syscalls, watch: &mut dyn FnMut(&Path)) -> Scan {
        let mut watched = std::collections::HashSet::new();
        let mut watch = |d: &Path| {
            if watched.insert(d.to_path_buf()) {
                watch(d);
            }
        };
        for dir in self.base_dirs() {
            watch(&dir);
        }
        let mut scan = Scan::default();
        let mut seen = std::collections::HashSet::new();
        for pattern in &self.include {
            let mut matched = false;
            let paths = match self.expand(pattern, cache, sys, &mut scan.errors, &mut watch) {
                Ok(p) => p,
                Err(e) => {
                    scan.errors.push((pattern.clone(), e.to_string()));
                    continue;
                }
            };
            let last = Path::new(pattern).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let report_dirs = last != "*" && last != "**";
            for path in paths {
                if self.is_excluded(&path) || !seen.insert(path.clone()) {
                    continue;
                }
                if let Some(found) = stat_matched(&path, report_dirs, sys, &mut scan.errors) {
                    matched = true;
                    scan.files.push(found);
                }
            }
            if !matched {
                scan.unmatched.push(pattern.clone());
            }
        }
        scan
    }
}

/// `stat` a path (following symlinks, as Kubernetes' /var/log/containers links need). What is
/// not a regular file is skipped: a FIFO, socket or device is reported (reading one would block
/// or never end), and a directory too when `report_dirs` (a glob like `*.log` that matched one;
/// not `dir/*` or `**`, which match directories by design).
pub fn stat_path(path: &Path, sys: &mut Syscalls, errors: &mut Vec<(String, String)>) -> Option<Found> {
    stat_matched(path, false, sys, errors)
}

pub fn stat_matched(path: &Path, report_dirs: bool, sys: &mut Syscalls, errors: &mut Vec<(String, String)>) -> Option<Found> {
    use std::os::unix::fs::FileTypeExt;
    sys.stat += 1;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Some(Found {
            path: path.to_path_buf(),
            key: FileKey { dev: m.dev(), ino: m.ino() },
            size: m.size(),
            mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }),
        Ok(m) => {
            let t = m.file_type();
            let kind = if t.is_fifo() {
                "a FIFO"
            } else if t.is_socket() {
                "a socket"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_dir() && report_dirs {
                "a directory"
            } else {
                return None;
            };
            errors.push((path.display().to_string(), format!("{kind}, not a regular file: skipped")));
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            errors.push((path.display().to_string(), e.to_string()));
            None
        }
    }
}

impl Discoverer {
    /// For a directory glob holding `**`: every directory each of its prefixes names, through
    /// `glob` (what every glob's watches were before the walk).
    fn deep_watch_dirs(&self, dir: &Path, sys: &mut Syscalls) -> Vec<PathBuf> {
        let parts: Vec<_> = dir.components().collect();
        let mut out = Vec::new();
        for n in literal_len(&parts) + 1..=parts.len() {
            let prefix: PathBuf = parts[..n].iter().collect();
            let Ok(paths) = glob::glob(&prefix.to_string_lossy()) else { continue };
            sys.readdir += 1;
            out.extend(paths.flatten().filter(|d| d.is_dir()));
        }
        out
    }
}

/// Directory listings and sibling stats shared by one look, so that tailing many files of one
/// directory costs one listing per look, not one per file, and a rotated sibling is stat'ed
/// once per look however many rules ask about it.
#[derive(Default)]
pub struct DirCache {
    listings: std::collections::HashMap<PathBuf, Listing>,
    stats: std::collections::HashMap<PathBuf, Option<Found>>,
}

impl DirCache {
    pub fn clear(&mut self) {
        self.listings.clear();
        self.stats.clear();
    }

    fn stat(&mut self, path: &Path, sys: &mut Syscalls, errors: &mut Vec<(String, String)>) -> Option<Found> {
        if let Some(found) = self.stats.get(path) {
            return found.clone();
        }
        let found = stat_path(path, sys, errors);
        self.stats.insert(path.to_path_buf(), found.clone());
        found
    }

    fn names(&mut self, dir: &Path, sys: &mut Syscalls) -> &[std::ffi::OsString] {
        self.listing(dir, sys).unwrap_or(&[])
    }

    /// The names in `dir`, listed once per look; a directory that cannot be listed says why
    /// (and is tried again when asked again).
    pub fn listing(&mut self, dir: &Path, sys: &mut Syscalls) -> std::io::Result<&[std::ffi::OsString]> {
        Ok(&self.listed(dir, sys)?.names)
    }

    fn listed(&mut self, dir: &Path, sys: &mut Syscalls) -> std::io::Result<&Listing> {
        if !self.listings.contains_key(dir) {
            sys.readdir += 1;
            let mut l = Listing::default();
            for e in std::fs::read_dir(dir)?.flatten() {
                // The kind the directory entry gives (no stat); a symlink's is its target's.
                l.is_dir.push(e.file_type().ok().filter(|t| !t.is_symlink()).map(|t| t.is_dir()));
                l.names.push(e.file_name());
            }
            self.listings.insert(dir.to_path_buf(), l);
        }
        Ok(&self.listings[dir])
    }

    /// The subdirectories of `dir` (symlinks to directories included), from its listing.
    fn subdirs(&mut self, dir: &Path, sys: &mut Syscalls) -> std::io::Result<Vec<PathBuf>> {
        let l = self.listed(dir, sys)?;
        let mut unknown = Vec::new();
        let mut out = Vec::new();
        for (name, kind) in l.names.iter().zip(&l.is_dir) {
            match kind {
                Some(true) => out.push(dir.join(name)),
                Some(false) => {}
                None => unknown.push(dir.join(name)),
            }
        }
        for p in unknown {
            sys.stat += 1;
            if p.is_dir() {
                out.push(p);
            }
        }
        Ok(out)
    }
}

/// One directory's names, and whether each is a directory (`None`: a symlink, or a kind the
/// filesystem does not give in its listing: a stat tells).
#[derive(Default)]
struct Listing {
    names: Vec<std::ffi::OsString>,
    is_dir: Vec<Option<bool>>,
}

/// Whether a glob (or one component of it) has a wildcard.
fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// How many of a glob's leading components have no wildcard.
fn literal_len(parts: &[std::path::Component<'_>]) -> usize {
    parts.iter().take_while(|c| !has_wildcard(&c.as_os_str().to_string_lossy())).count()
}

/// A glob's leading components without a wildcard (`/var/log/pods` for
/// `/var/log/pods/*/*/*.log`; the whole path when it has none).
fn literal_prefix(pattern: &Path) -> PathBuf {
    let parts: Vec<_> = pattern.components().collect();
    parts[..literal_len(&parts)].iter().collect()
}

/// What `glob` expands `pattern` to; a directory it cannot read is an error with its path.
fn globbed(pattern: &str, sys: &mut Syscalls, errors: &mut Vec<(String, String)>) -> Result<Vec<PathBuf>, glob::PatternError> {
    sys.readdir += 1;
    let mut out = Vec::new();
    for entry in glob::glob(pattern)? {
        match entry {
            Ok(p) => out.push(p),
            Err(e) => errors.push((e.path().display().to_string(), e.error().to_string())),
        }
    }
    Ok(out)
}

/// Names of compressed or temporary files: never read as text (the kubelet compresses rotated
/// container logs to `.gz`, written as `.gz.tmp` first).
pub fn is_archive_name(name: &[u8]) -> bool {
    [&b".gz"[..], b".tmp", b".zst", b".bz2", b".xz", b".zip", b".lz4"].iter().any(|s| name.ends_with(s))
}

/// Paths in `path`'s directory whose names start with its file name (and are longer), kept
/// by `keep` (the rest of the name).
fn siblings(path: &Path, cache: &mut DirCache, sys: &mut Syscalls, keep: impl Fn(&[u8]) -> bool) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return vec![] };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let name = name.as_encoded_bytes();
    cache
        .names(dir, sys)
        .iter()
        .filter(|f| {
            let b = f.as_encoded_bytes();
            b.len() > name.len() && b.starts_with(name) && keep(b)
        })
        .map(|f| dir.join(f))
        .collect()
}

/// Regular files in `path`'s directory whose names start with its file name (rotated siblings:
/// `app.log.1`, `app.log-20260101`, `0.log.20260101-101500`, ...), excluding `path` itself and
/// compressed or temporary files.
pub fn rotated_siblings(path: &Path, cache: &mut DirCache, sys: &mut Syscalls) -> Vec<Found> {
    let matching = siblings(path, cache, sys, |b| !is_archive_name(b));
    let mut errors = Vec::new();
    let mut out: Vec<Found> = matching.iter().filter_map(|p| cache.stat(p, sys, &mut errors)).collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// gzip-compressed siblings of `path` (the kubelet's `0.log.<YYYYmmdd-HHMMSS>.gz`), newest
/// name first; never `.gz.tmp` (still being written).
pub fn compressed_siblings(path: &Path, cache: &mut DirCache, sys: &mut Syscalls) -> Vec<PathBuf> {
    let mut out = siblings(path, cache, sys, |b| b.ends_with(b".gz"));
    out.sort_by(|a, b| b.cmp(a));
    out
}

/// The open-files limit (soft, hard); `None` when it cannot be read.
pub fn nofile_limit() -> Option<(u64, u64)> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0).then_some((rl.rlim_cur, rl.rlim_max))
}

/// Raise the open-files soft limit to the hard limit (a node can hold thousands of log files).
/// Returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let Some((soft, hard)) = nofile_limit() else { return 0 };
    // SAFETY: setrlimit only reads the struct we pass.
    unsafe {
        let rl = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        rl.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_with_double_star_and_exclude() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        for p in ["x.log", "a/y.log", "a/b/z.log", "a/b/skip.log", "a/b/n.txt"] {
            std::fs::write(d.path().join(p), "1\n").unwrap();
        }
        let inc = vec![format!("{}/**/*.log", d.path().display())];
        let exc = vec!["**/skip.log".to_string()];
        let disc = Discoverer::new(&inc, &exc, &[]).unwrap();
        let mut sys = Syscalls::default();
        let scan = disc.scan(&mut DirCache::default(), &mut sys);
        let mut names: Vec<_> = scan.files.iter().map(|f| f.path.strip_prefix(d.path()).unwrap().display().to_string()).collect();
        names.sort();
        assert_eq!(names, vec!["a/b/z.log", "a/y.log", "x.log"]);
        assert!(scan.unmatched.is_empty());
    }

    #[test]
    fn a_name_that_is_not_utf8_is_found_by_every_way_of_looking() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("pod");
        std::fs::create_dir(&sub).unwrap();
        let bad = sub.join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe.log"));
        let skip = sub.join(std::ffi::OsStr::from_bytes(b"skip\xff.log"));
        for p in [&bad, &skip, &sub.join("ok.log"), &sub.join("n.txt")] {
            std::fs::write(p, "1\n").unwrap();
        }
        let inc = vec![format!("{}/*/*.log", d.path().display())];
        let disc = Discoverer::new(&inc, &[format!("{}/*/skip*", d.path().display())], &[]).unwrap();
        let mut sys = Syscalls::default();
        // A look everywhere (`glob` alone skipped the name: the file was never read nor said),
        // a look of its directory, and the exclude globs: all match it as text.
        let mut cache = DirCache::default();
        let found: Vec<PathBuf> = disc.scan(&mut cache, &mut sys).files.into_iter().map(|f| f.path).collect();
        assert_eq!(found, vec![bad.clone(), sub.join("ok.log")]);
        let scoped: Vec<PathBuf> = disc.scan_dirs([sub.clone()].iter(), &mut DirCache::default(), &mut sys).files.into_iter().map(|f| f.path).collect();
        assert_eq!(scoped.len(), 2);
        assert!(scoped.contains(&bad) && disc.matches(&bad) && !disc.matches(&skip));
        // One listing of the directory for the look: the names are the cache's, for the rest of it.
        let before = sys.readdir;
        assert_eq!(cache.names(&sub, &mut sys).len(), 4);
        assert_eq!(sys.readdir, before);
        // A directory so named in the middle of a glob is walked into too (`glob` skipped it),
        // and watched.
        let pod = d.path().join(std::ffi::OsStr::from_bytes(b"pod\xff"));
        std::fs::create_dir(&pod).unwrap();
        std::fs::write(pod.join("x.log"), "1\n").unwrap();
        let found: Vec<PathBuf> = disc.scan(&mut DirCache::default(), &mut sys).files.into_iter().map(|f| f.path).collect();
        assert_eq!(found, vec![bad.clone(), sub.join("ok.log"), pod.join("x.log")]);
        let mut watched = Vec::new();
        disc.scan_watching(&mut DirCache::default(), &mut sys, &mut |d| watched.push(d.to_path_buf()));
        assert!(watched.contains(&pod));
    }

    #[test]
    fn raise_limit_reaches_hard_limit() {
        let soft = raise_nofile_limit();
        let (cur, max) = nofile_limit().unwrap();
        assert_eq!(soft, max);
        assert_eq!(cur, max);
    }
}
