"""The vLLM engine itself, on vLLM's CPU build: the same answers as the transformers engine,
our stop handling on top of vLLM, and LoRA adapters addressed by name.

The OpenAI suite runs on this engine too (`make test-vllm`); these tests are what it adds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest

from engines.loader import ModelSpec
from engines.types import GenerationParams, RequestContext
from tests.conftest import TEST_ENGINE, make_app, stop_group
from tests.helpers import eventually

pytestmark = pytest.mark.skipif(TEST_ENGINE != "vllm", reason="runs on the vLLM engine (HF_GATEWAY_TEST_ENGINE=vllm)")


async def collect(engine, prompt, params, rid):
    deltas = [d async for d in engine.generate(prompt, params, RequestContext(rid))]
    return deltas, [t for d in deltas for t in d.token_ids], "".join(d.text for d in deltas)


@pytest.fixture(scope="module")
def smollm_engines(smollm_dir: Path):
    """The packaged SmolLM2 on both engines, float32."""
    from engines.hf import load_engine as load_hf
    from engines.vllm import load_engine as load_vllm

    spec = ModelSpec(model_dir=str(smollm_dir), dtype="float32", max_model_len=2048)
    hf = load_hf(spec, served_name="smol")
    vl = load_vllm(spec, served_name="smol", kv_cache_memory_gb=0.5, engine_argv=["--enforce-eager"])
    asyncio.run(hf.start())
    asyncio.run(vl.start())
    yield hf, vl
    asyncio.run(vl.stop())
    asyncio.run(hf.stop())


async def test_greedy_output_and_logprobs_equal_the_transformers_engine(smollm_engines):
    hf, vl = smollm_engines
    assert (hf.capabilities.engine, vl.capabilities.engine) == ("transformers", "vllm")
    params = GenerationParams(max_tokens=16, temperature=0.0, logprobs=2, stop=("\n\n",))
    for i, prompt in enumerate(["The capital of France is", "def fibonacci(n):"]):
        ids = hf.tokenizer.encode(prompt)
        hd, h_ids, h_text = await collect(hf, ids, params, f"hf-{i}")
        vd, v_ids, v_text = await collect(vl, ids, params, f"vl-{i}")
        assert v_ids == h_ids and v_text == h_text
        assert vd[-1].finish_reason == hd[-1].finish_reason and vd[-1].completion_tokens == hd[-1].completion_tokens
        h_items = [x for d in hd for x in d.logprobs]
        v_items = [x for d in vd for x in d.logprobs]
        assert [x.text for x in v_items] == [x.text for x in h_items]
        for a, b in zip(h_items, v_items):
            assert abs(a.logprob - b.logprob) < 2e-3
            assert [t[0] for t in a.top] == [t[0] for t in b.top]


async def test_prompt_logprobs_equal_the_transformers_engine(smollm_engines):
    hf, vl = smollm_engines
    ids = hf.tokenizer.encode("Paris is the capital of France.")
    params = GenerationParams(max_tokens=0, prompt_logprobs=1)
    (h,), _, _ = await collect(hf, ids, params, "hf-p")
    (v,), _, _ = await collect(vl, ids, params, "vl-p")
    assert (v.completion_tokens, v.finish_reason, v.token_ids) == (0, "length", ())
    assert v.prompt_logprobs[0] is None and len(v.prompt_logprobs) == len(ids)
    for a, b in zip(h.prompt_logprobs[1:], v.prompt_logprobs[1:]):
        assert a.text == b.text and abs(a.logprob - b.logprob) < 2e-3


async def test_a_stop_string_ends_the_vllm_request_at_once(tiny_engine):
    params = GenerationParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    _, _, text = await collect(tiny_engine, "Once upon a time", params, "free")
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text
    deltas, ids, cut = await collect(tiny_engine, "Once upon a time", GenerationParams(max_tokens=40, temperature=0.0, ignore_eos=True, stop=(stop,)), "stopped")
    assert cut == text[: text.index(stop)] and deltas[-1].stop_reason == stop and deltas[-1].finish_reason == "stop"
    assert deltas[-1].completion_tokens == len(ids) < 40
    # vLLM drops the aborted request within a step or two
    await eventually(lambda: tiny_engine.stats().engine_unfinished == 0, "vLLM to drop the aborted request")
    assert await tiny_engine.check_health()


async def test_speculative_decoding_with_kserves_flags_is_lossless(smollm_engines, smollm_dir: Path):
    """KServe's documented `--speculative-model/--num-speculative-tokens`, translated to vLLM's
    --speculative-config, on CPU: greedy output equals the plain engine's, tokens arrive several
    per step, and usage counts every one of them."""
    from engines.vllm import load_engine as load_vllm

    _, plain = smollm_engines
    spec = ModelSpec(model_dir=str(smollm_dir), dtype="float32", max_model_len=2048)
    engine = load_vllm(spec, served_name="smol", kv_cache_memory_gb=0.5,
                       engine_argv=["--enforce-eager", "--speculative-model", str(smollm_dir), "--num-speculative-tokens", "3"])
    await engine.start()
    try:
        params = GenerationParams(max_tokens=24, temperature=0.0, ignore_eos=True)
        ids = plain.tokenizer.encode("The capital of France is")
        _, want, text = await collect(plain, ids, params, "plain")
        deltas, got, spec_text = await collect(engine, ids, params, "spec")
        assert got == want and spec_text == text
        assert max(len(d.token_ids) for d in deltas) > 1  # the draft's tokens were accepted in runs
        assert deltas[-1].completion_tokens == len(got) == 24
    finally:
        await engine.stop()


def write_lora(base: Path, out: Path, rank: int = 8) -> Path:
    """A random LoRA adapter (PEFT layout) on q_proj and v_proj of the tiny llama."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    shapes = {"q_proj": cfg.num_attention_heads * head_dim, "v_proj": cfg.num_key_value_heads * head_dim}
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for module, out_dim in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, cfg.hidden_size, generator=g) * 0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * 0.5
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": list(shapes), "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": str(base),
    }))
    return out


