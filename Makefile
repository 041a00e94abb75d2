# heatrec: `make demo` runs the demo plant, `make test` runs the whole suite; both install what is missing.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup demo test lint unit bench clean-demo help fuzz

help:
	@echo "make setup   install PostgreSQL 15 + TimescaleDB, Mosquitto and .venv (idempotent)"
	@echo "make demo    setup, then run the demo plant (Ctrl-C stops it; data stays in var/demo)"
	@echo "make test    setup, then lint (ruff, mypy) and the whole test suite"
	@echo "make unit    setup, then the tests that start no server, process or connection (under a minute)"
	@echo "make lint    ruff and mypy only"
	@echo "make bench   setup, then every benchmark as docs/BENCHMARKS.md runs it, in turn (the soak alone takes 10 min)"
	@echo "make fuzz    setup, then schemathesis with 3 random seeds x 100 examples (HEATREC_FUZZ_SEEDS, HEATREC_FUZZ_EXAMPLES)"
	@echo "make clean-demo  delete the demo's data (var/demo)"

setup:
	@bash deploy/local/bootstrap.sh

demo: setup
	$(VENV)/bin/heatrec demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The fuzz suites (marked `fuzz`) run once, inside tests/deploy/test_make_fuzz.py: through `make fuzz` with
# the deterministic seed, the command docs/API.md shows. Running them directly too would run them twice.
# --durations: the slowest tests in the log, to keep the suite inside its time budget.
test: setup lint
	$(PY) -m pytest -m "not fuzz" --durations=25

# The integration tests (marked by tests/conftest.py, or in their module) are left out; HEATREC_UNIT_ONLY=1 makes
# any test that still listens, connects or spawns a process fail (tests/isolation.py).
unit: setup
	HEATREC_UNIT_ONLY=1 $(PY) -m pytest -m "not integration"

# One after the other, with the arguments docs/BENCHMARKS.md gives: run side by side they would skew each other.
bench: setup
	$(PY) bench/bench_ingest.py --rows 200000 --batch 20000
	$(PY) bench/bench_soak.py --seconds 600 --rate 20000
	$(PY) bench/bench_simulator.py --seconds 30
	$(PY) bench/bench_modbus.py --polls 300
	$(PY) bench/bench_mqtt.py --telegrams 20000 --rounds 3
	$(PY) bench/bench_opcua.py --nodes 1000 --hz 10 --seconds 10
	$(PY) bench/bench_api.py --rounds 3 --duration 5
	$(PY) bench/bench_settle.py --meters 10 --days 365
	$(PY) bench/bench_control.py --seconds 30
	$(PY) bench/bench_sparkplug.py --scans 50 --bursts 5 --rounds 5
	$(PY) bench/bench_central.py --rows 200000 --batch 5000
	$(PY) bench/bench_fleet.py --sites 20 --rows 400000 --rounds 5
	$(PY) bench/bench_dispatch.py --days 365 --sample-weeks 4

# A wider, randomised OpenAPI fuzz than the deterministic one in `make test`: new seeds each run (printed;
# replay one with HEATREC_FUZZ_SEEDS=N). Findings become regression tests in tests/service/test_api_contract.py.
fuzz: setup
	HEATREC_FUZZ_SEEDS="$${HEATREC_FUZZ_SEEDS:-$$(shuf -i 2-999999 -n 3 | paste -sd,)}" \
	HEATREC_FUZZ_EXAMPLES="$${HEATREC_FUZZ_EXAMPLES:-100}" \
	$(PY) -m pytest -o timeout=5400 -s tests/service/test_api_fuzz.py tests/accounting/test_acc_fuzz.py \
	    tests/service/test_api_stateful.py

clean-demo:
	rm -rf var/demo
