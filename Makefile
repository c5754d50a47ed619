# Set-up and the two commands the README names: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo demo-readme test test-slow lint docs benchmark clean

install: $(STAMP)

# torch==2.13.0 first (the CPU build on this machine's disk), then the package and its extras.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/pyro-mixflows fit --force --out mixflows-demo

# Rerun the demo and copy what it prints into README.md (and tests/data/demo_output.json).
demo-readme: install
	$(BIN)/python -m tests.readme_demo

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check pyro_mixflows tests benchmarks
	$(BIN)/ruff format --check pyro_mixflows tests benchmarks

# The API reference from the docstrings, and the pages under docs/: docs/_build/html/index.html.
# Warnings are errors (the test suite checks the same build).
docs: install
	$(BIN)/python -m sphinx -b html -W --keep-going docs docs/_build/html

clean:
	rm -rf $(VENV) mixflows-demo docs/_build
