"""Self-observation: the continuous profiler and the `profile` command, telemetry (metrics on
/metrics and pushed as OTLP), the admin endpoint, and `tailrace top`. None of it is on the path
of a log line."""
