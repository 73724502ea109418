"""Structured output and tool calling, enforced by constrained decoding on the tiny random model
(whose unconstrained output is noise, so any valid JSON comes from the constraint)."""

import json

import jsonschema
import pytest

from tests.conftest import make_app
from tests.helpers import sse_events

MSG = [{"role": "user", "content": "What's the weather in Paris?"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "digit": {"type": "integer", "minimum": 0, "maximum": 9},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["ok", "digit", "color"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["c", "f"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["unit", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"enum": ["utc", "cet"]}}, "required": ["tz"], "additionalProperties": False}}}


async def test_json_schema_output_satisfies_the_schema(client):
    for seed in range(4):
        r = await client.chat.completions.create(
            model="tiny", messages=MSG, max_tokens=60, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}},
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


async def test_json_object_output_parses(client):
    r = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=200, temperature=0,
                                             response_format={"type": "json_object"}, extra_body={"top_k": 1})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by the limit: still a valid JSON prefix that opens an object
        assert r.choices[0].message.content.startswith("{")


async def test_structured_stream_equals_non_stream(http):
    kw = {"messages": MSG, "max_tokens": 60, "seed": 7,
          "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}}
    full = (await http.post("/openai/v1/chat/completions", json=kw)).json()["choices"][0]["message"]["content"]
    events = sse_events((await http.post("/openai/v1/chat/completions", json={**kw, "stream": True})).text)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == full


async def test_vllm_structured_outputs_choice_and_regex(client):
    r = await client.completions.create(model="tiny", prompt="Pick:", max_tokens=10, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert r.choices[0].text in ("yes", "no") and r.choices[0].finish_reason == "stop"
    r = await client.completions.create(model="tiny", prompt="Code:", max_tokens=10, extra_body={"guided_regex": "[A-Z]{3}-[0-9]{2}"})
    assert len(r.choices[0].text) == 6 and r.choices[0].text[3] == "-"


async def test_named_tool_choice(client, http):
    kw = dict(model="tiny", messages=MSG, tools=[WEATHER, TIME], max_tokens=40, seed=1,
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    r = await client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # Streamed: the first tool delta has id, type and name; the rest only argument fragments.
    events = sse_events((await http.post("/openai/v1/chat/completions", json={**kw, "stream": True})).text)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"] and e["choices"][0]["delta"].get("tool_calls")]
    head, *rest = [d["tool_calls"][0] for d in deltas]
    assert head["id"].startswith("call_") and head["type"] == "function" and head["function"]["name"] == "get_weather"
    assert all(set(t) == {"index", "function"} and set(t["function"]) == {"arguments"} for t in rest)
    assert head["function"]["arguments"] + "".join(t["function"]["arguments"] for t in rest) == call.function.arguments
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]] == ["stop"]


async def test_required_tool_choice(client):
    for parallel in (True, False):
        r = await client.chat.completions.create(model="tiny", messages=MSG, tools=[WEATHER, TIME], tool_choice="required",
                                                 parallel_tool_calls=parallel, max_tokens=120, seed=3)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        if not parallel:
            assert len(choice.message.tool_calls) == 1
        for call in choice.message.tool_calls:
            schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
            jsonschema.validate(json.loads(call.function.arguments), schema)


HERMES = '<tool_call>{"name": "get_weather", "arguments": {"unit": "c", "days": 2}}</tool_call>'


async def test_auto_parses_hermes_blocks_end_to_end(client, http):
    """The model's real output (forced into Hermes format by a regex) goes through the auto parser."""
    import re

    forced = {"structured_outputs": {"regex": "Sure\\. " + re.escape(HERMES)}}
    kw = dict(model="tiny", messages=MSG, tools=[WEATHER], tool_choice="auto", max_tokens=80)
    r = await client.chat.completions.create(**kw, extra_body=forced)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Sure. "
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"unit": "c", "days": 2})
    events = sse_events((await http.post("/openai/v1/chat/completions", json={**kw, **forced, "stream": True})).text)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    calls = [tc for e in events if e["choices"] for tc in e["choices"][0]["delta"].get("tool_calls", [])]
    assert text == "Sure. " and [c["function"]["name"] for c in calls] == ["get_weather"]
    assert "<tool" not in text


@pytest.mark.parametrize("cuts", [[1], [3, 9, 14], list(range(0, 90, 2))])
def test_auto_streamer_is_split_independent(cuts):
    from gateway.openai.services.tools import ToolPlan

    plan = ToolPlan(mode="auto", functions={"get_weather": {}})
    text = "Let me check. " + HERMES + " Done <tool" + " x"
    streamer = plan.streamer(0)
    deltas, prev = [], 0
    for cut in [c for c in cuts if c < len(text)] + [len(text)]:
        deltas += streamer.feed(text[prev:cut], None).deltas
        prev = cut
    out = streamer.feed("", "stop")
    deltas += out.deltas
    content = "".join(d.get("content", "") for d in deltas)
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert content == "Let me check.  Done <tool x" and len(calls) == 1 and out.finish_reason == "tool_calls"


def test_auto_bare_json_and_plain_text():
    from gateway.openai.services.tools import ToolPlan

    plan = ToolPlan(mode="auto", functions={"f": {}})
    msg, finish = plan.message('[{"name": "f", "parameters": {"a": 1}}]', "stop", 0)
    assert finish == "tool_calls" and msg["content"] is None and msg["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    msg, finish = plan.message("{not json", "stop", 0)
    assert finish == "stop" and msg["content"] == "{not json" and "tool_calls" not in msg
    msg, finish = plan.message("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", "length", 0)
    assert finish == "length"


async def test_tool_none_and_history(client):
    r = await client.chat.completions.create(model="tiny", messages=MSG, tools=[WEATHER], tool_choice="none", max_tokens=5)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    history = [
        *MSG,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"unit": "c", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
    ]
    r = await client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER], max_tokens=5)
    assert r.usage.prompt_tokens > 0


async def test_template_options(tiny_engine, client):
    import httpx
    import openai

    base = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=1)
    no_gen = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=1, extra_body={"add_generation_prompt": False})
    assert no_gen.usage.prompt_tokens < base.usage.prompt_tokens
    cont = await client.chat.completions.create(
        model="tiny", messages=[*MSG, {"role": "assistant", "content": "It is"}], max_tokens=1,
        extra_body={"add_generation_prompt": False, "continue_final_message": True},
    )
    closed = await client.chat.completions.create(model="tiny", messages=[*MSG, {"role": "assistant", "content": "It is"}], max_tokens=1,
                                                  extra_body={"add_generation_prompt": False})
    assert cont.usage.prompt_tokens < closed.usage.prompt_tokens  # no end-of-turn after "It is"

    app = make_app(tiny_engine, trust_request_chat_template=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        c = openai.AsyncOpenAI(base_url="http://t/openai/v1", api_key="x", http_client=http)
        r = await c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1, reasoning_effort="low",
            extra_body={"chat_template": "{{ greeting }}{{ reasoning_effort }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
                        "chat_template_kwargs": {"greeting": "Hello there "}},
        )
        assert r.usage.prompt_tokens == len(tiny_engine.tokenizer.encode("Hello there lowhi", add_special_tokens=False))
