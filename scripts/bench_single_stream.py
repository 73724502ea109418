"""One stream, side by side in one process: our engine vs transformers' generate + TextIteratorStreamer.

The second is how KServe's huggingfaceserver streams (generate() on a thread, text pulled from a
TextIteratorStreamer). Both run the same model object, prompt, greedy decoding and output length,
alternating, so the ratio is measured under the same machine conditions.

Usage: python scripts/bench_single_stream.py [--model-dir DIR] [--dtype auto|bfloat16] [--tokens 128 --runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid

from engines import GenerationParams, RequestContext
from engines.hf import HFEngine
from engines.loader import ModelSpec

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


async def ours(engine: HFEngine, ids: list[int], tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    params = GenerationParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    async for delta in engine.generate(ids, params, RequestContext(uuid.uuid4().hex)):
        if first is None:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start


def streamer_baseline(engine: HFEngine, ids: list[int], tokens: int) -> tuple[float, float]:
    import torch
    from transformers import TextIteratorStreamer

    model = engine._loaded.model  # the very same weights
    hf_tok = engine._loaded.hf_tokenizer
    streamer = TextIteratorStreamer(hf_tok, skip_prompt=True)
    input_ids = torch.tensor([ids])
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        streamer=streamer,
        pad_token_id=hf_tok.pad_token_id,
    )
    start = time.perf_counter()
    thread = threading.Thread(target=model.generate, kwargs=kwargs)
    thread.start()
    first = None
    for piece in streamer:
        if first is None and piece:
            first = time.perf_counter() - start
    thread.join()
    return first, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="default: the packaged SmolLM2-135M-Instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    engine = HFEngine.load(ModelSpec(model_dir=args.model_dir, dtype=args.dtype), served_name="bench")
    tok = engine.tokenizer
    ids = tok.encode(tok.apply_chat_template(PROMPT), add_special_tokens=False)

    async def run() -> dict[str, list[tuple[float, float]]]:
        await engine.start()
        results: dict[str, list[tuple[float, float]]] = {"ours": [], "generate+TextIteratorStreamer": []}
        await ours(engine, ids, 4)  # warm-up both paths
        await asyncio.to_thread(streamer_baseline, engine, ids, 4)
        for _ in range(args.runs):  # alternate, so drift hits both equally
            results["ours"].append(await ours(engine, ids, args.tokens))
            results["generate+TextIteratorStreamer"].append(await asyncio.to_thread(streamer_baseline, engine, ids, args.tokens))
        await engine.stop()
        return results

    results = asyncio.run(run())
    print(f"model={engine.capabilities.root} dtype={engine.capabilities.dtype} prompt_tokens={len(ids)} "
          f"output_tokens={args.tokens} runs={args.runs}")
    summary = {}
    for name, runs in results.items():
        ttft = statistics.median(r[0] for r in runs) * 1000
        tps = statistics.median(args.tokens / r[1] for r in runs)
        summary[name] = (ttft, tps)
        print(f"{name:>32}: first text {ttft:7.1f} ms   {tps:6.2f} tokens/s")
    (t_ours, s_ours), (t_base, s_base) = summary["ours"], summary["generate+TextIteratorStreamer"]
    print(f"{'ratio ours/baseline':>32}: first text x{t_ours / t_base:.2f}   tokens/s x{s_ours / s_base:.2f}")


if __name__ == "__main__":
    main()
