"""Plain, frozen values that cross the engine seam. No pydantic, no web, no grpc."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from engines.tasks import Task

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationParams:
    """What to generate for one prompt. Defaults are OpenAI's."""

    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) means off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationDelta:
    """One step of one choice: the new token ids, the text they released, cumulative counts.

    `text` may be empty while text is held back (an incomplete UTF-8 sequence or a possible
    stop-string prefix). The last delta of a choice carries `finish_reason`.
    """

    token_ids: tuple[int, ...]
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the matched stop string or stop token id
    index: int = 0


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    deadline: float | None = None  # time.monotonic() value after which the request is aborted

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


@dataclass(frozen=True)
class Capabilities:
    model_name: str  # the served name
    root: str  # where the weights came from (hub id, directory or packaged model)
    tasks: frozenset[Task]
    max_model_len: int
    engine: str  # "transformers" or "vllm"
    dtype: str
    vocab_size: int
    has_chat_template: bool
    extra: dict[str, object] = field(default_factory=dict)
