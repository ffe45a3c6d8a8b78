# One entry point for everything: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv check test lint typecheck pytest demo bench soak mutate clean

$(BIN)/ctsync: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,s3,gcs]'
	touch $(BIN)/ctsync

venv: $(BIN)/ctsync

lint: venv
	$(BIN)/ruff check ctsync tests bench
	$(BIN)/ruff format --check ctsync tests bench

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

# The quality gate: ruff, mypy --strict, pytest.
check: lint typecheck pytest

# The same gate from a freshly created virtual environment (what CI runs).
test:
	rm -rf $(VENV)
	$(MAKE) check

# Upload the sample export to a local CleverTap sandbox; no account needed.
demo: venv
	bash scripts/demo.sh

# Throughput and memory, measured and printed (not part of the tests).
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The long fault soak: ctsync killed with SIGKILL many times against a faulty sandbox,
# then checked record by record (bench/soak.py; a small one runs in `make test`).
SOAK_ARGS ?= --seeds 3 --messages 10000 --kills 25
soak: venv
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# Mutation testing of the core modules with mutmut (slow, so not part of `make test`): one
# module at a time against its focused tests, printing each surviving mutant and a score.
# `make mutate MUTATE=ledger` runs one module; scripts/mutate.sh lists them.
MUTATE ?= timestamps ledger batching client state rules presets classic
mutate: venv
	$(BIN)/python -m pip install --quiet -e '.[mutate]'
	bash scripts/mutate.sh $(MUTATE)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info .mutmut .mutmut-cache
