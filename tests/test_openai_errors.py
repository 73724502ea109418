"""Every client mistake is a 4xx in the OpenAI envelope, raised as the SDK's typed errors,
decided before the first byte of a stream; the server keeps serving afterwards."""

import openai
import pytest

from engines import EngineError, ErrorCode

from tests.conftest import make_app
from tests.helpers import sse_events

MSG = [{"role": "user", "content": "hi"}]


def envelope(r, status, code, param):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["param"]) == (code, param), err
    assert "Traceback" not in err["message"] and "/site-packages/" not in err["message"]
    return err


@pytest.mark.parametrize(
    "body,code,param",
    [
        ({"messages": MSG, "n": 0}, "invalid_value", "n"),
        ({"messages": MSG, "n": 17}, "invalid_value", "n"),
        ({"messages": MSG, "logprobs": True, "top_logprobs": 21}, "invalid_value", "top_logprobs"),
        ({"messages": MSG, "top_logprobs": 2}, "invalid_value", "top_logprobs"),
        ({"messages": MSG, "presence_penalty": 2.5}, "invalid_value", "presence_penalty"),
        ({"messages": MSG, "frequency_penalty": -3}, "invalid_value", "frequency_penalty"),
        ({"messages": MSG, "repetition_penalty": 0}, "invalid_value", "repetition_penalty"),
        ({"messages": MSG, "min_p": 1.5}, "invalid_value", "min_p"),
        ({"messages": MSG, "max_tokens": 5, "min_tokens": 6}, "invalid_value", "min_tokens"),
        ({"messages": MSG, "logit_bias": {"abc": 1}}, "invalid_value", "logit_bias"),
        ({"messages": MSG, "logit_bias": {"5": 101}}, "invalid_value", "logit_bias"),
        ({"messages": MSG, "logit_bias": {"99999999": 1}}, "invalid_value", "logit_bias"),
        ({"messages": MSG, "stop_token_ids": [99999999]}, "invalid_value", "stop_token_ids"),
        ({"messages": MSG, "response_format": {"type": "xml"}}, "invalid_value", "response_format"),
        ({"messages": MSG, "response_format": {"type": "json_schema"}}, "invalid_value", "response_format"),
        ({"messages": MSG, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}}, "invalid_value", "response_format"),
        ({"messages": MSG, "structured_outputs": {"regex": "a", "choice": ["b"]}}, "invalid_value", "structured_outputs"),
        ({"messages": MSG, "tools": []}, "invalid_value", "tools"),
        ({"messages": MSG, "tools": [{"type": "function"}]}, "invalid_value", "tools[0]"),
        ({"messages": MSG, "tool_choice": "required"}, "invalid_value", "tool_choice"),
        ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "invalid_value", "tool_choice"),
        ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, "invalid_value", "tool_choice"),
        ({"messages": MSG, "continue_final_message": True}, "invalid_value", "continue_final_message"),
        ({"messages": MSG, "chat_template": "{{ messages }}"}, "unsupported_parameter", "chat_template"),
        ({"messages": MSG, "bad_words": ["x"]}, "unsupported_parameter", "bad_words"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "invalid_value", "messages[0].tool_call_id"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "invalid_value", "messages[0].tool_calls[0].function.arguments"),
        ({"messages": MSG, "temperature": 2.5}, "invalid_value", "temperature"),
        ({"messages": MSG, "top_p": 0}, "invalid_value", "top_p"),
        ({"messages": MSG, "top_k": -2}, "invalid_value", "top_k"),
        ({"messages": MSG, "max_tokens": 0}, "invalid_value", "max_tokens"),
        ({"messages": MSG, "max_completion_tokens": -1}, "invalid_value", "max_completion_tokens"),
        ({"messages": MSG, "stop": ["ok", ""]}, "invalid_value", "stop"),
        ({"messages": MSG, "stop": [str(i) for i in range(17)]}, "invalid_value", "stop"),
        ({"messages": MSG, "temperature": "warm"}, "invalid_type", "temperature"),
        ({"messages": "hi"}, "invalid_type", "messages"),
        ({}, "missing_required_parameter", "messages"),
        ({"messages": []}, "invalid_value", "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "invalid_value", "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "unsupported_value", "messages[0].content[0]"),
        ({"messages": MSG, "model": "gpt-4"}, "model_not_found", "model"),
        ({"messages": [*MSG, {"role": "system", "content": "late"}]}, "template_error", "messages"),
        ({"messages": MSG, "max_tokens": 5000}, "context_length_exceeded", "max_tokens"),
        ({"messages": MSG, "max_completion_tokens": 5000}, "context_length_exceeded", "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 5000}]}, "context_length_exceeded", "messages"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_chat_errors(http, body, code, param, stream):
    r = await http.post("/openai/v1/chat/completions", json={**body, "stream": stream})
    status = 404 if code == "model_not_found" else 400
    envelope(r, status, code, param)
    assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    "body,code,param",
    [
        ({"prompt": "x", "suffix": "y"}, "unsupported_parameter", "suffix"),
        ({"prompt": "x", "best_of": 1, "n": 2}, "invalid_value", "best_of"),
        ({"prompt": "x", "best_of": 3, "stream": True}, "unsupported_parameter", "best_of"),
        ({"prompt": "x", "logprobs": 21}, "invalid_value", "logprobs"),
        ({"prompt": "x", "max_tokens": 0}, "invalid_value", "max_tokens"),
        ({"prompt": ["a", ""]}, "invalid_value", "prompt"),
        ({"prompt": "x", "truncate_prompt_tokens": 0}, "invalid_value", "truncate_prompt_tokens"),
        ({"prompt": [10**9]}, "invalid_token_id", "prompt"),
        ({"prompt": "x", "max_tokens": 4096}, "context_length_exceeded", "max_tokens"),
        ({"prompt": "x", "seed": 2**64}, "invalid_type", "seed"),  # past 64 bits JSON parses it as a float
        ({"prompt": 5}, "invalid_type", "prompt"),
    ],
)
async def test_completion_errors(http, body, code, param):
    envelope(await http.post("/openai/v1/completions", json=body), 400, code, param)


