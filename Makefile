# Quick start: `make up` runs the whole system on embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install native up test bench eval lint clean

install: $(VENV)/.installed native

# The evidence engine compiled with mypyc (same source, same scores, ~25 % fewer
# instructions per event); the pure-Python module is what runs where it is not built.
NATIVE := streams/.evidence.native
native: $(NATIVE)

$(NATIVE): streams/evidence.py $(VENV)/.installed
	$(BIN)/mypyc --ignore-missing-imports --explicit-package-bases --follow-imports=silent streams/evidence.py > build-native.log 2>&1 \
		|| { cat build-native.log; echo "mypyc failed: see build-native.log"; exit 1; }
	touch streams/evidence*.so $@  # (mypyc leaves an unchanged build as it was: newer than its source now)

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
	rm -rf $(VENV) data .pytest_cache build build-native.log $(NATIVE) streams/*.so

eval: install
	$(BIN)/python -m tests.eval.evaluate
