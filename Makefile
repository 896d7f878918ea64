# aws-sip-trunk developer interface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PYTEST := $(BIN)/pytest
# Parallel test processes for `make test` (pytest-xdist). The slow layers mostly wait on SIP timers and
# sipp scenarios, so more workers than cores pay off; TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 4
# The host image's scripts (package data of sip_trunk: the image build and the stock-Ubuntu user data run them).
IMAGE_SCRIPTS := layers/sip_trunk/src/sip_trunk/agent/host_files/image/scripts

include mk/sam.mk

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m pip install --quiet --user uv

$(VENV)/.synced: pyproject.toml uv.lock layers/sip_trunk/pyproject.toml local/pyproject.toml | $(UV)
	UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --python $(PYTHON)
	@touch $@

.PHONY: dev
dev: $(VENV)/.synced ## Create .venv with every dependency from the lockfile (editable sip_trunk and sip_trunk_local)

.PHONY: lint
lint: dev ## ruff (lint + format check), mypy --strict on sip_trunk and sip_trunk_local, import contracts, shellcheck, unique test module names
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/shellcheck scripts/*.sh
	cd $(IMAGE_SCRIPTS) && $(CURDIR)/$(BIN)/shellcheck -x --severity=style *.sh
	@# pytest imports test modules by base name (rootdir-relative, no packages): two of one name stop collection
	@dups="$$(find tests -name 'test_*.py' -printf '%f\n' | sort | uniq -d)"; \
	if [ -n "$$dups" ]; then echo "test modules with the same name in two folders: $$dups"; exit 1; fi

.PHONY: format
format: dev ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: test
test: dev lint validate build ## Everything: lint, template checks, offline sam build, then every test layer (real Asterisk needs root)
	$(PYTEST) -n $(TEST_WORKERS) --dist worksteal tests

.PHONY: test-unit
test-unit: dev ## Unit tests only (no sockets, no AWS)
	$(PYTEST) -m unit tests

.PHONY: asterisk-root
asterisk-root: ## Host tools (sipp, mmdebstrap, ...) and the cached Asterisk 22 root file system with the patched res_pjsip.so (root)
	bash scripts/asterisk-root.sh

.PHONY: test-asterisk
test-asterisk: dev ## Real Asterisk 22 proofs: real SIP and RTP (needs root)
	$(PYTEST) -m asterisk tests/asterisk

.PHONY: image-check
image-check: dev ## install-host.sh for real in a fresh Debian root: compile Asterisk 22 offline, boot, call, agent apply (root; 30+ min the first time, cached)
	bash scripts/image-check.sh

.PHONY: test-statemachine
test-statemachine: dev ## State machines executed by moto's executor with the real handlers
	$(PYTEST) -m statemachine tests/statemachine

.PHONY: validate
validate: dev validate-templates ## sam validate --lint, cfn-lint (+serverless rules), checkov, ASL checks

.PHONY: build
build: dev build-sam ## sam build, offline and without Docker (layer built for python3.13 / arm64)

.PHONY: demo
demo: dev ## The whole product on this machine: provision, verify, call (needs root; CONFIG_ENV=prod: a samconfig profile)
	@[ "$$(id -u)" = 0 ] || { echo "demo: run as root (network namespaces, mounts, Asterisk)"; exit 1; }
	bash scripts/asterisk-root.sh
	$(BIN)/sip-trunk local up $(if $(CONFIG_ENV),--config-env $(CONFIG_ENV))
	@echo "next: $(BIN)/sip-trunk local status | local call | local down"

.PHONY: demo-down
demo-down: dev ## Stop the local demo and remove every process, namespace and mount it made
	$(BIN)/sip-trunk local down

.PHONY: test-e2e
test-e2e: dev ## The local emulation end to end (needs root)
	$(PYTEST) -m e2e tests/e2e

.PHONY: bench
bench: dev asterisk-root ## Benchmarks: capacity, reload under load, provisioning time, failover RTO, Lambda cost (bench/results, docs/PERFORMANCE.md)
	$(BIN)/python -m bench.run

.PHONY: clean
clean: ## Remove build output and caches (keeps .venv)
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache build