async def test_lora_adapters_are_served_by_name(tiny_dir: Path, tmp_path: Path):
    from engines.vllm import load_engine as load_vllm

    adapter = write_lora(tiny_dir, tmp_path / "sql-lora")
    engine = load_vllm(ModelSpec(model_dir=str(tiny_dir)), served_name="tiny", kv_cache_memory_gb=0.5,
                       engine_argv=["--enforce-eager"], lora_modules=[f"sql-lora={adapter}"])
    await engine.start()
    try:
        app = make_app(engine, disable_log_requests=True)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            client = openai.AsyncOpenAI(base_url="http://test/openai/v1", api_key="x", http_client=http, max_retries=0)
            models = await client.models.list()
            assert [(m.id, getattr(m, "parent", None)) for m in models.data] == [("tiny", None), ("sql-lora", "tiny")]
            body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "extra_body": {"ignore_eos": True}}
            base = await client.completions.create(model="tiny", **body)
            tuned = await client.completions.create(model="sql-lora", **body)
            assert tuned.model == "sql-lora" and tuned.usage.completion_tokens == 12
            assert tuned.choices[0].text != base.choices[0].text  # the adapter changes the model
            with pytest.raises(openai.NotFoundError):
                await client.completions.create(model="other-lora", **body)
    finally:
        await engine.stop()


def test_the_cli_serves_the_default_model_on_vllm():
    """`hf-gateway --backend vllm` on the packaged SmolLM2, in a real process (vLLM spawns its
    engine process from it), driven by the official SDK."""
    from tests.test_server_process import QUESTION, serve

    proc, base = serve("--backend", "vllm", "--enforce-eager", "--kv_cache_memory_gb", "0.5")
    try:
        client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="x", max_retries=0)
        assert client.models.retrieve("model").model_extra["engine"] == "vllm"
        r = client.chat.completions.create(model="model", messages=QUESTION, max_tokens=20, temperature=0)
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
        chunks = list(client.chat.completions.create(model="model", messages=QUESTION, max_tokens=20, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    finally:
        proc.terminate()  # the gateway drains, stops vLLM's engine process and exits
        try:
            out = proc.communicate(timeout=600)[0]
        finally:
            stop_group(proc)  # whatever is left of its process group
    assert "Engine: vLLM" in out and "supports LlamaForCausalLM for text_generation" in out
