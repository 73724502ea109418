"""The transformers engine in-process (no HTTP), two source trees side by side: did a change make
the engine faster? Each tree's engine runs in a child process of its own, alternating A, B, A, B,
so drift in the machine's load hits both; the ratios compare runs of the same round.

    git worktree add /tmp/before <commit>
    python scripts/bench_engine_ab.py /tmp/before .              # SmolLM2, fp32, 16 and 32 rows
    python scripts/bench_engine_ab.py /tmp/before . --rows 1 32 --rounds 3

Each run submits `rows` requests at once (64 random prompt tokens, 128 output tokens, ignore_eos)
once greedy and once sampled at temperature 1, and reports output tokens/s over the whole batch
(prefill included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import asyncio, json, random, sys, time, uuid
tree, rows_list, input_len, output_len = sys.argv[1], [int(r) for r in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, tree)
import engines
assert engines.__file__.startswith(tree), engines.__file__
from engines import GenerationParams, RequestContext
from engines.hf import load_engine
from engines.loader import ModelSpec

engine = load_engine(ModelSpec(dtype="float32"), served_name="bench")
rng = random.Random(0)

async def one(ids, temperature):
    params = GenerationParams(max_tokens=output_len, temperature=temperature, ignore_eos=True)
    return sum([len(d.token_ids) async for d in engine.generate(ids, params, RequestContext(uuid.uuid4().hex))])

async def main():
    await engine.start()
    await one([rng.randrange(1000, 20000) for _ in range(8)], 0.0)  # warm-up
    for rows in rows_list:
        batch = [[rng.randrange(1000, 20000) for _ in range(input_len)] for _ in range(rows)]
        for temperature in (0.0, 1.0):
            start = time.perf_counter()
            tokens = sum(await asyncio.gather(*(one(ids, temperature) for ids in batch)))
            print(json.dumps({"rows": rows, "temperature": temperature, "tok_s": tokens / (time.perf_counter() - start)}), flush=True)
    await engine.stop()

asyncio.run(main())
"""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(tree: str, rows: list[int], input_len: int, output_len: int) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, os.path.abspath(tree), ",".join(map(str, rows)), str(input_len), str(output_len)],
        capture_output=True, text=True, check=True, cwd="/",
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="source tree A (the 'before')")
    ap.add_argument("b", help="source tree B (the 'after')")
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=128)
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores. SmolLM2-135M fp32, {args.input_len} prompt + {args.output_len} output tokens, in-process.")
    print("| round | rows | sampling | A tok/s | B tok/s | B / A |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for round_ in range(1, args.rounds + 1):
        a = run(args.a, args.rows, args.input_len, args.output_len)
        b = run(args.b, args.rows, args.input_len, args.output_len)
        for x, y in zip(a, b):
            mode = "greedy" if x["temperature"] == 0 else "temperature 1"
            print(f"| {round_} | {x['rows']} | {mode} | {x['tok_s']:.1f} | {y['tok_s']:.1f} | {y['tok_s'] / x['tok_s']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
