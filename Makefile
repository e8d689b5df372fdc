# Every target does its own set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast test-slow demo lint bench stress clean

setup: $(STAMP)

# torch first, pinned: a plain `torch` requirement would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Test tiers (tests/conftest.py assigns them): test-fast runs the unit tier (no training, under a minute);
# test runs it, then the integration and reliability tiers.
# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
# -n auto: one pytest-xdist worker per core (each test runs one torch thread, see tests/conftest.py).
# The marker expression of each tier goes in TIER.
PYTEST = $(PY) -m pytest -q -n auto -m "$(TIER)" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose."; exit 1; fi; \
	exit $$rc

test-fast: TIER = not integration and not reliability
test-fast: setup
	$(PYTEST)

test-slow: TIER = integration or reliability
test-slow: setup
	$(PYTEST)

test: test-fast test-slow

demo: setup
	$(VENV)/bin/phmdiff demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks main.py generate.py

bench: setup
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/run_all.py

stress: setup
	PHMDIFF_STRESS=1 $(PY) -m pytest -q -s tests -k "reliability or stress"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out