@pytest.mark.parametrize("path,body", [("/openai/v1/completions", {"prompt": "x"}), ("/openai/v1/chat/completions", {"messages": MSG})])
async def test_stream_options_need_stream(http, path, body):
    body = {**body, "stream_options": {"include_usage": True}}
    envelope(await http.post(path, json=body), 400, "invalid_value", "stream_options")
    envelope(await http.post(path, json={**body, "stream": False}), 400, "invalid_value", "stream_options")


async def test_malformed_json_and_non_object_bodies(http):
    r = await http.post("/openai/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    envelope(r, 400, "invalid_json", None)
    r = await http.post("/openai/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_context_length_message_keeps_vllms_wording(http):
    err = envelope(await http.post("/openai/v1/completions", json={"prompt": "x", "max_tokens": 4096}), 400, "context_length_exceeded", "max_tokens")
    assert err["message"].startswith("This model's maximum context length is 4096 tokens. However, you requested 4096 output tokens")


async def test_unknown_routes_and_methods(http):
    envelope(await http.get("/openai/v1/nope"), 404, "not_found", None)
    envelope(await http.get("/openai/v1/chat/completions"), 405, "method_not_allowed", None)
    assert (await http.get("/not-openai")).json() == {"error": "GET /not-openai: Not Found"}  # KServe/Triton's envelope


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/chat/completions"])
async def test_a_base_url_without_openai_is_told_where_the_api_is(http, path):
    """The SDKs' default path is /v1/...: the 404 says where the API is, in OpenAI's envelope."""
    err = envelope(await http.post(path, json={"model": "tiny", "messages": MSG}), 404, "not_found", None)
    assert "set the client's base URL to http://test/openai/v1" in err["message"]
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="/openai/v1"):
        await sdk.chat.completions.create(model="tiny", messages=MSG)
    # KServe v1's own paths keep their envelope.
    assert (await http.get("/v1/models/nope")).json() == {"error": "Model with name nope does not exist."}


async def test_a_form_encoded_body_is_told_to_send_json(http):
    """`curl -d '{...}'` without a content type sends a form: the error says so."""
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}'
    r = await http.post("/openai/v1/chat/completions", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    err = envelope(r, 400, "invalid_content_type", None)
    assert "Content-Type: application/json" in err["message"] and "application/x-www-form-urlencoded" in err["message"]
    # The same body as JSON is fine, and a JSON array is still "must be an object".
    assert (await http.post("/openai/v1/chat/completions", content=body, headers={"content-type": "application/json"})).status_code == 200
    r = await http.post("/openai/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.json()["error"]["code"] == "invalid_type"


async def test_sdk_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as exc:
        await client.chat.completions.create(model="gpt-4", messages=MSG)
    assert (exc.value.code, exc.value.param) == ("model_not_found", "model")
    assert "This server serves `tiny`" in exc.value.message  # what to send instead
    assert exc.value.request_id
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="tiny", messages=MSG, n=30, stream=True)
    assert exc.value.param == "n"


async def test_models_endpoints(http):
    listed = (await http.get("/openai/v1/models")).json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["tiny"]
    card = listed["data"][0]
    assert card["object"] == "model" and card["max_model_len"] == 4096 and card["root"] and card["owned_by"]
    assert (await http.get("/openai/v1/models/tiny")).json() == card
    envelope(await http.get("/openai/v1/models/nope"), 404, "model_not_found", "model")


async def test_model_ids_with_slashes(tiny_engine):
    import dataclasses

    import httpx

    class Renamed:
        """Wraps the real engine under another served name."""

        def __init__(self, inner, name):
            self._inner = inner
            self.capabilities = dataclasses.replace(inner.capabilities, model_name=name)

        def __getattr__(self, attr):
            return getattr(self._inner, attr)

    app = make_app(Renamed(tiny_engine, "org/tiny-model"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.get("/openai/v1/models/org/tiny-model")).json()["id"] == "org/tiny-model"
        assert (await http.get("/openai/v1/models/org%2Ftiny-model")).json()["id"] == "org/tiny-model"
        r = await http.post("/openai/v1/completions", json={"model": "org/tiny-model", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 200 and r.json()["model"] == "org/tiny-model"


class FailsMidStream:
    """Wraps the real engine; its generation fails after a few tokens (a fault after headers)."""

    def __init__(self, inner, after):
        self._inner, self._after = inner, after

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

    async def generate(self, prompt, params, ctx):
        async for delta in self._inner.generate(prompt, params, ctx):
            if delta.completion_tokens > self._after:
                raise EngineError(ErrorCode.INTERNAL, "The engine failed mid-generation.")
            yield delta


async def test_failure_after_headers_is_an_in_band_error_then_done(tiny_engine):
    import httpx

    app = make_app(FailsMidStream(tiny_engine, after=3))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        body = {"messages": MSG, "max_tokens": 20, "ignore_eos": True, "stream": True}
        r = await http.post("/openai/v1/chat/completions", json=body)
        assert r.status_code == 200
        events = sse_events(r.text)
        assert events[-1] == {"error": {"message": "The engine failed mid-generation.", "type": "server_error", "param": None, "code": "internal_error"}}
        assert len(events) >= 2  # role chunk, and the content that made it out before the fault
        client = openai.AsyncOpenAI(base_url="http://t/openai/v1", api_key="x", http_client=http, max_retries=0)
        with pytest.raises(openai.APIError, match="failed mid-generation"):
            async for _ in await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=20, stream=True, extra_body={"ignore_eos": True}):
                pass
        # The same failure before any output is a real HTTP 500, not a 200 with an error inside.
        app0 = make_app(FailsMidStream(tiny_engine, after=0))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app0), base_url="http://t") as http0:
            r = await http0.post("/openai/v1/chat/completions", json=body)
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"


async def test_server_keeps_serving_after_errors(http):
    for _ in range(3):
        await http.post("/openai/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    r = await http.post("/openai/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
    assert r.status_code == 200
