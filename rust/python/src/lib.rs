//! Thin pyo3 bindings over `tailrace_core`: convert arguments, release the GIL around every call
//! that does I/O, hand Python whole batches (one `bytes` each), map errors in one place.
#![deny(warnings)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tailrace_core::batcher::BatchLimits;
use tailrace_core::{Encodings, ReadFrom, TailerConfig, WatchMode};

fn value_err(e: String) -> PyErr {
    PyValueError::new_err(e)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Identity → committed offset for every input, in `state_dir/checkpoints.json`.
#[pyclass(frozen, module = "collector._native")]
struct Checkpointer {
    inner: Arc<Mutex<tailrace_core::Checkpointer>>,
}

#[pymethods]
impl Checkpointer {
    #[new]
    #[pyo3(signature = (state_dir, forget_after = 7.0 * 86400.0))]
    fn new(state_dir: &str, forget_after: f64) -> PyResult<Self> {
        let cp = tailrace_core::Checkpointer::open(std::path::Path::new(state_dir), secs(forget_after)).map_err(value_err)?;
        Ok(Checkpointer { inner: Arc::new(Mutex::new(cp)) })
    }

    /// Write the checkpoint file atomically (tmp + fsync + rename). Returns the entry count.
    fn write(&self, py: Python<'_>) -> PyResult<usize> {
        let inner = self.inner.clone();
        py.detach(move || inner.lock().expect("checkpointer lock").write()).map_err(|e| PyOSError::new_err(e.to_string()))
    }

    #[getter]
    fn existed(&self) -> bool {
        self.inner.lock().expect("checkpointer lock").existed()
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.lock().expect("checkpointer lock").path().display().to_string()
    }

    fn __len__(&self) -> usize {
        self.inner.lock().expect("checkpointer lock").len()
    }

    /// Committed offset of the file at `path` for `input` (by identity), if tracked.
    fn offset_of(&self, input: &str, path: &str) -> PyResult<Option<u64>> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| PyOSError::new_err(e.to_string()))?;
        let key = tailrace_core::identity::FileKey { dev: m.dev(), ino: m.ino() };
        Ok(self.inner.lock().expect("checkpointer lock").get(input, key).map(|e| e.offset))
    }
}

/// One batch: its records in the wire forms the outputs asked for. `json` is an OTLP/JSON
/// document; `encode()` gives the OTLP protobuf request, compressed. Acknowledge it with
/// `Tailer.commit(id)`.
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
    /// with `compression` (zstd, gzip or none) at `level`. The GIL is released meanwhile.
    #[pyo3(signature = (compression = "zstd", level = 1, start = 0, end = None))]
    fn encode<'py>(&self, py: Python<'py>, compression: &str, level: i32, start: usize, end: Option<usize>) -> PyResult<Bound<'py, PyBytes>> {
        let codec = tailrace_core::Compression::parse(compression).map_err(value_err)?;
        let inner = self.inner.clone();
        let end = end.unwrap_or(inner.records as usize);
        if start == 0 && end >= inner.records as usize {
            if let Some(done) = inner.precompressed(codec, level) {
                return Ok(PyBytes::new(py, done)); // compressed when the batch closed
            }
        }
        let out = py.detach(move || inner.encode(codec, level, start, end)).map_err(value_err)?;
        Ok(PyBytes::new(py, &out))
    }

    /// Whether `encode(compression, level)` of the whole batch is ready without work.
    #[pyo3(signature = (compression, level))]
    fn is_precompressed(&self, compression: &str, level: i32) -> bool {
        tailrace_core::Compression::parse(compression).is_ok_and(|c| self.inner.precompressed(c, level).is_some())
    }

    fn __repr__(&self) -> String {
        format!("Batch(id={}, records={}, input_bytes={})", self.inner.id, self.inner.records, self.inner.input_bytes)
    }
}

/// One input's files: discovery, watching, reading, batching; checkpoints on commit.
#[pyclass(frozen, module = "collector._native")]
struct Tailer {
    inner: Mutex<tailrace_core::Tailer>,
    /// Acknowledgements that arrived while a step held the tailer; applied at the next call.
    acks: Mutex<Vec<u64>>,
}

