"""Embeddings: input in four forms -> token ids -> pooled vectors -> floats or base64."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from typing import Any, Literal

from engines import RequestContext
from engines.tasks import Task
from gateway.openai.errors import invalid
from gateway.openai.protocol import _Tolerant
from gateway.openai.services.common import ServiceBase, new_id, text_or_token_lists

MAX_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingRequest(_Tolerant):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = None
    add_special_tokens: bool = True


def _reshape(vector: tuple[float, ...], dimensions: int | None) -> list[float]:
    """Matryoshka-style: keep the first `dimensions` values and re-normalise them."""
    if dimensions is None:
        return list(vector)
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head)) or 1.0
    return [v / norm for v in head]


def _encode(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "float":
        return vector
    # The OpenAI SDK asks for base64 by default and decodes it as little-endian float32.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class EmbeddingService(ServiceBase):
    async def create(self, req: EmbeddingRequest) -> dict[str, Any]:
        model = self.resolve_model(req.model)
        self.require_task(Task.text_embedding)
        items = text_or_token_lists(req.input, "input", limit=MAX_INPUTS)
        full = int(self.engine.capabilities.extra.get("dimensions") or 0)
        if req.dimensions is not None and not 1 <= req.dimensions <= (full or req.dimensions):
            raise invalid(f"`dimensions` must be between 1 and {full}, got {req.dimensions}.", "dimensions")
        tok = self.engine.tokenizer

        def encode() -> list[list[int]]:
            return [tok.encode(i, add_special_tokens=req.add_special_tokens) if isinstance(i, str) else list(i) for i in items]

        ids = [self.truncate(x, req.truncate_prompt_tokens) for x in await asyncio.to_thread(encode)]
        results = await self.engine.embed(ids, RequestContext(new_id("embd")))
        tokens = sum(r.prompt_tokens for r in results)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(_reshape(r.embedding, req.dimensions), req.encoding_format)}
                for i, r in enumerate(results)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
