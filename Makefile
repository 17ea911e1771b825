# sendit: the two commands a newcomer needs are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install debian-packages up down test demo bench bench-load lint typecheck fmt clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -e .
	@touch $@

install: debian-packages $(STAMP) ## Debian packages, then .venv with everything the project and its tests need

debian-packages: ## chromium, dicom3tools (dciodvfy), orthanc + orthanc-dicomweb; a no-op when present
	@bash scripts/install-debian-packages.sh

up: install ## start the local stack in the background; writes .local/stack.env
	$(BIN)/python -m sendit.local up

down: ## stop every process the local stack started
	@test -x $(BIN)/python && $(BIN)/python -m sendit.local down || true

test: install lint ## lint, types, then the whole suite; it starts and stops its own emulators
	$(BIN)/python -m pytest

demo: install ## the main job end to end on sample DICOM on the local stack
	$(BIN)/python -m sendit.local demo

bench: install ## benchmarks (not tests): engine vs plain pydicom, pipeline files/s and overhead, DICOMweb vs bucket delivery
	$(BIN)/python -m bench deid pipeline deliver

bench-load: install ## the long load run: SENDIT_LOAD_FILES (default 10000) files in 20 batches
	$(BIN)/python -m bench load

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared/sendit functions

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: down
	rm -rf .local .pytest_cache
