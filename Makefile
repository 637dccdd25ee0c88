# edge-app: two commands on a fresh clone —  make run  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APP    := $(VENV)/bin/edge-app
SHARED ?= $(abspath ../shared)
# Model files arrive through the project's fetcher; an offline folder of models
# (EDGE_APP_MODEL_MIRROR) is read first. ../shared/models serves when it exists.
EDGE_APP_MODEL_MIRROR ?= $(if $(wildcard $(SHARED)/models/SHA256SUMS),$(SHARED)/models,)
export EDGE_APP_MODEL_MIRROR
export EDGE_APP_SHARED ?= $(SHARED)
SOURCE ?= auto
# MODEL=path/to/model.tflite runs that file and skips fetching the default model.
MODEL ?=
PYTEST_ARGS ?=
# -qq: errors only. A newcomer's `make run` shows no setuptools editable-install banner,
# no pip version notice and no index warnings; a failed install still says why.
PIP := $(PY) -m pip -qq --disable-pip-version-check

.PHONY: install run test lint bench bench-quick test-arm clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[opencv,test]"
	touch $@

## install: create .venv with the project and its dependencies
install: $(VENV)/.installed

## run: install, fetch the default model, and start live classification (SOURCE=device|file|URL)
run: install
	$(if $(MODEL),,$(APP) models fetch)
	$(APP) run --source "$(SOURCE)" $(if $(MODEL),--model "$(MODEL)")

## test: install (pip and apt test packages) and run the whole test suite
test: install
	bash scripts/install-test-deps.sh
	$(VENV)/bin/ruff check edge_app tests benchmarks
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check edge_app tests benchmarks
	$(VENV)/bin/ruff format --check edge_app tests benchmarks

## bench: every benchmark, side by side in one run; writes docs/PERFORMANCE.md
bench: install
	$(APP) models fetch
	$(PY) -m benchmarks.run_all --output docs/PERFORMANCE.md

bench-quick: install
	$(APP) models fetch
	$(PY) -m benchmarks.run_all --quick --output docs/PERFORMANCE.md

ARM_QUICK ?= 0

## test-arm: core tests on an emulated Raspberry Pi CPU (aarch64 Pi 4/Pi 5; Bookworm and Trixie) and x86-vs-aarch64 answers; ARM_QUICK=1 is the CI slice (~9 min)
test-arm: install
	ARM_QUICK=$(ARM_QUICK) bash scripts/arm-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
