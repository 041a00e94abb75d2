# heatrec: `make demo` runs the demo plant, `make test` runs the whole suite; both install what is missing.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup demo test lint unit bench clean-demo help

help:
	@echo "make setup   install PostgreSQL 15 + TimescaleDB, Mosquitto and .venv (idempotent)"
	@echo "make demo    setup, then run the demo plant (Ctrl-C stops it; data stays in var/demo)"
	@echo "make test    setup, then lint (ruff, mypy) and the whole test suite"
	@echo "make lint    ruff and mypy only"
	@echo "make clean-demo  delete the demo's data (var/demo)"

setup:
	@bash deploy/local/bootstrap.sh

demo: setup
	$(VENV)/bin/heatrec demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest

clean-demo:
	rm -rf var/demo
