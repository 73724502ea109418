"""A client that goes away stops its generation; checked over real sockets against uvicorn."""

import asyncio
import time

import httpx
import pytest

LONG = {"messages": [{"role": "user", "content": "Tell me everything."}], "max_tokens": 4000, "ignore_eos": True}


async def wait_idle(engine, timeout=2.0):
    deadline = time.monotonic() + timeout
    while engine.stats()["running"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return engine.stats()


async def short_request_latency(base_url):
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        start = time.perf_counter()
        r = await http.post("/openai/v1/chat/completions", json={**LONG, "max_tokens": 10})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 10
        return time.perf_counter() - start


async def test_closed_stream_aborts_and_frees_the_engine(live_tiny, tiny_engine):
    before = tiny_engine.stats()["aborted_total"]
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=60) as http:
        async with http.stream("POST", "/openai/v1/chat/completions", json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            started, events = time.perf_counter(), 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events += 1
                if events == 30:
                    break
            per_token = (time.perf_counter() - started) / 29
    stats = await wait_idle(tiny_engine)
    assert stats["running"] == 0 and stats["aborted_total"] == before + 1
    # Had the abort not reached the engine, the next request would queue behind ~3970 tokens.
    remaining = (LONG["max_tokens"] - 30) * per_token
    latency = await short_request_latency(live_tiny.base_url)
    assert latency < remaining / 4, (latency, remaining)


async def test_abandoned_non_streaming_request_aborts(live_tiny, tiny_engine):
    per_token = await short_request_latency(live_tiny.base_url) / 10
    before = tiny_engine.stats()["aborted_total"]
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=httpx.Timeout(60, read=0.5)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/openai/v1/chat/completions", json=LONG)
    stats = await wait_idle(tiny_engine)
    assert stats["running"] == 0 and stats["aborted_total"] == before + 1
    remaining = LONG["max_tokens"] * per_token - 0.5
    latency = await short_request_latency(live_tiny.base_url)
    assert latency < remaining / 4, (latency, remaining)


async def test_sse_over_a_real_socket_is_newline_framed(live_tiny):
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=60) as http:
        r = await http.post("/openai/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert "\r" not in r.text and r.text.endswith("data: [DONE]\n\n")


class Slow:
    """Wraps the real engine and pauses before each delta, like a long prefill would."""

    def __init__(self, inner, pause):
        self._inner, self._pause = inner, pause

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

    async def generate(self, prompt, params, ctx):
        async for delta in self._inner.generate(prompt, params, ctx):
            await asyncio.sleep(self._pause)
            yield delta


async def test_keepalive_pings_while_waiting(tiny_engine):
    from tests.conftest import make_app
    from tests.helpers import sse_events

    app = make_app(Slow(tiny_engine, 0.12), stream_ping_interval=0.05)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.post("/openai/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stream": True, "ignore_eos": True})
    assert ": ping\n\n" in r.text
    assert len(sse_events(r.text)) >= 1


async def test_closing_an_n_stream_aborts_every_choice(live_tiny, tiny_engine):
    before = tiny_engine.stats()["aborted_total"]
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=60) as http:
        async with http.stream("POST", "/openai/v1/chat/completions", json={**LONG, "n": 3, "stream": True}) as r:
            events = 0
            async for line in r.aiter_lines():
                events += line.startswith("data: ")
                if events == 10:
                    break
    stats = await wait_idle(tiny_engine)
    assert stats["running"] == 0 and stats["waiting"] == 0
    assert stats["aborted_total"] == before + 3
