"""Text completions through the official SDK, in-process, on the tiny model."""

import pytest

from tests.helpers import sse_events

PROMPT = "The quick brown fox"


async def complete(client, **kw):
    extra = {k: kw.pop(k) for k in ("top_k", "ignore_eos", "include_stop_str_in_output", "max_completion_tokens") if k in kw}
    if extra:
        kw["extra_body"] = extra
    kw.setdefault("model", "tiny")
    kw.setdefault("prompt", PROMPT)
    return await client.completions.create(**kw)


async def test_default_max_tokens_is_16(client):
    r = await complete(client, ignore_eos=True)
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"
    assert r.object == "text_completion" and r.id.startswith("cmpl-")


async def test_stream_equals_non_stream(client):
    for kw in ({"temperature": 0}, {"seed": 9}, {"seed": 4, "top_p": 0.8, "top_k": 20}):
        full = await complete(client, max_tokens=25, **kw)
        stream = await complete(client, max_tokens=25, stream=True, stream_options={"include_usage": True}, **kw)
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
        assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()


async def test_no_empty_chunks_and_finish_on_the_last(http):
    body = {"prompt": PROMPT, "max_tokens": 30, "stream": True, "temperature": 0, "stop": ["e"]}
    events = sse_events((await http.post("/openai/v1/completions", json=body)).text)
    assert all(e["choices"][0]["text"] for e in events[:-1])
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


async def test_prompt_tokens_include_special_tokens_like_the_tokenizer(client, tiny_engine):
    r = await complete(client, max_tokens=1)
    assert r.usage.prompt_tokens == len(tiny_engine.tokenizer.encode(PROMPT))


async def test_token_id_prompts(client, tiny_engine):
    ids = tiny_engine.tokenizer.encode(PROMPT)
    by_ids = await complete(client, prompt=ids, max_tokens=8, temperature=0)
    by_text = await complete(client, prompt=PROMPT, max_tokens=8, temperature=0)
    one_item = await complete(client, prompt=[PROMPT], max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text == one_item.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


async def test_max_completion_tokens_wins_on_completions_too(client):
    r = await complete(client, max_tokens=2, max_completion_tokens=5, ignore_eos=True)
    assert r.usage.completion_tokens == 5


async def test_stop_string_is_cut_and_reported(client):
    full = (await complete(client, max_tokens=30, temperature=0, ignore_eos=True)).choices[0].text
    stop = full[10:13]
    r = await complete(client, max_tokens=30, temperature=0, ignore_eos=True, stop=stop)
    assert r.choices[0].text == full[: full.find(stop)] and r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra.get("stop_reason") == stop
    assert r.usage.completion_tokens < 30


@pytest.mark.parametrize("prompt", ["", [], [[]]])
async def test_empty_prompts_are_rejected(http, prompt):
    r = await http.post("/openai/v1/completions", json={"prompt": prompt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
