# Two commands do everything on a fresh machine with python3:  `make run`  and  `make test`.
# Both create (or reuse) .venv and install requirements.txt first; make test (and lint) also requirements-test.txt.
# Set OMNIGLOT_ROOT to a folder that holds (or will receive) omniglot-py/; it defaults to ./data, where the notebook
# downloads Omniglot automatically.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
TEST_STAMP := $(VENV)/.requirements-test-installed
PRESET ?= auto
# The committed notebook's preset: "full" is the converged run (about an hour on 2 cores) and refreshes
# evaluation/converged_reference.json; `make notebook NOTEBOOK_PRESET=quick` commits a run of minutes.
NOTEBOOK_PRESET ?= full
export OMNIGLOT_ROOT ?= data
export MPLBACKEND ?= Agg

.PHONY: setup run test lint notebook bench bench-tiny clean

$(STAMP): requirements.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The test and lint tools (pytest, ruff, selenium) only: what make run needs stays in requirements.txt.
$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

setup: $(STAMP)

## run: execute the notebook top to bottom, headless, with PRESET (default "auto"), into executed/.
run: $(STAMP)
	mkdir -p executed
	$(PYTHON) -m papermill anil_on_omniglot.ipynb executed/anil_on_omniglot.ipynb -k python3 \
		-p PRESET $(PRESET) -p DATA_ROOT "$(OMNIGLOT_ROOT)"

## test: lint, then the whole test suite (includes the notebook's smoke run, the notebook driven in JupyterLab by
## headless Chromium, and a tiny benchmark run).
test: $(TEST_STAMP) lint
	$(PYTHON) -m pytest

## lint: ruff, then import-linter's layers and no-cycle contracts (pyproject.toml, [tool.importlinter]).
lint: $(TEST_STAMP)
	$(PYTHON) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache --no-logo

## notebook: regenerate the committed notebook's outputs from a clean run of NOTEBOOK_PRESET (default "full", which
## also writes the converged reference); the notebook runs exactly as committed (nbclient, nothing injected): the
## preset reaches it through ANIL_PRESET.
notebook: $(STAMP)
	$(PYTHON) -m utils.notebook_tools run-and-commit --preset $(NOTEBOOK_PRESET) --data-root "$(OMNIGLOT_ROOT)"

## bench: the full benchmark suite on this machine (writes results/benchmark.{csv,json}).
bench: $(STAMP)
	$(PYTHON) -m benchmarks.run

bench-tiny: $(STAMP)
	$(PYTHON) -m benchmarks.run --tiny

clean:
	rm -rf executed .pytest_cache .ruff_cache
