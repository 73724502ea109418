"""n, logprobs, echo, best_of, penalties, logit_bias, min_tokens, truncation: model-agnostic checks
on the tiny model through the official SDK."""

import math


from tests.helpers import REFUSED, refused_here, sse_events

MSG = [{"role": "user", "content": "Tell me a story about a dragon."}]
PROMPT = "The quick brown fox"


def body(**kw):
    return {"model": "tiny", **kw}


async def post(http, path, **kw):
    r = await http.post(f"/openai/v1/{path}", json=body(**kw))
    assert r.status_code == 200, r.text
    return r


# -- n and several prompts ------------------------------------------------------------------------


async def test_n_choices_equal_single_runs_under_greedy(client):
    single = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0)
    many = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert {c.message.content for c in many.choices} == {single.choices[0].message.content}
    assert many.usage.prompt_tokens == single.usage.prompt_tokens  # once per prompt, not per choice
    assert many.usage.completion_tokens == 3 * single.usage.completion_tokens


async def test_seeded_n_sampling_repeats_and_choices_differ(client):
    runs = [await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, n=3, seed=5) for _ in range(2)]
    texts = [[c.message.content for c in r.choices] for r in runs]
    assert texts[0] == texts[1] and len(set(texts[0])) == 3


async def test_n_streams_interleave_and_match_non_stream(http):
    full = (await post(http, "chat/completions", messages=MSG, max_tokens=8, n=2, seed=3)).json()
    events = sse_events((await post(http, "chat/completions", messages=MSG, max_tokens=8, n=2, seed=3, stream=True,
                                    stream_options={"include_usage": True})).text)
    for i in range(2):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == full["choices"][i]["message"]["content"]
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == [full["choices"][i]["finish_reason"]]
    assert events[-1]["usage"] == full["usage"]


async def test_all_four_prompt_forms(client, tiny_engine):
    ids = tiny_engine.tokenizer.encode(PROMPT)
    other = "Once upon a time"
    forms = [PROMPT, [PROMPT, other], ids, [ids, tiny_engine.tokenizer.encode(other)]]
    results = [await client.completions.create(model="tiny", prompt=f, max_tokens=6, temperature=0, n=2) for f in forms]
    assert [len(r.choices) for r in results] == [2, 4, 2, 4]
    assert results[0].choices[0].text == results[1].choices[0].text == results[2].choices[0].text
    assert results[1].choices[2].text == results[3].choices[3].text  # index = prompt_index * n + sample
    assert results[1].usage.prompt_tokens == len(ids) + len(tiny_engine.tokenizer.encode(other))


# -- logprobs ---------------------------------------------------------------------------------------


async def test_completion_logprobs_shape_and_semantics(client):
    def call():
        return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0, logprobs=3)

    if await refused_here("top_logprobs", call, "logprobs"):
        return
    r = await call()
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 10
    # OpenAI semantics: offsets count from the start of prompt + completion, even without echo.
    assert lp.text_offset[0] == len(PROMPT)
    assert all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens))
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) <= 4 and token in top
        assert math.isclose(max(top.values()), logprob, abs_tol=1e-5)  # greedy picks the most likely


async def test_completion_logprobs_zero_still_reports_the_sampled_token(client):
    r = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, logprobs=0, seed=1)
    lp = r.choices[0].logprobs
    assert all(len(top) == 1 and list(top) == [t] for t, top in zip(lp.tokens, lp.top_logprobs))


async def test_chat_logprobs_shape_and_greedy_is_top(client):
    bare = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=3, temperature=0, logprobs=True)
    assert len(bare.choices[0].logprobs.content) == 3
    assert all(c.top_logprobs == [] and c.logprob <= 0 for c in bare.choices[0].logprobs.content)

    def call():
        return client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2)

    if await refused_here("top_logprobs", call, "top_logprobs"):
        return
    r = await call()
    content = r.choices[0].logprobs.content
    assert "".join(c.token for c in content) == r.choices[0].message.content and len(content) == 10
    for c in content:
        assert c.bytes == list(c.token.encode()) and len(c.top_logprobs) == 2
        assert [t.logprob for t in c.top_logprobs] == sorted([t.logprob for t in c.top_logprobs], reverse=True)
        assert math.isclose(c.top_logprobs[0].logprob, c.logprob, abs_tol=1e-5)


# One alternative where the engine reports alternatives: the checks are about chunking.
TOP = 0 if "top_logprobs" in REFUSED else 1


async def test_streamed_logprobs_match_each_chunk_and_the_whole(http):
    kw = dict(messages=MSG, max_tokens=16, temperature=0, logprobs=True, top_logprobs=TOP)
    full = (await post(http, "chat/completions", **kw)).json()["choices"][0]["logprobs"]["content"]
    events = sse_events((await post(http, "chat/completions", stream=True, **kw)).text)
    streamed = []
    for e in events:
        choice = e["choices"][0]
        text = choice["delta"].get("content", "")
        items = (choice["logprobs"] or {}).get("content", [])
        assert "".join(i["token"] for i in items) == text
        streamed += items
    assert streamed == full


