#!/bin/sh
# The one builder of the OpenTelemetry Collectors tailrace runs:
#   tests/otelcol/build.sh tailrace   the tests' receiving end  → target/otelcol/otelcol-tailrace
#   tests/otelcol/build.sh filelog    the benchmarks' filelog peer → target/otelcol/otelcol-filelog
# A build is a directory here holding its go.mod (one release of every collector module) and
# its component list (components.go); the program around them is main.go, shared. Skipped
# when the binary is newer than its sources; Go's module and build caches keep a rebuild cheap.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: build.sh tailrace|filelog}
src="$here/$build"
[ -f "$src/components.go" ] || { echo "build.sh: no build named $build in $here" >&2; exit 2; }
out="$here/../../target/otelcol/otelcol-$build"
if [ -x "$out" ] && [ -z "$(find "$src" "$here/main.go" -newer "$out" \( -name '*.go' -o -name 'go.*' \))" ]; then
    exit 0
fi
release=$(sed -n 's|^[[:space:]]*go.opentelemetry.io/collector/otelcol v||p' "$src/go.mod")
mkdir -p "$(dirname "$out")"
echo "building the OpenTelemetry Collector $build (v$release) into $out" >&2
cp "$here/main.go" "$src/main.go"
trap 'rm -f "$src/main.go"' EXIT
cd "$src"
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.command=otelcol-$build -X main.release=$release" -o "$out" .
