# The two set-up commands are `make run` and `make test`; everything else is a convenience.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
# The KServe peer of the benchmark runs in its own environment (its pins clash with ours).
KSERVE_VENV ?= .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed
KSERVE_REQUIREMENTS := benchmarks/kserve_peer/requirements.txt

.PHONY: install kserve-venv run train serve demo bench quality soak test lint typecheck format proto image image-cpu \
	container-test prometheus-rule clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev extras

train: install ## train the default model into $(ARTIFACTS)/<version>/
	$(BIN)/python -m training.train --output $(ARTIFACTS)

run: install ## train the default model if no version is published yet, then serve it
	@if ls $(ARTIFACTS)/*/manifest.json >/dev/null 2>&1; then \
		echo "serving the newest version in $(ARTIFACTS)/ (make train publishes a new one)"; \
	else \
		$(BIN)/python -m training.train --output $(ARTIFACTS); \
	fi
	$(BIN)/python -m service --artifacts $(ARTIFACTS)

serve: install ## serve the newest version in $(ARTIFACTS) (no training)
	$(BIN)/python -m service --artifacts $(ARTIFACTS)

test: lint typecheck kserve-venv ## lint, format check and type check, then the whole test suite (with the KServe peer's venv)
	$(BIN)/python -m pytest

lint: install ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy runs once for the packages (strict), then once per test directory: test modules are
# imported by base name and each directory has its own conftest.
typecheck: install ## mypy: strict on training, service and monitoring; tests checked as well
	$(BIN)/mypy
	$(BIN)/mypy tests/service
	$(BIN)/mypy $(wildcard tests/*.py)

format: install
	$(BIN)/ruff format .

demo: install ## train if needed, then show the detectors on healthy, x10 and collapsed traffic
	@ls $(ARTIFACTS)/*/manifest.json >/dev/null 2>&1 || $(BIN)/python -m training.train --output $(ARTIFACTS)
	$(BIN)/python -m service.demo --artifacts $(ARTIFACTS)

# The venv gets a .gitignore of its own ("*"), so git and ruff leave it alone.
$(KSERVE_STAMP): $(KSERVE_REQUIREMENTS)
	$(PYTHON) -m venv $(KSERVE_VENV)
	echo '*' > $(KSERVE_VENV)/.gitignore
	$(KSERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(KSERVE_VENV)/bin/python -m pip install --quiet -r $(KSERVE_REQUIREMENTS)
	touch $(KSERVE_STAMP)

kserve-venv: $(KSERVE_STAMP) ## create .venv-kserve for the benchmark's KServe peer (kserve 0.21)

bench: install kserve-venv ## train if needed, then the side-by-side benchmark into results/ (~34 min)
	@ls $(ARTIFACTS)/*/manifest.json >/dev/null 2>&1 || $(BIN)/python -m training.train --output $(ARTIFACTS)
	$(BIN)/python -m benchmarks run --artifacts $(ARTIFACTS) --output-dir results \
		--kserve-python $(KSERVE_VENV)/bin/python

quality: install ## default training on six real series against statistical baselines, into results/ (~10 min)
	$(BIN)/python -m benchmarks.quality --output-dir results

soak: install ## train if needed, then 5 min of sustained load with the service's RSS sampled
	@ls $(ARTIFACTS)/*/manifest.json >/dev/null 2>&1 || $(BIN)/python -m training.train --output $(ARTIFACTS)
	$(BIN)/python -m benchmarks soak --artifacts $(ARTIFACTS) --output-dir results --minutes 5

proto: install ## regenerate service/_proto from proto/ (a test fails when it is stale)
	$(BIN)/python -m service.protogen

image: ## build the GPU image with docker
	docker build -t lstm-forecast .

image-cpu: ## build the CPU image with docker
	docker build --build-arg TF_PACKAGE='tensorflow-cpu==2.21.*' -t lstm-forecast:cpu .

container-test: install ## build the image with podman and run it end to end (as root)
	bash deploy/container-test.sh

prometheus-rule: install ## regenerate deploy/k8s/base/prometheusrule.yaml from alerts.yml
	$(BIN)/python scripts/gen-prometheus-rule.py

clean:
	rm -rf $(VENV) $(KSERVE_VENV) .pytest_cache .ruff_cache *.egg-info
