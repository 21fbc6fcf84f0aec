//! Thin pyo3 bindings over `tailrace_core`: convert arguments, release the GIL around every call
//! that does I/O or takes a lock a worker thread may hold, hand Python whole batches (one
//! `bytes` each), and map the core's errors to Python exceptions in one place (`to_py_err`).
#![deny(warnings)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tailrace_core::batcher::BatchLimits;
use tailrace_core::parser::Format;
use tailrace_core::watcher::WakeFds;
use tailrace_core::{CodecChoice, Compression, Encodings, Error, Ledger, ReadFrom, Status, TailerConfig, WatchMode};

create_exception!(_native, ConfigError, PyValueError, "A value the core cannot use; the message names the key.");
create_exception!(_native, CorruptState, PyException, "A state file that cannot be read back without guessing; the message names it.");

/// The one error adapter: configuration → `ConfigError` (a `ValueError`), I/O → `OSError`
/// (with its errno), a state file that cannot be trusted → `CorruptState`.
fn to_py_err(e: Error) -> PyErr {
    match e {
        Error::Config(msg) => ConfigError::new_err(msg),
        Error::Io { context, source } => match source.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, format!("{context}: {source}"))),
            None => PyOSError::new_err(format!("{context}: {source}")),
        },
        e @ Error::CorruptState { .. } => CorruptState::new_err(e.to_string()),
    }
}

/// A dict of named counts.
fn counts<'py>(py: Python<'py>, items: &[(&str, u64)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in items {
        d.set_item(k, v)?;
    }
    Ok(d)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn codec(name: &str) -> PyResult<Compression> {
    Compression::parse(name).map_err(to_py_err)
}

/// Identity → committed offset for every input: `state_dir/checkpoints.json` (the snapshot)
/// and `state_dir/checkpoints.journal` (the changes since).
#[pyclass(frozen, module = "collector._native")]
struct Checkpointer {
    inner: Arc<Mutex<tailrace_core::Checkpointer>>,
    /// Named in errors: what could not be written where (a full disk, a read-only mount).
    state_dir: String,
}

impl Checkpointer {
    /// The checkpointer, locked with the GIL released (a tailer's look may hold it).
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut tailrace_core::Checkpointer) -> T + Send) -> T {
        py.detach(|| f(&mut self.inner.lock().expect("checkpointer lock")))
    }
}

#[pymethods]
impl Checkpointer {
    #[new]
    fn new(py: Python<'_>, state_dir: &str, forget_after: f64) -> PyResult<Self> {
        let cp = py.detach(|| tailrace_core::Checkpointer::open(std::path::Path::new(state_dir), secs(forget_after))).map_err(to_py_err)?;
        Ok(Checkpointer { inner: Arc::new(Mutex::new(cp)), state_dir: state_dir.to_owned() })
    }

