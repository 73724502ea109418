"""A hypothesis property over hostile request bodies (adversary.md's probes, generalised): whatever
the body of an OpenAI chat/completions/tokenize request or a KServe v1/v2 request holds, the
answer is never a 5xx, every 4xx is in its face's envelope, and the server keeps serving.

The bodies mix valid requests with the shapes that once made 500s: lone surrogates, wrong types,
strings for numbers, reserved template arguments, tool calls of the wrong shape, unknown keys with
odd names, parameters and outputs that are not objects. The reproductions are explicit examples.
`FUZZ_EXAMPLES` sets the number of generated bodies per property (CI: a short run).
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import make_app, run_async

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# Text that includes what JSON can carry but a tokenizer cannot: lone surrogates, NUL, CR/LF.
hostile_text = st.text(st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.sampled_from("\r\n\x00€é")),
                       max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), hostile_text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3), max_leaves=8)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "developer", "root"]), "content": st.one_of(hostile_text, values)},
        optional={"tool_calls": st.lists(st.one_of(values, st.fixed_dictionaries({"id": values, "function": values})), max_size=2),
                  "tool_call_id": values, "name": values},
    ),
    max_size=3,
)
TEMPLATE_KEYS = ["chat_template", "add_generation_prompt", "continue_final_message", "messages", "tools", "tokenize", "greeting"]
generation_fields = st.fixed_dictionaries({}, optional={
    "max_tokens": st.one_of(st.integers(-2, 6), values), "temperature": values, "top_p": values, "n": st.one_of(st.integers(0, 3), values),
    "stop": values, "seed": values, "logit_bias": st.dictionaries(hostile_text, values, max_size=2), "stream": values,
    "logprobs": values, "response_format": values, "guided_regex": values, "model": st.one_of(st.just("tiny"), hostile_text),
    "chat_template_kwargs": st.dictionaries(st.sampled_from(TEMPLATE_KEYS), values, max_size=2), "chat_template": values,
    "stream_options": values, "tools": values, "tool_choice": values, "echo": values,
})
unknown_keys = st.dictionaries(hostile_text, values, max_size=3)


def body_of(required: dict, optional: dict, extra: dict) -> bytes:
    body = {**extra, **required, **optional}
    for key in ("max_tokens",):  # short generations: the property is about answers, not about output
        if isinstance(body.get(key), int) and body[key] > 6:
            body[key] = 6
    return json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \\udXXX escapes


@pytest.fixture(scope="module")
def fuzz_client(tiny_engine):
    app = make_app(tiny_engine, max_total_tokens=24, max_n=3, disable_log_requests=True)
    return app


def answer(app, path: str, raw: bytes) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=300) as http:
            return await http.post(path, content=raw, headers={"content-type": "application/json"})

    return run_async(call())


def check(path: str, response: httpx.Response) -> None:
    assert response.status_code < 500, f"{path} -> {response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        if path.startswith(("/openai", "/tokenize")):
            assert isinstance(body.get("error"), dict) and body["error"]["message"], body
        else:
            assert isinstance(body.get("error"), str) and body["error"], body


@fuzz
@given(messages=messages, fields=generation_fields, extra=unknown_keys, path=st.sampled_from(["/openai/v1/chat/completions", "/tokenize"]))
@example(messages=[{"role": "user", "content": "\ud800 x"}], fields={}, extra={}, path="/openai/v1/chat/completions")
@example(messages=[{"role": "user", "content": "x"}], fields={"chat_template_kwargs": {"chat_template": "{{ 7*7 }}"}}, extra={},
         path="/tokenize")
@example(messages=[{"role": "user", "content": "x"}], fields={"chat_template_kwargs": {"messages": []}}, extra={},
         path="/openai/v1/chat/completions")
@example(messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": "f"}]}, {"role": "user", "content": "x"}],
         fields={}, extra={}, path="/openai/v1/chat/completions")
@example(messages=[{"role": "user", "content": "x"}], fields={"max_tokens": "5", "stream": "yes"}, extra={"a\r\nSet-Cookie: x": 1, "€": 1},
         path="/openai/v1/chat/completions")
def test_chat_bodies_never_get_a_5xx(fuzz_client, messages, fields, extra, path):
    check(path, answer(fuzz_client, path, body_of({"messages": messages}, fields, extra)))


@fuzz
@given(prompt=st.one_of(hostile_text, st.lists(st.integers(-3, 60000), max_size=4), values), fields=generation_fields, extra=unknown_keys)
@example(prompt="\ud83d", fields={"max_tokens": 1}, extra={})
@example(prompt="x", fields={"logit_bias": {" 5 ": 1, "\u0665": 1}}, extra={})
@example(prompt="x", fields={"max_tokens": 1}, extra={f"k{i}": 1 for i in range(1000)})
def test_completion_bodies_never_get_a_5xx(fuzz_client, prompt, fields, extra):
    check("/openai/v1/completions", answer(fuzz_client, "/openai/v1/completions", body_of({"prompt": prompt}, fields, extra)))


kserve_parameters = st.one_of(values, st.fixed_dictionaries({}, optional={
    "max_tokens": values, "temperature": values, "top_p": values, "seed": values, "binary_data_output": values}))


@fuzz
@given(instances=st.one_of(st.lists(st.one_of(hostile_text, values), max_size=3), values), parameters=kserve_parameters)
@example(instances=["hi"], parameters=[1])
@example(instances=["hi"], parameters={"max_tokens": 1.9})
def test_v1_bodies_never_get_a_5xx(fuzz_client, instances, parameters):
    raw = json.dumps({"instances": instances, "parameters": parameters}).encode()
    check("/v1/models/tiny:predict", answer(fuzz_client, "/v1/models/tiny:predict", raw))


@fuzz
@given(data=st.one_of(st.lists(st.one_of(hostile_text, values), max_size=3), values), parameters=kserve_parameters,
       outputs=st.one_of(st.none(), values, st.lists(st.fixed_dictionaries({"name": values, "parameters": values}), max_size=2)),
       datatype=st.sampled_from(["BYTES", "FP32", "x"]))
@example(data=["hi"], parameters=[["max_tokens", 1]], outputs=None, datatype="BYTES")
@example(data=["hi"], parameters={"max_tokens": 1}, outputs=[1], datatype="BYTES")
@example(data=["hi"], parameters={"max_tokens": 1}, outputs="x", datatype="BYTES")
@example(data=["hi"], parameters={"max_tokens": 1}, outputs=[{"name": "output-0", "parameters": [1]}], datatype="BYTES")
def test_v2_bodies_never_get_a_5xx(fuzz_client, data, parameters, outputs, datatype):
    body = {"inputs": [{"name": "input-0", "datatype": datatype, "shape": [1], "data": data}], "parameters": parameters}
    if outputs is not None:
        body["outputs"] = outputs
    check("/v2/models/tiny/infer", answer(fuzz_client, "/v2/models/tiny/infer", json.dumps(body).encode()))


def test_the_server_still_serves_after_the_fuzzing(fuzz_client):
    r = answer(fuzz_client, "/openai/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 2}).encode())
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
