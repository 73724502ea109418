"""The engine seam: one small protocol, typed per task, plain Python values only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from engines.tokenizer import Tokenizer
from engines.types import (
    Capabilities,
    ClassificationResult,
    EmbeddingResult,
    EngineStats,
    FillMaskResult,
    GenerationDelta,
    GenerationParams,
    RequestContext,
    TokenClassificationResult,
)


@runtime_checkable
class Engine(Protocol):
    """What every engine offers to the faces above it.

    Engines raise only `engines.errors.EngineError`. Prompts are token ids (faces tokenize with
    `engine.tokenizer`, off the event loop) or plain strings (the engine tokenizes them with
    special tokens added).
    """

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def check_health(self) -> bool: ...

    def generate(
        self, prompt: str | Sequence[int], params: GenerationParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationDelta]:
        """Stream the deltas of one choice. Closing the iterator early aborts the request."""
        ...

    async def embed(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[EmbeddingResult]:
        """One pooled embedding per input (token ids), in order.

        Every per-task method raises EngineError(UNSUPPORTED, reason="unsupported_model") on a
        model loaded for another task."""
        ...

    async def classify(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[ClassificationResult]:
        """Class logits per input (sequence classification models)."""
        ...

    async def classify_tokens(
        self, inputs: Sequence[Sequence[int]], ctx: RequestContext, pad_to: int | None = None
    ) -> list[TokenClassificationResult]:
        """Class logits per token per input (token classification models); with `pad_to`, also
        for the padding positions up to that width (the padding masked)."""
        ...

    async def fill_mask(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[FillMaskResult]:
        """Vocabulary logits at each mask position per input (masked-LM models)."""
        ...

    async def abort(self, request_id: str) -> None:
        """Cancel a running or waiting generation; it stops within one decoding step."""
        ...

    def stats(self) -> EngineStats:
        """Live counters and gauges (running, waiting, in flight, saturated, ...)."""
        ...