    /// Make what was journaled durable (fsync), compacting when due. Returns the entry count.
    fn write(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c| c.write()).map_err(|e| to_py_err(Error::io(format!("write checkpoints in {}", self.state_dir), e)))
    }

    /// A new snapshot and an empty journal (at shutdown). Returns the entry count.
    fn compact(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c| c.compact()).map_err(|e| to_py_err(Error::io(format!("write checkpoints in {}", self.state_dir), e)))
    }

    /// Hand the entries of inputs no longer configured to the input whose globs read their
    /// files now (a renamed input; `Checkpointer::adopt_renamed`), and write a snapshot when
    /// any moved, before anything is read. `inputs`: every configured input's (name, paths,
    /// exclude). Returns (from, to, files): one `to` when moved, several when left as unclear.
    #[allow(clippy::type_complexity)]
    fn adopt_renamed(&self, py: Python<'_>, inputs: Vec<(String, Vec<String>, Vec<String>)>) -> PyResult<Vec<(String, Vec<String>, usize)>> {
        use tailrace_core::discovery::Discoverer;
        let names: Vec<&str> = inputs.iter().map(|(n, _, _)| n.as_str()).collect();
        // A glob the core cannot compile matches nothing here (check-config names it).
        let found: Vec<Option<Discoverer>> = inputs.iter().map(|(_, p, x)| Discoverer::new(p, x, &[]).ok()).collect();
        let moved = self.with(py, |c| {
            let moved = c.adopt_renamed(&names, |i, path| found[i].as_ref().is_some_and(|d| d.matches(path)));
            if moved.iter().any(|a| a.to.len() == 1) {
                c.compact()?;
            }
            Ok::<_, std::io::Error>(moved)
        });
        let moved = moved.map_err(|e| to_py_err(Error::io(format!("write checkpoints in {}", self.state_dir), e)))?;
        Ok(moved.into_iter().map(|a| (a.from, a.to, a.files)).collect())
    }

    /// What was written to the state directory: journal appends and bytes, fsyncs, snapshots
    /// and their bytes.
    fn write_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.with(py, |c| c.stats);
        let items = [("journal_writes", s.journal_writes), ("journal_bytes", s.journal_bytes), ("fsyncs", s.fsyncs),
            ("snapshots", s.snapshots), ("snapshot_bytes", s.snapshot_bytes)];
        counts(py, &items)
    }

    /// What opening the state found: journal records replayed, bytes of a torn tail cut off,
    /// the kind of a whole record this version does not read where reading stopped (0: none),
    /// a stale journal discarded (1), version 1 state migrated (1).
    #[getter]
    fn loaded<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let l = self.with(py, |c| c.loaded.clone());
        let items = [("records", l.records), ("torn_bytes", l.torn_bytes),
            ("unread_kind", u64::from(l.unread_kind)), ("stale_journal", u64::from(l.stale_journal)),
            ("migrated", u64::from(l.migrated))];
        counts(py, &items)
    }

    #[getter]
    fn existed(&self, py: Python<'_>) -> bool {
        self.with(py, |c| c.existed())
    }

    #[getter]
    fn path(&self, py: Python<'_>) -> String {
        self.with(py, |c| c.path().display().to_string())
    }

    #[getter]
    fn journal_path(&self, py: Python<'_>) -> String {
        self.with(py, |c| c.journal_path().display().to_string())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.with(py, |c| c.len())
    }

    /// Committed offset of the file at `path` for `input` (by identity), if tracked.
    fn offset_of(&self, py: Python<'_>, input: &str, path: &str) -> PyResult<Option<u64>> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| to_py_err(Error::io(path, e)))?;
        let key = tailrace_core::identity::FileKey { dev: m.dev(), ino: m.ino() };
        Ok(self.with(py, |c| c.get(input, key).map(|e| e.offset)))
    }
}

/// One batch: its records in the wire forms the outputs asked for. `json` is an OTLP/JSON
/// document; `encode()` gives the OTLP protobuf request, compressed. Acknowledge it with
/// `Tailer.commit(id)`, once per output.
#[pyclass(frozen, module = "collector._native")]
struct Batch {
    inner: Arc<tailrace_core::Batch>,
}

#[pymethods]
impl Batch {
    #[getter]
    fn id(&self) -> u64 {
        self.inner.id
    }

    #[getter]
    fn records(&self) -> u64 {
        self.inner.records
    }

    #[getter]
    fn input_bytes(&self) -> u64 {
        self.inner.input_bytes
    }

    /// Uncompressed size of the protobuf records (0 when protobuf was not asked for).
    #[getter]
    fn proto_bytes(&self) -> usize {
        self.inner.proto_len()
    }

    /// The OTLP/JSON document, one line (empty when JSON was not asked for).
    #[getter]
    fn json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.json)
    }

    /// The `ExportLogsServiceRequest` holding records `start..end` (all by default), compressed
    /// with `compression` at `level` (the bytes compressed when the batch closed if they
    /// match). The GIL is released meanwhile.
    #[pyo3(signature = (compression, level, start = 0, end = None))]
    fn encode<'py>(&self, py: Python<'py>, compression: &str, level: i32, start: usize, end: Option<usize>) -> PyResult<Bound<'py, PyBytes>> {
        let codec = codec(compression)?;
        let inner = &self.inner;
        let out = py.detach(|| inner.encode(codec, level, start, end.unwrap_or(usize::MAX))).map_err(to_py_err)?;
        Ok(PyBytes::new(py, &out))
    }

    /// Whether `encode(compression, level)` of the whole batch is ready without work.
    fn is_precompressed(&self, compression: &str, level: i32) -> bool {
        Compression::parse(compression).is_ok_and(|c| self.inner.precompressed(c, level).is_some())
    }

    fn __repr__(&self) -> String {
        format!("Batch(id={}, records={}, input_bytes={})", self.inner.id, self.inner.records, self.inner.input_bytes)
    }
}

