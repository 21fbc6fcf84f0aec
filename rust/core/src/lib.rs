//! tailrace's tailing core: everything that is per byte or per file.
//!
//! Stages, one module each, in data-flow order: `discovery` (which paths), `rotation` (what a
//! path means at each look), `watcher` (which files may have new bytes; `naive` is Fluent
//! Bit's event path as one more strategy), `reader` (bytes → lines), `parser` (lines → records: plain, cri, docker), `batcher` (lines →
//! encoded batches, wire forms and codecs in `otlp`), `ledger` (acknowledgements → committed
//! offsets), `checkpoints` (identity → committed offset, on disk), tied together by `tailer`
//! (the phases of one step). Errors by kind in `error`. No Python here: the bindings in
//! `rust/python` are a thin layer over [`Tailer`].
#![deny(warnings)]

pub mod batcher;
pub mod checkpoints;
pub mod counters;
pub mod discovery;
pub mod error;
pub mod identity;
pub mod ledger;
pub mod naive;
pub mod otlp;
pub mod parser;
pub mod reader;
pub mod resource;
pub mod rotation;
pub mod tailer;
pub mod watcher;

pub use batcher::{Batch, Encodings};
pub use error::Error;
pub use ledger::Ledger;
pub use otlp::{CodecChoice, Compression};
pub use checkpoints::Checkpointer;
pub use counters::{Counters, Syscalls};
pub use tailer::{ReadFrom, Status, Tailer, TailerConfig, WatchMode};
