"""OpenAI request models (tolerant of unknown fields) and their conversion to GenerationParams.

No I/O here. Validation that needs the model (context length, token ids) happens in the engine;
everything that only needs the request happens here, before any work is queued.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from engines.types import GenerationParams, StructuredOutput
from gateway.openai.errors import invalid, unsupported
from gateway.openai.config import SamplingDefaults

MAX_STOP_STRINGS = 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Tolerant(BaseModel):
    """Unknown fields are kept (and listed in `x-ignored-params`); known ones are typed strictly,
    as OpenAI types them: `"5"` is not an integer, `"yes"` not a boolean, `1.0` not an integer
    (an integer is a number, though)."""

    model_config = ConfigDict(extra="allow", strict=True)

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


# Known parameters this server does not implement: accepted at their neutral value, else a 400.
_NEUTRAL: dict[str, Any] = {
    "allowed_token_ids": lambda v: v is None,
    "bad_words": lambda v: not v,
    "prompt_logprobs": lambda v: v is None,
    # completions only
    "suffix": lambda v: v is None,
    # chat only
    "functions": lambda v: v is None,
    "function_call": lambda v: v in (None, "none"),
    "documents": lambda v: not v,
}


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    add_special_tokens: bool = True
    logprobs: int | None = None


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
    logprobs: bool | None = None
    top_logprobs: int | None = None
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
    reasoning_effort: str | None = None  # passed to the chat template
    add_special_tokens: bool = False  # the template already adds BOS and friends


def check_unsupported(request: BaseModel) -> None:
    for name in type(request).model_fields:
        if name in _NEUTRAL and not _NEUTRAL[name](getattr(request, name)):
            raise unsupported(name)


def ignored_params(request: _Tolerant) -> list[str]:
    names = request.ignored_fields()
    opts = getattr(request, "stream_options", None)
    if opts is not None:
        names += [f"stream_options.{n}" for n in opts.ignored_fields()]
    return sorted(names)


def max_tokens_param(request: _GenerationRequest) -> str:
    """The name the client used for the output limit (for error messages)."""
    return "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"


def _in_range(request: Any, name: str, low: float, high: float, *, open_low: bool = False) -> None:
    value = getattr(request, name)
    if value is None:
        return
    ok = (low < value if open_low else low <= value) and value <= high
    if not ok:
        bounds = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise invalid(f"`{name}` must be in {bounds}, got {value}.", name)


_TOKEN_ID_KEY = re.compile(r"-?[0-9]{1,20}")


def _logit_bias(raw: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    out: list[tuple[int, float]] = []
    for key, value in (raw or {}).items():
        if not _TOKEN_ID_KEY.fullmatch(key):  # ASCII digits only: not " 5 ", not Arabic-Indic digits
            raise invalid(f"`logit_bias` keys must be token ids written in decimal digits, got {key[:32]!r}.", "logit_bias")
        token = int(key)
        if not -100 <= value <= 100:
            raise invalid(f"`logit_bias` values must be in [-100, 100], got {value}.", "logit_bias")
        out.append((token, float(value)))
    return tuple(out)


def to_generation_params(
    request: _GenerationRequest,
    *,
    defaults: SamplingDefaults,
    default_max_tokens: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    structured: StructuredOutput | None = None,
    allow_zero_max_tokens: bool = False,
) -> GenerationParams:
    """Validate value ranges and build the engine's parameters. Raises OpenAIError (400).

    Callers run `check_unsupported` first, before any expensive work."""
    if request.stream_options is not None and not request.stream:
        raise invalid("`stream_options` is only allowed when `stream` is true.", "stream_options")

    limit_name = max_tokens_param(request)
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif max_tokens < (0 if allow_zero_max_tokens else 1):
        raise invalid(f"`{limit_name}` must be at least {0 if allow_zero_max_tokens else 1}, got {max_tokens}.", limit_name)

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
    _in_range(request, "presence_penalty", -2.0, 2.0)
    _in_range(request, "frequency_penalty", -2.0, 2.0)
    _in_range(request, "repetition_penalty", 0.0, 2.0, open_low=True)
    _in_range(request, "min_p", 0.0, 1.0)
    min_tokens = request.min_tokens or 0
    if min_tokens < 0 or min_tokens > max_tokens:
        raise invalid(f"`min_tokens` must be between 0 and the output limit ({max_tokens}), got {min_tokens}.", "min_tokens")

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
        min_p=request.min_p or 0.0,
        seed=request.seed,
        stop=tuple(stop),
        stop_token_ids=tuple(stop_ids),
        include_stop_str_in_output=request.include_stop_str_in_output,
        ignore_eos=request.ignore_eos,
        min_tokens=min_tokens,
        skip_special_tokens=request.skip_special_tokens,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
        logit_bias=_logit_bias(request.logit_bias),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        structured=structured,
    )


def structured_output(request: _GenerationRequest) -> StructuredOutput | None:
    """`response_format` (OpenAI) or vLLM's `structured_outputs` / `guided_*`, as one constraint."""
    fmt = request.response_format
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "text":
            pass
        elif kind == "json_object":
            return StructuredOutput("json_schema", json.dumps({"type": "object"}))
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise invalid("`response_format.json_schema` must be an object with a `schema`.", "response_format")
            return StructuredOutput("json_schema", json.dumps(spec.get("schema") or {"type": "object"}))
        else:
            raise invalid(
                f"`response_format.type` must be text, json_object or json_schema, got {kind!r}.", "response_format"
            )
    so = dict(request.structured_outputs or {})
    for legacy, key in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"), ("guided_grammar", "grammar")):
        if getattr(request, legacy) is not None:
            so[key] = getattr(request, legacy)
    if not so:
        return None
    param = "structured_outputs"
    if len([k for k in ("json", "regex", "choice", "grammar") if so.get(k) is not None]) != 1:
        raise invalid("Give exactly one of json, regex, choice or grammar in `structured_outputs`.", param)
    if so.get("json") is not None:
        schema = so["json"]
        return StructuredOutput("json_schema", schema if isinstance(schema, str) else json.dumps(schema))
    if so.get("regex") is not None:
        return StructuredOutput("regex", str(so["regex"]))
    if so.get("choice") is not None:
        choices = so["choice"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise invalid("`choice` must be a non-empty list of strings.", param)
        return StructuredOutput("regex", "|".join(re.escape(c) for c in choices))
    return StructuredOutput("lark", str(so["grammar"]))


CHAT_ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool", "function")
