//! tailrace's tailing core: everything that is per byte or per file.
//!
//! Stages, one module each: `discovery` (which paths), `watcher` (which files may have new
//! bytes), `reader` (bytes → lines), `batcher` (lines → encoded batches, wire forms in `otlp`), `checkpoints`
//! (identity → committed offset), tied together by `tailer`. No Python here: the bindings in
//! `rust/python` are a thin layer over [`Tailer`].
#![deny(warnings)]

pub mod batcher;
pub mod checkpoints;
pub mod counters;
pub mod discovery;
pub mod identity;
pub mod otlp;
pub mod reader;
pub mod tailer;
pub mod watcher;

pub use batcher::{Batch, Encodings};
pub use otlp::Compression;
pub use checkpoints::Checkpointer;
pub use counters::{Counters, Syscalls};
pub use tailer::{ReadFrom, Tailer, TailerConfig, WatchMode};
