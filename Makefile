# Everything a fresh machine needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision come from the machine's local wheels where pip is capped (see pyproject ranges).
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-fast test-avx2 bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prcl demo

test: $(STAMP)
	$(BIN)/python -m pytest

# the edit loop: everything but the tests that train or spawn processes (CI runs the whole suite)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# the same with oneDNN's AVX2 kernels: other summation orders, which reproduce the AMD CI's (tests/tolerances.py)
test-avx2: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_prcl_loss.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
