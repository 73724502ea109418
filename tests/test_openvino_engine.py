"""The OpenVINO engine's own behaviour (HF_GATEWAY_TEST_ENGINE=openvino; `make test-openvino`).

The OpenAI and KServe suites run on it as on the other engines; these check what is particular
to it: the IR conversion and its cache, the worker process (its recovery when it dies), aborts
reaching the pipeline, seeds, and the parameters it refuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal

import httpx
import pytest

from engines.loader import ModelSpec
from engines.types import GenerationParams, RequestContext
from tests.conftest import TEST_ENGINE, make_app, run_async
from tests.helpers import eventually

pytestmark = pytest.mark.skipif(TEST_ENGINE != "openvino", reason="runs on the OpenVINO engine (HF_GATEWAY_TEST_ENGINE=openvino)")

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story about a dragon."}]}


def test_the_ir_is_converted_once_and_an_ir_directory_is_served_as_it_is(tiny_dir, tiny_engine, caplog):
    from engines.openvino import ensure_ir, is_ir_dir

    ir = tiny_engine.capabilities.extra["ir"]
    assert is_ir_dir(ir) and not os.path.samefile(ir, tiny_dir)
    before = os.stat(os.path.join(ir, "openvino_model.xml")).st_mtime_ns
    caplog.set_level(logging.INFO, logger="engines.openvino")
    assert str(ensure_ir(str(tiny_dir), "float32")) == ir  # same content, same key: no second export
    assert "Converting" not in caplog.text
    assert os.stat(os.path.join(ir, "openvino_model.xml")).st_mtime_ns == before
    assert str(ensure_ir(ir, "auto")) == ir  # IR in, the same IR out
    assert os.path.isfile(os.path.join(ir, "openvino_tokenizer.xml"))  # xgrammar needs the vocabulary


async def test_requests_without_a_seed_sample_differently_and_seeds_repeat(client):
    kw = dict(model="tiny", prompt="The quick brown fox", max_tokens=12, temperature=1.0)
    unseeded = await client.completions.create(n=4, **kw)
    assert len({c.text for c in unseeded.choices}) > 1  # the pipeline's default seed is the same for all
    a = await client.completions.create(seed=5, **kw)
    b = await client.completions.create(seed=5, **kw)
    assert a.choices[0].text == b.choices[0].text


async def test_a_stop_string_aborts_the_request_in_the_pipeline(tiny_engine):
    """The choice ends on our stop string; the pipeline, asked for 2000 tokens, drops it at once."""
    params = GenerationParams(max_tokens=2000, temperature=0, ignore_eos=True)
    first = [d async for d in tiny_engine.generate("Hello", GenerationParams(max_tokens=3, temperature=0, ignore_eos=True), RequestContext(request_id="probe"))]
    stop = first[1].text or first[0].text  # text the model is sure to produce early
    deltas = [d async for d in tiny_engine.generate("Hello", dataclasses.replace(params, stop=(stop,)), RequestContext(request_id="stopped"))]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens < 10
    await eventually(lambda: tiny_engine.stats().engine_unfinished == 0, "the pipeline to drop the request")


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("completions", {"prompt": "x", "logprobs": 2}, "logprobs"),
        ("completions", {"prompt": "x", "echo": True, "logprobs": 0}, "echo"),
        ("chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 1}, "top_logprobs"),
        ("chat/completions", {**CHAT, "logit_bias": {"42": 5}}, "logit_bias"),
        ("chat/completions", {**CHAT, "structured_outputs": {"grammar": 'start: "a"'}}, "structured_outputs.grammar"),
    ],
)
async def test_what_the_pipeline_cannot_do_is_a_400_naming_it(http, path, extra, param):
    r = await http.post(f"/openai/v1/{path}", json={"model": "tiny", "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and "openvino" in error["message"]


async def test_json_schema_output_is_compact_like_the_other_engines(client):
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3}},
              "required": ["a", "b"]}
    r = await client.chat.completions.create(
        model="tiny", messages=CHAT["messages"], max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    text = r.choices[0].message.content
    value = json.loads(text)
    assert isinstance(value["a"], bool) and len(value["b"]) in (2, 3) and all(isinstance(v, bool) for v in value["b"])
    assert text == json.dumps(value, separators=(",", ":"))  # no free whitespace anywhere
    assert r.choices[0].finish_reason == "stop"


def test_a_worker_that_dies_fails_its_requests_and_is_replaced(tiny_dir):
    """The pipeline's process dies with a request in it (frozen first, so the request is surely
    still there): that request is a 500 in its envelope, a new worker starts, the next is served."""
    from engines.openvino import load_engine

    engine = load_engine(ModelSpec(model_dir=str(tiny_dir), dtype="float32"), served_name="tiny", kv_cache_memory_gb=1)
    run_async(engine.start())
    try:
        async def scenario() -> None:
            app = make_app(engine, disable_log_requests=True)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=600) as http:
                pid = engine.backend._process.pid
                os.kill(pid, signal.SIGSTOP)
                call = asyncio.ensure_future(http.post("/openai/v1/chat/completions", json={**CHAT, "max_tokens": 50}))
                await eventually(lambda: engine.stats().running == 1, "the request to reach the engine")
                os.kill(pid, signal.SIGKILL)
                r = await call
                assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", r.text
                await eventually(lambda: engine.backend.restarts == 1 and engine.backend._conn is not None, "a new worker")
                r = await http.post("/openai/v1/chat/completions", json={**CHAT, "max_tokens": 4, "ignore_eos": True})
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4

        asyncio.run(scenario())
    finally:
        run_async(engine.stop())
