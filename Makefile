# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned only when it must be installed: 2.13.0 is a CPU build on this project's machines.
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/mmpool demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/pip install -q -e ".[bench]" "$$($(BIN)/python -c 'import torch; print("torch==" + torch.__version__)')"
	$(BIN)/pip install -q --no-deps mosaicml-streaming Brotli catalogue python-snappy zstd
	$(BIN)/mmpool bench --scale small

clean:
	rm -rf $(VENV) mmpool_demo bench_out
