"""Chat completions through the official SDK, in-process, on the tiny model."""

import pytest

from tests.helpers import sse_events

MSG = [{"role": "user", "content": "Tell me a story about a dragon."}]


EXTENSIONS = ("top_k", "ignore_eos", "include_stop_str_in_output", "stop_token_ids", "skip_special_tokens")


async def chat(client, **kw):
    """Create a chat completion; our non-OpenAI parameters travel in extra_body, as users send them."""
    extra = {k: kw.pop(k) for k in EXTENSIONS if k in kw}
    if extra:
        kw["extra_body"] = {**kw.get("extra_body", {}), **extra}
    kw.setdefault("model", "tiny")
    kw.setdefault("messages", MSG)
    return await client.chat.completions.create(**kw)


async def chat_stream(client, **kw):
    stream = await chat(client, stream=True, **kw)
    return [c async for c in stream]


def text_of(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_non_stream_response_shape(client):
    r = await chat(client, max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "tiny"
    assert r.system_fingerprint.startswith("fp_")
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and 1 <= u.completion_tokens <= 12
    assert u.prompt_tokens_details.cached_tokens == 0


async def test_stream_equals_non_stream(client):
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 11}, {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "seed": 5}):
        full = await chat(client, max_tokens=30, **kw)
        chunks = await chat_stream(client, max_tokens=30, stream_options={"include_usage": True}, **kw)
        assert text_of(chunks) == full.choices[0].message.content
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == [full.choices[0].finish_reason]
        assert chunks[-1].usage.model_dump() == full.usage.model_dump()
        assert {c.id for c in chunks} == {chunks[0].id} and {c.created for c in chunks} == {chunks[0].created}


async def test_chunk_sequence_follows_the_spec(client):
    chunks = await chat_stream(client, max_tokens=25, temperature=0, stream_options={"include_usage": True})
    role, *content, usage = chunks
    assert role.choices[0].delta.role == "assistant" and role.choices[0].delta.content == ""
    assert role.choices[0].finish_reason is None
    for c in content[:-1]:
        assert c.choices[0].delta.content, "no empty deltas between the role and the finish chunk"
        assert c.choices[0].finish_reason is None and c.usage is None
    assert content[-1].choices[0].finish_reason is not None
    assert usage.choices == [] and 1 <= usage.usage.completion_tokens <= 25


async def test_usage_only_when_asked(http):
    base = {"model": "tiny", "messages": MSG, "max_tokens": 5, "stream": True}
    for opts in (None, {}, {"include_usage": False}):
        body = dict(base, **({"stream_options": opts} if opts is not None else {}))
        events = sse_events((await http.post("/openai/v1/chat/completions", json=body)).text)
        assert all("usage" not in e for e in events)
        assert all(e["choices"] for e in events)
    events = sse_events(
        (await http.post("/openai/v1/chat/completions", json=dict(base, stream_options={"include_usage": True}))).text
    )
    assert all(e["usage"] is None for e in events[:-1]) and events[-1]["choices"] == []


async def test_continuous_usage_counts_up(http):
    body = {
        "model": "tiny", "messages": MSG, "max_tokens": 8, "stream": True, "ignore_eos": True, "temperature": 0,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    events = sse_events((await http.post("/openai/v1/chat/completions", json=body)).text)
    counts = [e["usage"]["completion_tokens"] for e in events[:-1]]
    assert counts == sorted(counts) and counts[-1] == 8
    assert events[-1]["usage"]["completion_tokens"] == 8 and events[-1]["choices"] == []


async def test_usage_equals_emitted_tokens(client, tiny_engine):
    r = await chat(client, max_tokens=20, temperature=0, ignore_eos=True)
    assert r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"
    prompt = tiny_engine.tokenizer.apply_chat_template(MSG)
    assert r.usage.prompt_tokens == len(tiny_engine.tokenizer.encode(prompt, add_special_tokens=False))


async def test_greedy_and_seeded_repeat(client):
    a, b = [(await chat(client, max_tokens=20, temperature=0)).choices[0].message.content for _ in range(2)]
    assert a == b
    s1, s2, s3 = [(await chat(client, max_tokens=20, seed=s)).choices[0].message.content for s in (1, 1, 2)]
    assert s1 == s2 and s1 != s3


async def test_max_completion_tokens_wins(client):
    r = await chat(client, max_tokens=3, max_completion_tokens=6, ignore_eos=True)
    assert r.usage.completion_tokens == 6


@pytest.mark.parametrize("where", range(0, 36, 3))
async def test_stop_strings_hold_in_streams_at_every_prefix(client, where):
    full = (await chat(client, max_tokens=40, temperature=0, ignore_eos=True)).choices[0].message.content
    stop = full[where : where + 3]
    if len(stop) < 3:
        pytest.skip("output shorter than the cut")
    want = full[: full.find(stop)]
    r = await chat(client, max_tokens=40, temperature=0, ignore_eos=True, stop=[stop, "\x00never"])
    chunks = await chat_stream(client, max_tokens=40, temperature=0, ignore_eos=True, stop=[stop, "\x00never"])
    assert r.choices[0].message.content == want == text_of(chunks)
    assert r.choices[0].finish_reason == "stop"
    kept = await chat(client, max_tokens=40, temperature=0, ignore_eos=True, stop=stop, include_stop_str_in_output=True)
    assert kept.choices[0].message.content == want + stop


async def test_developer_role_and_text_parts(client):
    plain = await chat(client, max_tokens=5, temperature=0, messages=[{"role": "system", "content": "Be brief."}, *MSG])
    dev = await chat(client, max_tokens=5, temperature=0, messages=[{"role": "developer", "content": "Be brief."}, *MSG])
    parts = await chat(
        client, max_tokens=5, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": MSG[0]["content"]}]}],
    )
    assert plain.usage.prompt_tokens == dev.usage.prompt_tokens == parts.usage.prompt_tokens
    assert plain.choices[0].message.content == dev.choices[0].message.content == parts.choices[0].message.content


async def test_multi_turn_with_assistant_history(client):
    r = await chat(
        client, max_tokens=5, temperature=0,
        messages=[*MSG, {"role": "assistant", "content": "Once there was"}, {"role": "user", "content": "Go on."}],
    )
    assert r.usage.prompt_tokens > (await chat(client, max_tokens=5, temperature=0)).usage.prompt_tokens


async def test_headers_request_id_and_ignored_params(client, http):
    raw = await client.chat.completions.with_raw_response.create(
        model="tiny", messages=MSG, max_tokens=2, extra_body={"frobnicate": 1, "store": True}, extra_headers={"x-request-id": "abc-123"}
    )
    assert raw.headers["x-request-id"] == "abc-123"
    assert raw.headers["x-ignored-params"] == "frobnicate,store"
    r = await http.post("/openai/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
    assert len(r.headers["x-request-id"]) == 32 and "x-ignored-params" not in r.headers
    assert r.json()["model"] == "tiny"  # `model` is optional: the served model is the default
