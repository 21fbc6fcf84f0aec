# The two commands of the README:
#   make demo   set up, then run tailrace on the embedded default with demo traffic (Ctrl-C stops)
#   make test   set up, then run every test: the Rust core's (cargo test) and pytest
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup build bench clean

$(STAMP): requirements-test.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $(STAMP)

build: $(STAMP)
	$(BIN)/maturin develop --release --quiet

setup: build

demo: build
	$(BIN)/tailrace demo

test: build
	cargo test --release -p tailrace-core
	$(BIN)/python -m pytest -q

bench: build
	$(BIN)/python -m bench.throughput

clean:
	rm -rf $(VENV) target var out state
