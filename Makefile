# The two commands a newcomer needs (see README):
#   make demo   install, start the whole stack on embedded parts, run a demo job
#   make test   install with test extras and run the whole test suite
# CI (.ci/run) runs `make gates` (lint, format, types) and then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-dev

.PHONY: install demo test gates
install: $(VENV)/.installed-dev

demo: $(VENV)/.installed-dev
	$(VENV)/bin/boxrun dev --demo

gates: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(VENV)/.installed-test
	$(PY) -m pytest -q
