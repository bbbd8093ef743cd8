# Quick start: `make up` runs the whole system on embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test bench eval lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

up: install
	$(BIN)/ruleless up

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/pytest -q -m 'bench or soak' -s

clean:
	rm -rf $(VENV) data .pytest_cache

eval: install
	$(BIN)/python -m tests.eval.evaluate
