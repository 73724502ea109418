"""Prefill in the transformers engine: prefix reuse (a prompt that starts like a finished sequence
computes only the rest, and gets the same answer as computing all of it) and chunked prefill (a
long prompt is computed a chunk per step, between the running streams' decode steps)."""

from __future__ import annotations

import math

import pytest
import torch

from engines.hf.prefix_cache import MIN_REUSE, PrefixCache
from engines.loader import ModelSpec
from engines.types import GenerationParams, RequestContext
from tests.conftest import TEST_ENGINE, run_async

pytestmark = pytest.mark.skipif(TEST_ENGINE != "transformers", reason="the transformers engine's own prefill")


def kv(n: int, value: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((1, 1, n, 2), value), torch.full((1, 1, n, 2), value))]


def test_longest_common_prefix_wins_and_leaves_one_token_to_compute():
    cache = PrefixCache(capacity_tokens=1000)
    a = list(range(100))
    b = list(range(60)) + [999] * 40
    cache.store(a, kv(100, 1.0))
    cache.store(b, kv(100, 2.0))
    length, layers = cache.lookup(list(range(80)) + [5, 6])
    assert length == 80 and layers[0][0].shape[2] == 80 and float(layers[0][0][0, 0, 0, 0]) == 1.0
    length, _ = cache.lookup(a)  # the whole prompt is kept: one token is still computed for its logits
    assert length == 99
    assert cache.lookup(list(range(MIN_REUSE - 1)) + [7] * 50) is None  # too short to be worth it
    assert cache.lookup([5] * 100) is None


def test_entries_are_evicted_least_recently_used_and_prefixes_give_way():
    cache = PrefixCache(capacity_tokens=250)
    first, second = list(range(100)), list(range(1000, 1100))
    cache.store(first, kv(100))
    cache.store(second, kv(100))
    assert cache.lookup(first + [1]) is not None  # first is now the most recently used
    cache.store(list(range(2000, 2100)), kv(100))  # over capacity: second goes
    assert cache.lookup(second + [1]) is None and cache.lookup(first + [1]) is not None
    cache.store(first + [7] * 40, kv(140))  # extends `first`: the shorter entry is dropped
    assert len(cache) == 2 and cache.tokens == 240


def test_a_conversation_turn_reuses_the_last_one_and_answers_the_same(tiny_dir):
    from engines.hf import load_engine

    with_cache = load_engine(ModelSpec(model_dir=str(tiny_dir), dtype="float32"), served_name="a")
    without = load_engine(ModelSpec(model_dir=str(tiny_dir), dtype="float32"), served_name="b", prefix_cache_memory_gb=0)
    for engine in (with_cache, without):
        run_async(engine.start())
    try:
        async def turn(engine, prompt: list[int], tokens: int, logprobs: int | None = None):
            params = GenerationParams(max_tokens=tokens, temperature=0, ignore_eos=True, logprobs=logprobs)
            return [d async for d in engine.generate(prompt, params, RequestContext(request_id=f"r{len(prompt)}"))]

        first = list(range(1000, 1200))
        reply = [t for d in run_async(turn(with_cache, first, 16)) for t in d.token_ids]
        second = first + reply + list(range(3000, 3020))  # the next turn: everything so far, then more
        got = run_async(turn(with_cache, second, 4, logprobs=5))
        stats = with_cache.stats()
        assert stats.prefix_cache_hits == 1 and stats.prefix_cache_reused_tokens >= len(first) + len(reply) - 1
        from tests.conftest import make_app
        import httpx

        async def scrape() -> str:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(with_cache)), base_url="http://t") as http:
                return (await http.get("/metrics")).text

        from tests.helpers import metric_sample

        assert metric_sample(run_async(scrape()), "gateway_prefix_cache_hits", model_name="a") == 1
        want = run_async(turn(without, second, 4, logprobs=5))
        assert without.stats().prefix_cache_hits is None
        assert [d.token_ids for d in got] == [d.token_ids for d in want]
        for a, b in zip(got, want):
            for x, y in zip(a.logprobs, b.logprobs, strict=True):
                assert math.isclose(x.logprob, y.logprob, abs_tol=1e-3)
                assert [t for t, _, _ in x.top] == [t for t, _, _ in y.top]
    finally:
        for engine in (with_cache, without):
            run_async(engine.stop())


def test_a_long_prompt_is_prefilled_in_chunks_while_running_streams_decode(tiny_dir):
    """Stream A decodes; prompt B (6 chunks long) arrives. Each step computes one chunk of B and one
    token of every running stream, so A receives tokens while B is prefilled; B's answer is the
    same as with the whole prompt in one pass (the prefix cache is off here, so nothing is reused)."""
    import asyncio

    from engines.hf import load_engine
    from engines.hf.scheduler import PREFILL_CHUNK

    engine = load_engine(ModelSpec(model_dir=str(tiny_dir), dtype="float32"), served_name="c", prefix_cache_memory_gb=0)
    run_async(engine.start())
    try:
        long_prompt = [1000 + (i * 7) % 5000 for i in range(6 * PREFILL_CHUNK - 10)]
        params = GenerationParams(max_tokens=3, temperature=0, ignore_eos=True, logprobs=3)

        async def scenario():
            order: list[str] = []

            async def consume(name, prompt, p):
                out = []
                async for d in engine.generate(prompt, p, RequestContext(request_id=name)):
                    order.append(name)
                    out.append(d)
                return out

            a = asyncio.ensure_future(consume("a", [1, 2, 3], GenerationParams(max_tokens=400, temperature=0, ignore_eos=True)))
            while "a" not in order:
                await asyncio.sleep(0.01)
            order.append("b submitted")
            b = await consume("b", long_prompt, params)
            await a
            return order, b

        order, chunked = run_async(scenario())
        during = order[order.index("b submitted") : order.index("b")]
        assert during.count("a") >= 5  # A kept decoding while B's 6 chunks were computed (one pass: 1)
        whole = run_async(_one_pass(engine, long_prompt, params))
        assert [d.token_ids for d in chunked] == [d.token_ids for d in whole]
        for x, y in zip([i for d in chunked for i in d.logprobs], [i for d in whole for i in d.logprobs], strict=True):
            assert math.isclose(x.logprob, y.logprob, abs_tol=1e-3)
    finally:
        run_async(engine.stop())


async def _one_pass(engine, prompt, params):
    """The same prompt in one prefill pass: the chunk bound raised for this call only."""
    from engines.hf import scheduler

    saved = scheduler.PREFILL_CHUNK
    scheduler.PREFILL_CHUNK = 1 << 20
    try:
        return [d async for d in engine.generate(prompt, params, RequestContext(request_id="whole"))]
    finally:
        scheduler.PREFILL_CHUNK = saved
