# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Each creates (or reuses) .venv and installs what it needs; torch==2.13.0 is installed
# first so pip takes the local CPU build where one exists (pyproject accepts any recent torch).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

.PHONY: demo test install bench
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/imprint demo --output demo-output

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/step_time.py
