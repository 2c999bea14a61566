# The README's contract: `make run` and `make test` work on a fresh machine with
# Python 3.11+ and make. Everything else is a convenience.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Dev-only upstream key shared by the built-in simulator and the relay in `make run`.
export AZURE_OPENAI_API_KEY ?= sim-dev-upstream-key

.PHONY: run demo test lint typecheck pytest simulate bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11+ is required (PYTHON=$(PYTHON))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: the relay on 127.0.0.1:8080 with the built-in Azure simulator as upstream
run: $(STAMP)
	$(BIN)/realtime-relay run --config examples/dev.yaml --with-simulator

## demo: one scripted voice session through a fresh simulator + relay, with a trace
demo: $(STAMP)
	$(BIN)/realtime-relay demo

## simulate: only the Azure Realtime simulator, on 127.0.0.1:9000
simulate: $(STAMP)
	$(BIN)/realtime-relay simulate --host 127.0.0.1 --port 9000

## test: lint, type checks and the whole suite
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff format --check relay tests examples bench
	$(BIN)/ruff check relay tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	PYTHONASYNCIODEBUG=1 $(BIN)/pytest -q

## bench: direct path vs relay vs nginx under audio load; writes docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python bench/run.py

## bench-quick: a one-level smoke run of the same (nothing written)
bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick --no-report

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis bench/out
