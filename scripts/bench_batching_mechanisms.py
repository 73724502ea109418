"""The batching mechanisms we chose between, in-process, one run, same weights and prompts.

- our engine's step loop (continuous batching over a left-padded batched KV cache), all requests
  submitted at once;
- one padded `model.generate()` call (the "ideal static batch": nobody joins or leaves);
- transformers' continuous-batching manager, `model.generate_batch()` (paged cache; its
  warm-up is part of the call, as it is for every caller that does not keep a manager alive).

Usage: python scripts/bench_batching_mechanisms.py [--dtype auto|bfloat16] [--batches 16 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid

import torch

from engines import GenerationParams, RequestContext
from engines.frontend import EngineFrontend
from engines.hf import HFEngine
from engines.loader import ModelSpec, load_model


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, 20000) for _ in range(length)] for _ in range(n)]


def ours(engine: EngineFrontend, batch: list[list[int]], out_len: int) -> float:
    async def one(ids: list[int]) -> int:
        params = GenerationParams(max_tokens=out_len, temperature=0, ignore_eos=True)
        count = 0
        async for _ in engine.generate(ids, params, RequestContext(uuid.uuid4().hex)):
            count += 1
        return count

    async def run() -> float:
        start = time.perf_counter()
        total = sum(await asyncio.gather(*(one(ids) for ids in batch)))
        return total / (time.perf_counter() - start)

    return asyncio.run(run())


def static_generate(model, batch: list[list[int]], out_len: int, pad: int) -> float:
    ids = torch.tensor(batch)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=out_len,
                       min_new_tokens=out_len, do_sample=False, pad_token_id=pad)
    return len(batch) * out_len / (time.perf_counter() - start)


def manager(model, batch: list[list[int]], out_len: int, pad: int) -> float:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=out_len, do_sample=False, eos_token_id=-1, pad_token_id=pad)
    start = time.perf_counter()
    out = model.generate_batch(inputs=batch, generation_config=config)
    return sum(len(r.generated_tokens) for r in out.values()) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=128)
    args = ap.parse_args()

    loaded = load_model(ModelSpec(dtype=args.dtype))
    pad = loaded.hf_tokenizer.pad_token_id
    engine = EngineFrontend(HFEngine(loaded, served_name="bench"))
    asyncio.run(engine.start())
    ours(engine, prompts(2, args.input_len, 99), 4)  # warm-up
    print(f"dtype={loaded.dtype} input={args.input_len} output={args.output_len} (output tokens/s)")
    print("| mechanism | " + " | ".join(f"{b} streams" for b in args.batches) + " |")
    print("| --- |" + " ---: |" * len(args.batches))
    rows = {"our step loop (continuous batching)": [], "one padded model.generate() batch": [],
            "transformers generate_batch() manager": []}
    for b in args.batches:
        batch = prompts(b, args.input_len, b)
        rows["our step loop (continuous batching)"].append(ours(engine, batch, args.output_len))
        rows["one padded model.generate() batch"].append(static_generate(loaded.model, batch, args.output_len, pad))
        rows["transformers generate_batch() manager"].append(manager(loaded.model, batch, args.output_len, pad))
    asyncio.run(engine.stop())
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
