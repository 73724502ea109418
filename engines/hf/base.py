"""What both transformers engines share: their tokenizer and capabilities, built from a load."""

from __future__ import annotations

from typing import Any

from collections.abc import Sequence

from engines.errors import EngineError, ErrorCode
from engines.loader import LoadedModel
from engines.tasks import Task
from engines.tokenizer import Tokenizer
from engines.types import (
    Capabilities,
    ClassificationResult,
    EmbeddingResult,
    FillMaskResult,
    RequestContext,
    TokenClassificationResult,
)


class LoadedEngine:
    """Holds the loaded model, its `Tokenizer` view and the `Capabilities` it reports."""

    def __init__(self, loaded: LoadedModel, *, served_name: str, extra: dict[str, Any] | None = None) -> None:
        self._loaded = loaded
        self._tokenizer = Tokenizer(loaded.hf_tokenizer, eos_token_ids=loaded.eos_token_ids)
        self._capabilities = Capabilities(
            model_name=served_name,
            root=loaded.root,
            tasks=frozenset({loaded.task}),
            max_model_len=loaded.max_model_len,
            engine="transformers",
            dtype=str(loaded.dtype).removeprefix("torch."),
            vocab_size=max(self._tokenizer.vocab_size, int(getattr(loaded.config, "vocab_size", 0) or 0)),
            has_chat_template=self._tokenizer.chat_template is not None,
            extra=dict(extra or {}),
        )
        id2label = getattr(loaded.config, "id2label", None) or {}
        count = int(getattr(loaded.config, "num_labels", 0) or len(id2label))
        # Class names in logit order (configs saved as JSON key them by string).
        self._labels: tuple[str, ...] = tuple(
            str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def _require(self, task: Task) -> None:
        """A per-task method called on a model loaded for another task: the client's mistake."""
        if task not in self._capabilities.tasks:
            served = ", ".join(t.value for t in self._capabilities.tasks)
            raise EngineError(
                ErrorCode.UNSUPPORTED,
                f"The model `{self._capabilities.model_name}` serves {served}, not {task.value}.",
                param="model",
                reason="unsupported_model",
            )


class GenerativeOnly:
    """The encoder half of the Engine protocol for engines that only generate: each is a 400."""

    _capabilities: Capabilities
    kind = "generates text"

    def _not_an_encoder(self, what: str) -> EngineError:
        return EngineError(
            ErrorCode.UNSUPPORTED,
            f"The model `{self._capabilities.model_name}` {self.kind}; it does not serve {what}.",
            param="model",
            reason="unsupported_model",
        )

    async def embed(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[EmbeddingResult]:
        raise self._not_an_encoder("embeddings")

    async def classify(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[ClassificationResult]:
        raise self._not_an_encoder("sequence classification")

    async def classify_tokens(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[TokenClassificationResult]:
        raise self._not_an_encoder("token classification")

    async def fill_mask(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[FillMaskResult]:
        raise self._not_an_encoder("fill-mask")
