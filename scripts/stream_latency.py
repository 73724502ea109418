"""Single-stream latency of an OpenAI-compatible server: time to first token and decode speed.

Sends sequential streaming chat requests (one at a time, fixed output length via ignore_eos)
and prints medians of:
  ttft_ms          first chunk with choices (vLLM's definition; our role chunk comes with token 1)
  ttft_content_ms  first chunk with non-empty content
  tpot_ms          (e2e - ttft) / (completion_tokens - 1)
  tokens_per_s     completion_tokens / e2e, and decode-only 1000 / tpot_ms

Usage: python scripts/stream_latency.py --base-url http://127.0.0.1:8080/openai/v1 [--runs 5 --max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx


def one_run(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = ttft_content = None
    usage = None
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            now = time.perf_counter() - start
            if event.get("choices"):
                ttft = now if ttft is None else ttft
                if ttft_content is None and event["choices"][0]["delta"].get("content"):
                    ttft_content = now
                last = now
            elif event.get("usage"):
                usage = event["usage"]
    assert usage and ttft is not None and ttft_content is not None
    n = usage["completion_tokens"]
    return {
        "ttft_ms": ttft * 1000,
        "ttft_content_ms": ttft_content * 1000,
        "tpot_ms": (last - ttft) / max(n - 1, 1) * 1000,
        "tokens_per_s": n / last,
        "completion_tokens": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/openai/v1")
    ap.add_argument("--model", default=None, help="default: the first model the server lists")
    ap.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    with httpx.Client(timeout=600) as client:
        model = args.model or client.get(f"{args.base_url}/models").json()["data"][0]["id"]
        url = f"{args.base_url}/chat/completions"
        for _ in range(args.warmup):
            one_run(client, url, model, args.prompt, 8)
        runs = [one_run(client, url, model, args.prompt, args.max_tokens) for _ in range(args.runs)]

    print(f"model={model} runs={args.runs} max_tokens={args.max_tokens}")
    for key in ("ttft_ms", "ttft_content_ms", "tpot_ms", "tokens_per_s"):
        values = [r[key] for r in runs]
        print(f"{key:>16}: median {statistics.median(values):8.2f}   min {min(values):8.2f}   max {max(values):8.2f}")
    print(f"{'decode tok/s':>16}: {1000 / statistics.median(r['tpot_ms'] for r in runs):8.2f}  (1000 / median tpot)")


if __name__ == "__main__":
    main()
