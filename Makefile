# Two commands matter: `make report` builds output/report.pdf and output/report.html,
# `make test` runs the whole test suite. Both set up everything they need first.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_MNIST ?= ../shared/data/mnist
MNIST_CACHE := data/mnist
MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

# Caches of pip, Jupyter, IPython, matplotlib, npm, Chromium and dconf live in the project, never in $HOME.
CACHE := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CACHE)/matplotlib
export IPYTHONDIR := $(CACHE)/ipython
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export PIP_CACHE_DIR := $(CACHE)/pip
export PYTHONPYCACHEPREFIX := $(CACHE)/pycache
export npm_config_cache := $(CACHE)/npm
export XDG_CACHE_HOME := $(CACHE)/xdg/cache
export XDG_CONFIG_HOME := $(CACHE)/xdg/config
export XDG_DATA_HOME := $(CACHE)/xdg/data
# pip asks `rustc --version` for its user agent; where rustc is rustup's, that writes ~/.rustup.
export RUSTUP_HOME := $(CACHE)/rustup
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
ifdef SEEDS
export MLP_SEEDS := $(SEEDS)
endif
# Yes/no settings reach the build as MLP_* variables, and the build checks them with the one parser
# of the project (1, true, yes, on / 0, false, no, off; anything else is an error naming it).
REPORT_ENV := $(if $(STRICT),MLP_STRICT="$(STRICT)") $(if $(FRESH),MLP_FRESH="$(FRESH)") $(if $(VERBOSE),MLP_VERBOSE="$(VERBOSE)")
# The explorer's Voila server: explorer/serve.py holds its settings, each with its reason (trusted
# notebook, kernels over IPC, no CDN, kernel shut down when its page closes, 30 s idle cull as a
# fallback); EXPLORE_PORT picks the port, VOILA_OPTIONS adds Voila options (e.g. --debug).
EXPLORE_PORT ?= 8866
VOILA_OPTIONS ?=
# JupyterLab's server: lab/jupyter_lab_config.py holds its settings, each with its reason (notebooks
# open unmodified and are saved without outputs, no news pop-up, 127.0.0.1, also as root); its
# user settings and workspaces go to $(JUPYTER_CONFIG_DIR)/lab. LAB_PORT picks the port,
# LAB_OPTIONS adds JupyterLab options (e.g. --debug).
LAB_CONFIG := $(CURDIR)/lab/jupyter_lab_config.py
LAB_PORT ?= 8888
LAB_OPTIONS ?=

.PHONY: report test smoke-report venv data system-deps explore lab bench clean

report: venv data optional-system-deps  ## the report (STRICT=1: unsupported claims fail; FRESH=1: retrain; SEEDS=n)
	@$(REPORT_ENV) $(PY) report/build_report.py

smoke-report: venv data optional-system-deps  ## the same, in the quick smoke mode used by the tests
	@MLP_SMOKE=1 $(REPORT_ENV) $(PY) report/build_report.py

test: venv data optional-system-deps  ## the whole pytest suite; tests that need a missing system package are skipped
	@$(PY) -m pytest

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	@echo "Setting up the virtual environment .venv (pinned packages)..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq -r requirements.txt -c constraints.txt
	@$(PY) -m pip install -qq -c constraints.txt -e '.[dask]'
	@touch $@

# Debian packages: xelatex and pandoc (the PDF), pdftotext (tests read the PDF), chromium (browser tests).
system-deps:  ## install them (Debian/Ubuntu, as root or with sudo)
	@bash scripts/ensure-system-deps.sh --install report browser

optional-system-deps:
	@bash scripts/ensure-system-deps.sh --if-possible report browser

# The MNIST cache: copied from ../shared when it is there, downloaded (and verified) otherwise.
data: venv
	@mkdir -p $(MNIST_CACHE)
	@if [ -d "$(SHARED_MNIST)" ]; then \
	  for f in $(MNIST_FILES); do [ -f $(MNIST_CACHE)/$$f ] || cp "$(SHARED_MNIST)/$$f" $(MNIST_CACHE)/; done; \
	fi
	@$(PY) mnist_files.py $(MNIST_CACHE)

explore: venv data  ## the interactive explorer in Voila (http://127.0.0.1:8866)
	$(PY) explorer/serve.py --port=$(EXPLORE_PORT) $(VOILA_OPTIONS)

lab: venv data  ## JupyterLab on the notebooks (http://127.0.0.1:8888; outputs are never saved)
	$(VENV)/bin/jupyter lab --config=$(LAB_CONFIG) --port=$(LAB_PORT) $(LAB_OPTIONS)

# KERNELS: OpenBLAS kernels to measure under, in turn ("all": every kernel this CPU runs);
# TORCH: a Python interpreter that has torch, for the PyTorch rows (torch is not a dependency).
KERNELS ?=
TORCH ?=
BENCH_OPTIONS := $(if $(KERNELS),--kernels $(filter-out all,$(KERNELS))) $(if $(TORCH),--torch $(TORCH))

bench: venv data  ## the speed benchmark: mlp_core against its floor, PyTorch, plain numpy (KERNELS=all, TORCH=python)
	$(PY) bench/bench.py $(BENCH_OPTIONS)

clean:  ## remove build products and caches, the run store included (the next report retrains everything)
	rm -rf output .cache .pytest_cache tests/artifacts
