"""text2text generation (T5-style) through generate(), checked against generate() called directly."""

import uuid

import json

import httpx
import torch

from engines import GenerationParams, RequestContext
from engines.tasks import Task
from tests.conftest import make_app
from tests.helpers import eventually

PROMPT = "translate English to German: the house is wonderful"


def ctx():
    return RequestContext(uuid.uuid4().hex)


def reference(model_dir, text, max_new_tokens):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, 1:].tolist()  # drop the decoder start token


async def test_greedy_output_equals_generate(t5_engine, tiny_t5_dir):
    assert t5_engine.capabilities.tasks == frozenset({Task.text2text_generation})
    deltas = [d async for d in t5_engine.generate(PROMPT, GenerationParams(max_tokens=12, temperature=0), ctx())]
    ids = [t for d in deltas for t in d.token_ids]
    want = reference(tiny_t5_dir, PROMPT, 12)
    assert ids == want[: len(ids)] and len(ids) == len(want)
    assert "".join(d.text for d in deltas) == t5_engine.tokenizer.decode(ids)
    assert deltas[-1].finish_reason in ("stop", "length") and deltas[-1].completion_tokens == len(ids)


async def test_streams_over_openai_and_kserve(t5_engine):
    app = make_app(t5_engine, disable_log_requests=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        full = (await http.post("/openai/v1/completions", json={"prompt": PROMPT, "max_tokens": 10, "temperature": 0})).json()
        stream = await http.post("/openai/v1/completions", json={"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "stream": True})
        v1 = (await http.post("/v1/models/t5:predict", json={"instances": [PROMPT], "parameters": {"max_tokens": 10}})).json()
        chat = await http.post("/openai/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        bad = await http.post("/openai/v1/completions", json={"prompt": PROMPT, "logprobs": 1})
    text = "".join(
        json.loads(line[6:])["choices"][0]["text"]
        for line in stream.text.splitlines() if line.startswith("data: {")
    )
    assert text == full["choices"][0]["text"] == v1["predictions"][0]
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "template_error"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logprobs"


async def test_abort_stops_generation(t5_engine):
    stream = t5_engine.generate(PROMPT, GenerationParams(max_tokens=200, ignore_eos=True), ctx())
    async for d in stream:
        if d.completion_tokens == 3:
            break
    await stream.aclose()
    await eventually(lambda: t5_engine.stats().running == 0, "the abort to free the slot")
    assert t5_engine.stats().aborted_total >= 1
