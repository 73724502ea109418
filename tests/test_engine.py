"""The transformers engine through its public seam, on the tiny random llama."""

import asyncio
import time
import uuid

import pytest

from engines import EngineError, ErrorCode, GenerationParams, RequestContext
from engines.protocol import Engine
from tests.helpers import eventually


def ctx():
    return RequestContext(f"test-{uuid.uuid4().hex}")


async def run(engine, prompt, **params):
    return [d async for d in engine.generate(prompt, GenerationParams(**params), ctx())]


PROMPT = "Once upon a time"


def test_implements_the_engine_protocol(tiny_engine):
    assert isinstance(tiny_engine, Engine)
    caps = tiny_engine.capabilities
    assert caps.engine == "transformers" and caps.max_model_len == 4096 and caps.has_chat_template


async def test_deltas_count_every_token_and_finish_once(tiny_engine):
    deltas = await run(tiny_engine, PROMPT, max_tokens=20, temperature=0)
    assert [d.completion_tokens for d in deltas] == list(range(1, len(deltas) + 1))
    assert all(len(d.token_ids) == 1 for d in deltas)
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason in ("stop", "length")
    prompt_len = len(tiny_engine.tokenizer.encode(PROMPT))
    assert {d.prompt_tokens for d in deltas} == {prompt_len}


async def test_max_tokens_gives_length_with_exactly_that_many_tokens(tiny_engine):
    deltas = await run(tiny_engine, PROMPT, max_tokens=7, temperature=0, ignore_eos=True)
    assert len(deltas) == 7 and deltas[-1].finish_reason == "length"


async def test_text_is_the_decoded_token_ids(tiny_engine):
    deltas = await run(tiny_engine, PROMPT, max_tokens=40, temperature=1.0, seed=3, ignore_eos=True)
    ids = [t for d in deltas for t in d.token_ids]
    assert "".join(d.text for d in deltas) == tiny_engine.tokenizer.decode(ids)


async def test_greedy_and_seeded_runs_repeat(tiny_engine):
    greedy = [await run(tiny_engine, PROMPT, max_tokens=15, temperature=0) for _ in range(2)]
    assert greedy[0] == greedy[1]
    seeded = [await run(tiny_engine, PROMPT, max_tokens=15, temperature=1.0, seed=42) for _ in range(2)]
    assert seeded[0] == seeded[1]
    other = await run(tiny_engine, PROMPT, max_tokens=15, temperature=1.0, seed=43)
    assert [d.token_ids for d in other] != [d.token_ids for d in seeded[0]]


async def test_stop_token_ids_finish_with_stop(tiny_engine):
    greedy = await run(tiny_engine, PROMPT, max_tokens=10, temperature=0, ignore_eos=True)
    target = greedy[4].token_ids[0]
    first = next(i for i, d in enumerate(greedy) if d.token_ids[0] == target)
    deltas = await run(tiny_engine, PROMPT, max_tokens=10, temperature=0, stop_token_ids=(target,))
    assert len(deltas) == first + 1
    assert (deltas[-1].finish_reason, deltas[-1].stop_reason) == ("stop", target)


async def test_token_id_prompts_are_used_verbatim(tiny_engine):
    ids = tiny_engine.tokenizer.encode(PROMPT)
    by_text = await run(tiny_engine, PROMPT, max_tokens=5, temperature=0)
    by_ids = await run(tiny_engine, ids, max_tokens=5, temperature=0)
    assert by_text == by_ids


@pytest.mark.parametrize(
    "prompt,params,code,param",
    [
        ([], {"max_tokens": 1}, ErrorCode.INVALID_REQUEST, "prompt"),
        ([10**7], {"max_tokens": 1}, ErrorCode.INVALID_REQUEST, "prompt"),
        ([1, 2, 3], {"max_tokens": 4094}, ErrorCode.CONTEXT_LENGTH_EXCEEDED, "max_tokens"),
        ([1] * 4096, {"max_tokens": 1}, ErrorCode.CONTEXT_LENGTH_EXCEEDED, "prompt"),
    ],
)
async def test_invalid_requests_fail_before_any_work(tiny_engine, prompt, params, code, param):
    with pytest.raises(EngineError) as exc:
        await run(tiny_engine, prompt, **params)
    assert (exc.value.code, exc.value.param) == (code, param)
    assert tiny_engine.stats().running == 0


async def test_closing_the_stream_aborts_within_a_step(tiny_engine):
    before = tiny_engine.stats().aborted_total
    stream = tiny_engine.generate(PROMPT, GenerationParams(max_tokens=4000, ignore_eos=True), ctx())
    async for delta in stream:
        if delta.completion_tokens == 3:
            break
    await stream.aclose()
    await eventually(lambda: tiny_engine.stats().running == 0, "the abort to free the slot")
    stats = tiny_engine.stats()
    assert stats.running == 0 and stats.aborted_total == before + 1


async def test_abort_by_request_id(tiny_engine):
    c = ctx()
    stream = tiny_engine.generate(PROMPT, GenerationParams(max_tokens=4000, ignore_eos=True), c)
    first = await anext(stream)
    await tiny_engine.abort(c.request_id)
    rest = []
    consumer = asyncio.ensure_future(_drain(stream, rest))
    await eventually(lambda: tiny_engine.stats().running == 0, "the abort to free the slot")
    consumer.cancel()
    assert first.completion_tokens == 1 and len(rest) < 4000


async def _drain(stream, out):
    async for d in stream:
        out.append(d)


async def test_deadline_aborts_with_an_error(tiny_engine):
    c = RequestContext(f"test-{uuid.uuid4().hex}", deadline=time.monotonic() + 0.2)
    got = []
    with pytest.raises(EngineError) as exc:
        async for d in tiny_engine.generate(PROMPT, GenerationParams(max_tokens=4000, ignore_eos=True), c):
            got.append(d)
    assert exc.value.code is ErrorCode.DEADLINE_EXCEEDED and "deadline" in exc.value.message
    # Some tokens, or none if the deadline passed before it was admitted: never the whole answer.
    assert len(got) < 4000
    await eventually(lambda: tiny_engine.stats().running == 0, "the engine to be idle")
