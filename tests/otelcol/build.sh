#!/bin/sh
# Builds the OpenTelemetry Collector used by the tests and benchmarks into
# target/otelcol/otelcol-tailrace (skipped when it is newer than its sources).
# Go's module and build caches keep a rebuild cheap.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../../target/otelcol/otelcol-tailrace"
if [ -x "$out" ] && [ -z "$(find "$here" -newer "$out" -name '*.go' -o -newer "$out" -name 'go.*')" ]; then
    exit 0
fi
mkdir -p "$(dirname "$out")"
echo "building the OpenTelemetry Collector (v0.161.0) into $out" >&2
cd "$here"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out" .
