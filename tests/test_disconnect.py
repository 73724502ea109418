"""A client that goes away stops its generation; checked over real sockets against uvicorn."""

import asyncio

import httpx
import pytest

from tests.helpers import eventually

LONG = {"messages": [{"role": "user", "content": "Tell me everything."}], "max_tokens": 4000, "ignore_eos": True}


async def wait_idle(engine):
    """The engine's gauges back at zero (no time limit but a hang guard: a busy machine is slow)."""
    await eventually(lambda: engine.stats().running == 0 and engine.stats().waiting == 0, "the engine to be idle")
    return engine.stats()


async def test_closed_stream_aborts_and_frees_the_engine(live_tiny, tiny_engine):
    """The abort counter moves (the generation was stopped, not finished: 4000 tokens were asked)
    and the slot is free; the next request is served."""
    before = tiny_engine.stats()
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=600) as http:
        async with http.stream("POST", "/openai/v1/chat/completions", json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            events = 0
            async for line in r.aiter_lines():
                events += line.startswith("data: ")
                if events == 30:
                    break
    stats = await wait_idle(tiny_engine)
    assert stats.aborted_total == before.aborted_total + 1 and stats.completed_total == before.completed_total
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=600) as http:
        r = await http.post("/openai/v1/chat/completions", json={**LONG, "max_tokens": 10})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 10


async def test_abandoned_non_streaming_request_aborts(live_tiny, tiny_engine):
    """A client that gives up on a non-streaming request: the generation is aborted once the
    server sees the connection close (the request had started: the running gauge showed it)."""
    before = tiny_engine.stats()
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=600) as http:
        call = asyncio.ensure_future(http.post("/openai/v1/chat/completions", json=LONG))
        await eventually(lambda: tiny_engine.stats().running == 1, "the generation to start")
        call.cancel()  # the client hangs up
        with pytest.raises(asyncio.CancelledError):
            await call
    stats = await wait_idle(tiny_engine)
    assert stats.aborted_total == before.aborted_total + 1 and stats.completed_total == before.completed_total


async def test_sse_over_a_real_socket_is_newline_framed(live_tiny):
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=600) as http:
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
    before = tiny_engine.stats().aborted_total
    async with httpx.AsyncClient(base_url=live_tiny.base_url, timeout=600) as http:
        async with http.stream("POST", "/openai/v1/chat/completions", json={**LONG, "n": 3, "stream": True}) as r:
            events = 0
            async for line in r.aiter_lines():
                events += line.startswith("data: ")
                if events == 10:
                    break
    stats = await wait_idle(tiny_engine)
    assert stats.running == 0 and stats.waiting == 0
    assert stats.aborted_total == before + 3
