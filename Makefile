# govrisk: `make demo` and `make test` are the two commands a new user needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
WORK ?= $(or $(GOVRISK_WORK),runs)
export GOVRISK_WORK := $(abspath $(WORK))
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup browser demo test test-slow lint format bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 resolves to the CPU wheel on this machine's disk (see README, Dependencies)
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	@touch $(STAMP)

setup: $(STAMP) browser ## Create .venv with pip and install govrisk with every extra

browser: ## Debian's chromium and chromedriver for the report's browser test (skipped when present)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "warning: could not install chromium + chromium-driver (needs root); the browser test will skip"

demo: setup ## Run the main job end to end on the embedded defaults
	@bash scripts/demo.sh

test: setup ## Run the test suite (fast tiers and the wheel-install test; slow ones: make test-slow)
	$(BIN)/python -m pytest -q

test-slow: setup ## Run only the slow checks (sweeps, servers, multi-process)
	$(BIN)/python -m pytest -q -m slow

lint: setup ## Ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup ## Run every benchmark in bench/ and print its figures
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean: ## Remove the work folder (generated data, runs, models)
	rm -rf "$(GOVRISK_WORK)"
