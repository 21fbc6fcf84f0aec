"""The flow: configuration → pipeline (tail loops driving the Rust core) → outputs (with the
spool they use). Everything a log line passes through on its way to a receiver."""
