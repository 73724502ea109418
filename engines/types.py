"""Plain, frozen values that cross the engine seam. No pydantic, no web, no grpc."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from engines.tasks import Task

FinishReason = Literal["stop", "length"]
StructuredKind = Literal["json_schema", "regex", "lark"]


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the generated text, enforced token by token (constrained decoding)."""

    kind: StructuredKind
    value: str  # a JSON schema (as JSON text), a regular expression, or a Lark grammar


@dataclass(frozen=True)
class GenerationParams:
    """What to generate for one prompt. Defaults are OpenAI's."""

    max_tokens: int  # 0 only makes sense with prompt_logprobs (scoring a prompt)
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0  # EOS, stop ids and stop strings are not honoured before this many tokens
    skip_special_tokens: bool = True
    presence_penalty: float = 0.0  # OpenAI: subtract once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI: subtract per occurrence in the generated text
    repetition_penalty: float = 1.0  # CTRL/HF: divide positive logits of prompt+output tokens
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # report the sampled token's logprob and this many alternatives
    prompt_logprobs: int | None = None  # the same for every prompt token (echo / scoring)
    structured: StructuredOutput | None = None
    adapter: str | None = None  # a LoRA adapter served beside the base model, by name

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the chosen token, the text it contributes, its logprob and the top others.

    `text` is the token's share of the output text (a multi-byte character split over several
    tokens is credited to the token that completes it), so joining `text` gives the output.
    Logprobs come from the model's raw distribution, before sampling settings and penalties.
    """

    token_id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (id, text, logprob), best first


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
    logprobs: tuple[TokenLogprob, ...] = ()  # for the tokens whose text is in `text`
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # first delta only; [0] is None


@dataclass(frozen=True)
class EmbeddingResult:
    embedding: tuple[float, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class ClassificationResult:
    """Raw class logits for one input (`labels[i]` names logit i)."""

    logits: tuple[float, ...]
    labels: tuple[str, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class TokenClassificationResult:
    """Raw class logits for every token of one input, special tokens included."""

    logits: tuple[tuple[float, ...], ...]
    labels: tuple[str, ...]
    token_ids: tuple[int, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class FillMaskResult:
    """For each mask token of one input, in order: its position and the logits over the vocabulary."""

    positions: tuple[int, ...]
    logits: tuple[tuple[float, ...], ...]
    prompt_tokens: int


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    deadline: float | None = None  # time.monotonic() value after which the request is aborted
    # The slots this part's request reserved (`engines.frontend.Admission`); None: the part is a
    # request of its own and is admitted when it starts.
    admission: Any = field(default=None, compare=False, repr=False)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


@dataclass(frozen=True)
class EngineStats:
    """Live counters and gauges of one engine: the frontend's, and its backend's where it has them."""

    running: int = 0  # parts being generated (or inputs being encoded)
    waiting: int = 0  # parts queued for a batch slot
    in_flight: int = 0  # generation slots reserved by admitted requests
    saturated: bool = False  # no room for another request: readiness turns off
    completed_total: int = 0  # parts (inputs, for encoders) that ran to their end
    aborted_total: int = 0  # parts stopped before their end
    # The transformers scheduler's
    batch_size: int | None = None
    steps_total: int | None = None
    preempted_total: int | None = None
    kv_cache_tokens: int | None = None
    kv_cache_capacity_tokens: int | None = None
    cpu_threads: int | None = None
    prefix_cache_hits: int | None = None  # prompts that started from a kept prefix
    prefix_cache_reused_tokens: int | None = None  # prompt tokens not computed again thanks to it
    # The encoder's micro-batches, and vLLM's own count of unfinished requests
    batches_total: int | None = None
    engine_unfinished: int | None = None

    @classmethod
    def of(cls, values: dict[str, int], **frontend: int | bool) -> EngineStats:
        """A backend's gauges (a plain mapping), under the frontend's own counters."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in {**values, **frontend}.items() if k in known})

    def as_dict(self) -> dict[str, int | bool]:
        return {k: v for k, v in asdict(self).items() if v is not None}


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
    labels: tuple[str, ...] = ()  # class names in logit order (classification models: config.id2label)