/// What the owner reads between steps, published at the end of each (never the tailer's lock).
#[derive(Default)]
struct Published {
    status: Status,
    next_wakeup: Option<Instant>,
    reports: Vec<String>,
}

/// One input's files: discovery, watching, reading, batching; acknowledgements go to its
/// ledger, which commits checkpoints.
#[pyclass(frozen, module = "collector._native")]
struct Tailer {
    inner: Mutex<tailrace_core::Tailer>,
    ledger: Arc<Ledger>,
    codec: Arc<CodecChoice>,
    published: Mutex<Published>,
    wake: WakeFds,
    /// Test-only: steps wait here while held (`_hold_steps`), so a test can show the event loop
    /// answering while a worker is inside a step.
    hold: (Mutex<bool>, Condvar),
    held: AtomicBool,
}

fn to_py(batches: Vec<tailrace_core::Batch>) -> Vec<Batch> {
    batches.into_iter().map(|b| Batch { inner: Arc::new(b) }).collect()
}

impl Tailer {
    /// Run `f` on the tailer with the GIL released, then publish what the owner reads.
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut tailrace_core::Tailer) -> T + Send) -> T {
        py.detach(|| {
            let mut t = self.inner.lock().expect("tailer lock");
            {
                let mut on = self.hold.0.lock().expect("hold lock");
                while *on {
                    self.held.store(true, Ordering::SeqCst);
                    on = self.hold.1.wait(on).expect("hold lock");
                }
                self.held.store(false, Ordering::SeqCst);
            }
            self.wake.drain();
            let out = f(&mut t);
            let status = t.status();
            let now = Instant::now();
            let next_wakeup = t.next_wakeup(now);
            self.wake.arm(next_wakeup.saturating_duration_since(now));
            let reports = t.take_reports();
            let mut p = self.published.lock().expect("published lock");
            p.status = status;
            p.next_wakeup = Some(next_wakeup);
            p.reports.extend(reports);
            out
        })
    }

    /// The published state, read with the GIL released (a worker may be publishing).
    fn read<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut Published) -> T + Send) -> T {
        py.detach(|| f(&mut self.published.lock().expect("published lock")))
    }
}

