"""Prefix reuse for the transformers engine: the KV of finished sequences, kept for the next
request that starts the same way.

A chat client sends the whole conversation every turn, so turn k+1's prompt begins with turn k's
prompt and reply. When a sequence finishes, its KV (prompt + output) is kept here, least recently
used first out, within a token budget. A new prompt takes the longest common token prefix with
any kept entry (attention is causal: the KV of a position depends only on the tokens before it,
so any common prefix is exact, even where the re-rendered conversation tokenizes the reply
differently further on) and only the rest of it is prefilled.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Prefixes shorter than this are not worth a separate prefill: such prompts join the batched one.
MIN_REUSE = 32


@dataclass
class Entry:
    tokens: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values): [1, heads, len, head_dim]


class PrefixCache:
    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = capacity_tokens
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._next = 0
        self.tokens = 0
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def store(self, tokens: Sequence[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep `tokens` with their KV (already copied out of the batch). An entry that is a
        prefix of the new one is dropped: the new one answers everything it could."""
        if len(tokens) < MIN_REUSE or len(tokens) > self.capacity:
            return
        tokens = list(tokens)
        for key, entry in list(self._entries.items()):
            if len(entry.tokens) <= len(tokens) and tokens[: len(entry.tokens)] == entry.tokens:
                self._drop(key)
        self._entries[self._next] = Entry(tokens, layers)
        self._next += 1
        self.tokens += len(tokens)
        while self.tokens > self.capacity:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.tokens -= len(entry.tokens)

    def lookup(self, prompt: Sequence[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """(length, per-layer KV views of that length) of the longest kept prefix of `prompt`,
        leaving at least one prompt token to compute; None when nothing long enough is kept."""
        best_key, best = None, 0
        prompt = list(prompt)
        for key, entry in self._entries.items():
            common = len(os.path.commonprefix([entry.tokens, prompt]))
            if common > best:
                best_key, best = key, common
        best = min(best, len(prompt) - 1)
        if best_key is None or best < MIN_REUSE:
            return None
        self._entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        layers = self._entries[best_key].layers
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]
