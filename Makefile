# coord — developer entry points. CI (.ci/run) runs `make lint` then `make test`.
#
#   make run     start a local 3-server ensemble on loopback with its data in ./coord-data
#   make test    run the test suite
#   make lint    ruff check + ruff format --check + mypy --strict on coord, client and recipes
#   make bench   side-by-side benchmark against ZooKeeper (bench/README.md); BENCH_ARGS="--ops 2000" to tune
#
# Every target first makes sure .venv exists and holds an editable install of this project
# with its test extras; that step reruns only when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
LINT_PATHS := $(wildcard coord client recipes tests bench examples)
TYPED_PATHS := coord client recipes
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test lint bench

help:
	@sed -n 's/^#   make/make/p' Makefile

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --disable-pip-version-check --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(VENV)/bin/python -m pip install --disable-pip-version-check --quiet -e '.[test,bench]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/coord ensemble --size 3 --data-dir ./coord-data

test: $(VENV)/.installed
	.venv/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy --strict $(TYPED_PATHS)

bench: $(VENV)/.installed-bench
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)