#[pymethods]
impl Tailer {
    /// Every option is required: they are built from the configuration
    /// (`collector.flow.config.tailer_options`), the one place defaults are written.
    #[new]
    #[pyo3(signature = (checkpointer, *, name, paths, exclude, allowed_roots, watch, poll_interval, rescan_interval, read_from,
        format, max_line_bytes, read_budget, buffer_size, partial_flush, rotate_wait, close_inactive, batch_max_bytes,
        batch_max_records, batch_max_age, host, node_name, first_batch_id, encodings, compression, compression_level,
        coalesce, max_ready_batches, outputs, max_pending_bytes, include_file_name=true, include_file_path=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        checkpointer: &Checkpointer,
        name: String,
        paths: Vec<String>,
        exclude: Vec<String>,
        allowed_roots: Vec<String>,
        watch: &str,
        poll_interval: f64,
        rescan_interval: f64,
        read_from: &str,
        format: &str,
        max_line_bytes: usize,
        read_budget: usize,
        buffer_size: usize,
        partial_flush: f64,
        rotate_wait: f64,
        close_inactive: f64,
        batch_max_bytes: usize,
        batch_max_records: usize,
        batch_max_age: f64,
        host: String,
        node_name: Option<String>,
        first_batch_id: u64,
        encodings: Vec<String>,
        compression: Option<&str>,
        compression_level: i32,
        coalesce: Option<f64>,
        max_ready_batches: usize,
        outputs: u32,
        max_pending_bytes: usize,
        include_file_name: bool,
        include_file_path: bool,
    ) -> PyResult<Self> {
        let choice = match compression {
            Some(c) => Some((codec(c)?, compression_level)),
            None => None,
        };
        let mut enc = Encodings { proto: false, json: false };
        for e in &encodings {
            match e.as_str() {
                "proto" => enc.proto = true,
                "json" => enc.json = true,
                other => return Err(ConfigError::new_err(format!("encodings: {other:?} (proto or json)"))),
            }
        }
        if !enc.proto && !enc.json {
            return Err(ConfigError::new_err("encodings: at least one of proto and json"));
        }
        let cfg = TailerConfig {
            name,
            paths,
            exclude,
            allowed_roots,
            watch: WatchMode::parse(watch).map_err(to_py_err)?,
            poll_interval: secs(poll_interval),
            rescan_interval: secs(rescan_interval),
            read_from: ReadFrom::parse(read_from).map_err(to_py_err)?,
            format: Format::parse(format).map_err(to_py_err)?,
            max_line_bytes,
            read_budget,
            buffer_size,
            partial_flush: secs(partial_flush),
            rotate_wait: secs(rotate_wait),
            close_inactive: secs(close_inactive),
            batch: BatchLimits { max_bytes: batch_max_bytes.max(1), max_records: batch_max_records.max(1), max_age: secs(batch_max_age) },
            encodings: enc,
            host,
            node_name,
            file_attrs: tailrace_core::batcher::FileAttrs { name: include_file_name, path: include_file_path },
            max_ready_batches: max_ready_batches.max(1),
            coalesce: coalesce.map(secs),
            outputs,
            max_pending_bytes,
        };
        let cp = checkpointer.inner.clone();
        let codec = Arc::new(CodecChoice::new(choice.filter(|_| enc.proto)));
        let t = py.detach(|| tailrace_core::Tailer::new(cfg, cp, first_batch_id, codec)).map_err(to_py_err)?;
        let published = Mutex::new(Published { status: t.status(), next_wakeup: None, reports: Vec::new() });
        let wake = WakeFds::new(t.readiness_fd()).map_err(|e| PyOSError::new_err(format!("cannot make the wakeup timer: {e}")))?;
        Ok(Tailer {
            ledger: t.ledger(),
            codec: t.codec(),
            wake,
            inner: Mutex::new(t),
            published,
            hold: (Mutex::new(false), Condvar::new()),
            held: AtomicBool::new(false),
        })
    }

    /// One pass (GIL released): look at paths if due, read what may have grown, return the
    /// batches that closed.
    fn step(&self, py: Python<'_>) -> Vec<Batch> {
        to_py(self.with(py, |t| t.step(Instant::now())))
    }

    /// Count this tailer's unfinished lines against `other`'s memory bound (one bound for
    /// every input of the process), and say the files both inputs read.
    fn share_with(&self, py: Python<'_>, other: &Tailer) {
        if std::ptr::eq(self, other) {
            return;
        }
        py.detach(|| {
            let o = other.inner.lock().expect("tailer lock");
            self.inner.lock().expect("tailer lock").share_with(&o);
        })
    }

    /// Close the open batch and return every batch not yet handed out (shutdown).
    fn flush(&self, py: Python<'_>) -> Vec<Batch> {
        to_py(self.with(py, |t| t.flush(Instant::now())))
    }

    /// One output acknowledged batch `id` (delivered, spooled, or dropped on purpose). Returns
    /// True when that was the last output (its checkpoints may have advanced), False while
    /// others have not, None for a batch that is not pending. Never waits for a step.
    fn commit(&self, py: Python<'_>, id: u64) -> Option<bool> {
        let ledger = &self.ledger;
        py.detach(|| ledger.ack(id))
    }

    /// Batches from now on close compressed with this codec (the main output's current one),
    /// or are left for the output to compress (`None`).
    #[pyo3(signature = (compression, level))]
    fn set_compression(&self, compression: Option<&str>, level: i32) -> PyResult<()> {
        let choice = match compression {
            Some(c) => Some((codec(c)?, level)),
            None => None,
        };
        self.codec.set(choice);
        Ok(())
    }

    /// A descriptor that becomes readable at `next_wakeup` (armed by every step).
    fn timer_fd(&self) -> i32 {
        self.wake.timer_fd()
    }

    /// A descriptor that becomes readable at `next_wakeup` or when there is news (inotify),
    /// whichever comes first (the timer's alone when polling).
    fn wake_fd(&self) -> i32 {
        self.wake.either_fd()
    }

    /// Seconds until `step` has work without new input (0 when it has work now).
    fn next_wakeup(&self, py: Python<'_>) -> f64 {
        let at = self.read(py, |p| p.next_wakeup);
        at.map_or(0.0, |t| t.saturating_duration_since(Instant::now()).as_secs_f64())
    }

    /// Files said to be written wait to be read (sleep until `next_wakeup`; their events are
    /// drained already).
    fn has_waiting(&self, py: Python<'_>) -> bool {
        self.read(py, |p| p.status.waiting)
    }

    /// Seconds written files wait before they are read (auto mode adapts it).
    fn read_delay(&self, py: Python<'_>) -> f64 {
        self.read(py, |p| p.status.read_delay.as_secs_f64())
    }

    /// Input bytes consumed into records so far (to tell a busy step from an idle one).
    fn bytes_read(&self, py: Python<'_>) -> u64 {
        self.read(py, |p| p.status.counters.bytes)
    }

    /// Problems to report once each (unreadable paths, patterns matching nothing).
    fn take_reports(&self, py: Python<'_>) -> Vec<String> {
        self.read(py, |p| std::mem::take(&mut p.reports))
    }

    /// Counters as of the end of the last step: lines, bytes, files, rotations, ..., syscalls
    /// by kind (`syscalls_*`) and `stat_family` (what the fstat guard counts, defined once in
    /// the core). Answered while a step runs.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let ledger = &self.ledger;
        let (s, pending) = py.detach(|| (self.published.lock().expect("published lock").status.clone(), ledger.pending()));
        let c = s.counters;
        counts(
            py,
            &[
                ("lines", c.lines),
                ("bytes", c.bytes),
                ("files_opened", c.files_opened),
                ("files_closed", c.files_closed),
                ("rotations", c.rotations),
                ("truncations", c.truncations),
                ("deletions", c.deletions),
                ("split_lines", c.split_lines),
                ("partial_flushes", c.partial_flushes),
                ("open_errors", c.open_errors),
                ("read_errors", c.read_errors),
                ("batches", c.batches),
                ("steps", c.steps),
                ("inotify_overflows", c.inotify_overflows),
                ("inotify_events", c.inotify_events),
                ("read_passes", c.read_passes),
                ("scoped_looks", c.scoped_looks),
                ("recovered_from_gzip", c.recovered_from_gzip),
                ("outside_roots", c.outside_roots),
                ("memory_spills", c.memory_spills),
                ("panics", c.panics),
                ("pending_bytes", s.pending_bytes as u64),
                ("files_polled", s.files_polled as u64),
                ("steady_on", c.steady_on),
                ("steady_off", c.steady_off),
                ("files_open", s.files_open as u64),
                ("files_tracked", s.files_tracked as u64),
                ("pending_batches", pending as u64),
                ("invalid_utf8", s.invalid_utf8),
                ("parse_errors", c.parse_errors),
                ("stat_family", c.syscalls.stat_family()),
                ("syscalls_open", c.syscalls.open),
                ("syscalls_close", c.syscalls.close),
                ("syscalls_read", c.syscalls.read),
                ("syscalls_fstat", c.syscalls.fstat),
                ("syscalls_stat", c.syscalls.stat),
                ("syscalls_lseek", c.syscalls.lseek),
                ("syscalls_readdir", c.syscalls.readdir),
                ("syscalls_inotify_read", c.syscalls.inotify_read),
                ("syscalls_fadvise", c.syscalls.fadvise),
                ("syscalls_readlink", c.syscalls.readlink),
                ("syscalls_inotify_remask", c.syscalls.inotify_remask),
            ],
        )
    }

    /// Test-only: hold (True) or release (False) steps. A held step waits inside the tailer's
    /// lock, as a long step on a worker thread would.
    fn _hold_steps(&self, py: Python<'_>, on: bool) {
        py.detach(|| {
            *self.hold.0.lock().expect("hold lock") = on;
            self.hold.1.notify_all();
        })
    }

    /// Test-only: a step is waiting on `_hold_steps`.
    fn _step_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
}

