# The two commands of the README:
#   make demo   set up, then run tailrace on the embedded default with demo traffic (Ctrl-C stops)
#   make test   set up, then run every test: the Rust core's (cargo test) and pytest
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup build lint bench tools clean

$(STAMP): requirements-test.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $(STAMP)

# Tools the tests need beyond Python and Rust: strace (the fstat guard's cross-check), openssl
# (a throwaway CA for the TLS tests), setpriv, prlimit, unshare and mount (util-linux, mount:
# permission, disk-full and doctor cases; the doctor's mounts stay in a private namespace),
# systemd-analyze (the unit is verified), the OpenTelemetry Collector and Helm, built from Go
# modules (tests/otelcol; helm.sh/helm/v3 into target/helm; Go's caches make a rebuild cheap).
tools:
	@for t in strace openssl util-linux:setpriv util-linux:prlimit util-linux:unshare mount:mount systemd:systemd-analyze; do pkg=$${t%%:*}; cmd=$${t##*:}; \
		command -v $$cmd >/dev/null \
		|| { command -v apt-get >/dev/null && apt-get install -y -qq $$pkg >/dev/null; } \
		|| { echo "make: $$cmd is needed (apt-get install $$pkg)"; exit 1; }; done
	@command -v go >/dev/null || { echo "make: Go is needed to build the OpenTelemetry Collector (tests/otelcol)"; exit 1; }
	tests/otelcol/build.sh tailrace
	@test -x target/helm/helm || { echo "building helm (helm.sh/helm/v3 v3.22.0) into target/helm" >&2; \
		GOBIN=$(CURDIR)/target/helm CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' helm.sh/helm/v3/cmd/helm@v3.22.0; }

build: $(STAMP)
	$(BIN)/maturin develop --release --quiet

setup: build

demo: build
	$(BIN)/tailrace demo

lint: build
	cargo clippy --release -p tailrace-core -p tailrace-python --all-targets -- -D warnings
	$(BIN)/ruff check collector bench tests
	$(BIN)/mypy --strict collector bench
	$(BIN)/python -m mypy.stubtest collector._native

test: tools lint
	cargo test --release -p tailrace-core
	$(BIN)/python -m pytest -q

bench: build
	$(BIN)/python -m bench.throughput

clean:
	rm -rf $(VENV) target var out state
