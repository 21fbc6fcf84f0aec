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

# Tools the tests need beyond Python and Rust: strace (the fstat guard's cross-check).
tools:
	@command -v strace >/dev/null || { command -v apt-get >/dev/null && apt-get install -y -qq strace >/dev/null; } \
		|| { echo "make: strace is needed (apt-get install strace)"; exit 1; }

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
