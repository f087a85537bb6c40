# nanoseg: two commands for a fresh machine.
#   make run    create .venv, install the pinned stack, import the dataset (DVC), run `dvc repro`
#   make test   create .venv, install, run the test suite
# Other targets: install, java, data, ui, tune, serve, screenshot, s3-up, s3-down, bench, peers, clean-venv.
# The Docker image runs the same targets (Dockerfile): `make install` at build time, `make run` / `make serve`.

SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
BIN := $(abspath $(VENV))/bin
UI_PORT ?= 5000
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 5001
SERVE_ARGS ?=
PYTEST_ARGS ?=
# The install is keyed by the content of requirements.lock and pyproject.toml, not their dates: a checkout
# mounted into the Docker image (same files, newer dates) uses the image's venv as it is.
INSTALL_KEY := $(shell $(PYTHON) -c 'import hashlib; print(hashlib.sha256(open("requirements.lock", "rb").read() + open("pyproject.toml", "rb").read()).hexdigest()[:16])')
STAMP := $(VENV)/.installed-$(INSTALL_KEY)
# set in the Docker image: its venv is never reinstalled (nor this checkout installed into it) at run time
NANOSEG_FROZEN_VENV ?=

export PATH := $(BIN):$(PATH)
# the code run is this checkout's (src/), whichever checkout the venv was installed from
export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test install java data ui tune serve screenshot s3-up s3-down bench peers clean-venv

install: $(STAMP)

$(STAMP):
	@if [ -n "$(NANOSEG_FROZEN_VENV)" ]; then echo "make install: $(VENV) is the image's environment, installed from another requirements.lock or pyproject.toml than this checkout's: rebuild the image (docker build -t nanoseg .)" >&2; exit 1; fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $@

# `nanoseg batch` runs on Spark (pyspark), which needs a Java runtime 17+: Debian's, installed when missing (as root)
java:
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make java: installing Debian's default-jre-headless (Java 17 on Debian 12, 21 on 13)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      default-jre-headless; \
	  else echo "make java: no java: install a Java runtime 17+ (apt-get install default-jre-headless) for" \
	    "nanoseg batch and its tests" >&2; fi; }

data: install
	nanoseg data

run: data
	dvc repro

# NANOSEG_NO_SKIP=1: a skipped test fails the run unless tests/conftest.py ALLOWED_SKIPS names its reason
# (Chromium / PostgreSQL missing, checks of the real ../shared files); `make test NANOSEG_NO_SKIP=0` lifts it.
NANOSEG_NO_SKIP ?= 1
# pytest-xdist workers, a test file each (--dist loadfile keeps a file's module fixtures in one worker). The heavy
# files start first (tests/conftest.py); --no-loadscope-reorder keeps that order (xdist would otherwise start the
# files with the most tests first, and the one-test pipeline file last). Each worker holds TensorFlow (~4 GB at
# most): 2 suits 2 cores and 24 GB. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: install java
	@set +e; NANOSEG_NO_SKIP=$(NANOSEG_NO_SKIP) python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected NO tests - failing on purpose" >&2; exit 1; fi; \
	exit $$rc

ui: install
	mlflow ui --backend-store-uri "$$(python -m nanoseg.tracking --uri --raw)" --host 127.0.0.1 --port $(UI_PORT)

tune: install
	nanoseg tune

serve: install
	nanoseg serve --host $(SERVE_HOST) --port $(SERVE_PORT) $(SERVE_ARGS)

screenshot: install
	python scripts/ui_screenshot.py --out reports/mlflow_ui.png

s3-up: install
	bash scripts/s3.sh up

s3-down:
	bash scripts/s3.sh down

bench: install
	python bench/predict_speed.py

# the StarDist peer row of the README (bench/stardist_peer.py): pyproject's optional extra `peers`
peers: install
	python -m pip install -q -e '.[peers]'

clean-venv:
	rm -rf $(VENV)
