# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned only when it must be installed: 2.13.0 is a CPU build on this project's machines.
TORCH ?= torch==2.13.0
# Every later install keeps the installed torch (a bare `torch` requirement would pull a multi-GB CUDA build).
CONSTRAINTS := $(VENV)/constraints.txt
PIP := $(BIN)/pip install -q -c $(CONSTRAINTS)

.PHONY: setup demo test check floor bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/python -c 'import torch; print("torch==" + torch.__version__)' > $(CONSTRAINTS)
	$(PIP) -e ".[test,dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/mmpool demo

# Lint, format and types: what .ci/run checks before the tests.
check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup
	$(BIN)/python -m pytest -q

# The suite against the lowest versions pyproject.toml allows (a venv of its own).
floor:
	bash .ci/floor

bench: setup
	$(PIP) -e ".[bench]"
	$(BIN)/pip install -q --no-deps mosaicml-streaming Brotli catalogue python-snappy zstd
	$(BIN)/mmpool bench --scale small

clean:
	rm -rf $(VENV) .venv-floor mmpool_demo bench_out
