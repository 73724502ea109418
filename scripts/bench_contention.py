"""Quiet against crowded CPU, side by side in one run: how much a busy machine slows each engine.

    python scripts/bench_contention.py                       # both engines when .venv-vllm exists
    python scripts/bench_contention.py --engines transformers --burners 2 --out docs/bench/contention.md

For each configuration a real `python -m gateway` serves the packaged SmolLM2 (float32). The same
request mix runs twice: on a quiet machine, then beside `--burners` processes that spin on the
CPU (`while True: pass`), as other jobs on a shared host or a noisy pod neighbour would. The mix:
one stream at a time (64 prompt / 64 output tokens, 3 requests) and 8 concurrent streams (16
requests), completions, greedy, `ignore_eos`. Before each measurement the server serves the same
load for `--settle` seconds (the transformers engine chooses its thread count while it serves).
Quiet and contended alternate `--repeats` times; each cell is the best of its repeats (the load
generator shares the CPU, so single runs are noisy).

Configurations: the transformers engine with thread sizing off (`--cpu_threads 0`: every library's
defaults, the behaviour before thread sizing), the transformers engine as shipped, and the vLLM
engine (from .venv-vllm, when it exists). It prints the CPU model, a table and the contended /
quiet ratios, and writes the table to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from loadgen import Workload, closed_loop, random_prompts, session, summarize  # noqa: E402
from servers import cpu_model, gateway_process  # noqa: E402

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


@contextlib.contextmanager
def burners(n: int) -> Iterator[None]:
    """`n` processes that spin on the CPU, in a process group of their own (stopped as a group)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def measure(base: str, settle: float) -> dict[str, Any]:
    root = base.rsplit("/v1", 1)[0]
    async with session(4) as client:
        async with client.get(f"{base}/models") as r:
            model = (await r.json())["data"][0]["id"]
        prompts = await random_prompts(client, root, 24, 64, seed=7, text=False)
    load = Workload("completions", model, prompts[:8], 64)
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:  # the same load, so the engine settles on this machine's state
        await closed_loop(base, load, 8)
    single, single_s = await closed_loop(base, Workload("completions", model, prompts[:3], 64), 1)
    eight, eight_s = await closed_loop(base, Workload("completions", model, prompts[8:24], 64), 8)
    one, many = summarize(single, single_s, endpoint="completions"), summarize(eight, eight_s, endpoint="completions")
    assert not one["failed"] and not many["failed"], (one["errors"], many["errors"])
    return {
        "1_tok_s": one["output_throughput"], "1_tpot_ms": one["median_tpot_ms"], "1_ttft_ms": one["median_ttft_ms"],
        "8_tok_s": many["output_throughput"], "8_ttft_ms": many["median_ttft_ms"], "8_tpot_ms": many["median_tpot_ms"],
    }


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's best over the repeats: the highest throughput, the lowest latency."""
    return {k: (max if k.endswith("tok_s") else min)(m[k] for m in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="transformers,vllm", help="comma list: transformers, vllm")
    ap.add_argument("--burners", type=int, default=2, help="CPU-spinning processes beside the server")
    ap.add_argument("--settle", type=float, default=45.0, help="seconds of load before each measurement")
    ap.add_argument("--repeats", type=int, default=2, help="quiet/contended rounds per configuration (best of them is kept)")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()

    configs: list[tuple[str, str, list[str]]] = []
    engines = args.engines.split(",")
    if "transformers" in engines:
        configs.append(("transformers, thread sizing off (before)", sys.executable, ["--backend", "huggingface", "--cpu_threads", "0"]))
        configs.append(("transformers (as shipped)", sys.executable, ["--backend", "huggingface"]))
    if "vllm" in engines:
        if VLLM_PYTHON.exists():
            configs.append(("vLLM", str(VLLM_PYTHON), ["--backend", "vllm", "--kv_cache_memory_gb", "1"]))
        else:
            print("(no .venv-vllm: `make vllm-env` adds the vLLM rows)", flush=True)

    cpus = len(os.sched_getaffinity(0))
    print(f"CPU: {cpu_model()}, {cpus} cores for this process; {args.burners} burner process(es) when contended", flush=True)
    rows = []
    for label, python, flags in configs:
        runs: dict[str, list[dict[str, Any]]] = {"quiet": [], "contended": []}
        with gateway_process(flags, python) as (base, _):
            for _ in range(args.repeats):
                for phase in ("quiet", "contended"):
                    with burners(args.burners if phase == "contended" else 0):
                        m = asyncio.run(measure(f"{base}/openai/v1", args.settle))
                    runs[phase].append(m)
                    print(label, phase, {k: round(v, 1) for k, v in m.items()}, flush=True)
        rows.append((label, best(runs["quiet"]), best(runs["contended"])))

    lines = [
        f"CPU: {cpu_model()} ({cpus} cores); contended = {args.burners} CPU-spinning processes beside the server. "
        "SmolLM2-135M-Instruct, float32, completions, 64 prompt / 64 output tokens, greedy, ignore_eos.",
        "",
        "| configuration | CPU | 1 stream tok/s | 1 stream TPOT ms | 1 stream TTFT ms | 8 streams tok/s | 8 streams TTFT ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, quiet, contended in rows:
        for name, m in (("quiet", quiet), ("contended", contended)):
            lines.append(f"| {label} | {name} | {m['1_tok_s']:.1f} | {m['1_tpot_ms']:.1f} | {m['1_ttft_ms']:.0f} | {m['8_tok_s']:.1f} | {m['8_ttft_ms']:.0f} |")
    lines += ["", "| configuration | slowdown, 1 stream (quiet / contended tok/s) | slowdown, 8 streams |", "| --- | ---: | ---: |"]
    for label, quiet, contended in rows:
        lines.append(f"| {label} | {quiet['1_tok_s'] / contended['1_tok_s']:.2f}x | {quiet['8_tok_s'] / contended['8_tok_s']:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