async def test_completion_logprob_offsets_continue_across_chunks(http):
    kw = dict(prompt=PROMPT, max_tokens=12, temperature=0, logprobs=TOP)
    full = (await post(http, "completions", **kw)).json()["choices"][0]["logprobs"]
    events = sse_events((await post(http, "completions", stream=True, **kw)).text)
    merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in events:
        for key in merged:
            merged[key] += e["choices"][0]["logprobs"][key]
    assert merged == full


# -- echo and scoring -------------------------------------------------------------------------------


async def test_echo_prepends_the_prompt(client):
    plain = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0)
    echoed = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage == plain.usage  # echoed tokens are not completion tokens


async def test_echo_with_zero_max_tokens_scores_the_prompt(client, tiny_engine):
    def call():
        return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=TOP)

    if await refused_here("prompt_logprobs", call, "echo"):
        return
    r = await call()
    choice = r.choices[0]
    n_prompt = len(tiny_engine.tokenizer.encode(PROMPT))
    assert choice.text == PROMPT and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == n_prompt
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == n_prompt and all(v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == PROMPT and lp.text_offset[0] == 0


async def test_echo_streams_prompt_first(http):
    events = sse_events((await post(http, "completions", prompt=PROMPT, max_tokens=3, echo=True, stream=True, temperature=0)).text)
    assert events[0]["choices"][0]["text"].startswith(PROMPT)


# -- best_of ----------------------------------------------------------------------------------------


async def test_best_of_returns_the_best_and_bills_every_candidate(client):
    r = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, best_of=3, n=1, seed=2, extra_body={"ignore_eos": True})
    assert len(r.choices) == 1 and r.choices[0].logprobs is None
    assert r.usage.completion_tokens == 15
    candidates = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, n=3, seed=2, logprobs=0, extra_body={"ignore_eos": True})
    best = max(candidates.choices, key=lambda c: sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs))
    assert r.choices[0].text == best.text


# -- logits processing ------------------------------------------------------------------------------


async def test_logit_bias_forces_and_bans_tokens(client, tiny_engine):
    target = tiny_engine.tokenizer.encode(" dragon", add_special_tokens=False)[0]

    def call():
        return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, logit_bias={str(target): 100}, seed=0)

    if await refused_here("logit_bias", call, "logit_bias"):
        return
    forced = await call()
    assert forced.choices[0].text == " dragon" * 4
    greedy = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0)
    first = greedy.choices[0].logprobs.tokens[0]
    first_id = tiny_engine.tokenizer.encode(first, add_special_tokens=False)[0]
    banned = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, temperature=0, logit_bias={str(first_id): -100})
    assert banned.choices[0].text != first


async def test_eos_forced_by_logit_bias_stops_with_stop(client, tiny_engine):
    eos = tiny_engine.tokenizer.hf.eos_token_id

    def call():
        return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, logit_bias={str(eos): 100})

    if await refused_here("logit_bias", call, "logit_bias"):
        return
    r = await call()
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 1 and r.choices[0].text == ""
    late = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, logit_bias={str(eos): 100}, extra_body={"min_tokens": 3})
    assert late.choices[0].finish_reason == "stop" and late.usage.completion_tokens == 4


async def test_penalties_change_greedy_output_only_when_set(client):
    base = (await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0)).choices[0].text
    zero = (await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, presence_penalty=0, frequency_penalty=0,
                                            extra_body={"repetition_penalty": 1.0})).choices[0].text
    assert zero == base
    for kw in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"extra_body": {"repetition_penalty": 2.0}}):
        other = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, **kw)
        assert other.choices[0].text != base, kw


async def test_frequency_penalty_discourages_repeats(client):
    def repeats(text_tokens):
        return len(text_tokens) - len(set(text_tokens))

    base = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=60, temperature=0, logprobs=0)
    pen = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=60, temperature=0, logprobs=0, frequency_penalty=2.0)
    assert repeats(pen.choices[0].logprobs.tokens) <= repeats(base.choices[0].logprobs.tokens)


async def test_min_p_one_is_greedy(client):
    greedy = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0)
    minp = await client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=9, extra_body={"min_p": 1.0})
    assert minp.choices[0].text == greedy.choices[0].text


async def test_truncate_prompt_tokens_keeps_the_tail(client, tiny_engine):
    long_prompt = "one two three four five six seven eight nine ten"
    ids = tiny_engine.tokenizer.encode(long_prompt)
    r = await client.completions.create(model="tiny", prompt=long_prompt, max_tokens=4, temperature=0, extra_body={"truncate_prompt_tokens": 3})
    tail = await client.completions.create(model="tiny", prompt=ids[-3:], max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == 3 and r.choices[0].text == tail.choices[0].text


async def test_vllm_bench_request_bodies(http):
    """The exact bodies `vllm bench serve` sends must stream and report exact usage."""
    completions = {"model": "tiny", "prompt": PROMPT, "repetition_penalty": 1.0, "max_tokens": 9, "logprobs": None,
                   "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 9, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    for path, b in (("completions", completions), ("chat/completions", chat)):
        r = await http.post(f"/openai/v1/{path}", json=b, headers={"x-request-id": "bench-1"})
        events = sse_events(r.text)
        assert any(e["choices"] for e in events) and events[-1]["usage"]["completion_tokens"] == 9
