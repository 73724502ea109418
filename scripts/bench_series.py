"""Two serving questions beyond throughput, for any OpenAI-compatible server (gateway or plain vLLM).

- multi-turn chat: a 10-turn conversation under a ~1,000-token system prompt, as a chat UI sends it
  (the whole conversation every turn). Reported: TTFT of every turn, and the last turn's TTFT
  against a cold prefill of the same conversation with a different first system-prompt word
  (no prefix in common with anything sent before). Prefix reuse shows as last/cold well below 1.
- long prompt while decoding: 8 streams decode; once they are steady a request with a
  2,000-token prompt arrives. Reported: the running streams' p99 and largest inter-token gap
  while that prompt is prefilled, against their p99 before it arrived. Chunked prefill keeps the
  two close; a whole-prompt prefill stalls every stream for its duration.

    python scripts/bench_series.py --base-url http://127.0.0.1:8080/openai/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Workload, one_request, session  # noqa: E402

WORDS = ("assistant rule answer user politely briefly accurate context history reference policy "
         "always never explain example format data number list safety style tone").split()


async def _model(client: aiohttp.ClientSession, base: str) -> str:
    async with client.get(f"{base}/models") as r:
        return (await r.json())["data"][0]["id"]


async def _count(client: aiohttp.ClientSession, root: str, model: str, text: str) -> int:
    async with client.post(f"{root}/tokenize", json={"model": model, "prompt": text}) as r:
        return int((await r.json())["count"])


async def system_prompt(client: aiohttp.ClientSession, root: str, model: str, tokens: int) -> str:
    """Deterministic rule-like text of about `tokens` tokens."""
    lines: list[str] = []
    n = 0
    while True:
        lines.append(f"Rule {n}: " + " ".join(WORDS[(n * 7 + i * 3) % len(WORDS)] for i in range(12)) + ".")
        n += 1
        if n % 10 == 0 and await _count(client, root, model, "\n".join(lines)) >= tokens:
            return "\n".join(lines)


async def _chat(client: aiohttp.ClientSession, base: str, model: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, str]:
    """(TTFT in seconds, the reply's text) of one streamed chat request, greedy."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    start = time.perf_counter()
    ttft, text = 0.0, []
    async with client.post(f"{base}/chat/completions", json=body) as r:
        r.raise_for_status()
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and not ttft:
                    ttft = time.perf_counter() - start
                text.append(piece)
    return ttft, "".join(text)


async def multi_turn(base: str, *, turns: int = 10, system_tokens: int = 1000, reply_tokens: int = 32) -> dict[str, Any]:
    root = base.rsplit("/v1", 1)[0]
    async with session(2) as client:
        model = await _model(client, base)
        system = await system_prompt(client, root, model, system_tokens)
        messages = [{"role": "system", "content": system}]
        ttfts = []
        for turn in range(turns):
            messages.append({"role": "user", "content": f"Question {turn}: which rule mentions {WORDS[turn % len(WORDS)]}?"})
            ttft, reply = await _chat(client, base, model, messages, reply_tokens)
            ttfts.append(ttft)
            messages.append({"role": "assistant", "content": reply})
        last = messages[:-1]  # the last turn's request, as it was sent
        cold_messages = [{"role": "system", "content": "Preamble. " + system}, *last[1:]]
        cold, _ = await _chat(client, base, model, cold_messages, reply_tokens)
    return {"series": "multi-turn", "turns": turns, "system_tokens": system_tokens, "ttft_ms": [round(t * 1000, 1) for t in ttfts],
            "last_turn_ttft_ms": ttfts[-1] * 1000, "cold_ttft_ms": cold * 1000, "last_over_cold": ttfts[-1] / cold}


def _chunk_times(result: Any) -> list[tuple[float, float]]:
    """(arrival time, gap since the previous chunk) for every chunk after the first."""
    t = result.start + result.ttft
    out = []
    for gap in result.itl:
        t += gap
        out.append((t, gap))
    return out


async def long_prompt(base: str, *, streams: int = 8, long_tokens: int = 2000, output_len: int = 256, settle_s: float = 2.0) -> dict[str, Any]:
    root = base.rsplit("/v1", 1)[0]
    async with session(streams + 2) as client:
        model = await _model(client, base)
        text = await system_prompt(client, root, model, long_tokens)
        decoding = Workload("completions", model, [], output_len)
        background = [asyncio.ensure_future(one_request(client, base, decoding, f"Story {i}: once upon a time")) for i in range(streams)]
        await asyncio.sleep(settle_s)
        arrived = time.perf_counter()
        long = await one_request(client, base, Workload("completions", model, [], 1), text)
        prefilled = time.perf_counter()
        results = await asyncio.gather(*background)
    if not long.ok or not all(r.ok for r in results):
        return {"series": "long-prompt", "error": long.error or next(r.error for r in results if not r.ok)}
    chunks = [c for r in results for c in _chunk_times(r)]
    before = sorted(gap for t, gap in chunks if t < arrived)
    during = sorted(gap for t, gap in chunks if arrived <= t <= prefilled + 0.05)

    def p99(values: list[float]) -> float:
        return values[min(len(values) - 1, int(0.99 * len(values)))] * 1000 if values else float("nan")

    return {"series": "long-prompt", "streams": streams, "long_prompt_tokens": long.prompt_tokens,
            "long_prompt_ttft_ms": long.ttft * 1000, "p99_itl_before_ms": p99(before), "p99_itl_during_ms": p99(during),
            "max_itl_during_ms": max(during) * 1000 if during else float("nan"),
            "median_itl_before_ms": statistics.median(before) * 1000 if before else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/openai/v1")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(multi_turn(args.base_url))))
    print(json.dumps(asyncio.run(long_prompt(args.base_url))))


if __name__ == "__main__":
    main()
