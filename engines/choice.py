"""What happens to one choice after its next token is chosen, the same for every engine.

An engine picks token ids (the transformers scheduler samples them itself, vLLM hands them over);
`ChoiceState` turns each into a `GenerationDelta`: counts, EOS and stop-token rules, `min_tokens`,
stop strings and text through the shared `ChoiceText`, the length budget, and logprob items that
travel with their text. Both engines therefore agree on text, finish reasons and usage exactly.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from engines.detokenizer import ChoiceText
from engines.tokenizer import Tokenizer
from engines.types import FinishReason, GenerationDelta, GenerationParams, TokenLogprob

# (logprob of the chosen token, its top alternatives as (id, text, logprob), best first)
LogprobEntry = tuple[float, tuple[tuple[int, str, float], ...]]


def output_budget(params: GenerationParams, prompt_tokens: int, max_model_len: int) -> int:
    """Never run past the context window, whatever max_tokens says."""
    return min(params.max_tokens, max_model_len - prompt_tokens)


class ChoiceState:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        params: GenerationParams,
        *,
        eos_token_ids: Collection[int],
        budget: int,
        text_context: Sequence[int] | None = None,
    ) -> None:
        """`text_context`: the ids the output's text follows when decoding (default the prompt;
        an encoder-decoder's output follows nothing)."""
        self.params = params
        self.budget = budget
        self.prompt_tokens = len(prompt_ids)
        self.count = 0  # tokens generated so far
        self.finished = False
        self.prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # sent with the first token
        self._eos = frozenset(() if params.ignore_eos else eos_token_ids)
        self._text = ChoiceText(
            tokenizer,
            prompt_ids if text_context is None else text_context,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
            skip_special_tokens=params.skip_special_tokens,
            stops_active=params.min_tokens == 0,
        )

    def step(self, token: int, logprob: LogprobEntry | None = None, *, grammar_done: bool = False) -> GenerationDelta:
        """Record one generated token; the delta carries `finish_reason` when the choice ends."""
        params = self.params
        self.count += 1
        if self.count == params.min_tokens:
            self._text.activate_stops()

        finish: FinishReason | None = None
        stop_reason: str | int | None = None
        if token in params.stop_token_ids:
            finish, stop_reason = "stop", token
        elif token in self._eos:
            finish = "stop"
        if finish is None:
            piece, matched, items = self._text.push(token, logprob)
            if matched is not None:
                finish, stop_reason = "stop", matched
            elif grammar_done:
                finish = "stop"  # the grammar is complete
            elif self.count >= self.budget:
                finish = "length"
        else:
            piece, items = "", ()
            if logprob is not None:  # EOS / stop id: no text, but its logprob is reported
                items = (TokenLogprob(token, "", logprob[0], logprob[1]),)
        if finish is not None and not isinstance(stop_reason, str):
            tail, matched, more = self._text.finish()
            piece, items = piece + tail, items + more
            if matched is not None:
                finish, stop_reason = "stop", matched
        self.finished = finish is not None
        return GenerationDelta(
            token_ids=(token,),
            text=piece,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.count,
            finish_reason=finish,
            stop_reason=stop_reason,
            logprobs=items,
            prompt_logprobs=self.prompt_logprobs if self.count == 1 else None,
        )

    def end(self, finish: FinishReason) -> GenerationDelta:
        """The engine ended the choice on its own (its length limit): release the held-back text."""
        piece, matched, items = self._text.finish()
        self.finished = True
        return GenerationDelta(
            token_ids=(),
            text=piece,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.count,
            finish_reason="stop" if matched is not None else finish,
            stop_reason=matched,
            logprobs=items,
            prompt_logprobs=self.prompt_logprobs if self.count == 0 else None,
        )


def merge_deltas(deltas: list[GenerationDelta]) -> GenerationDelta:
    """Several tokens that arrived together as one delta (vLLM and OpenVINO hand over more than one
    token at a time)."""
    if len(deltas) == 1:
        return deltas[0]
    last = deltas[-1]
    return GenerationDelta(
        token_ids=tuple(t for d in deltas for t in d.token_ids),
        text="".join(d.text for d in deltas),
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        finish_reason=last.finish_reason,
        stop_reason=last.stop_reason,
        index=last.index,
        logprobs=tuple(item for d in deltas for item in d.logprobs),
        prompt_logprobs=deltas[0].prompt_logprobs,
    )
