# The two commands a newcomer needs (see README):
#   make demo   install, start the whole stack on embedded parts, run a demo job
#   make test   install with test extras and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: install
	$(VENV)/bin/boxrun dev --demo

test: install
	$(PY) -m pytest -q
