# One command each: `make quickstart` (set up + train + sample), `make test` (set up + tests).
# Offline: REPARAM_DATA_DIR=/path/to/raw/downloads make quickstart
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/shakespeare_char

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

.PHONY: setup quickstart test test-all
setup: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(PY) -m reparam_jax.train --config=configs/lm/shakespeare_char.py --workdir=$(WORKDIR)
	$(PY) -m reparam_jax.sample --workdir=$(WORKDIR) --prompt="ROMEO:" --num_tokens=200

test: $(VENV)/.installed
	$(PY) -m pytest

test-all: $(VENV)/.installed
	$(PY) -m pytest -m "slow or not slow"
