# Two commands matter: `make report` builds report/report.pdf and report/report.html,
# `make test` runs the whole test suite. Both set up everything they need first.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_MNIST ?= ../shared/data/mnist
MNIST_CACHE := data/mnist
MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

# Caches of Jupyter, IPython, matplotlib and pip live in the project, never in $HOME.
CACHE := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CACHE)/matplotlib
export IPYTHONDIR := $(CACHE)/ipython
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export PIP_CACHE_DIR := $(CACHE)/pip
export PYTHONPYCACHEPREFIX := $(CACHE)/pycache
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
ifdef SEEDS
export MLP_SEEDS := $(SEEDS)
endif

.PHONY: report test smoke-report venv data system-deps explore lab bench clean

report: venv data system-deps  ## execute every task notebook (full protocol) and export the report (SEEDS=n to change the number of seeds)
	$(PY) report/build_report.py

smoke-report: venv data system-deps  ## the same, in the quick smoke mode used by the tests
	MLP_SMOKE=1 $(PY) report/build_report.py

test: venv data system-deps  ## run the whole pytest suite
	$(PY) -m pytest

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

system-deps:
	bash scripts/ensure-system-deps.sh report browser

# The MNIST cache: copied from ../shared when it is there, downloaded (and verified) otherwise.
data: venv
	@mkdir -p $(MNIST_CACHE)
	@if [ -d "$(SHARED_MNIST)" ]; then \
	  for f in $(MNIST_FILES); do [ -f $(MNIST_CACHE)/$$f ] || cp "$(SHARED_MNIST)/$$f" $(MNIST_CACHE)/; done; \
	fi
	$(PY) -c "import mlp_core; mlp_core.load_mnist('$(MNIST_CACHE)')"

explore: venv data  ## open the interactive explorer in Voila (http://127.0.0.1:8866)
	$(VENV)/bin/voila notebooks/explorer.ipynb --no-browser --port=8866 --Voila.ip=127.0.0.1

lab: venv data  ## JupyterLab on the notebooks
	$(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 notebooks

bench: venv data  ## speed benchmark against a plain numpy implementation
	$(PY) bench/bench.py

clean:
	rm -rf report/build report/report.pdf report/report.html .cache .pytest_cache tests/artifacts
