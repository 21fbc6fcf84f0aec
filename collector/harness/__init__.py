"""The benchmark harness, shipped in the package so that it runs where it matters (`tailrace
bench watchmodes|throughput` from an installed wheel or the image): the load generator
(`appender`), a loopback OTLP/HTTP receiver that accounts for every line (`receiver`), and the
two harnesses. The tests use the same appender and receiver."""
