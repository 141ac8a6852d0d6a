# radloop: every command a person runs often. Each target that needs the environment runs `make setup` first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
# checkov pins boto3==1.35 (the services need 1.43): it gets its own venv, pinned by constraints-tools.txt.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.setup-stamp
# prometheus: tests/infra/test_dashboards.py runs every dashboard query on the real engine (and promtool).
# nginx: the local entry point of `radloop up` (radloop/local/entry.py renders its config from the topology).
APT_PACKAGES := dcmtk chromium orthanc orthanc-dicomweb prometheus nginx
export PYTHONPATH := $(CURDIR)

.PHONY: setup viewer ohif up demo test test-unit test-cost lint lint-imports bench chaos docs clean help

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: $(STAMP) $(TOOLS_STAMP) viewer ohif ## create .venv and install everything pinned (idempotent, fast when done)

# The web viewer (viewer/): npm ci from the lock file, then a Vite build into viewer/dist, each only when its inputs
# changed. The gateway serves viewer/dist at /viewer.
VIEWER_SRC := $(wildcard viewer/src/* viewer/src/ws/*) viewer/index.html viewer/worklist/index.html \
	viewer/vite.config.js viewer/package.json
viewer: viewer/dist/.build-stamp ## install the viewer's locked npm dependencies and build it (when changed)

viewer/node_modules/.package-lock.json: viewer/package-lock.json
	cd viewer && npm ci --no-audit --no-fund

viewer/dist/.build-stamp: viewer/node_modules/.package-lock.json $(VIEWER_SRC)
	cd viewer && npm run build
	touch $@

# The OHIF viewer's published build (@ohif/app ships dist/), pinned with its integrity by ohif/ohif.lock.json and
# fetched through npm's cache; the gateway serves ohif/dist at /ohif (docs/interop.md).
ohif: ohif/dist/.fetch-stamp ## fetch the locked OHIF build and configure it (when changed)

ohif/dist/.fetch-stamp: ohif/ohif.lock.json ohif/app-config.js scripts/fetch_ohif.py
	$(PY) scripts/fetch_ohif.py

$(TOOLS_STAMP): constraints-tools.txt
	test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	PYTHONPATH= $(TOOLS)/bin/pip install -q -c constraints-tools.txt checkov==3.3.30
	touch $(TOOLS_STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup-system.sh
	bash scripts/setup-system.sh $(APT_PACKAGES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[services,local,train,sagemaker,dev,infra]"
	touch $(STAMP)

up: setup ## start the embedded AWS endpoint and every service (Ctrl-C stops)
	$(BIN)/radloop up

demo: setup ## run the whole triage-and-learning loop on generated data and write demo-report/
	$(BIN)/radloop demo

# The tiers (unit, integration, e2e) are markers set by tests/conftest.py; docs/testing.md says which test gets which.
test: setup lint-imports ## the architecture contracts, then every test tier (unit, integration, e2e)
	$(BIN)/pytest -q -p no:cacheprovider --durations=25

test-cost: setup ## issue 16 §5's bar at 1,000 vs 10,000 stored items (make test runs 1,000 vs 3,000)
	RADLOOP_COST_SIZES=1000,10000 $(BIN)/pytest -q -p no:cacheprovider -s tests/reliability/test_constant_cost.py

test-unit: setup ## the fast tier only: no processes, no moto server (under a minute)
	$(BIN)/pytest -q -p no:cacheprovider -m unit

# The architecture contracts ([tool.importlinter] in pyproject.toml). Building the import graph is cheap, so no cache
# directory is written into the tree (--no-cache).
lint-imports: setup ## import-linter: service independence, shared as a leaf, infra without radloop.local, pure domain/
	$(BIN)/lint-imports --no-cache

lint: setup lint-imports ## import-linter, ruff and mypy
	$(BIN)/ruff check shared services radloop training tests bench
	$(BIN)/mypy shared

bench: setup ## run the benchmarks; JSON results in bench/results/
	mkdir -p bench/results
	@for b in bench/*.py; do [ "$$(basename $$b)" = "__init__.py" ] && continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The chaos run (docs/reliability.md, "Chaos run"): every service as a process, mixed traffic, SIGKILLs, injected
# DynamoDB/EventBridge/S3 errors and a SIGTERM during a 1 GB STOW; asserts nothing lost or duplicated. Long (about 25
# minutes on 2 cores): the short version is tests/chaos/test_chaos.py. Size it with CHAOS_ARGS (see --help).
CHAOS_ARGS ?= --images 2000 --kills 20 --converge-timeout-s 3600
chaos: setup ## the full chaos run (kills, injected AWS errors, SIGTERM mid-STOW): figures and bench/results/chaos.json
	$(BIN)/python -m radloop.chaos $(CHAOS_ARGS)

docs: setup ## regenerate docs/api.md (OpenAPI schemas) and docs/config.md (settings classes)
	$(BIN)/python scripts/gen_api_docs.py
	$(BIN)/python scripts/gen_config_docs.py

clean: ## remove local state (traces, logs, reports)
	rm -rf var demo-report bench/results
