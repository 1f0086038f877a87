# CloudScale: `make run` starts the platform on the embedded stack, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
FLOWER_PORT ?= 5555
export PORT FLOWER_PORT
# `make test MARKERS="not slow"` narrows every pytest run (the core variants too) by a marker
# expression; PYTEST_ARGS adds other pytest arguments (not `-m`: a second -m replaces the first).
MARKERS ?=
PYTEST_ARGS ?=
# Each pytest run spreads its tests over JOBS worker processes (pytest-xdist; JOBS=0: one process).
# Most tests wait on a server or a process they started, so two keep both cores busy.
JOBS ?= 2
XDIST = $(if $(filter-out 0,$(JOBS)),-n $(JOBS) --dist worksteal)
# Every pytest run ends with its slowest tests, so each CI log shows where the suite's time goes.
DURATIONS ?= --durations=30 --durations-min=1.0

.PHONY: run test lint typecheck bench install install-test node-deps clean help

help:
	@echo "make run    - start API, worker, beat and Flower on the embedded stack (Ctrl-C stops all)"
	@echo "make test   - install test dependencies, then ruff, mypy and the whole pytest suite"
	@echo "make bench  - run the benchmarks and print the result table (STACK=postgres: PostgreSQL + RabbitMQ)"

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "CloudScale needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test node-deps

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

node-deps: node_modules/.installed

run: $(VENV)/.installed
	$(BIN)/python manage.py runplatform

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install-test
	$(BIN)/mypy .

test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy .
	$(BIN)/python -m pytest $(XDIST) $(if $(MARKERS),-m "$(MARKERS)") $(DURATIONS) $(PYTEST_ARGS)
	@echo "--- the core suite again on PostgreSQL (127.0.0.1:5432) ---"
	CLOUDSCALE_TEST_DATABASE=postgresql $(BIN)/python -m pytest $(XDIST) -m "core$(if $(MARKERS), and ($(MARKERS)))" $(DURATIONS) $(PYTEST_ARGS)
	@echo "--- the core suite again with RabbitMQ (127.0.0.1:5672) as broker ---"
	CLOUDSCALE_TEST_BROKER=rabbitmq $(BIN)/python -m pytest $(XDIST) -m "core$(if $(MARKERS), and ($(MARKERS)))" $(DURATIONS) $(PYTEST_ARGS)

# STACK=postgres: the same bench on PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672).
STACK ?= embedded
bench: install-test
	CLOUDSCALE_BENCH_STACK=$(STACK) $(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) node_modules .state test-artifacts
