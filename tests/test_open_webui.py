"""What Open WebUI 0.12.4 sends, body for body (../shared/findings/open-webui.md, section 4), and
the server default that keeps a chat UI's answers bounded when it sends no `max_tokens`.

The app runs with `--max_output_tokens 8` (the default is 2048; small here so that the tiny
random model reaches it quickly): a chat request without a limit stops there with `length`; a
request's own limit wins over it in both directions."""

import httpx
import pytest

from tests.conftest import make_app
from tests.helpers import sse_events

SERVER_DEFAULT = 8
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
# Open WebUI attaches its function tools to every chat request (36 of them in the recorded run).
TOOLS = [
    {"type": "function", "function": {
        "name": f"tool_{i}", "description": f"Tool number {i}.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "what to look up"}}, "required": ["query"]},
    }}
    for i in range(36)
]
# The model entry's parameters in the recorded run (Workspace model: temperature 0, max_tokens 200,
# seed 42; custom params top_k 1 and num_ctx 2048). max_tokens is the user's setting: 16 here, so
# that the tiny model's answers stay short in the suite (title generation's own `max_tokens: 1000`
# is the same kind of request-side limit, checked in test_a_requests_own_limit_wins...).
MODEL_PARAMS = {"temperature": 0, "max_tokens": 16, "seed": 42, "top_k": 1, "num_ctx": 2048}


@pytest.fixture(scope="module")
def webui_app(tiny_engine):
    return make_app(tiny_engine, disable_log_requests=True, max_output_tokens=SERVER_DEFAULT)


@pytest.fixture
def http(webui_app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=webui_app), base_url="http://test")


async def stream(http, body):
    r = await http.post("/openai/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r, sse_events(r.text)


async def test_default_chat_request_is_bounded_by_the_server_default(http):
    """Open WebUI's default pass: no max_tokens, no temperature, no stream_options."""
    r, events = await stream(http, {"stream": True, "model": "tiny", "messages": MESSAGES, "tools": TOOLS})
    chunks = [e for e in events if e != "[DONE]"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert 0 < len(content_chunks) <= SERVER_DEFAULT  # each carries at least one token
    # Non-streamed, the same request says how many tokens it produced.
    r = await http.post("/openai/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "tools": TOOLS})
    body = r.json()
    assert r.status_code == 200, body
    usage = body["usage"]["completion_tokens"]
    assert usage <= SERVER_DEFAULT
    if body["choices"][0]["finish_reason"] == "length":
        assert usage == SERVER_DEFAULT


async def test_a_requests_own_limit_wins_over_the_server_default(http):
    longer = await http.post("/openai/v1/chat/completions", json={
        "model": "tiny", "messages": MESSAGES, "temperature": 0, "max_tokens": SERVER_DEFAULT + 4, "ignore_eos": True})
    shorter = await http.post("/openai/v1/chat/completions", json={
        "model": "tiny", "messages": MESSAGES, "temperature": 0, "max_completion_tokens": 3, "ignore_eos": True})
    assert longer.json()["usage"]["completion_tokens"] == SERVER_DEFAULT + 4
    assert shorter.json()["usage"]["completion_tokens"] == 3


async def test_chat_answer_with_a_model_entry(http):
    """The streamed answer with the model entry's params and the `usage` capability on."""
    body = {"stream": True, "model": "tiny", "messages": MESSAGES, "tools": TOOLS,
            "stream_options": {"include_usage": True}, **MODEL_PARAMS}
    r, events = await stream(http, body)
    assert r.headers["x-ignored-params"] == "num_ctx"
    usage = events[-1]["usage"]
    assert 0 < usage["completion_tokens"] <= 16 and usage["prompt_tokens"] > 0


@pytest.mark.parametrize("task", ["title", "follow-ups", "tags", "retrieval query"])
async def test_background_tasks(http, task):
    """Title, follow-up, tag and query generation: non-streaming, the model entry's params."""
    messages = [{"role": "user", "content": f"### Task:\nGenerate the {task} for this chat.\n### Chat History:\nUSER: hi\nASSISTANT: "}]
    r = await http.post("/openai/v1/chat/completions", json={
        "stream": False, "model": "tiny", "messages": messages, **MODEL_PARAMS})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("extra,ignored", [
    ({"min_p": 0.05}, None),
    ({"reasoning_effort": "medium"}, None),
    ({"response_format": {"type": "json_object"}}, None),
    ({"stop": ["\n"]}, None),
    ({"stop": []}, None),
    ({"logit_bias": {"1000": -100}}, None),
    ({"frequency_penalty": 0.5, "presence_penalty": 0.5}, None),
    ({"max_completion_tokens": 1}, None),
    ({"seed": None, "temperature": None}, None),
    ({"num_ctx": 2048, "repeat_penalty": 1.1, "mirostat": 0}, "mirostat,num_ctx,repeat_penalty"),
])
async def test_advanced_parameters_open_webui_can_send(http, extra, ignored):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1, **extra}
    r = await http.post("/openai/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.headers.get("x-ignored-params") == ignored


async def test_model_list(http):
    r = await http.get("/openai/v1/models")
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["tiny"]
