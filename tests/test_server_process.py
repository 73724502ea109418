"""The real thing: `python -m gateway` as a subprocess on the packaged SmolLM2, the official SDK
over HTTP, exactly as the README tells a newcomer to do it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port, spawn, stop_group

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def start(*args, env=None):
    return spawn(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def serve(*args):
    port = free_port()
    if "--grpc_port" not in args:
        args = (*args, "--grpc_port", str(free_port()))
    proc = start("--host", "127.0.0.1", "--http_port", str(port), *args)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # a hang guard: vLLM starts slowly on a busy machine
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/openai/v1/models", timeout=30).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_group(proc)
            pytest.fail("server did not become ready")
        time.sleep(0.2)
    return proc, base


@pytest.fixture(scope="module")
def smollm_server(smollm_dir):
    # No model flags at all: the default model must be found on its own.
    proc, base = serve()
    yield base
    stop_group(proc)


MINILM_GRPC_PORT = free_port()


@pytest.fixture(scope="module")
def minilm_server(minilm_dir):
    proc, base = serve("--model_dir", str(minilm_dir), "--model_name", "minilm", "--grpc_port", str(MINILM_GRPC_PORT))
    yield base
    stop_group(proc)


@pytest.fixture
def sdk(smollm_server):
    return openai.OpenAI(base_url=f"{smollm_server}/openai/v1", api_key="x", max_retries=0)


def test_default_model_is_listed(sdk):
    (model,) = sdk.models.list().data
    assert model.id == "model"
    assert model.model_extra["root"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_readme_snippet_streams_a_sensible_answer(sdk):
    stream = sdk.chat.completions.create(
        model="model", messages=QUESTION, stream=True, temperature=0, max_tokens=30,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 5, "streamed token by token, not in one piece"
    full = sdk.chat.completions.create(model="model", messages=QUESTION, temperature=0, max_tokens=30)
    assert full.choices[0].message.content == text
    assert full.usage.model_dump() == chunks[-1].usage.model_dump()
    # SmolLM2 ends its answer with <|im_end|>: that EOS token is counted, and reported as "stop".
    assert full.choices[0].finish_reason == "stop"


def test_eos_is_counted_and_ignore_eos_runs_to_the_limit(sdk):
    full = sdk.chat.completions.create(model="model", messages=QUESTION, temperature=0, max_tokens=40)
    assert full.choices[0].finish_reason == "stop"
    longer = sdk.chat.completions.create(
        model="model", messages=QUESTION, temperature=0, max_tokens=full.usage.completion_tokens + 4,
        extra_body={"ignore_eos": True},
    )
    assert longer.choices[0].finish_reason == "length"
    assert longer.usage.completion_tokens == full.usage.completion_tokens + 4
    assert longer.choices[0].message.content.startswith(full.choices[0].message.content)


def test_seeded_sampling_repeats(sdk):
    runs = [
        sdk.chat.completions.create(model="model", messages=QUESTION, seed=1234, temperature=1.0, max_tokens=12)
        .choices[0].message.content
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_completions_with_stop(sdk):
    r = sdk.completions.create(model="model", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[" 7"])
    assert r.choices[0].finish_reason == "stop" and " 7" not in r.choices[0].text
    assert r.choices[0].text.startswith(" 5, 6,")


def test_missing_model_dir_fails_with_one_clear_message(tmp_path):
    proc = start("--model_dir", str(tmp_path / "nowhere"))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1
    assert "cannot start: No model found at --model_dir" in out and "Traceback" not in out


def test_unknown_flag_fails_fast():
    proc = start("--model_name", "m", "--definitely-not-a-flag")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "unknown flag(s): --definitely-not-a-flag" in out


def test_structured_output_on_the_real_model(sdk):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
              "required": ["city", "country"], "additionalProperties": False}
    r = sdk.chat.completions.create(
        model="model", messages=[{"role": "user", "content": "Name the capital of France and its country as JSON."}],
        temperature=0, max_tokens=60, response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    assert r.choices[0].finish_reason == "stop"
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"city", "country"} and "Paris" in value["city"]


def test_named_tool_call_on_the_real_model(sdk):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": False}}}
    r = sdk.chat.completions.create(
        model="model", messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=40,
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and "Paris" in json.loads(call.function.arguments)["city"]


def test_embeddings_server_with_the_sdk_defaults(minilm_server):
    client = openai.OpenAI(base_url=f"{minilm_server}/openai/v1", api_key="x", max_retries=0)
    r = client.embeddings.create(model="minilm", input=["The cat sat.", "A cat was sitting.", "Interest rates rose."])
    a, b, c = (d.embedding for d in r.data)
    assert len(a) == 384
    assert sum(x * y for x, y in zip(a, b)) > sum(x * y for x, y in zip(a, c))
    (model,) = client.models.list().data
    assert model.id == "minilm" and model.model_extra["max_model_len"] == 256


def test_bfloat16_serves_the_same_answers():
    proc, base = serve("--dtype", "bfloat16")
    try:
        client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="x", max_retries=0)
        assert client.models.list().data[0].model_extra["dtype"] == "bfloat16"
        r = client.chat.completions.create(model="model", messages=QUESTION, temperature=0, max_tokens=30)
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    finally:
        stop_group(proc)


def test_grpc_runs_beside_http_in_one_process(minilm_server):
    import grpc

    from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
    from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{MINILM_GRPC_PORT}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=300).ready
        req = pb.ModelInferRequest(model_name="minilm")
        req.inputs.add(name="input-0", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"The cat sat.")
        out = stub.ModelInfer(req, timeout=300).outputs[0]
    rest = httpx.post(f"{minilm_server}/v2/models/minilm/infer", timeout=300,
                      json={"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1], "data": ["The cat sat."]}]}).json()
    assert list(out.contents.fp64_contents) == rest["outputs"][0]["data"]
