# aws-sip-trunk developer interface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PYTEST := $(BIN)/pytest

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m pip install --quiet --user uv

$(VENV)/.synced: pyproject.toml uv.lock layers/sip_trunk/pyproject.toml | $(UV)
	UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --python $(PYTHON)
	@touch $@

.PHONY: dev
dev: $(VENV)/.synced ## Create .venv with every dependency from the lockfile (editable sip_trunk)

.PHONY: lint
lint: dev ## ruff (lint + format check) and mypy --strict on sip_trunk
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: format
format: dev ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: test
test: dev ## The whole suite, every layer (the real-Asterisk layers need root; they set up their own root)
	$(PYTEST) tests

.PHONY: test-unit
test-unit: dev ## Unit tests only (no sockets, no AWS)
	$(PYTEST) -m unit tests

.PHONY: asterisk-root
asterisk-root: ## Host tools (sipp, mmdebstrap, ...) and the cached Asterisk 22 root file system (root)
	bash scripts/asterisk-root.sh

.PHONY: test-asterisk
test-asterisk: dev ## Real Asterisk 22 proofs: real SIP and RTP (needs root)
	$(PYTEST) -m asterisk tests/asterisk

.PHONY: test-statemachine
test-statemachine: dev ## State machines executed by moto with the real handlers
	@echo "test-statemachine: the workflow state machines have not landed yet"; exit 1

.PHONY: validate
validate: dev ## sam validate --lint, cfn-lint, checkov, ASL checks
	@echo "validate: the SAM control plane has not landed yet"; exit 1

.PHONY: build
build: dev ## sam build (offline, no Docker)
	@echo "build: the SAM control plane has not landed yet"; exit 1

.PHONY: demo
demo: dev ## The whole product on this machine: provision, verify, call, fail over (needs root)
	@echo "demo: local mode has not landed yet"; exit 1

.PHONY: bench
bench: dev ## Benchmarks: capacity, reload under load, provisioning time, failover RTO
	@echo "bench: the benchmarks have not landed yet"; exit 1

.PHONY: clean
clean: ## Remove build output and caches (keeps .venv)
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache build