/// A body compressed with `src`, recompressed with `dst` at `level` (a spooled batch for an
/// endpoint that now asks for another codec). The GIL is released meanwhile.
#[pyfunction]
fn transcode<'py>(py: Python<'py>, payload: &[u8], src: &str, dst: &str, level: i32) -> PyResult<Bound<'py, PyBytes>> {
    let (src, dst) = (codec(src)?, codec(dst)?);
    let out = py.detach(|| tailrace_core::otlp::transcode(payload, src, dst, level)).map_err(|e| to_py_err(Error::io("transcode", e)))?;
    Ok(PyBytes::new(py, &out))
}

/// The level a codec uses when the configuration gives none (zstd 1, gzip 6).
#[pyfunction]
fn default_level(compression: &str) -> PyResult<i32> {
    Ok(codec(compression)?.default_level())
}

/// Compressions this process made (every codec but none): a batch is compressed once.
#[pyfunction]
fn compressions() -> u64 {
    tailrace_core::otlp::COMPRESSIONS.load(Ordering::Relaxed)
}

/// The checkpoints of `state_dir` as a restart would read them (the snapshot, then the
/// journal), without writing anything: one dict per file (input, path, dev, ino, offset,
/// head_bytes), sorted by input and path.
#[pyfunction]
fn read_checkpoints<'py>(py: Python<'py>, state_dir: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let cp = py.detach(|| tailrace_core::Checkpointer::read(std::path::Path::new(state_dir), Duration::MAX)).map_err(to_py_err)?;
    let mut rows = cp.all_entries();
    rows.sort_by(|a, b| (&a.0, &a.2.path, a.1.ino).cmp(&(&b.0, &b.2.path, b.1.ino)));
    rows.into_iter()
        .map(|(input, k, e)| {
            let d = PyDict::new(py);
            d.set_item("input", input)?;
            d.set_item("path", &e.path)?;
            d.set_item("dev", k.dev)?;
            d.set_item("ino", k.ino)?;
            d.set_item("offset", e.offset)?;
            d.set_item("head_bytes", e.fp.bytes.len())?;
            Ok(d)
        })
        .collect()
}

