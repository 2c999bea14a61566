# The README's contract: `make run` and `make test` work on a fresh machine with
# Python 3.11+ and make. Everything else is a convenience.
#
# Two environments:
#   .venv         the exact, hash-checked versions of requirements/dev.lock
#                 (make run, make test, make bench);
#   .venv-latest  the newest versions pyproject.toml's ranges allow, resolved
#                 afresh on every `make test-latest`.

PYTHON ?= python3

# ENV=latest selects the second environment; only `make test-latest` sets it.
ENV ?= locked
ifeq ($(ENV),latest)
VENV := .venv-latest
else
VENV := .venv
endif
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCKED := .venv/.locked

# Dev-only upstream key shared by the built-in simulator and the relay in `make run`.
export AZURE_OPENAI_API_KEY ?= sim-dev-upstream-key

.PHONY: run demo test test-latest check system-tools lint typecheck pytest \
        node-clients simulate bench bench-quick lock clean

define new_venv
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11+ is required (PYTHON=$(PYTHON))" >&2; exit 1; }
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
endef

# The locked environment is rebuilt from scratch whenever the lock changes, so
# it holds exactly the lock: nothing left over from an older one. The lock
# includes the build backend (setuptools), so the project installs without
# fetching anything unpinned.
$(LOCKED): requirements/dev.lock
	$(call new_venv,.venv)
	.venv/bin/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	touch $@

ifeq ($(ENV),latest)
$(STAMP):
	$(call new_venv,$(VENV))
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(BIN)/python -m pip check
	@echo "make test-latest resolved:" && $(BIN)/python -m pip freeze --exclude-editable | tee $(VENV)/versions.txt
	@echo "Newer releases that pyproject.toml's ranges hold back (none if empty):"
	@$(BIN)/python -m pip list --outdated --exclude-editable 2>/dev/null | tail -n +3 \
	  | grep -vE '^(pip|setuptools|wheel) ' | tee $(VENV)/held-back.txt
	touch $@
else
$(STAMP): $(LOCKED) pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@
endif

## run: the relay on 127.0.0.1:8080 with the built-in Azure simulator as upstream
##      (TLS=1: wss:// and https:// instead, with a development CA kept in .dev-tls/)
TLS ?=
run: $(STAMP)
	$(BIN)/realtime-relay run --config examples/dev.yaml --with-simulator \
	  $(if $(filter 1 yes true,$(TLS)),--dev-tls .dev-tls)

## demo: one scripted voice session through a fresh simulator + relay, with a trace
demo: $(STAMP)
	$(BIN)/realtime-relay demo

## simulate: only the Azure Realtime simulator, on 127.0.0.1:9000
simulate: $(STAMP)
	$(BIN)/realtime-relay simulate --host 127.0.0.1 --port 9000

## test: lint, type checks and the whole suite with its coverage, on the locked versions
test: system-tools check

## test-latest: the same on the newest versions pyproject.toml's ranges allow
test-latest: system-tools
	rm -f .venv-latest/.installed
	$(MAKE) ENV=latest check

check: lint typecheck pytest

## system-tools: make sure the tools the suite runs against are installed
system-tools:
	@sh scripts/system-tools

lint: $(STAMP)
	$(BIN)/ruff format --check relay tests examples bench
	$(BIN)/ruff check relay tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs under coverage (pyproject.toml's [tool.coverage.*]): branches
# of relay/, in the test process and in every Python process it starts (the
# relay, the simulator, the command line), each writing its own data file,
# combined here. Two gates: the sans-I/O core (relay/sansio/) is covered whole,
# and relay/ as a whole at least COVERAGE_FLOOR percent, the suite's figure
# when the floor was set (96.47%), rounded down. Raise the floor as the figure
# rises; README's Development section states it too.
COVERAGE_FLOOR := 96

pytest: $(STAMP) node-clients
	rm -f .coverage .coverage.*
	PYTHONASYNCIODEBUG=1 $(BIN)/coverage run -m pytest -q
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report --fail-under=$(COVERAGE_FLOOR)
	@echo "relay/sansio/ (the core) must be covered whole:"
	$(BIN)/coverage report --include='relay/sansio/*' --fail-under=100

# The Node clients of tests/test_node_client.py, exactly as tests/node/package-lock.json
# pins them (versions and integrity hashes; no install scripts run). Without
# npm the Node test is skipped, and this says so.
NODE_STAMP := tests/node/node_modules/.installed
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

node-clients:
	@if command -v npm >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory $(NODE_STAMP); \
	else \
	  echo "make test: npm is not installed; the Node client test will be skipped" >&2; \
	fi

## bench: direct path vs relay vs nginx under audio load, then the isolation
## benchmark (attackers of every class against well-behaved sessions); writes
## docs/benchmarks.md and bench/results.json (about 11 minutes; the isolation
## part alone: python bench/run.py --isolation-only, about 6)
bench: $(STAMP)
	$(BIN)/python bench/run.py

## bench-quick: a smoke run of both parts, shortened (nothing written)
bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick --no-report

## lock: regenerate requirements/*.lock (add --upgrade with LOCK_ARGS=--upgrade)
# pip-compile keeps the versions already pinned unless told to upgrade; the
# runtime lock is constrained by the dev lock, so the image ships what the
# suite ran with. Run it with the image's Python (3.11).
LOCK_VENV := .venv-lock
PIP_COMPILE = $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras \
	--allow-unsafe --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
lock:
	$(call new_venv,$(LOCK_VENV))
	$(LOCK_VENV)/bin/python -m pip install --quiet pip-tools==7.7.0
	$(PIP_COMPILE) --extra dev --all-build-deps \
	  --output-file requirements/dev.lock pyproject.toml
	$(PIP_COMPILE) --constraint requirements/dev.lock \
	  --output-file requirements/runtime.lock pyproject.toml
	rm -rf $(LOCK_VENV)

clean:
	rm -rf .venv .venv-latest .venv-lock .mypy_cache .ruff_cache .pytest_cache \
	  .hypothesis .coverage .coverage.* bench/out .dev-tls tests/node/node_modules
