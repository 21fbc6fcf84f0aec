#!/bin/sh
# Builds the OpenTelemetry Collector peer of bench/watchmodes.py into
# target/otelcol/otelcol-filelog (skipped when it is newer than its sources).
# Go's module and build caches keep a rebuild cheap.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../../target/otelcol/otelcol-filelog"
if [ -x "$out" ] && [ -z "$(find "$here" -newer "$out" -name '*.go' -o -newer "$out" -name 'go.*')" ]; then
    exit 0
fi
mkdir -p "$(dirname "$out")"
echo "building the OpenTelemetry Collector filelog peer (v0.165.1) into $out" >&2
cd "$here"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out" .
