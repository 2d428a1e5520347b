# The two set-up commands are `make run` and `make test`; everything else is a convenience.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts

.PHONY: install run train test lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev extras

train: install ## train the default model into $(ARTIFACTS)/<version>/
	$(BIN)/python -m training.train --output $(ARTIFACTS)

run: install ## train the default model if no version is published yet
	@if ls $(ARTIFACTS)/*/manifest.json >/dev/null 2>&1; then \
		echo "artifacts present: $$(ls -d $(ARTIFACTS)/*/ | tail -n 1)"; \
	else \
		$(BIN)/python -m training.train --output $(ARTIFACTS); \
	fi

test: install ## lint, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
