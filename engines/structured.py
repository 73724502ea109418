"""Constrained decoding with llguidance: JSON schema, regex and Lark grammars on CPU logits.

llguidance (Microsoft; also used by vLLM and SGLang) is a Rust library with no Python
dependencies. It computes the set of allowed next tokens as a bitmask in well under a
millisecond per step, supports most of JSON Schema, and refuses the features it does not
support when the grammar is compiled, so those become a 400 before any generation.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from engines.errors import EngineError, ErrorCode
from engines.types import StructuredOutput


class GrammarCompiler:
    """Builds matchers for one tokenizer. The llguidance tokenizer is made once, lazily."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        self._hf = hf_tokenizer
        self._vocab = vocab_size
        self._lock = threading.Lock()
        self._ll_tokenizer: Any = None

    def _tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self._vocab)
            return self._ll_tokenizer

    @staticmethod
    def grammar(spec: StructuredOutput) -> str:
        from llguidance import LLMatcher

        try:
            if spec.kind == "json_schema":
                schema = json.loads(spec.value)
                return LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
            if spec.kind == "regex":
                return LLMatcher.grammar_from_regex(spec.value)
            return LLMatcher.grammar_from_lark(spec.value)
        except (ValueError, TypeError) as exc:
            raise _invalid(str(exc)) from None

    def validate(self, spec: StructuredOutput) -> None:
        """Compile the constraint against the tokenizer; raise a client error if it cannot be.

        Some grammars compile but cannot be followed: a required recursive `$ref`, nested counted
        repeats, rules that double at every level. llguidance finds out when it computes the
        tokens the grammar forces, which is where such grammars start. So the forced tokens are
        computed and consumed here once, and a grammar that fails there is a 400 now instead of
        an error in the middle of a generation."""
        from llguidance import LLMatcher

        grammar = self.grammar(spec)
        error = LLMatcher.validate_grammar(grammar, self._tokenizer())
        if error:
            raise _invalid(error)
        matcher = LLMatcher(self._tokenizer(), grammar)
        forced = matcher.compute_ff_tokens() if not matcher.is_error() else []
        if matcher.is_error() or (forced and not matcher.consume_tokens(forced)) or matcher.is_error():
            raise _invalid(_first_line(matcher.get_error()))

    def constraint(self, spec: StructuredOutput) -> Constraint:
        from llguidance import LLMatcher

        matcher = LLMatcher(self._tokenizer(), self.grammar(spec))
        if matcher.is_error():
            raise _invalid(matcher.get_error())
        return Constraint(matcher, self._vocab)


class Constraint:
    """One sequence's matcher: mask the logits, then advance with the chosen token."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        import llguidance.torch as llt

        self._llt = llt
        self._matcher = matcher
        self._bitmask = llt.allocate_token_bitmask(1, vocab_size)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Set every disallowed token's logit to -inf (in a copy of 1-D float logits)."""
        x = logits.float().clone().unsqueeze(0)
        self._llt.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        if self._matcher.is_error():
            raise ConstraintFailed(_first_line(self._matcher.get_error()))
        self._llt.apply_token_bitmask_inplace(x, self._bitmask)
        if not torch.isfinite(x).any():
            raise ConstraintFailed("the grammar allows no next token")
        return x[0]

    def advance(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise ConstraintFailed(_first_line(self._matcher.get_error()) or f"token {token} was rejected")

    @property
    def finished(self) -> bool:
        """The grammar is complete: nothing more may be generated."""
        return bool(self._matcher.is_stopped())


class ConstraintFailed(EngineError):
    """The grammar engine could not go on with this choice (one of its limits, mid-generation):
    the request's constraint is at fault, so its request fails with a 400-class error, alone."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            ErrorCode.INVALID_REQUEST,
            f"The requested output format could not be followed to the end: {detail}",
            param="response_format",
            reason="invalid_value",
        )


def _first_line(error: str | None) -> str:
    return (error or "").strip().split("\n", 1)[0]


def _invalid(detail: str) -> EngineError:
    return EngineError(
        ErrorCode.INVALID_REQUEST,
        f"The requested output format cannot be enforced: {detail}",
        param="response_format",
        reason="invalid_value",
    )
