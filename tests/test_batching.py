"""Continuous batching invariants: rows share a batch but behave as if each were alone."""

import asyncio
import contextlib
import uuid

import pytest

from engines import EngineError, ErrorCode, GenerationParams, RequestContext
from engines.frontend import EngineFrontend
from engines.hf import HFEngine
from engines.hf.scheduler import SchedulerLimits
from engines.loader import ModelSpec
from tests.helpers import eventually

PROMPTS = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog because",
    "In a distant galaxy far away, a small robot named",
    "Hi",
    "List three colors:",
    "The meaning of life is a question that philosophers have asked for centuries, and",
]


async def run(engine, prompt, **params):
    deltas = [d async for d in engine.generate(prompt, GenerationParams(**params), RequestContext(uuid.uuid4().hex))]
    return "".join(d.text for d in deltas), [t for d in deltas for t in d.token_ids], deltas[-1].finish_reason


async def test_concurrent_greedy_equals_sequential(tiny_engine):
    sequential = [await run(tiny_engine, p, max_tokens=24, temperature=0) for p in PROMPTS]
    steps_before = tiny_engine.stats().steps_total
    concurrent = await asyncio.gather(*(run(tiny_engine, p, max_tokens=24, temperature=0) for p in PROMPTS))
    assert list(concurrent) == sequential
    # They really shared steps: far fewer steps than tokens generated.
    steps = tiny_engine.stats().steps_total - steps_before
    assert steps < sum(len(ids) for _, ids, _ in sequential) / 2


async def test_mixed_parameters_in_one_batch(tiny_engine):
    greedy_text = (await run(tiny_engine, PROMPTS[0], max_tokens=20, temperature=0))[0]
    stop = greedy_text[8:11]
    target = tiny_engine.tokenizer.encode(" dragon", add_special_tokens=False)[0]
    cases = [
        (PROMPTS[0], dict(max_tokens=20, temperature=0)),
        (PROMPTS[1], dict(max_tokens=20, temperature=1.0, seed=7)),
        (PROMPTS[2], dict(max_tokens=6, logit_bias=((target, 100.0),))),
        (PROMPTS[0], dict(max_tokens=20, temperature=0, stop=(stop,))),
        (PROMPTS[3], dict(max_tokens=15, temperature=0.8, top_k=5, seed=1, frequency_penalty=1.0, logprobs=2)),
        (PROMPTS[4], dict(max_tokens=30, temperature=0, min_tokens=10, ignore_eos=True)),
    ]
    alone = [await run(tiny_engine, p, **kw) for p, kw in cases]
    together = await asyncio.gather(*(run(tiny_engine, p, **kw) for p, kw in cases))
    assert list(together) == alone
    assert alone[2][0] == " dragon" * 6 and alone[3][0] == greedy_text[: greedy_text.find(stop)]


async def test_aborted_row_leaves_and_neighbours_finish_unchanged(tiny_engine):
    expected = [await run(tiny_engine, p, max_tokens=40, temperature=0) for p in PROMPTS[:3]]
    victim = tiny_engine.generate(PROMPTS[5], GenerationParams(max_tokens=3000, ignore_eos=True), RequestContext("victim-" + uuid.uuid4().hex))

    async def kill_after(n):
        async for d in victim:
            if d.completion_tokens == n:
                break
        await victim.aclose()

    results = await asyncio.gather(kill_after(5), *(run(tiny_engine, p, max_tokens=40, temperature=0) for p in PROMPTS[:3]))
    assert list(results[1:]) == expected
    assert tiny_engine.stats().running == 0


@pytest.fixture(scope="module")
def small_engine(tiny_dir):
    """A second engine over the same weights with tiny limits, to exercise admission and preemption."""
    engine = EngineFrontend(HFEngine.load(
        ModelSpec(model_dir=str(tiny_dir)), served_name="small",
        limits=SchedulerLimits(max_num_seqs=2, max_waiting=2, kv_cache_tokens=200),
    ))
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.stop())


