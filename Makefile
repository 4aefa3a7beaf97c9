# One command each: `make quickstart` (set up + train + sample), `make test` (set up + tests).
# Offline: REPARAM_DATA_DIR=/path/to/raw/downloads make quickstart
#
# Two environments (see README, "Tests"):
#   .venv        Python >= 3.12, jax 0.12: training, and the whole test suite
#   .venv-py311  Python 3.11, jax 0.10.2 + torch's CPU wheel: the `peer` tests,
#                which compare with torch / transformers / peft (tests/hf/ mostly)

# The first interpreter of the given versions that runs: pythonX.Y on PATH,
# else pyenv's.  Empty if there is none.
find_python = $(firstword $(foreach v,$(1),$(shell \
  for p in python$(v) $$(pyenv root 2>/dev/null)/versions/$(v)*/bin/python$(v); do \
    "$$p" -c "" 2>/dev/null && { command -v "$$p"; break; }; done)))

PYTHON ?= $(call find_python,3.12 3.13)
PEER_PYTHON ?= $(call find_python,3.11)
VENV ?= .venv
PEER_VENV ?= .venv-py311
PY := $(VENV)/bin/python
PEER_PY := $(PEER_VENV)/bin/python
WORKDIR ?= workdirs/shakespeare_char

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: jax 0.12 needs Python >= 3.12 and no python3.12 or python3.13 was found (PATH, pyenv); install one or pass PYTHON=/path/to/python3.12" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

$(PEER_VENV)/.test-installed: requirements.txt requirements-test.txt pyproject.toml
	@test -n "$(PEER_PYTHON)" || { echo "make: the torch peer tests need Python 3.11 (the CPU torch wheel) and no python3.11 was found (PATH, pyenv); install it, pass PEER_PYTHON=/path/to/python3.11, or run 'make test-main' for the rest" >&2; exit 2; }
	$(PEER_PYTHON) -m venv $(PEER_VENV)
	$(PEER_PY) -m pip install -q --upgrade pip
	$(PEER_PY) -m pip install -q -r requirements-test.txt
	$(PEER_PY) -m pip install -q --no-deps -e .
	touch $@

.PHONY: setup quickstart test test-main test-peers test-all browser
setup: $(VENV)/.installed

# The ablation HTML page's tests (tests/test_report_html.py) open it in a real
# headless browser: Debian's chromium, installed here when missing and make runs
# as root.  Otherwise one line says those tests will be skipped; under CI=true,
# where they must run, a missing browser stops make.
BROWSERS := chromium chromium-browser google-chrome google-chrome-stable
browser:
	@for b in $$REPARAM_CHROMIUM $(BROWSERS); do command -v "$$b" >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing Debian's chromium for the HTML page's browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || \
	    { echo "make: apt-get install chromium failed" >&2; exit 2; }; \
	elif [ "$$CI" = true ]; then \
	  echo "make: no chromium and not root: CI=true needs it for tests/test_report_html.py; run 'sudo make browser' (or sudo apt-get install chromium)" >&2; exit 2; \
	else \
	  echo "make: no chromium and not root: the HTML page's browser tests will be skipped ('sudo make browser' installs it)"; \
	fi

quickstart: $(VENV)/.installed
	$(PY) -m reparam_jax.train --config=configs/lm/shakespeare_char.py --workdir=$(WORKDIR)
	$(PY) -m reparam_jax.sample --workdir=$(WORKDIR) --prompt="ROMEO:" --num_tokens=200

# The two legs run side by side, each leg's output printed whole when it ends.
# They share $TFDS_DATA_DIR (one TFDS version for both, requirements.txt): the
# first process to need a dataset prepares it while the others wait for it
# (data/tfds_builders.py).
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-main test-peers

PYTEST_ARGS ?= --durations=15
# The compatibility leg (Python 3.11, jax 0.10.2, torch) runs the `peer` tests:
# those that compare with torch, transformers or peft, which only it has.  The
# current-stack leg runs everything else.  PEER_MARKERS="not slow" runs the
# whole suite on the compatibility stack (an hour on 2 cores).
PEER_MARKERS ?= peer and not slow

# pytest-xdist workers per leg; a test file stays on one worker, so its
# module fixtures (trained tiny runs) are built once.  Files go out in
# collection order, which tests/conftest.py starts with the heavy ones.
MAIN_WORKERS ?= 2
PEER_WORKERS ?= 1

test-main: $(VENV)/.test-installed browser
	$(PY) -m pytest -n $(MAIN_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-peers: $(PEER_VENV)/.test-installed
	$(PEER_PY) -m pytest -n $(PEER_WORKERS) --dist loadfile -m "$(PEER_MARKERS)" $(PYTEST_ARGS)

test-all: $(VENV)/.test-installed browser
	$(PY) -m pytest -m "slow or not slow"
