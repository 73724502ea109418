"""The shared incremental detokenizer and stop-string matcher, on SmolLM2's real tokenizer."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.detokenizer import ChoiceText, IncrementalDetokenizer, StopStringMatcher
from engines.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(smollm_dir):
    from transformers import AutoTokenizer

    return Tokenizer(AutoTokenizer.from_pretrained(smollm_dir))


def stream_text(tok, ids, prompt=(1,), **kw):
    detok = IncrementalDetokenizer(tok, list(prompt), **kw)
    pieces = [detok.push(t) for t in ids]
    return pieces, detok.flush()


@pytest.mark.parametrize("seed", range(5))
def test_incremental_equals_full_decode_on_random_ids(tok, seed):
    rng = random.Random(seed)
    ids = [rng.randrange(tok.vocab_size) for _ in range(300)]
    pieces, tail = stream_text(tok, ids, skip_special_tokens=True)
    assert "".join(pieces) + tail == tok.decode(ids, skip_special_tokens=True)


def test_multibyte_characters_are_never_split(tok):
    text = "Grüße aus Köln 🌍🚀 世界你好 naïve café — ok"
    ids = tok.encode(text, add_special_tokens=False)
    # Emoji and CJK need several byte-level tokens each: the test would be empty otherwise.
    assert len(ids) > len(text.split())
    pieces, tail = stream_text(tok, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + tail == text
    assert tail == ""


def test_special_tokens_skipped_or_kept(tok):
    ids = tok.encode("Hi", add_special_tokens=False) + [2]  # 2 is <|im_end|>
    pieces, tail = stream_text(tok, ids, skip_special_tokens=True)
    assert "".join(pieces) + tail == "Hi"
    pieces, tail = stream_text(tok, ids, skip_special_tokens=False)
    assert "".join(pieces) + tail == "Hi<|im_end|>"


def feed_in_chunks(stops, text, cuts, include=False):
    matcher = StopStringMatcher(stops, include_stop=include)
    out, matched, prev = "", None, 0
    released = []
    for cut in sorted(set(cuts)) + [len(text)]:
        piece, matched = matcher.feed(text[prev:cut])
        out += piece
        released.append(out)
        prev = cut
        if matched:
            break
    if not matched:
        out += matcher.flush()
    return out, matched, released


def expected(stops, text, include=False):
    """Reference: scan the text one character at a time; stop at the first completed stop string."""
    for end in range(1, len(text) + 1):
        done = [s for s in stops if text[:end].endswith(s)]
        if done:
            stop = max(done, key=len)  # several end here: the longest started first
            at = end - len(stop)
            return text[: at + (len(stop) if include else 0)], stop
    return text, None


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc xyz", max_size=40),
    stops=st.lists(st.text(alphabet="abc x", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=10),
    include=st.booleans(),
)
def test_stop_strings_hold_at_every_split(text, stops, cuts, include):
    cuts = [c for c in cuts if c <= len(text)]
    out, matched, released = feed_in_chunks(stops, text, cuts, include)
    want, want_stop = expected(stops, text, include)
    assert (out, matched) == (want, want_stop)
    # At every moment the released text is a prefix of the final text.
    assert all(want.startswith(r) for r in released)


def test_stop_string_spanning_tokens_and_inside_a_token(tok):
    text = "The answer is forty-two. Done."
    ids = tok.encode(text, add_special_tokens=False)
    for stop, want in [("forty-two", "The answer is "), ("ty-tw", "The answer is for"), (". D", "The answer is forty-two")]:
        ct = ChoiceText(tok, [1], stop=[stop])
        out, matched = "", None
        for t in ids:
            piece, matched, _ = ct.push(t)
            out += piece
            if matched:
                break
        assert (out, matched) == (want, stop)


def test_held_back_prefix_is_released_when_generation_ends(tok):
    ids = tok.encode("Hello wor", add_special_tokens=False)
    ct = ChoiceText(tok, [1], stop=["world"])
    out = "".join(ct.push(t)[0] for t in ids)
    assert out == "Hello "  # "wor" might still become "world"
    tail, matched, _ = ct.finish()
    assert (out + tail, matched) == ("Hello wor", None)
