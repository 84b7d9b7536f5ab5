# The README's two commands: `make train` (the main job) and `make test` (the test suite).
# Each one sets up what it needs on first use and reuses it afterwards:
#   1. a virtual environment in .venv (python3 -m venv);
#   2. torch $(TORCH_VERSION) in it: the CPU build where no NVIDIA driver answers (`nvidia-smi -L`),
#      from PyTorch's CPU index when that host resolves, else whatever the configured pip index
#      offers; the CUDA build (PyPI's Linux wheel) where a driver answers;
#   3. fastgan built against that torch (`pip install --no-build-isolation -e ".[test]"`; the CUDA
#      kernels too where the torch is a CUDA build and nvcc is found), rebuilt when csrc/, setup.py
#      or pyproject.toml change.
# Options: make train ARGS="--model cdcgan --steps 500"; make test PYTEST_ARGS="-k gan_loss -x";
# PYTHON=python3.12 picks the interpreter of a new .venv; the build's environment variables
# (FASTGAN_CUDA, TORCH_CUDA_ARCH_LIST, FASTGAN_SIMT, MAX_JOBS, ...) pass through.
# People who bring their own torch skip all this: pip install --no-build-isolation -e ".[test]".

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
ARGS ?=
PYTEST_ARGS ?=
BIN := $(VENV)/bin
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: train test setup clean-venv
.DELETE_ON_ERROR:

train: $(VENV)/.fastgan-built
	$(BIN)/fastgan train $(ARGS)

# The suite on pytest-xdist workers (one per core, at most 4), each with one intra-op thread unless
# OMP_NUM_THREADS says otherwise: on 2 cores about 1.6x faster than one process of two threads.
# PYTEST_ARGS="-n 0" runs it in one process.
test: $(VENV)/.fastgan-built
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=$${MKL_NUM_THREADS:-1} \
	  $(BIN)/python -m pytest tests -n auto --maxprocesses 4 $(PYTEST_ARGS)

setup: $(VENV)/.fastgan-built

$(VENV)/.torch:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.10+ or pass PYTHON=/path/to/python3"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "make: fastgan needs Python 3.10+; $(PYTHON) is $$($(PYTHON) -V 2>&1): pass PYTHON=python3.1x"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@if nvidia-smi -L >/dev/null 2>&1; then \
	  echo "make: an NVIDIA driver answers: installing the CUDA build of torch $(TORCH_VERSION)"; \
	  set -x; $(BIN)/pip install torch==$(TORCH_VERSION); \
	elif $(BIN)/python -c 'import socket; socket.getaddrinfo("download.pytorch.org", 443)' 2>/dev/null; then \
	  echo "make: no NVIDIA driver: installing the CPU build of torch $(TORCH_VERSION)"; \
	  set -x; $(BIN)/pip install torch==$(TORCH_VERSION) --extra-index-url $(TORCH_CPU_INDEX); \
	else \
	  echo "make: no NVIDIA driver, and $(TORCH_CPU_INDEX) is out of reach: torch $(TORCH_VERSION) from the configured index"; \
	  set -x; $(BIN)/pip install torch==$(TORCH_VERSION); \
	fi
	$(BIN)/pip install ninja wheel setuptools
	touch $@

$(VENV)/.fastgan-built: $(VENV)/.torch $(SOURCES)
	$(BIN)/pip install --no-build-isolation -e ".[test]"
	$(BIN)/fastgan info
	touch $@

clean-venv:
	rm -rf $(VENV)
