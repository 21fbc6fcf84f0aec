"""tailrace: a log collector whose Rust core tails files and whose trio pipeline ships batches."""

__version__ = "0.1.0"
