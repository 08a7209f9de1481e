# Set-up and main jobs of audfer_jax. Both targets create the virtual
# environment in the checkout (.venv) when it is missing and install the
# package with what the job needs, so they work on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.audfer_jax_installed
WORKDIR ?= workdir/demo
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_ENABLE_ONEDNN_OPTS ?= 0

.PHONY: test train test-slow clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,convert]'
	@touch $(STAMP)

# The default test run (CI): everything but tests marked slow.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Slow tests too (multi-process training on 127.0.0.1, longer end-to-end runs).
test-slow: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The main job on the embedded, synthetic demo set: generate it, prepare it,
# train the demo config (tiny Former-DFER with the AU loss) on the CPU, evaluate.
train: $(STAMP)
	$(VENV)/bin/audfer-jax train --config configs/demo.py --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) workdir data/demo data/prepared
