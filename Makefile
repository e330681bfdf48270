# The two README commands: `make demo` and `make test`. Each bootstraps .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit integration browser bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,pyats]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/labq demo

lint: $(STAMP)
	$(VENV)/bin/ruff check labq tasks tests bench examples
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

unit: $(STAMP)
	$(VENV)/bin/pytest -m unit

integration: $(STAMP)
	$(VENV)/bin/pytest -m integration

browser: $(STAMP)
	$(VENV)/bin/pytest -m browser

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .labq .pytest_cache .mypy_cache .ruff_cache