fn to_py(batches: Vec<tailrace_core::Batch>) -> Vec<Batch> {
    batches.into_iter().map(|b| Batch { inner: Arc::new(b) }).collect()
}

impl Tailer {
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut tailrace_core::Tailer) -> T + Send) -> T {
        py.detach(|| {
            let mut t = self.inner.lock().expect("tailer lock");
            for id in std::mem::take(&mut *self.acks.lock().expect("acks lock")) {
                t.commit(id);
            }
            f(&mut t)
        })
    }
}

#[pymethods]
impl Tailer {
    #[new]
    #[pyo3(signature = (checkpointer, *, name, paths, exclude = vec![], watch = "poll", poll_interval = 0.25,
        rescan_interval = 1.0, read_from = "beginning", max_line_bytes = 1 << 20, read_budget = 256 * 1024,
        partial_flush = 5.0, rotate_wait = 5.0, close_inactive = 300.0, batch_max_bytes = 1 << 20,
        batch_max_records = 10_000, batch_max_age = 0.1, host = "localhost".to_string(), first_batch_id = 1,
        encodings = vec!["proto".to_string()], compression = None, compression_level = 1, coalesce = Some(0.0)))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        checkpointer: &Checkpointer,
        name: String,
        paths: Vec<String>,
        exclude: Vec<String>,
        watch: &str,
        poll_interval: f64,
        rescan_interval: f64,
        read_from: &str,
        max_line_bytes: usize,
        read_budget: usize,
        partial_flush: f64,
        rotate_wait: f64,
        close_inactive: f64,
        batch_max_bytes: usize,
        batch_max_records: usize,
        batch_max_age: f64,
        host: String,
        first_batch_id: u64,
        encodings: Vec<String>,
        compression: Option<&str>,
        compression_level: i32,
        coalesce: Option<f64>,
    ) -> PyResult<Self> {
        let compression = match compression {
            Some(c) => Some((tailrace_core::Compression::parse(c).map_err(value_err)?, compression_level)),
            None => None,
        };
        let watch = match watch {
            "poll" => WatchMode::Poll,
            "inotify" => WatchMode::Inotify,
            "naive" => WatchMode::Naive,
            "auto" => WatchMode::Auto,
            other => return Err(value_err(format!("watch: {other:?} (auto, inotify, poll or naive)"))),
        };
        let read_from = match read_from {
            "beginning" => ReadFrom::Beginning,
            "end" => ReadFrom::End,
            other => return Err(value_err(format!("read_from: {other:?} (beginning or end)"))),
        };
        let mut enc = Encodings { proto: false, json: false };
        for e in &encodings {
            match e.as_str() {
                "proto" => enc.proto = true,
                "json" => enc.json = true,
                other => return Err(value_err(format!("encodings: {other:?} (proto or json)"))),
            }
        }
        if !enc.proto && !enc.json {
            enc.proto = true;
        }
        if max_line_bytes == 0 {
            return Err(value_err("max_line_bytes must be positive".into()));
        }
        let cfg = TailerConfig {
            name,
            paths,
            exclude,
            watch,
            poll_interval: secs(poll_interval),
            rescan_interval: secs(rescan_interval),
            read_from,
            max_line_bytes,
            read_budget: read_budget.max(1),
            partial_flush: secs(partial_flush),
            rotate_wait: secs(rotate_wait),
            close_inactive: secs(close_inactive),
            batch: BatchLimits { max_bytes: batch_max_bytes.max(1), max_records: batch_max_records.max(1), max_age: secs(batch_max_age) },
            encodings: enc,
            compression,
            host,
            coalesce: coalesce.map(secs),
            ..TailerConfig::default()
        };
        let t = tailrace_core::Tailer::new(cfg, checkpointer.inner.clone(), first_batch_id).map_err(value_err)?;
        Ok(Tailer { inner: Mutex::new(t), acks: Mutex::new(Vec::new()) })
    }

    /// One pass (GIL released): look at paths if due, read what may have grown, return the
    /// batches that closed.
    fn step(&self, py: Python<'_>) -> Vec<Batch> {
        let batches = self.with(py, |t| t.step(Instant::now()));
        to_py(batches)
    }

    /// Close the open batch and return every batch not yet handed out (shutdown).
    fn flush(&self, py: Python<'_>) -> Vec<Batch> {
        let batches = self.with(py, |t| t.flush(Instant::now()));
        to_py(batches)
    }

    /// Every output acknowledged batch `id` (or dropped it on purpose): checkpoints may advance.
    fn commit(&self, id: u64) {
        match self.inner.try_lock() {
            Ok(mut t) => {
                for id in std::mem::take(&mut *self.acks.lock().expect("acks lock")) {
                    t.commit(id);
                }
                t.commit(id);
            }
            Err(_) => self.acks.lock().expect("acks lock").push(id),
        }
    }

    /// Apply acknowledgements queued while a step ran (before writing checkpoints).
    fn sync(&self, py: Python<'_>) {
        self.with(py, |_| ());
    }

    /// The descriptor that becomes readable when there is news (inotify modes), else None.
    fn readiness_fd(&self) -> Option<i32> {
        self.inner.lock().expect("tailer lock").readiness_fd()
    }

    /// Seconds until `step` has work without new input (0 when it has work now).
    fn next_wakeup(&self) -> f64 {
        let t = self.inner.lock().expect("tailer lock");
        let now = Instant::now();
        t.next_wakeup(now).saturating_duration_since(now).as_secs_f64()
    }

    /// Files said to be written wait to be read (sleep until `next_wakeup`; their events are
    /// drained already).
    fn has_waiting(&self) -> bool {
        self.inner.lock().expect("tailer lock").has_waiting()
    }

    /// Seconds written files wait before they are read (auto mode adapts it).
    fn read_delay(&self) -> f64 {
        self.inner.lock().expect("tailer lock").read_delay().as_secs_f64()
    }

    /// Input bytes consumed into records so far (cheap: to tell a busy step from an idle one).
    fn bytes_read(&self) -> u64 {
        self.inner.lock().expect("tailer lock").counters.bytes
    }

    /// Problems to report once each (unreadable paths, patterns matching nothing).
    fn take_reports(&self) -> Vec<String> {
        self.inner.lock().expect("tailer lock").take_reports()
    }

    /// Counters: lines, bytes, files, rotations, ..., and syscalls by kind (`syscalls_*`).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.inner.lock().expect("tailer lock");
        let c = t.counters;
        let d = PyDict::new(py);
        for (k, v) in [
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
            ("steady_on", c.steady_on),
            ("steady_off", c.steady_off),
            ("files_open", t.files_open() as u64),
            ("files_tracked", t.files_tracked() as u64),
            ("pending_batches", t.pending_batches() as u64),
            ("syscalls_open", c.syscalls.open),
            ("syscalls_close", c.syscalls.close),
            ("syscalls_read", c.syscalls.read),
            ("syscalls_fstat", c.syscalls.fstat),
            ("syscalls_stat", c.syscalls.stat),
            ("syscalls_lseek", c.syscalls.lseek),
            ("syscalls_readdir", c.syscalls.readdir),
            ("syscalls_inotify_read", c.syscalls.inotify_read),
            ("syscalls_fadvise", c.syscalls.fadvise),
            ("syscalls_inotify_remask", c.syscalls.inotify_remask),
        ] {
            d.set_item(k, v)?;
        }
        d.set_item("invalid_utf8", t.invalid_utf8())?;
        Ok(d)
    }
}

/// Raise the open-files soft limit to the hard limit; returns the new soft limit.
#[pyfunction]
fn raise_nofile_limit() -> u64 {
    tailrace_core::discovery::raise_nofile_limit()
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Checkpointer>()?;
    m.add_class::<Tailer>()?;
    m.add_class::<Batch>()?;
    m.add_function(wrap_pyfunction!(raise_nofile_limit, m)?)?;
    m.add("CORE_VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
