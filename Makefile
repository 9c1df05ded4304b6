# regionstream: `make demo` runs the main job, `make test` runs the whole suite.
# Both set everything up first: a virtualenv with the packages and, as root, the servers.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help setup system-deps test lint typecheck demo bench bench-quick soak fuzz crash failover cluster-chaos clean

help:
	@echo "make demo   - producer + consumer group + live view (REGIONSTREAM_REDIS_URL or an embedded Redis)"
	@echo "make test   - lint, type-check and the whole test suite against a real redis-server"
	@echo "make bench  - benchmarks, JSON + PNG under bench/results/"
	@echo "make soak   - the long chaos/soak run (minutes)"
	@echo "make fuzz   - the long property-based fuzz run (~10 min; FUZZ_SEED, FUZZ_ENTRIES)"
	@echo "make crash  - the crash matrix: SIGKILL at every fail point, then drain and check"
	@echo "make failover - Sentinel failover under a larger load (FAILOVER_SNAPSHOTS), figures printed"
	@echo "make cluster-chaos - Redis Cluster failover, kill and reshard mid-drain (CLUSTER_CHAOS_SNAPSHOTS)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

# Servers the tests need. As root a missing one is installed; otherwise say what to install.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
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

test: $(STAMP) system-deps lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

# The demo needs no root: without redis-server it falls back to an in-process fakeredis.
demo: $(STAMP)
	@if ! command -v redis-server >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null || true; \
	fi
	$(VENV)/bin/regionstream demo $(DEMO_ARGS)

# Benchmarks (bench/): JSON + PNG plots under bench/results/. Speed targets live here, never in
# unit tests. `bench-quick` is the under-a-minute smoke variant (also run inside `make test`).
bench: $(STAMP) system-deps
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: $(STAMP) system-deps
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
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

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
