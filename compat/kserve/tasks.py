"""One small adapter per task: texts in, one engine call, KServe's v1 predictions and v2 outputs out.

Shapes follow KServe's huggingfaceserver (spec/kserve.md §4): sequence classification -> the
argmax class index (v2 INT64 [n]); token classification -> [[label index per token]] (v2 INT64
[n, 1, tokens], rows of different lengths padded with -1 where KServe pads with whatever the
model said about padding); fill-mask -> the argmax token at each mask, joined by spaces (v2 BYTES
[n]); embeddings -> the pooled vector (v2 FP64 [n, dim]); text generation (which KServe cannot
serve over v1/v2) -> the generated text (v2 BYTES [n]).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from compat.kserve.codecs import tensor
from compat.kserve.errors import invalid_input
from engines import Engine, GenerationParams, RequestContext
from engines.tasks import Task

OUTPUT = "output-0"


@dataclass
class Prediction:
    v1: list[Any]  # one prediction per instance
    v2: list[dict[str, Any]]  # output tensors


def _argmax(values: Any) -> int:
    return max(range(len(values)), key=values.__getitem__)


async def _encode(engine: Engine, texts: list[str]) -> list[list[int]]:
    limit = engine.capabilities.max_model_len

    def run() -> list[list[int]]:
        # KServe tokenizes with truncation to the model's length; so do we.
        return [engine.tokenizer.encode(t)[:limit] for t in texts]

    return await asyncio.to_thread(run)


def _generation_params(parameters: dict[str, Any] | None) -> GenerationParams:
    p = dict(parameters or {})
    try:
        return GenerationParams(
            max_tokens=int(p.get("max_tokens", p.get("max_new_tokens", 64))),
            temperature=float(p.get("temperature", 0.0)),
            top_p=float(p.get("top_p", 1.0)),
            seed=None if p.get("seed") is None else int(p["seed"]),
        )
    except (TypeError, ValueError) as exc:
        raise invalid_input(f"Invalid generation parameter: {exc}") from None


async def predict(engine: Engine, texts: list[str], parameters: dict[str, Any] | None = None) -> Prediction:
    task = next(iter(engine.capabilities.tasks))
    ctx = RequestContext(f"kserve-{uuid.uuid4().hex}")
    if task is Task.text_generation:
        params = _generation_params(parameters)
        if not 0.0 <= params.temperature <= 2.0 or params.max_tokens < 1:
            raise invalid_input("temperature must be in [0, 2] and max_tokens at least 1.")

        async def one(i: int, text: str) -> str:
            request = RequestContext(f"{ctx.request_id}-{i}")
            return "".join([d.text async for d in engine.generate(text, params, request)])

        outputs = list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))
        return Prediction(outputs, [tensor(OUTPUT, "BYTES", outputs)])

    ids = await _encode(engine, texts)
    if task is Task.text_embedding:
        vectors = [list(r.embedding) for r in await engine.embed(ids, ctx)]
        return Prediction(vectors, [tensor(OUTPUT, "FP64", vectors)])
    if task is Task.sequence_classification:
        classes = [_argmax(r.logits) for r in await engine.classify(ids, ctx)]
        return Prediction(classes, [tensor(OUTPUT, "INT64", classes)])
    if task is Task.token_classification:
        rows = [[_argmax(token) for token in r.logits] for r in await engine.classify_tokens(ids, ctx)]
        width = max(len(r) for r in rows)
        padded = [[row + [-1] * (width - len(row))] for row in rows]
        return Prediction([[row] for row in rows], [tensor(OUTPUT, "INT64", padded)])
    if task is Task.fill_mask:
        tok = engine.tokenizer
        words = []
        for r in await engine.fill_mask(ids, ctx):
            best = [_argmax(logits) for logits in r.logits]
            words.append(" ".join(tok.decode([b]).strip() for b in best))
        return Prediction(words, [tensor(OUTPUT, "BYTES", words)])
    raise invalid_input(f"Task {task.value} is not served over the KServe protocol.")


def output_metadata(task: Task) -> list[dict[str, Any]]:
    """v2 model metadata that actually describes the tensors (KServe's lists are always empty)."""
    spec = {
        Task.text_generation: ("BYTES", [-1]),
        Task.text_embedding: ("FP64", [-1, -1]),
        Task.sequence_classification: ("INT64", [-1]),
        Task.token_classification: ("INT64", [-1, 1, -1]),
        Task.fill_mask: ("BYTES", [-1]),
    }[task]
    return [{"name": OUTPUT, "datatype": spec[0], "shape": spec[1]}]
