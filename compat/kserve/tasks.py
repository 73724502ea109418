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
import math
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from compat.kserve.codecs import tensor
from compat.kserve.errors import invalid_input
from compat.kserve.options import KServeOptions
from compat.kserve.types import InferTensor
from engines import Engine, GenerationParams, RequestContext
from engines.frontend import run_parts
from engines.tasks import Task

OUTPUT = "output-0"


@dataclass
class Prediction:
    v1: list[Any]  # one prediction per instance
    v2: list[InferTensor]  # output tensors
    v1_outputs: list[InferTensor] | None = None  # extra tensors next to v1 predictions (offsets)


def _argmax(values: Any) -> int:
    return max(range(len(values)), key=values.__getitem__)


async def _encode(engine: Engine, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    limit = engine.capabilities.max_model_len

    def run() -> list[list[int]]:
        # KServe tokenizes with truncation to the model's length; so do we.
        return [engine.tokenizer.encode(t, add_special_tokens=add_special_tokens)[:limit] for t in texts]

    return await asyncio.to_thread(run)


def _integer(value: Any, name: str) -> int:
    """A whole number. KServe clients send numbers as strings too (gRPC string parameters), so a
    string of digits counts; 1.9 or true does not."""
    if isinstance(value, bool):
        raise invalid_input(f"{name} must be an integer, got {value!r}.")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and value.strip().isascii():
        return int(value)
    raise invalid_input(f"{name} must be an integer, got {str(value)[:32]!r}.")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise invalid_input(f"{name} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise invalid_input(f"{name} must be a number, got {str(value)[:32]!r}.") from None
    if not math.isfinite(number):
        raise invalid_input(f"{name} must be a finite number.")
    return number


def _generation_params(parameters: dict[str, Any]) -> GenerationParams:
    """KServe's generation parameters: max_tokens (or max_new_tokens), temperature, top_p, seed."""
    p = parameters
    max_tokens = _integer(p.get("max_tokens", p.get("max_new_tokens", 64)), "max_tokens")
    temperature = _number(p.get("temperature", 0.0), "temperature")
    top_p = _number(p.get("top_p", 1.0), "top_p")
    seed = None if p.get("seed") is None else _integer(p["seed"], "seed")
    if max_tokens < 1:
        raise invalid_input("max_tokens must be at least 1.")
    if not 0.0 <= temperature <= 2.0:
        raise invalid_input("temperature must be in [0, 2].")
    if not 0.0 < top_p <= 1.0:
        raise invalid_input("top_p must be in (0, 1].")
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise invalid_input("seed must fit in a signed 64-bit integer.")
    return GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)


def _softmax(logits: Any) -> list[float]:
    peak = max(logits)
    exps = [math.exp(x - peak) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _scores(logits: Any, options: KServeOptions) -> dict[int, float] | None:
    """KServe's dict forms: raw logits as they are, probabilities rounded to 4 decimals."""
    if options.return_raw_logits:
        return {j: float(x) for j, x in enumerate(logits)}
    if options.return_probabilities:
        return {j: float(f"{p:.4f}") for j, p in enumerate(_softmax(logits))}
    return None


def _repr_tensor(values: list[Any]) -> InferTensor:
    """KServe sends dict-shaped results over v2 as BYTES strings of the Python repr."""
    return tensor(OUTPUT, "BYTES", [repr(v) for v in values])


async def predict(
    engine: Engine, texts: list[str], parameters: dict[str, Any] | None = None, options: KServeOptions = KServeOptions()
) -> Prediction:
    task = next(iter(engine.capabilities.tasks))
    dict_form = options.return_probabilities or options.return_raw_logits
    ctx = RequestContext(f"kserve-{uuid.uuid4().hex}")
    if task in (Task.text_generation, Task.text2text_generation):
        params = _generation_params(parameters or {})
        prompts = await asyncio.to_thread(lambda: [engine.tokenizer.encode(t) for t in texts])
        # Every instance is admitted, or none is and nothing runs (a 429 leaves no orphans).
        admission = await engine.admit(prompts, params, prompt_param="instances")

        async def one(i: int, ids: list[int]) -> str:
            request = RequestContext(f"{ctx.request_id}-{i}", admission=admission)
            return "".join([d.text async for d in engine.generate(ids, params, request)])

        with admission:  # one instance failing (or the client leaving) aborts the others
            outputs = await run_parts([one(i, ids) for i, ids in enumerate(prompts)])
        return Prediction(outputs, [tensor(OUTPUT, "BYTES", outputs)])

    ids = await _encode(engine, texts, options.add_special_tokens)
    if task is Task.text_embedding:
        vectors = [list(r.embedding) for r in await engine.embed(ids, ctx)]
        return Prediction(vectors, [tensor(OUTPUT, "FP64", vectors)])
    if task is Task.sequence_classification:
        results = await engine.classify(ids, ctx)
        if dict_form:
            scored = [_scores(r.logits, options) for r in results]
            if options.scores_as_numbers:
                matrix = [[d[j] for j in sorted(d)] for d in scored]  # type: ignore[union-attr]
                return Prediction(scored, [tensor(OUTPUT, "FP64", matrix)])
            return Prediction(scored, [_repr_tensor(scored)])
        classes = [_argmax(r.logits) for r in results]
        prediction = Prediction(classes, [tensor(OUTPUT, "INT64", classes)])
        if options.return_label_names:
            names = tensor("label_names", "BYTES", [results[i].labels[c] for i, c in enumerate(classes)])
            prediction.v2.append(names)
            prediction.v1_outputs = [names]
        return prediction
    if task is Task.token_classification:
        return await _token_classification(engine, texts, ids, ctx, options, dict_form)
    if task is Task.fill_mask:
        masks = await engine.fill_mask(ids, ctx)
        if options.fill_mask_top_k > 0:
            tok = engine.tokenizer

            def best(logits: Any) -> list[dict[str, Any]]:
                probs = _softmax(logits)
                order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[: options.fill_mask_top_k]
                return [{"token_id": j, "token": tok.decode([j]), "score": probs[j]} for j in order]

            ranked = [[best(logits) for logits in r.logits] for r in masks]
            return Prediction(ranked, [tensor(OUTPUT, "BYTES", [orjson.dumps(x).decode() for x in ranked])])
        if dict_form:
            # Per mask, KServe lists the whole vocabulary: [{token_id: score}, ...]; probabilities
            # are 4-decimal strings there.
            def vocab(logits: Any) -> list[dict[int, Any]]:
                if options.return_raw_logits:
                    return [{j: float(x)} for j, x in enumerate(logits)]
                if options.scores_as_numbers:
                    return [{j: float(f"{p:.4f}")} for j, p in enumerate(_softmax(logits))]
                return [{j: f"{p:.4f}"} for j, p in enumerate(_softmax(logits))]

            listed = [[vocab(logits) for logits in r.logits] for r in masks]
            return Prediction(listed, [_repr_tensor(listed)])
        tok = engine.tokenizer
        words = [tok.decode([_argmax(logits) for logits in r.logits]) for r in masks]
        return Prediction(words, [tensor(OUTPUT, "BYTES", words)])
    raise invalid_input(f"Task {task.value} is not served over the KServe protocol.")


async def _token_classification(
    engine: Engine, texts: list[str], ids: list[list[int]], ctx: RequestContext, options: KServeOptions, dict_form: bool
) -> Prediction:
    """KServe's form (the default): every input padded to the batch's longest, the padding
    positions labelled as the model labels them (as KServe's padded batch does), v1
    `[[label per position]]`, v2 INT64 [n, 1, width]. `--ragged_token_classification`: each
    input's own tokens in v1, -1 padding in v2."""
    width = max(len(x) for x in ids)
    ragged = options.ragged_token_classification
    results = await engine.classify_tokens(ids, ctx, pad_to=None if ragged else width)
    if dict_form:
        per_token = [[_scores(t, options) for t in r.logits] for r in results]
        if options.scores_as_numbers:
            labels = len(results[0].labels) or len(results[0].logits[0])
            cube = [[[d[j] for j in sorted(d)] for d in r] + [[0.0] * labels] * (width - len(r)) for r in per_token]  # type: ignore[union-attr]
            return Prediction(per_token, [tensor(OUTPUT, "FP64", cube)])
        return Prediction(per_token, [_repr_tensor(per_token)])
    rows = [[_argmax(token) for token in r.logits] for r in results]
    padded = [[row + [-1] * (width - len(row))] for row in rows]
    prediction = Prediction([[row] for row in rows], [tensor(OUTPUT, "INT64", padded)])
    if options.return_label_names:
        label_rows = [[[r.labels[c] for c in row] + [""] * (width - len(row))] for r, row in zip(results, rows)]
        names = tensor("label_names", "BYTES", label_rows)
        prediction.v2.append(names)
        prediction.v1_outputs = [names]
    if options.return_offsets_mapping:
        limit = engine.capabilities.max_model_len
        filler = [-1, -1] if ragged else [0, 0]  # a fast tokenizer's offsets of padding: (0, 0)

        def spans() -> list[list[list[int]]]:
            out = []
            for text in texts:
                pairs = [list(p) for p in engine.tokenizer.offsets(text, add_special_tokens=options.add_special_tokens)[:limit]]
                out.append(pairs + [filler] * (width - len(pairs)))
            return out

        offsets = tensor("offset_mapping", "INT64", await asyncio.to_thread(spans))
        prediction.v2.append(offsets)
        prediction.v1_outputs = [offsets]
    return prediction


def output_metadata(task: Task, options: KServeOptions = KServeOptions()) -> list[dict[str, Any]]:
    """v2 model metadata that actually describes the tensors (KServe's lists are always empty)."""
    scored = task in (Task.sequence_classification, Task.token_classification, Task.fill_mask)
    if task is Task.fill_mask and options.fill_mask_top_k > 0:
        return [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}]  # JSON strings of the top-k lists
    if scored and (options.return_probabilities or options.return_raw_logits):
        if options.scores_as_numbers and task is not Task.fill_mask:
            shape = [-1, -1] if task is Task.sequence_classification else [-1, -1, -1]
            return [{"name": OUTPUT, "datatype": "FP64", "shape": shape}]
        return [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}]  # Python-repr strings, as KServe
    spec = {
        Task.text_generation: ("BYTES", [-1]),
        Task.text2text_generation: ("BYTES", [-1]),
        Task.text_embedding: ("FP64", [-1, -1]),
        Task.sequence_classification: ("INT64", [-1]),
        Task.token_classification: ("INT64", [-1, 1, -1]),
        Task.fill_mask: ("BYTES", [-1]),
    }[task]
    return [{"name": OUTPUT, "datatype": spec[0], "shape": spec[1]}]
