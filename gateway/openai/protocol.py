"""OpenAI request models (tolerant of unknown fields) and their conversion to GenerationParams.

No I/O here. Validation that needs the model (context length, token ids) happens in the engine;
everything that only needs the request happens here, before any work is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engines.types import GenerationParams
from gateway.openai.errors import invalid, unsupported

MAX_STOP_STRINGS = 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")

    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class StreamOptions(_Tolerant):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False
    include_obfuscation: bool | None = None  # accepted, nothing to obfuscate


class _GenerationRequest(_Tolerant):
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Known OpenAI / vLLM parameters that this server does not implement yet. Each is accepted at
    # its neutral value and rejected with a 400 naming it otherwise (never silently ignored).
    n: int | None = None
    logprobs: Any = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    truncate_prompt_tokens: int | None = None
    prompt_logprobs: int | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


# Parameter -> predicate that is true when the value asks for nothing (safe to accept).
_NEUTRAL: dict[str, Any] = {
    "n": lambda v: v in (None, 1),
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v in (None, 0),
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "repetition_penalty": lambda v: v in (None, 1),
    "logit_bias": lambda v: not v,
    "min_p": lambda v: v in (None, 0),
    "min_tokens": lambda v: v in (None, 0),
    "response_format": lambda v: v is None or v.get("type") == "text",
    "truncate_prompt_tokens": lambda v: v is None,
    "prompt_logprobs": lambda v: v is None,
    "allowed_token_ids": lambda v: v is None,
    "bad_words": lambda v: not v,
    "structured_outputs": lambda v: v is None,
    "guided_json": lambda v: v is None,
    "guided_regex": lambda v: v is None,
    "guided_choice": lambda v: v is None,
    "guided_grammar": lambda v: v is None,
    # completions only
    "best_of": lambda v: v in (None, 1),
    "echo": lambda v: v in (None, False),
    "suffix": lambda v: v is None,
    # chat only
    "tools": lambda v: v is None,
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: v is None,
    "function_call": lambda v: v in (None, "none"),
    "add_generation_prompt": lambda v: v in (None, True),
    "continue_final_message": lambda v: v in (None, False),
    "chat_template": lambda v: v is None,
    "chat_template_kwargs": lambda v: not v,
    "documents": lambda v: not v,
}


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    add_special_tokens: bool = True


class TextPart(_Tolerant):
    type: str
    text: str | None = None


class ChatMessage(_Tolerant):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = None  # forwarded to nothing yet: listed as ignored


@dataclass(frozen=True)
class SamplingDefaults:
    """Server-level defaults (operator settings) over OpenAI's defaults."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_output_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_output_tokens": self.max_output_tokens,
        }


def check_unsupported(request: BaseModel) -> None:
    for name in type(request).model_fields:
        if name in _NEUTRAL and not _NEUTRAL[name](getattr(request, name)):
            raise unsupported(name)


def ignored_params(request: _Tolerant) -> list[str]:
    names = request.ignored_fields()
    if getattr(request, "reasoning_effort", None) is not None:
        names.append("reasoning_effort")
    opts = getattr(request, "stream_options", None)
    if opts is not None:
        names += [f"stream_options.{n}" for n in opts.ignored_fields()]
    return sorted(names)


def max_tokens_param(request: _GenerationRequest) -> str:
    """The name the client used for the output limit (for error messages)."""
    return "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"


def to_generation_params(
    request: _GenerationRequest,
    *,
    defaults: SamplingDefaults,
    default_max_tokens: int,
) -> GenerationParams:
    """Validate value ranges and build the engine's parameters. Raises OpenAIError (400).

    Callers run `check_unsupported` first, before any expensive work."""
    if request.stream_options is not None and not request.stream:
        raise invalid("`stream_options` is only allowed when `stream` is true.", "stream_options")

    limit_name = max_tokens_param(request)
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif max_tokens < 1:
        raise invalid(f"`{limit_name}` must be at least 1, got {max_tokens}.", limit_name)

    temperature = defaults.temperature if request.temperature is None else request.temperature
    if not 0.0 <= temperature <= 2.0:
        raise invalid(f"`temperature` must be between 0 and 2, got {temperature}.", "temperature")
    top_p = defaults.top_p if request.top_p is None else request.top_p
    if not 0.0 < top_p <= 1.0:
        raise invalid(f"`top_p` must be in (0, 1], got {top_p}.", "top_p")
    top_k = defaults.top_k if request.top_k is None else request.top_k
    if top_k < -1:
        raise invalid(f"`top_k` must be -1 (off), 0 (off) or positive, got {top_k}.", "top_k")
    if request.seed is not None and not INT64_MIN <= request.seed <= INT64_MAX:
        raise invalid("`seed` must fit in a signed 64-bit integer.", "seed")

    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise invalid(f"At most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stop)}.", "stop")
    if any(s == "" for s in stop):
        raise invalid("Stop strings must not be empty.", "stop")
    stop_ids = list(request.stop_token_ids or [])
    if any(t < 0 for t in stop_ids):
        raise invalid("`stop_token_ids` must be non-negative token ids.", "stop_token_ids")

    return GenerationParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=max(top_k, 0),
        seed=request.seed,
        stop=tuple(stop),
        stop_token_ids=tuple(stop_ids),
        include_stop_str_in_output=request.include_stop_str_in_output,
        ignore_eos=request.ignore_eos,
        skip_special_tokens=request.skip_special_tokens,
    )


CHAT_ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant")
