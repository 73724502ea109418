"""Incremental detokenization with UTF-8 and stop-string hold-back, shared by every engine.

Invariant: the concatenation of everything `ChoiceText` releases equals the final text, and at
every moment the released text is a prefix of the final text. That is what makes streamed output
identical to non-streamed output.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from engines.tokenizer import Tokenizer
from engines.types import TokenLogprob

# How many prompt tokens to decode alongside the first generated ones, so that tokenizers which
# drop a leading space at the start of a string (SentencePiece) still produce the right text.
_PROMPT_CONTEXT_TOKENS = 6
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns token ids into text deltas by decoding a small sliding window, never everything."""

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int], *, skip_special_tokens: bool = True
    ) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix = 0  # start of the decode window
        self._read = len(self._ids)  # everything before this has been released as text

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def _pending(self) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and after.startswith(before):
            return after[len(before) :]
        return ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (empty while a UTF-8 sequence is open)."""
        self._ids.append(token_id)
        new = self._pending()
        if not new or new.endswith(_REPLACEMENT):
            return ""
        self._prefix = self._read
        self._read = len(self._ids)
        return new

    def flush(self) -> str:
        """At the end of generation: release whatever is left, complete or not."""
        new = self._pending()
        self._prefix = self._read = len(self._ids)
        return new


class StopStringMatcher:
    """Holds back text that could still become a stop string; truncates at the first match."""

    def __init__(self, stops: Sequence[str], *, include_stop: bool = False, active: bool = True) -> None:
        self._stops = tuple(s for s in stops if s)
        self._include = include_stop
        self._buffer = ""  # text received but not yet released
        self.active = active  # inactive (before min_tokens): text passes through unmatched

    def feed(self, text: str) -> tuple[str, str | None]:
        """Return (text safe to release, the stop string matched or None)."""
        if not self._stops or not self.active:
            return text, None
        self._buffer += text
        # The match that *ends* first is the one generation would have reached first, so the
        # result does not depend on how the text was split into tokens; ties go to the longer.
        best: tuple[int, int] | None = None
        match_at, matched = -1, None
        for stop in self._stops:
            at = self._buffer.find(stop)
            if at != -1 and (best is None or (at + len(stop), at) < best):
                best, match_at, matched = (at + len(stop), at), at, stop
        if matched is not None:
            end = match_at + (len(matched) if self._include else 0)
            out, self._buffer = self._buffer[:end], ""
            return out, matched
        hold = self._longest_stop_prefix_suffix()
        cut = len(self._buffer) - hold
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out, None

    def _longest_stop_prefix_suffix(self) -> int:
        buf = self._buffer
        longest = max(len(s) for s in self._stops) - 1
        for k in range(min(longest, len(buf)), 0, -1):
            tail = buf[-k:]
            if any(stop.startswith(tail) for stop in self._stops):
                return k
        return 0

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out


class ChoiceText:
    """Token ids in, releasable text out, for one choice: detokenizer plus stop-string matcher.

    Logprob items travel with the text: an item is released in the same step as the text of its
    token, so the items of every delta spell exactly that delta's text (until a stop string cuts
    the text; the items of the tokens that formed it are still reported).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        *,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
        stops_active: bool = True,
    ) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip_special_tokens)
        self._stops = StopStringMatcher(stop, include_stop=include_stop_str_in_output, active=stops_active)
        self._items: deque[TokenLogprob] = deque()
        self._released = 0  # characters of text released so far
        self._covered = 0  # characters of text covered by released items

    def activate_stops(self) -> None:
        self._stops.active = True

    def push(
        self, token_id: int, logprob: tuple[float, tuple[tuple[int, str, float], ...]] | None = None
    ) -> tuple[str, str | None, tuple[TokenLogprob, ...]]:
        """Return (text to release, matched stop string, logprob items to release)."""
        piece = self._detok.push(token_id)
        if logprob is not None:
            self._items.append(TokenLogprob(token_id, piece, logprob[0], logprob[1]))
        text, matched = self._stops.feed(piece)
        self._released += len(text)
        return text, matched, self._release(everything=matched is not None)

    def finish(self) -> tuple[str, str | None, tuple[TokenLogprob, ...]]:
        """Generation ended for another reason: release the held-back text (it may still match)."""
        text, matched = self._stops.feed(self._detok.flush())
        if matched is None:
            text += self._stops.flush()
        return text, matched, self._release(everything=True)

    def _release(self, *, everything: bool) -> tuple[TokenLogprob, ...]:
        out: list[TokenLogprob] = []
        while self._items and (everything or self._covered + len(self._items[0].text) <= self._released):
            item = self._items.popleft()
            self._covered += len(item.text)
            out.append(item)
        return tuple(out)


def decode_prompt_pieces(tokenizer: Tokenizer, prompt_ids: Sequence[int], *, skip_special_tokens: bool) -> list[str]:
    """Each prompt token's share of the prompt text (for prompt logprobs)."""
    detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=skip_special_tokens)
    pieces = [detok.push(t) for t in prompt_ids]
    if pieces:
        pieces[-1] += detok.flush()
    return pieces
