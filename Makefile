# One-command set-up on a fresh machine: `make test` and `make demo` create
# .venv, install into it, and run. No CUDA package is pulled on a machine
# without a GPU: torch comes from the base interpreter when it already has one
# (CPU or CUDA build), else the pinned CPU wheel is installed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_CPU_VERSION ?= 2.13.0
TORCHATTACKS_VERSION ?= 3.5.1

.PHONY: venv test test-slow test-all demo bench gpu-prep gpu-check gpu-rehearse clean-venv

$(VENV)/.installed: pyproject.toml requirements-cpu.txt Makefile
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "using the torch of $(PYTHON)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	    $(PYTHON) -m venv $(VENV); \
	    $(PY) -m pip install -q torch==$(TORCH_CPU_VERSION); \
	fi
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q --no-deps torchattacks==$(TORCHATTACKS_VERSION)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

# The slow end-to-end tests only (CI runs them after `make test`).
test-slow: venv
	$(PY) -m pytest -q -m slow

# Everything at once.
test-all: venv
	$(PY) -m pytest -q -m "slow or not slow"

# The README's tables are made in the reproducible CPU mode (README, "Reproducible
# CPU mode"); REPRODUCIBLE=off runs with the CPU's own kernel paths.
REPRODUCIBLE ?= avx2

demo: venv
	$(PY) -m robustbench_convnorm.run --reproducible $(REPRODUCIBLE) configs/quickstart.yaml

bench: venv
	$(PY) -m benchmarks.run

# The GPU check (docs/benchmarks.md, "The GPU check"). gpu-prep puts the
# torchattacks wheel in .whl/ and the CIFAR-10 JPEG copy in .data/ (both
# git-ignored; they travel to a lent GPU machine as its `carry`) and prints
# the size of what travels and the device command. gpu-check runs the check
# (on a GPU machine; no venv needed there), gpu-rehearse runs it on the CPU.
CIFAR10_JPEG ?=
GPU_CHECK_OUT ?= benchmarks/out/gpu_check
CHECK_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-prep:
	$(CHECK_PY) -m benchmarks.gpu_prep $(if $(CIFAR10_JPEG),--cifar10-jpeg $(CIFAR10_JPEG),)

gpu-check:
	$(CHECK_PY) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT)

gpu-rehearse:
	$(CHECK_PY) -m benchmarks.gpu_check --rehearse --out $(GPU_CHECK_OUT)

clean-venv:
	rm -rf $(VENV)
