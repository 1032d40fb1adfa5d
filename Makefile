# A newcomer's two commands: `make demo` and `make test`. Each sets up .venv on first use
# (again when pyproject.toml changes) and then runs. The demo needs only the runtime
# (~0.7 GB installed); the tests add their own stack (pytest, bluesky, Tiled, pyright, ...:
# ~1.9 GB in all), so someone who only runs the monitor never downloads it.
# ARGS passes options through: make demo ARGS="--preset na-mno2", make test ARGS="-k eclab".

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test check

demo: $(VENV)/.runtime
	$(BIN)/operando demo $(ARGS)

test: $(VENV)/.test
	$(BIN)/pytest $(ARGS)

# lint, format and the declared layers (what .ci/run checks before the tests)
check: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(CURDIR)/$(BIN):$$PATH" bash .ci/layers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.runtime
