# Two commands on a fresh machine:  make run  (daemon on embedded defaults)  and  make test  (everything).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := postgresql postgresql-common systemd rsync prometheus mosquitto chromium chromium-driver
# make bench-quality's real material: font glyphs and photographs (benchmarks/quality_data.py)
QUALITY_APT_PACKAGES := fonts-dejavu-core fonts-dejavu-extra fonts-urw-base35 fonts-liberation \
  fonts-freefont-ttf fonts-noto-core fonts-texgyre fonts-croscore fonts-crosextra-carlito fonts-cantarell \
  fonts-roboto-unhinted fonts-symbola fonts-stix mate-backgrounds

.PHONY: run test lint typecheck unit bench bench-compare bench-mqtt bench-scaleout bench-recipes bench-quality bench-small soak bundled-model clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(BIN)/inspectd db upgrade
	$(BIN)/inspectd run

# Debian packages the tests use for real: PostgreSQL (pg_virtualenv), systemd-analyze, rsync, Prometheus,
# an MQTT broker, a headless browser.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# two test processes (pytest-xdist): most tests wait on real processes, sockets and files; the few marked
# exclusive (they change what the whole machine shares) run alone. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
unit: $(VENV)/.dev system-deps
	INSPECTD_REQUIRE_POSTGRES=1 INSPECTD_REQUIRE_MOSQUITTO=1 INSPECTD_REQUIRE_BROWSER=1 pg_virtualenv -t $(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# no regression against an older commit, the two daemons' bursts alternated: make bench-compare AGAINST=HEAD~1
bench-compare: $(VENV)/.dev
	$(BIN)/python -m benchmarks.compare --against $(or $(AGAINST),HEAD) $(BENCH_ARGS)

# MQTT publishing on against off, bursts alternated (mosquitto on a loopback port)
bench-mqtt: $(VENV)/.dev system-deps
	$(BIN)/python -m benchmarks.compare --mqtt $(BENCH_ARGS)

bench-scaleout: $(VENV)/.dev system-deps
	pg_virtualenv -t $(BIN)/python -m benchmarks.scaleout $(BENCH_ARGS)

bench-small: $(VENV)/.dev
	$(BIN)/python benchmarks/small_symbols.py $(BENCH_ARGS)

bench-recipes: $(VENV)/.dev
	$(BIN)/python benchmarks/retrain_recipes.py $(BENCH_ARGS)

# Not in CI: 30 minutes of real writers and kill -9s against one daemon, exact accounting at the end
# (benchmarks/soak.py). SOAK_ARGS="--minutes 2 --kill-every 40" for a quick one; bench-results/soak.json.
soak: $(VENV)/.dev
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

# Model quality on real material (fonts and photographs from QUALITY_APT_PACKAGES, installed as
# system-deps installs its own): python -m benchmarks.quality [--small]
bench-quality: $(VENV)/.dev
	@missing=""; for p in $(QUALITY_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(BIN)/python -m benchmarks.quality $(BENCH_ARGS)

bundled-model: $(VENV)/.dev
	$(BIN)/python tools/make_bundled_model.py inspectd/bundled_model --force

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
