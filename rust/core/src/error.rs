//! The core's errors, by kind, so that its owner can tell a configuration to fix from a disk
//! that failed or a state file that cannot be trusted. The bindings map each kind to one
//! Python exception in one place (`rust/python/src/lib.rs`, `to_py_err`).

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// A value the configuration gave that the core cannot use (a bad glob, an unknown
    /// codec): the message names the key.
    Config(String),
    /// An operating-system call failed: `context` says on what.
    Io { context: String, source: std::io::Error },
    /// A state file that cannot be read back without guessing (it does not parse, or is of
    /// another version): named, never silently replaced.
    CorruptState { path: PathBuf, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) => f.write_str(msg),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::CorruptState { path, detail } => write!(f, "{}: {detail}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
