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
APT_PACKAGES := dcmtk chromium orthanc orthanc-dicomweb prometheus
export PYTHONPATH := $(CURDIR)

.PHONY: setup viewer up demo test test-unit lint lint-imports bench docs clean help

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: $(STAMP) $(TOOLS_STAMP) viewer ## create .venv and install everything pinned (idempotent, fast when done)

# The web viewer (viewer/): npm ci from the lock file, then a Vite build into viewer/dist, each only when its inputs
# changed. The gateway serves viewer/dist at /viewer.
VIEWER_SRC := $(wildcard viewer/src/*) viewer/index.html viewer/vite.config.js viewer/package.json
viewer: viewer/dist/.build-stamp ## install the viewer's locked npm dependencies and build it (when changed)

viewer/node_modules/.package-lock.json: viewer/package-lock.json
	cd viewer && npm ci --no-audit --no-fund

viewer/dist/.build-stamp: viewer/node_modules/.package-lock.json $(VIEWER_SRC)
	cd viewer && npm run build
	touch $@

$(TOOLS_STAMP): constraints-tools.txt
	test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	PYTHONPATH= $(TOOLS)/bin/pip install -q -c constraints-tools.txt checkov==3.3.30
	touch $(TOOLS_STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup-system.sh
	bash scripts/setup-system.sh $(APT_PACKAGES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[train,sagemaker,dev,infra]"
	touch $(STAMP)

up: setup ## start the embedded AWS endpoint and every service (Ctrl-C stops)
	$(BIN)/radloop up

demo: setup ## run the whole triage-and-learning loop on generated data and write demo-report/
	$(BIN)/radloop demo

# The tiers (unit, integration, e2e) are markers set by tests/conftest.py; docs/testing.md says which test gets which.
test: setup lint-imports ## the architecture contracts, then every test tier (unit, integration, e2e)
	$(BIN)/pytest -q -p no:cacheprovider

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

docs: setup ## regenerate docs/api.md from the services' OpenAPI schemas
	$(BIN)/python scripts/gen_api_docs.py

clean: ## remove local state (traces, logs, reports)
	rm -rf var demo-report bench/results
