# regionstream: `make demo` runs the main job, `make test` runs the whole suite.
# Both set everything up first: a virtualenv with the packages and, as root, the servers.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The venv is made without pip when this machine's pip can install into another interpreter
# (pip >= 22.3, `--python`): ensurepip alone costs ~3 s of the demo's first start.
PIP = $(if $(wildcard $(VENV)/bin/pip),$(PY) -m pip,$(PYTHON) -m pip --python $(PY)) \
	--quiet --disable-pip-version-check
DEMO_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Installs come from the lock (requirements/*.txt, exported from uv.lock with a hash for every
# file), never from a fresh resolution: a release upstream cannot change what `make test` runs.
# Each set has its own stamp, so `make demo` installs the runtime alone (13 packages) and the
# targets that need the dev or bench set add it. `make lock` changes the lock, on purpose.
#   demo:  runtime + the embedded fallback (fakeredis)
#   dev:   every set (lint, types, the suite, which also runs the benchmark smoke)
#   bench: runtime + matplotlib, pyinstrument
# The lock holds wheels for the Pythons pyproject.toml allows: a venv of another Python (made
# before, or by another PYTHON) is said in one line, not as pip's "hashes do not match".
NEEDS_PYTHON = import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
	"regionstream needs Python >= 3.11, this is %d.%d: set PYTHON=python3.11 (or newer), then make clean" % sys.version_info[:2])
LOCKED_INSTALL = $(PY) -c '$(NEEDS_PYTHON)' \
	&& $(PIP) install --require-hashes --only-binary :all: -r $(1) \
	&& $(PIP) install --no-deps --no-build-isolation --no-index -e . \
	&& touch $@

.PHONY: help setup dashboard system-deps test test-fast test-latest lint typecheck demo bench bench-quick \
	soak fuzz crash failover cluster-chaos lock export-lock clean

help:
	@echo "make demo   - producer + consumer group + live view (REGIONSTREAM_REDIS_URL or an embedded Redis)"
	@echo "make test   - lint, type-check and the whole test suite against real servers"
	@echo "make test-fast - the suite without the slow tiers (benchmark smoke, chaos, failover, cluster changes)"
	@echo "make test-latest - the newest versions pyproject.toml allows, in .venv-latest (drift check, not CI)"
	@echo "make lock   - re-resolve uv.lock and export requirements/*.txt (a deliberate change)"
	@echo "make bench  - benchmarks, JSON + PNG under bench/results/"
	@echo "make soak   - the long chaos/soak run (minutes)"
	@echo "make fuzz   - the long property-based fuzz run (~10 min; FUZZ_SEED, FUZZ_ENTRIES)"
	@echo "make crash  - the crash matrix: SIGKILL at every fail point, then drain and check"
	@echo "make failover - Sentinel failover under a larger load (FAILOVER_SNAPSHOTS), figures printed"
	@echo "make cluster-chaos - Redis Cluster failover, kill and reshard mid-drain (CLUSTER_CHAOS_SNAPSHOTS)"

$(PY):
	@$(PYTHON) -c '$(NEEDS_PYTHON)'
	if $(PYTHON) -c 'import sys, pip; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 3))' \
	  2>/dev/null; then $(PYTHON) -m venv --without-pip $(VENV); else $(PYTHON) -m venv $(VENV); fi

$(VENV)/.stamp-demo: requirements/demo.txt pyproject.toml | $(PY)
	$(call LOCKED_INSTALL,requirements/demo.txt)

$(VENV)/.stamp-dev: requirements/dev.txt pyproject.toml | $(PY)
	$(call LOCKED_INSTALL,requirements/dev.txt)

$(VENV)/.stamp-bench: requirements/bench.txt pyproject.toml | $(PY)
	$(call LOCKED_INSTALL,requirements/bench.txt)

STAMP := $(VENV)/.stamp-dev

setup: $(STAMP)

# Servers and tools the tests need (Debian package names; systemd brings systemd-analyze, which
# checks the units of deploy/: nothing is started). As root a missing one is installed;
# otherwise say what to install.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing -- install with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# pytest-xdist, 2 workers: the tests wait on servers and processes more than they compute, so
# two share 2 cores well (the suite of 386 tests: 175 s against 316 s serially, on 2 cores; each
# worker has its own session redis-server and cluster). PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS)

test: $(STAMP) system-deps lint typecheck
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The inner loop: everything but the tiers marked slow (pyproject.toml's markers: benchmark
# smoke, chaos, soak, failover, cluster topology changes, the fuzz run). Its tests wait on
# subprocesses and servers about half the time, so 4 workers on 2 cores: 86 s against 124 s
# with 2 (523 tests, measured on 2 cores). The whole suite keeps 2: its chaos tests time
# failovers and kills, and are not to be starved.
FAST_WORKERS ?= 4
test-fast: $(STAMP) system-deps
	$(PY) -m pytest -n $(FAST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# Drift found on purpose: the newest releases pyproject.toml's ranges allow, in a venv of their
# own, through lint, types and the whole suite. Not part of CI (it resolves against today's index).
LATEST_VENV ?= .venv-latest
test-latest: system-deps
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[demo,dev,bench]'
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/freeze.txt
	@echo "newest allowed versions: $(LATEST_VENV)/freeze.txt"
	$(LATEST_VENV)/bin/ruff check .
	$(LATEST_VENV)/bin/mypy
	REGIONSTREAM_UNLOCKED=1 $(LATEST_VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The lock, changed on purpose: uv (itself pinned by hash in requirements/uv.txt) re-resolves
# every set at once, so runtime, dev and bench never disagree, and exports each for pip.
UV_VENV ?= .venv-uv
UV := $(UV_VENV)/bin/uv
EXPORT = $(UV) export --quiet --locked --no-emit-project --no-dev --group build --no-header
$(UV): requirements/uv.txt
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --require-hashes --only-binary :all: \
	  -r requirements/uv.txt
	touch $@

lock: $(UV)
	$(UV) lock --upgrade $(LOCK_ARGS)
	$(MAKE) --no-print-directory export-lock

export-lock: $(UV)
	$(EXPORT) -o requirements/runtime.txt
	$(EXPORT) --extra demo -o requirements/demo.txt
	$(EXPORT) --extra bench -o requirements/bench.txt
	$(EXPORT) --all-extras -o requirements/dev.txt

# The demo needs no root: without redis-server it falls back to an in-process fakeredis.
# It installs the runtime and the fallback only (the dev and bench sets are not needed to run).
demo: $(VENV)/.stamp-demo
	@if ! command -v redis-server >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null || true; \
	fi
	$(VENV)/bin/regionstream demo $(DEMO_ARGS)

# Benchmarks (bench/): JSON + PNG plots under bench/results/. Speed targets live here, never in
# unit tests. `bench-quick` is the under-a-minute smoke variant (also run inside `make test`).
# The Grafana dashboard is generated (grafana/dashboard.py); the suite checks the JSON matches.
dashboard: $(PY)
	$(PY) grafana/dashboard.py

bench: $(VENV)/.stamp-bench system-deps
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: $(VENV)/.stamp-bench system-deps
	$(PY) -m bench --quick $(BENCH_ARGS)

# The long chaos/soak run (the suite runs a 6-second version of the same test).
SOAK_SECONDS ?= 300
soak: $(STAMP) system-deps
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/test_soak.py -s --timeout $$(( $(SOAK_SECONDS) + 300 ))

# The long fuzz run (the suite runs at least 10,000 entries of the same test). A fixed seed
# makes a run reproducible; hypothesis prints the seed of a failing run to re-run it.
FUZZ_SEED ?= 20261125
FUZZ_ENTRIES ?= 300000
fuzz: $(STAMP) system-deps
	FUZZ_ENTRIES=$(FUZZ_ENTRIES) $(PY) -m pytest tests/test_fuzz.py -s -p no:logging \
	  --hypothesis-seed=$(FUZZ_SEED) --timeout 1800

crash: $(STAMP) system-deps
	$(PY) -m pytest tests/test_crash_matrix.py tests/test_chaos.py -v -p no:logging

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(UV_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Redis Cluster: a never-restarted consumer drains through CLUSTER FAILOVER, a SIGKILLed master
# and a moved slot, under a larger load than the suite's; prints the times.
CLUSTER_CHAOS_SNAPSHOTS ?= 20000
cluster-chaos: $(STAMP) system-deps
	CLUSTER_CHAOS_SNAPSHOTS=$(CLUSTER_CHAOS_SNAPSHOTS) $(PY) -m pytest tests/test_cluster.py \
	  -k topology -s -p no:logging --timeout 900

# Sentinel failover (primary + replicas + 3 sentinels, SIGKILLed primary) under a larger load
# than the suite's; prints promotion time, publish/drain recovery and what was lost.
FAILOVER_SNAPSHOTS ?= 20000
failover: $(STAMP) system-deps
	FAILOVER_SNAPSHOTS=$(FAILOVER_SNAPSHOTS) $(PY) -m pytest tests/test_failover.py -s -p no:logging \
	  --timeout 900