@contextlib.asynccontextmanager
async def saturated(engine, rows=2, queued=2):
    """Long requests that fill the batch and then the queue; aborted on the way out."""
    long = GenerationParams(max_tokens=2000, ignore_eos=True)
    streams, firsts = [], []
    try:
        for i in range(rows + queued):
            stream = engine.generate(PROMPTS[3], long, RequestContext(f"fill{i}-{uuid.uuid4().hex}"))
            streams.append(stream)
            firsts.append(asyncio.ensure_future(anext(stream)))
            if i < rows:  # admitted: its first token has come
                await asyncio.shield(firsts[-1])
            else:  # queued behind the full batch
                await eventually(lambda n=i - rows + 1: engine.stats().waiting == n, "the request to queue")
        yield
    finally:
        for f in firsts:
            f.cancel()
        await asyncio.gather(*firsts, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


async def test_full_queue_is_refused_then_recovers(small_engine):
    async with saturated(small_engine):
        assert (small_engine.stats().running, small_engine.stats().waiting) == (2, 2)
        assert small_engine.stats().saturated == 1
        with pytest.raises(EngineError) as exc:
            await run(small_engine, PROMPTS[1], max_tokens=2)
        assert exc.value.code is ErrorCode.OVERLOADED
    await eventually(lambda: small_engine.stats().running == 0 and small_engine.stats().waiting == 0, "the engine to empty")
    text, ids, finish = await run(small_engine, PROMPTS[1], max_tokens=2)
    assert len(ids) == 2


async def test_no_queue_still_serves_free_slots(tiny_dir):
    """--max_waiting 0 means no queue, not no service: a request that finds a free slot runs,
    the one beyond the batch is refused."""
    engine = EngineFrontend(HFEngine.load(ModelSpec(model_dir=str(tiny_dir)), served_name="noqueue",
                                          limits=SchedulerLimits(max_num_seqs=1, max_waiting=0)))
    await engine.start()
    try:
        assert engine.stats().saturated == 0
        text, ids, finish = await run(engine, PROMPTS[1], max_tokens=2)
        assert len(ids) == 2
        async with saturated(engine, rows=1, queued=0):
            assert engine.stats().running == 1 and engine.stats().saturated == 1
            with pytest.raises(EngineError) as exc:
                await run(engine, PROMPTS[1], max_tokens=2)
            assert exc.value.code is ErrorCode.OVERLOADED
    finally:
        await engine.stop()


async def test_preemption_keeps_outputs_exact(small_engine, tiny_engine):
    """Two rows that outgrow a 200-token KV budget: one is preempted and recomputed, same output."""
    kw = dict(max_tokens=120, temperature=0, ignore_eos=True)
    expected = [await run(tiny_engine, p, **kw) for p in PROMPTS[:2]]
    before = small_engine.stats().preempted_total
    got = await asyncio.gather(*(run(small_engine, p, **kw) for p in PROMPTS[:2]))
    assert list(got) == expected
    assert small_engine.stats().preempted_total > before


async def test_http_429_with_retry_after_and_readiness(small_engine):
    import httpx

    from tests.conftest import make_app

    app = make_app(small_engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.get("/ready")).status_code == 200
        async with saturated(small_engine):
            for stream_flag in (False, True):
                r = await http.post("/openai/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": stream_flag})
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.json()["error"]["type"] == "rate_limit_error"
            ready = await http.get("/ready")
            assert ready.status_code == 503 and ready.json()["saturated"] is True
            assert (await http.get("/openai/v1/models")).status_code == 200  # still responsive
            assert (await http.get("/health")).status_code == 200
        await eventually(lambda: small_engine.stats().running == 0 and small_engine.stats().waiting == 0, "the engine to empty")
        assert (await http.get("/ready")).status_code == 200
        r = await http.post("/openai/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 200


async def test_a_faulty_row_fails_alone(tiny_engine):
    """A request that cannot go on mid-batch gets its own error (the client's: its grammar and
    min_tokens leave no possible token, a 400-class error); its neighbours are untouched."""
    from engines.types import StructuredOutput

    expected = [await run(tiny_engine, p, max_tokens=20, temperature=0) for p in PROMPTS[:2]]
    # The grammar allows nothing but EOS, and min_tokens forbids EOS: no token is possible.
    impossible = GenerationParams(max_tokens=20, min_tokens=5, structured=StructuredOutput("regex", ""))

    async def faulty():
        return [d async for d in tiny_engine.generate(PROMPTS[0], impossible, RequestContext("bad-" + uuid.uuid4().hex))]

    results = await asyncio.gather(faulty(), *(run(tiny_engine, p, max_tokens=20, temperature=0) for p in PROMPTS[:2]), return_exceptions=True)
    assert isinstance(results[0], EngineError) and results[0].code is ErrorCode.INVALID_REQUEST
    assert "allows no next token" in results[0].message
    assert list(results[1:]) == expected
    assert tiny_engine.stats().running == 0
