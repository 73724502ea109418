"""What a backend is: the part of an engine that only schedules work (see `engines.frontend`).

`LoadedBackend` is the common base of backends over a loaded Hugging Face model (the
transformers engines, vLLM, KServe's transformer mode); `GenerationBackend` is what the frontend
asks of a generating one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from engines.loader import LoadedModel
from engines.structured import GrammarCompiler
from engines.tasks import Task
from engines.tokenizer import Tokenizer
from engines.types import Capabilities, GenerationDelta, GenerationParams

Emit = Callable[[GenerationDelta | BaseException], None]


class GenerationBackend(Protocol):
    """What a generating backend offers the frontend: scheduling, and nothing a client sees."""

    capabilities: Capabilities
    tokenizer: Tokenizer
    grammars: GrammarCompiler | None  # None: this backend cannot follow structured outputs

    @property
    def max_in_flight(self) -> int:
        """Parts running or queued at once (batch slots + queue places)."""
        ...

    def unsupported(self, params: GenerationParams) -> str | None:
        """The first parameter this backend cannot honour, by its neutral name, or None."""
        ...

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams, deadline: float | None, emit: Emit) -> None:
        """Queue one part; its deltas (the last with a finish reason) or one error go to `emit`."""
        ...

    def abort(self, request_id: str) -> None:
        """Stop a part within one step; nothing more is emitted for it."""
        ...


class LoadedBackend:
    """What every backend over a loaded model shares: the model, its `Tokenizer` view and the
    `Capabilities` it reports."""

    def __init__(self, loaded: LoadedModel, *, served_name: str, extra: dict[str, Any] | None = None) -> None:
        self._loaded = loaded
        self._tokenizer = Tokenizer(loaded.hf_tokenizer, eos_token_ids=loaded.eos_token_ids)
        id2label = getattr(loaded.config, "id2label", None) or {}
        count = int(getattr(loaded.config, "num_labels", 0) or len(id2label))
        # Class names in logit order (configs saved as JSON key them by string).
        self._labels: tuple[str, ...] = tuple(
            str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)
        )
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
            labels=self._labels if loaded.task in (Task.sequence_classification, Task.token_classification) else (),
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer
