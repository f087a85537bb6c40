# nanoseg: two commands for a fresh machine.
#   make run    create .venv, install the pinned stack, import the dataset (DVC), run `dvc repro`
#   make test   create .venv, install, run the test suite
# Other targets: install, data, ui, tune, serve, screenshot, s3-up, s3-down, bench, clean-venv.

SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
BIN := $(abspath $(VENV))/bin
UI_PORT ?= 5000
SERVE_PORT ?= 5001
PYTEST_ARGS ?=

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test install data ui tune serve screenshot s3-up s3-down bench clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

data: install
	nanoseg data

run: data
	dvc repro

# NANOSEG_NO_SKIP=1: a skipped test fails the run unless tests/conftest.py ALLOWED_SKIPS names its reason
# (Chromium / PostgreSQL missing, checks of the real ../shared files); `make test NANOSEG_NO_SKIP=0` lifts it.
NANOSEG_NO_SKIP ?= 1
test: install
	@set +e; NANOSEG_NO_SKIP=$(NANOSEG_NO_SKIP) python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected NO tests - failing on purpose" >&2; exit 1; fi; \
	exit $$rc

ui: install
	mlflow ui --backend-store-uri "$$(python -m nanoseg.tracking --uri --raw)" --host 127.0.0.1 --port $(UI_PORT)

tune: install
	nanoseg tune

serve: install
	nanoseg serve --host 127.0.0.1 --port $(SERVE_PORT)

screenshot: install
	python scripts/ui_screenshot.py --out reports/mlflow_ui.png

s3-up: install
	bash scripts/s3.sh up

s3-down:
	bash scripts/s3.sh down

bench: install
	python bench/predict_speed.py

clean-venv:
	rm -rf $(VENV)
