# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser bytecode test lint typecheck check demo bench bench-setup bench-e2e soak fuzz faults clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The status page's browser tests drive Debian's Chromium (no browser download): taken
# from the system's package manager when it is missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@test -x $(CHROMIUM) || $(SUDO) apt-get install -y -q chromium >/dev/null \
		|| { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }

# Our modules compiled to bytecode first: with PYTHONDONTWRITEBYTECODE set (as it is on
# the machines this project is built on) Python keeps no cache of its own, and each of the
# suite's two hundred daemon processes compiled every module again, half a second each.
# Checked against a hash of the source, not its time: a module changed since is compiled
# in memory as before, never read stale.
bytecode: install
	$(BIN)/python -m compileall -q --invalidation-mode checked-hash middleware drivers simulators

# Two workers: most tests wait on a daemon process or a socket, not on the CPU.
test: install browser bytecode
	$(BIN)/python -m pytest -q -n 2

# Coverage-guided fuzzing (atheris) of every reader of outside input, a million inputs per
# target, two at a time, then the control API from its OpenAPI schema (schemathesis); what crashes is kept in fuzz/crashes (see fuzz/run.py). Long:
# about two hours and a quarter on two cores (docs/fuzzing.md).
fuzz: install
	$(BIN)/python fuzz/run.py --runs 1000000 --jobs 2
	MIDDLEWARE_API_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/test_api_schema.py tests/test_page_inputs.py

# Faults during a stream (faults/cases.py; docs/faults.md): the daemon killed 100 times, the
# LIS down, refusing or slow, analysers misbehaving, PostgreSQL restarted, the disk full,
# a daemon's instruments taken over, the broker restarted; a table of what became of every
# result. Needs the local PostgreSQL (restarted by one case) and root for the loop mount.
# About 35 minutes on two cores.
faults: install bytecode
	$(BIN)/python faults/run.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy middleware drivers simulators

check: lint typecheck test

demo: install bytecode
	$(BIN)/python -m simulators demo

# The reference codec for bench/codec.py (python-astm 0.5.0) needs a compatibility shim on 3.11.
# PYTHONPATH is absolute: pip runs the package's setup.py from a temporary directory.
BENCH_PYTHONPATH := $(CURDIR)/bench/compat

bench-setup: install
	$(BIN)/python -m pip install --quiet wheel setuptools
	PYTHONPATH=$(BENCH_PYTHONPATH) $(BIN)/python -m pip install --quiet --no-build-isolation astm==0.5.0

bench: bench-setup
	PYTHONPATH=$(BENCH_PYTHONPATH) $(BIN)/python bench/codec.py

# End to end (docs/performance.md): 1, 10, 50 and 200 analysers through the daemon to the
# LIS simulator, SQLite then PostgreSQL (MIDDLEWARE_TEST_POSTGRES_URL, skipped without it);
# then the latency at 100 results/s. About 15 minutes on two cores.
bench-e2e: install bytecode
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/e2e.py --rate 100 --analysers 1,10,50 --samples 200

# Soak (docs/performance.md): 10 analysers at 100 results/s for 30 minutes through the
# daemon to the LIS simulator on SQLite; fails unless memory and latency stay flat and
# every result is accounted for. SOAK_OPTIONS=--both adds PostgreSQL (another 30 minutes).
soak: install bytecode
	$(BIN)/python bench/soak.py $(SOAK_OPTIONS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
