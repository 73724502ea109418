"""Checks on a generation request that do not depend on the engine serving it."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from engines.errors import EngineError, ErrorCode
from engines.types import GenerationParams


def context_length_message(max_model_len: int, prompt_tokens: int, max_tokens: int) -> str:
    """vLLM's wording, so clients that parse it keep working."""
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{max_tokens} output tokens and your prompt contains at least {prompt_tokens} input tokens, "
        f"for a total of at least {prompt_tokens + max_tokens} tokens. Please reduce the length of "
        "the input prompt or the number of requested output tokens."
    )


def validate_generation(
    prompt_ids: Sequence[int], params: GenerationParams, *, vocab_size: int, max_model_len: int, adapters: Collection[str] = (),
    output_in_context: bool = True,
) -> None:
    """Checks every engine makes before it takes a generation request: each failure is a 4xx."""
    if params.adapter is not None and params.adapter not in adapters:
        raise EngineError(ErrorCode.NOT_FOUND, f"The adapter `{params.adapter}` does not exist.", param="model")
    if not prompt_ids:
        raise EngineError(ErrorCode.INVALID_REQUEST, "The prompt is empty.", param="prompt")
    vocab = vocab_size
    bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise EngineError(
            ErrorCode.INVALID_REQUEST,
            f"Token id {bad} is out of vocabulary (the vocabulary has {vocab} tokens).",
            param="prompt",
            reason="invalid_token_id",
        )
    if params.max_tokens < 0 or (params.max_tokens == 0 and params.prompt_logprobs is None):
        raise EngineError(ErrorCode.INVALID_REQUEST, "max_tokens must be at least 1.", param="max_tokens")
    bad_bias = next((t for t, _ in params.logit_bias if not 0 <= t < vocab), None)
    if bad_bias is not None:
        raise EngineError(
            ErrorCode.INVALID_REQUEST,
            f"logit_bias names token id {bad_bias}, which is outside the vocabulary (0..{vocab - 1}).",
            param="logit_bias",
        )
    bad_stop = next((t for t in params.stop_token_ids if not 0 <= t < vocab), None)
    if bad_stop is not None:
        raise EngineError(
            ErrorCode.INVALID_REQUEST, f"stop_token_ids names token id {bad_stop}, which is outside the vocabulary.",
            param="stop_token_ids",
        )
    limit = max_model_len
    if not output_in_context:  # an encoder-decoder: the limit is the encoder's input
        if len(prompt_ids) > limit:
            raise EngineError(
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                f"This model's maximum input length is {limit} tokens; your input has {len(prompt_ids)}.", param="prompt",
            )
        return
    if len(prompt_ids) + params.max_tokens > limit:
        raise EngineError(
            ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            context_length_message(limit, len(prompt_ids), params.max_tokens),
            param="prompt" if len(prompt_ids) >= limit else "max_tokens",
        )


def validate_encoder_inputs(inputs: Sequence[Sequence[int]], *, vocab_size: int, max_model_len: int) -> None:
    """Checks on the token-id inputs of embed / classify / fill-mask calls: each failure is a 400."""
    if not inputs:
        raise EngineError(ErrorCode.INVALID_REQUEST, "There are no inputs.", param="input")
    for ids in inputs:
        if not ids:
            raise EngineError(ErrorCode.INVALID_REQUEST, "An input is empty.", param="input")
        if len(ids) > max_model_len:
            raise EngineError(
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{len(ids)} tokens in the input. Please reduce the length of the input.",
                param="input",
            )
        if any(not 0 <= t < vocab_size for t in ids):
            raise EngineError(ErrorCode.INVALID_REQUEST, "An input token id is out of vocabulary.", param="input", reason="invalid_token_id")
