# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser test lint typecheck check demo bench bench-setup fuzz clean

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

# Two workers: most tests wait on a daemon process or a socket, not on the CPU.
test: install browser
	$(BIN)/python -m pytest -q -n 2

# Coverage-guided fuzzing (atheris) of every reader of outside input, a million inputs per
# target, two at a time, then the control API from its OpenAPI schema (schemathesis); what crashes is kept in fuzz/crashes (see fuzz/run.py). Long:
# about two hours and a quarter on two cores (docs/fuzzing.md).
fuzz: install
	$(BIN)/python fuzz/run.py --runs 1000000 --jobs 2
	MIDDLEWARE_API_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/test_api_schema.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy middleware drivers simulators

check: lint typecheck test

demo: install
	$(BIN)/python -m simulators demo

# The reference codec for bench/codec.py (python-astm 0.5.0) needs a compatibility shim on 3.11.
# PYTHONPATH is absolute: pip runs the package's setup.py from a temporary directory.
BENCH_PYTHONPATH := $(CURDIR)/bench/compat

bench-setup: install
	$(BIN)/python -m pip install --quiet wheel setuptools
	PYTHONPATH=$(BENCH_PYTHONPATH) $(BIN)/python -m pip install --quiet --no-build-isolation astm==0.5.0

bench: bench-setup
	PYTHONPATH=$(BENCH_PYTHONPATH) $(BIN)/python bench/codec.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
