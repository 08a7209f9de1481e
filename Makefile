# Set-up and main jobs of audfer_jax. Both targets create the virtual
# environment in the checkout (.venv) when it is missing and install what the
# job needs, so they work on a fresh machine: `make train` the package alone,
# `make test` the package with its `test` and `convert` (PyTorch) extras. Each
# install has its own stamp file, so `make train` then `make test` (or the
# reverse) installs only what is missing.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP_TRAIN := $(VENV)/.audfer_jax_train_installed
STAMP_TEST := $(VENV)/.audfer_jax_installed
WORKDIR ?= workdir/demo
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_ENABLE_ONEDNN_OPTS ?= 0

.PHONY: test train test-slow clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_TRAIN): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $@

$(STAMP_TEST): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,convert]'
	@touch $@

# The default test run (CI): everything but tests marked slow, on two pytest
# workers (pytest-xdist), one test file each at a time: most tests keep one
# core busy, so two workers use both cores of a CI machine.
PYTEST_WORKERS ?= 2
test: $(STAMP_TEST)
	$(PY) -m pytest -q -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Slow tests too (multi-process training on 127.0.0.1, longer end-to-end runs).
test-slow: $(STAMP_TEST)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The main job on the embedded, synthetic demo set: generate it, prepare it,
# train the demo config (tiny Former-DFER with the AU loss), evaluate. (On a
# host without a TPU, `audfer-jax` itself keeps the libtpu that `make test`
# installs from probing for one: audfer_jax/host.py.)
train: $(STAMP_TRAIN)
	$(VENV)/bin/audfer-jax train --config configs/demo.py --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) workdir data/demo data/prepared