/// Problems the core finds in an input's globs (`paths[1]: bad glob …`), as `run` would.
#[pyfunction]
fn check_globs(paths: Vec<String>, exclude: Vec<String>) -> Vec<String> {
    match tailrace_core::discovery::Discoverer::new(&paths, &exclude, &[]) {
        Ok(_) => Vec::new(),
        Err(e) => vec![e.to_string().trim_start_matches("configuration: ").to_string()],
    }
}

/// Whether an input's globs would read `path` (its include globs match it and no exclude glob
/// does), as the core matches: what tailrace itself writes must not be (`check`).
#[pyfunction]
fn glob_matches(paths: Vec<String>, exclude: Vec<String>, path: &str) -> bool {
    tailrace_core::discovery::Discoverer::new(&paths, &exclude, &[]).is_ok_and(|d| d.matches(std::path::Path::new(path)))
}

/// What an input's globs find now, as `run`'s first look would (`tailrace doctor`): the files,
/// the directories watched, the files `auto` would poll (with their filesystem), and what could
/// not be looked at.
#[pyfunction]
fn survey<'py>(py: Python<'py>, paths: Vec<String>, exclude: Vec<String>, allowed_roots: Vec<String>) -> PyResult<Bound<'py, PyDict>> {
    use tailrace_core::discovery::{DirCache, Discoverer};
    let d = Discoverer::new(&paths, &exclude, &allowed_roots).map_err(to_py_err)?;
    let (scan, dirs) = py.detach(|| {
        let mut dirs = Vec::new();
        let scan = d.scan_watching(&mut DirCache::default(), &mut tailrace_core::Syscalls::default(), &mut |dir| dirs.push(dir.to_path_buf()));
        dirs.sort();
        (scan, dirs)
    });
    let files: Vec<String> = scan.files.iter().map(|f| f.path.display().to_string()).collect();
    let polled = PyDict::new(py);
    for f in &scan.files {
        if let Some(fs) = tailrace_core::watcher::untrusted_fs(&f.path) {
            polled.set_item(f.path.display().to_string(), fs)?;
        }
    }
    let out = PyDict::new(py);
    out.set_item("files", files)?;
    out.set_item("watch_dirs", dirs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>())?;
    out.set_item("polled", polled)?;
    out.set_item("errors", scan.errors)?;
    out.set_item("unmatched", scan.unmatched)?;
    Ok(out)
}

