"""HFEncoderEngine: the backend of an encoder (BERT-style) model's task, off the event loop: embeddings,
sequence classification, token classification or fill-mask, whichever the model was loaded for.

Embedding pooling follows the model's sentence-transformers configuration (mean, CLS, max or last token,
then L2 normalisation when the model has a Normalize module), mean + normalise otherwise.
Concurrent requests are micro-batched (gathered for a few milliseconds, grouped by length) and
forward passes run on one worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from concurrent.futures import ThreadPoolExecutor

import torch

from engines.errors import EngineError, ErrorCode
from engines.loader import LoadedModel, Pooling
from engines.options import EngineOptions
from engines.pooling import pool
from engines.microbatch import MicroBatcher
from engines.backend import LoadedBackend
from engines.tasks import Task
from engines.types import (
    ClassificationResult,
    EmbeddingResult,
    FillMaskResult,
    RequestContext,
    TokenClassificationResult,
)


class _Padded(list):
    """Token ids followed by padding the model does not attend to: the first `real` are the input."""

    real: int

    @classmethod
    def of(cls, ids: Sequence[int], width: int, pad_id: int) -> list[int]:
        if width <= len(ids):
            return list(ids)
        padded = cls(list(ids) + [pad_id] * (width - len(ids)))
        padded.real = len(ids)
        return padded


class HFEncoderEngine(LoadedBackend):
    def __init__(
        self, loaded: LoadedModel, *, served_name: str, batch_wait_ms: float = EngineOptions.encoder_batch_wait_ms,
        max_batch: int = EngineOptions.encoder_max_batch, max_waiting: int = 4096
    ) -> None:
        pooling = loaded.pooling or Pooling()
        dimensions = int(getattr(loaded.config, "hidden_size", 0) or 0)
        super().__init__(
            loaded,
            served_name=served_name,
            extra={"pooling": pooling.mode, "normalize": pooling.normalize, "dimensions": dimensions},
        )
        self._model = loaded.model
        self._pooling = pooling
        pad = loaded.hf_tokenizer.pad_token_id
        self._pad_id = 0 if pad is None else int(pad)
        self._executor: ThreadPoolExecutor | None = None
        self._embedded_total = 0
        self.batcher: MicroBatcher[list[float]] = MicroBatcher(
            self._forward, lambda: self._executor, wait_s=batch_wait_ms / 1000, max_batch=max_batch, max_waiting=max_waiting
        )

    async def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-encoder")

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    async def check_health(self) -> bool:
        return self._executor is not None

    def stats(self) -> dict[str, int]:
        waiting = self.batcher.waiting
        return {
            "running": 0,
            "waiting": waiting,
            "aborted_total": 0,
            "completed_total": self._embedded_total,
            "batches_total": self.batcher.batches_total,
            "saturated": int(waiting >= self.batcher.max_waiting),
        }

    async def abort(self, request_id: str) -> None:
        return None  # embedding batches are short and not interruptible

    async def _run(self, inputs: Sequence[Sequence[int]]) -> list[Any]:
        outputs = await self.batcher.submit(inputs)
        self._embedded_total += len(inputs)
        return outputs

    async def embed(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[EmbeddingResult]:
        outputs = await self._run(inputs)
        return [EmbeddingResult(tuple(v), len(ids)) for v, ids in zip(outputs, inputs)]

    async def classify(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[ClassificationResult]:
        outputs = await self._run(inputs)
        return [ClassificationResult(tuple(v), self._labels, len(ids)) for v, ids in zip(outputs, inputs)]

    async def classify_tokens(self, inputs: Sequence[Sequence[int]], ctx: RequestContext, pad_to: int | None = None) -> list[TokenClassificationResult]:
        outputs = await self._run([_Padded.of(ids, pad_to or 0, self._pad_id) for ids in inputs])
        return [
            TokenClassificationResult(tuple(tuple(row) for row in v), self._labels, tuple(ids), len(ids))
            for v, ids in zip(outputs, inputs)
        ]

    async def fill_mask(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[FillMaskResult]:
        mask_id = self._loaded.hf_tokenizer.mask_token_id
        for ids in inputs:
            if mask_id is None or mask_id not in ids:
                token = self._loaded.hf_tokenizer.mask_token or "[MASK]"
                raise EngineError(ErrorCode.INVALID_REQUEST, f"Every input needs at least one {token} token.", param="input")
        outputs = await self._run(inputs)
        return [FillMaskResult(tuple(pos), tuple(tuple(r) for r in rows), len(ids)) for (pos, rows), ids in zip(outputs, inputs)]

    def _forward(self, batch: list[list[int]]) -> list[Any]:
        width = max(len(ids) for ids in batch)
        device = self._loaded.device
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : getattr(ids, "real", len(ids))] = 1  # padding asked for by the caller stays masked
        task = self._loaded.task
        with torch.inference_mode():
            out = self._model(input_ids=input_ids, attention_mask=mask)
            if task is Task.text_embedding:
                return pool(out.last_hidden_state, mask, self._pooling).tolist()
            logits = out.logits.float()
            if task is Task.sequence_classification:
                return logits.tolist()
            if task is Task.token_classification:
                return [logits[row, : len(ids)].tolist() for row, ids in enumerate(batch)]
            mask_id = self._loaded.hf_tokenizer.mask_token_id
            results = []
            for row, ids in enumerate(batch):
                positions = [i for i, t in enumerate(ids) if t == mask_id]
                results.append((positions, logits[row, positions].tolist()))
            return results
