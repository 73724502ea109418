"""Load generation and metrics with `vllm bench serve`'s definitions (spec/openai.md §5).

- TTFT: time from sending the request to the first SSE chunk with non-empty `choices`.
- ITL: gaps between consecutive chunks with choices (per chunk, pooled over requests).
- TPOT: (E2EL - TTFT) / (output tokens - 1), for requests with more than one output token.
- E2EL: time from sending to the last chunk with choices.
- Output tokens come from the server's usage (stream_options.include_usage is always set).
- Throughputs divide by the run's wall time (first dispatch to last completion).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class RequestResult:
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start: float = 0.0
    error: str = ""


@dataclass
class Workload:
    endpoint: str  # completions | chat | embeddings
    model: str
    prompts: list[Any]  # token-id lists (completions), strings (chat, embeddings)
    output_len: int = 128
    extra_body: dict[str, Any] = field(default_factory=dict)


def session(connections: int) -> aiohttp.ClientSession:
    """One connection per in-flight request, no client-side timeout (long generations)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections + 4), timeout=aiohttp.ClientTimeout(total=None)
    )


async def random_prompts(client: aiohttp.ClientSession, root: str, n: int, length: int, *, seed: int, text: bool) -> list[Any]:
    """Random token ids of exactly `length` tokens; as text (via /detokenize) when `text`."""
    rng = random.Random(seed)
    # Ordinary word-piece ids: clear of the special tokens at the start of every vocabulary.
    prompts = [[rng.randrange(1000, 20000) for _ in range(length)] for _ in range(n)]
    if not text:
        return prompts
    out = []
    for p in prompts:
        async with client.post(f"{root}/detokenize", json={"tokens": p}) as r:
            out.append((await r.json())["prompt"])
    return out


async def one_request(client: aiohttp.ClientSession, base: str, w: Workload, prompt: Any) -> RequestResult:
    if w.endpoint == "embeddings":
        start = time.perf_counter()
        try:
            body = {"model": w.model, "input": prompt, "encoding_format": "float", **w.extra_body}
            async with client.post(f"{base}/embeddings", json=body) as r:
                r.raise_for_status()
                tokens = (await r.json())["usage"]["prompt_tokens"]
        except Exception as exc:  # counted as failed, not raised
            return RequestResult(False, start=start, error=repr(exc)[:200])
        return RequestResult(True, prompt_tokens=tokens, latency=time.perf_counter() - start, start=start)

    body: dict[str, Any] = {
        "model": w.model,
        "max_tokens": w.output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **w.extra_body,
    }
    if w.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
        path = "chat/completions"
    else:
        body["prompt"] = prompt
        path = "completions"
    result = RequestResult(False)
    start = time.perf_counter()
    result.start = start
    last = None
    try:
        async with client.post(f"{base}/{path}", json=body) as r:
            if r.status != 200:
                result.error = f"HTTP {r.status}: {(await r.read())[:200]!r}"
                return result
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                now = time.perf_counter()
                if event.get("error"):
                    result.error = str(event["error"])[:200]
                    return result
                if event.get("choices"):
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                elif event.get("usage"):
                    result.output_tokens = event["usage"]["completion_tokens"]
                    result.prompt_tokens = event["usage"]["prompt_tokens"]
    except Exception as exc:
        result.error = repr(exc)[:200]
        return result
    if last is None:
        result.error = "no chunk with choices"
        return result
    result.latency = last - start
    result.ok = True
    return result


async def closed_loop(base: str, w: Workload, concurrency: int) -> tuple[list[RequestResult], float]:
    """`concurrency` clients, each sending its next request when the previous one finished."""
    queue = list(w.prompts)
    results: list[RequestResult] = []
    async with session(concurrency) as client:

        async def worker() -> None:
            while queue:
                results.append(await one_request(client, base, w, queue.pop(0)))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - start


def poisson_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Gamma(shape=b, scale=1/(rate*b)) gaps, rescaled so the last arrival lands at n/rate."""
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(n):
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        offsets.append(t)
    scale = (n / rate) / offsets[-1] if offsets and offsets[-1] > 0 else 1.0
    return [o * scale for o in offsets]


async def open_loop(base: str, w: Workload, rate: float, burstiness: float = 1.0, seed: int = 0) -> tuple[list[RequestResult], float]:
    offsets = poisson_offsets(len(w.prompts), rate, burstiness, seed)
    async with session(1024) as client:
        start = time.perf_counter()

        async def fire(offset: float, prompt: Any) -> RequestResult:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            return await one_request(client, base, w, prompt)

        results = await asyncio.gather(*(fire(o, p) for o, p in zip(offsets, w.prompts)))
        return list(results), time.perf_counter() - start


def _stats(name: str, values: list[float], percentiles: tuple[int, ...] = (99,)) -> dict[str, float]:
    out: dict[str, float] = {}
    ms = sorted(v * 1000 for v in values) or [0.0]
    out[f"mean_{name}_ms"] = statistics.fmean(ms)
    out[f"median_{name}_ms"] = statistics.median(ms)
    out[f"std_{name}_ms"] = statistics.pstdev(ms)
    for p in percentiles:
        k = (len(ms) - 1) * p / 100  # numpy's linear interpolation
        lo, hi = int(k), min(int(k) + 1, len(ms) - 1)
        out[f"p{p}_{name}_ms"] = ms[lo] + (ms[hi] - ms[lo]) * (k - lo)
    return out


def summarize(results: list[RequestResult], duration: float, *, endpoint: str) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    summary: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:3],
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": out_tokens / duration if duration else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration else 0.0,
    }
    if endpoint == "embeddings":
        summary["inputs_per_s"] = summary["request_throughput"]
        summary.update(_stats("e2el", [r.latency for r in ok]))
        return summary
    summary.update(_stats("ttft", [r.ttft for r in ok]))
    summary.update(_stats("tpot", [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]))
    summary.update(_stats("itl", [g for r in ok for g in r.itl]))
    summary.update(_stats("e2el", [r.latency for r in ok]))
    return summary