/// Test-only: turn a deliberate regression on or off (`lseek`: one more call per read), so the
/// syscall budget's test shows that it fails on one.
#[pyfunction]
fn _inject_regression(kind: &str, on: bool) -> PyResult<()> {
    match kind {
        "lseek" => tailrace_core::reader::INJECT_LSEEK.store(on, Ordering::Relaxed),
        other => return Err(PyValueError::new_err(format!("no injectable regression {other:?} (lseek)"))),
    }
    Ok(())
}

/// Raise the open-files soft limit to the hard limit; returns the new soft limit.
#[pyfunction]
fn raise_nofile_limit() -> u64 {
    tailrace_core::discovery::raise_nofile_limit()
}

/// An SVG flamegraph of collapsed stacks (`a;b;c 12` lines) by `inferno`, the frames in
/// `highlight` drawn red (the profiler's stat family).
#[pyfunction]
fn flamegraph_svg(py: Python<'_>, collapsed: &str, title: &str, subtitle: &str, highlight: Vec<String>) -> PyResult<String> {
    use inferno::flamegraph::{self, color::{Color, PaletteMap}, Options};
    py.detach(|| {
        let mut map = PaletteMap::default();
        for f in highlight {
            map.insert(f, Color { r: 230, g: 0, b: 0 });
        }
        let mut opt = Options::default();
        opt.title = title.to_string();
        opt.subtitle = Some(subtitle.to_string()).filter(|s| !s.is_empty());
        opt.count_name = "samples".to_string();
        opt.deterministic = true;
        opt.hash = true;
        opt.palette_map = Some(&mut map);
        let mut out = Vec::new();
        // An empty profile is a valid (empty) graph, not an error.
        flamegraph::from_lines(&mut opt, collapsed.lines(), &mut out)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("flamegraph: {e}")))?;
        String::from_utf8(out).map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("flamegraph: {e}")))
    })
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Checkpointer>()?;
    m.add_class::<Tailer>()?;
    m.add_class::<Batch>()?;
    m.add("ConfigError", m.py().get_type::<ConfigError>())?;
    m.add("CorruptState", m.py().get_type::<CorruptState>())?;
    m.add_function(wrap_pyfunction!(transcode, m)?)?;
    m.add_function(wrap_pyfunction!(default_level, m)?)?;
    m.add_function(wrap_pyfunction!(compressions, m)?)?;
    m.add_function(wrap_pyfunction!(raise_nofile_limit, m)?)?;
    m.add_function(wrap_pyfunction!(read_checkpoints, m)?)?;
    m.add_function(wrap_pyfunction!(check_globs, m)?)?;
    m.add_function(wrap_pyfunction!(glob_matches, m)?)?;
    m.add_function(wrap_pyfunction!(flamegraph_svg, m)?)?;
    m.add_function(wrap_pyfunction!(survey, m)?)?;
    m.add_function(wrap_pyfunction!(_inject_regression, m)?)?;
    m.add("CORE_VERSION", env!("CARGO_PKG_VERSION"))?;
    // What the checkpointer writes in `state_dir` (no input may read them: `check`).
    m.add("CHECKPOINT_FILES", (tailrace_core::checkpoints::FILE_NAME, tailrace_core::checkpoints::JOURNAL_NAME))?;
    m.add("BUILD_COMMIT", env!("TAILRACE_COMMIT"))?;
    m.add("BUILD_RUSTC", env!("TAILRACE_RUSTC"))?;
    // The codecs by their spool byte (index): the spool's segment headers use these.
    m.add("CODECS", Compression::ALL.map(|c| c.name()).to_vec())?;
    Ok(())
}
