# One entry point for everything: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pytest's own arguments for `make test` / `make test-all` (e.g. PYTEST_ARGS="-x tests/test_cli.py").
PYTEST_ARGS ?=
# Test processes: most slow tests wait on sockets and subprocesses, not the CPU, so twice
# the cores pays on a 2-core machine.
PYTEST_WORKERS ?= 4

.PHONY: venv dev check test test-all lint typecheck pytest pytest-all demo bench soak mutate clean

# The runtime alone (what `make demo` needs); `make test` adds the development tools to
# the same environment and never deletes it, so the two commands leave each other alone.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet -e '.[test,s3,gcs]'
	touch $@

venv: $(VENV)/.runtime

dev: $(VENV)/.dev

lint: dev
	$(BIN)/ruff check ctsync tests bench
	$(BIN)/ruff format --check ctsync tests bench

typecheck: dev
	$(BIN)/mypy

# The fast tier: every behaviour, at Hypothesis's `quick` profile, without the tests
# marked slow (soaks, long kill loops, thousands of bucket objects).
pytest: dev
	HYPOTHESIS_PROFILE=quick $(BIN)/pytest -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# Both tiers: the same plus the slow tests, at the `thorough` profile (what CI runs).
pytest-all: dev
	HYPOTHESIS_PROFILE=thorough $(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The quality gate: ruff, mypy --strict, the fast tier of pytest.
check: lint typecheck pytest

# The README's test command: the gate, in .venv (made or completed when needed, never
# deleted: `make demo`'s environment stays usable).
test: check

# Everything CI checks: the gate with both tiers of pytest.
test-all: lint typecheck pytest-all

# Upload the sample export to a local CleverTap sandbox; no account needed.
demo: venv
	bash scripts/demo.sh

# Throughput and memory, measured and printed (not part of the tests).
bench: dev
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The long fault soak: ctsync killed with SIGKILL many times against a faulty sandbox,
# then checked record by record (bench/soak.py; a small one runs in `make test`).
SOAK_ARGS ?= --seeds 3 --messages 10000 --kills 25
soak: dev
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# Mutation testing of the core modules with mutmut (slow, so not part of `make test`): one
# module at a time against its focused tests, printing each surviving mutant and a score.
# `make mutate MUTATE=ledger` runs one module; scripts/mutate.sh lists them.
MUTATE ?= timestamps ledger batching client state rules presets classic dedupe run
mutate: dev
	$(BIN)/python -m pip install --quiet -e '.[mutate]'
	bash scripts/mutate.sh $(MUTATE)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info .mutmut .mutmut-cache
