# SAM control plane: build, template validation and the opt-in AWS acceptance run.
# Included from the Makefile. Tools live in their own environments because aws-sam-cli pins exact
# versions of boto3, click, jsonschema, … that must not leak into the test venv:
#   .venv-sam      aws-sam-cli (+ its cfn-lint) and the serverless rules for cfn-lint
#   .venv-checkov  checkov
#   .tools         npm asl-validator
# Nothing here talks to AWS except `acceptance`: validation uses dummy credentials and a region.

SAM_PYTHON ?= python3.11
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov
TOOLS_DIR := .tools
SAM := $(SAM_VENV)/bin/sam
SAM_CFN_LINT := $(SAM_VENV)/bin/cfn-lint
CHECKOV := $(CHECKOV_VENV)/bin/checkov
ASL_VALIDATOR := $(TOOLS_DIR)/node_modules/.bin/asl-validator

AWS_SAM_CLI_VERSION ?= 1.170.0
CFN_LINT_SERVERLESS_VERSION ?= 0.3.6
CHECKOV_VERSION ?= 3.3.30
ASL_VALIDATOR_VERSION ?= 4.0.0

ROOT_TEMPLATE := template.yaml
NESTED_TEMPLATES := stacks/network.yaml stacks/host.yaml
IMAGE_PIPELINE := asterisk_image/pipeline.yaml
ASL_FILES := $(wildcard statemachines/*.asl.yaml)

# Offline: dummy credentials and region, no telemetry, no update checks.
SAM_ENV := AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing \
	AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 SAM_CLI_TELEMETRY=0 \
	SAM_CLI_DISABLE_UPDATE_CHECK=1 AWS_EC2_METADATA_DISABLED=true

$(SAM_VENV)/.installed:
	$(SAM_PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --disable-pip-version-check \
		"aws-sam-cli==$(AWS_SAM_CLI_VERSION)" "cfn-lint-serverless==$(CFN_LINT_SERVERLESS_VERSION)"
	@touch $@

$(CHECKOV_VENV)/.installed:
	$(SAM_PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check "checkov==$(CHECKOV_VERSION)"
	@touch $@

$(ASL_VALIDATOR):
	mkdir -p $(TOOLS_DIR)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS_DIR) "asl-validator@$(ASL_VALIDATOR_VERSION)"

.PHONY: sam-tools
sam-tools: $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed $(ASL_VALIDATOR) ## Install sam, checkov and asl-validator in their own environments

.PHONY: build-sam
build-sam: $(SAM_VENV)/.installed ## sam build (offline, no Docker; the layer is built for python3.13/arm64 from wheels)
	$(SAM_ENV) $(SAM) build --template-file $(ROOT_TEMPLATE)

.PHONY: validate-templates
validate-templates: $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed $(ASL_VALIDATOR) ## sam validate --lint, cfn-lint (+serverless rules), checkov, ASL
	@echo "== sam validate --lint"
	$(SAM_ENV) $(SAM) validate --lint --template-file $(ROOT_TEMPLATE)
	@echo "== cfn-lint with the serverless rules: root and nested templates"
	$(SAM_ENV) $(SAM_CFN_LINT) $(ROOT_TEMPLATE) $(NESTED_TEMPLATES) -a cfn_lint_serverless.rules
	@echo "== cfn-lint: the host image pipeline (deployed on its own, see docs/IMAGE.md)"
	$(SAM_ENV) $(SAM_CFN_LINT) $(IMAGE_PIPELINE)
	@echo "== checkov (skips are listed in each resource's Metadata with a reason)"
	$(CHECKOV) --quiet --compact --skip-download --framework cloudformation \
		$(foreach t,$(ROOT_TEMPLATE) $(NESTED_TEMPLATES),-f $(t))
	@echo "== asl-validator"
	@if [ -z "$(ASL_FILES)" ]; then echo "no statemachines/*.asl.yaml yet"; fi
	@set -e; for f in $(ASL_FILES); do $(ASL_VALIDATOR) --no-arn-check --yaml-path $$f; done
	@echo "== template security properties and DefinitionSubstitutions"
	$(PYTEST) -q -m integration tests/integration/test_templates.py

# Opt-in: creates real resources in the account of your current AWS credentials and deletes them.
# make acceptance STACK=sip-trunk-acc [ACCEPTANCE_ARGS='--parameter-overrides ...']
.PHONY: acceptance
acceptance: $(SAM_VENV)/.installed dev ## Deploy STACK to real AWS, provision, verify, fail over, tear down (costs money)
	@test -n "$(STACK)" || { echo "usage: make acceptance STACK=<new stack name> [ALARM_EMAIL=you@example.com]"; exit 2; }
	PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" ACCEPTANCE_STACK="$(STACK)" ACCEPTANCE_ALARM_EMAIL="$(ALARM_EMAIL)" \
		ACCEPTANCE_SAM="$(CURDIR)/$(SAM)" $(PYTEST) -m aws -p no:cacheprovider -s tests/aws/test_acceptance.py
