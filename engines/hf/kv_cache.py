"""The running batch's KV cache, preallocated: a decode step writes one column in place.

transformers' `DynamicLayer` concatenates every step, so each decode step copies the whole cache
of every layer (measured at 32 rows x 128 columns on SmolLM2: 16 % of the step's time, growing
with the context). A `SlabLayer` holds keys and values in a buffer with spare rows and columns;
`keys` and `values` are views of the live region `[:rows, :, lo:hi]`, and the batch surgery the
scheduler does (rows that finish, rows that join, padding columns that go) moves only what it
must: a finished row is replaced by the last row (one row copied, not the whole cache), a joining
row is written into a spare row, trimmed padding only moves `lo`.

Spare room costs memory: up to a quarter more rows (at least 4) and 64 more columns than are
live. The scheduler's KV budget (`--kv_cache_memory_gb`) counts live tokens, so the buffers can
hold that much more than the budget says.

Layout, as before: rows are left-padded, so every row's newest token is at column `hi - 1`.
Columns left of a row's real tokens are masked out by the attention mask, but are kept finite
(zeros): a masked score gets weight 0, and 0 x NaN would still be NaN.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

COLUMN_HEADROOM = 64  # spare columns allocated at a time: one reallocation per 64 decode steps at most


def _row_capacity(rows: int) -> int:
    """Rows to allocate for `rows` live ones: a quarter spare, so joining rows rarely reallocate."""
    return rows + max(4, rows // 4)


class SlabLayer(DynamicLayer):
    """One attention layer's KV in a buffer `[row capacity, heads, column capacity, head_dim]`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.rows = 0
        self.lo = 0
        self.hi = 0
        super().__init__(*args, **kwargs)

    # -- the live region, as transformers sees it ---------------------------------------------

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[: self.rows, :, self.lo : self.hi]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k = value
        if value is not None:
            self.rows, self.lo, self.hi = value.shape[0], 0, value.shape[2]

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[: self.rows, :, self.lo : self.hi]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v = value

    @property
    def width(self) -> int:
        return self.hi - self.lo

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[2]
        if self._k is None:
            self.rows, self.lo, self.hi = key_states.shape[0], 0, 0
            self._reallocate(self.rows, 0, new + COLUMN_HEADROOM, template=key_states)  # a prefill: rows join later by merging
        elif self.hi + new > self._k.shape[2]:  # (also gives back spare rows the batch no longer needs)
            self._reallocate(min(self._k.shape[0], _row_capacity(self.rows)), 0, self.width + new + COLUMN_HEADROOM)
        assert self._k is not None and self._v is not None
        self._k[: self.rows, :, self.hi : self.hi + new] = key_states
        self._v[: self.rows, :, self.hi : self.hi + new] = value_states
        self.hi += new
        return self.keys, self.values  # type: ignore[return-value]

    def get_seq_length(self) -> int:
        return self.width if self._k is not None else 0

    # -- batch surgery ------------------------------------------------------------------------

    def _reallocate(self, row_capacity: int, left: int, column_capacity: int, *, template: torch.Tensor | None = None) -> None:
        """Move the live region into a new zeroed buffer, starting at column `left`."""
        source = self._k if self._k is not None else template
        assert source is not None
        shape = (row_capacity, source.shape[1], column_capacity, source.shape[3])
        k = torch.zeros(shape, dtype=source.dtype, device=source.device)
        v = torch.zeros(shape, dtype=source.dtype, device=source.device)
        width = self.width
        if self._k is not None and self.rows and width:
            k[: self.rows, :, left : left + width] = self.keys
            v[: self.rows, :, left : left + width] = self.values
        self._k, self._v = k, v
        self.lo, self.hi = left, left + width

    def move_rows(self, destinations: list[int], sources: list[int], rows: int) -> None:
        """Copy rows `sources` onto rows `destinations` (over their whole column range), then keep
        the first `rows` rows."""
        assert self._k is not None and self._v is not None
        if destinations:
            dst = torch.tensor(destinations, device=self._k.device)
            src = torch.tensor(sources, device=self._k.device)
            self._k[dst] = self._k[src]
            self._v[dst] = self._v[src]
        self.rows = rows

    def drop_left(self, columns: int) -> None:
        """Forget the first `columns` live columns (padding in every row)."""
        self.lo += columns

    def pad_left(self, columns: int) -> None:
        """Widen the live region by `columns` zero columns on the left."""
        if columns <= 0:
            return
        assert self._k is not None and self._v is not None
        if self.lo >= columns:
            self.lo -= columns
            self._k[: self.rows, :, self.lo : self.lo + columns] = 0
            self._v[: self.rows, :, self.lo : self.lo + columns] = 0
        else:
            self._reallocate(self._k.shape[0], columns, self.width + columns + COLUMN_HEADROOM)
            self.lo = 0

    def append_rows(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add rows whose KV is exactly as wide as the live region."""
        assert self._k is not None and self._v is not None and keys.shape[2] == self.width
        added = keys.shape[0]
        if self.rows + added > self._k.shape[0]:
            spare = self._k.shape[2] - self.hi
            self._reallocate(_row_capacity(self.rows + added), 0, self.width + max(spare, COLUMN_HEADROOM))
        assert self._k is not None and self._v is not None
        self._k[self.rows : self.rows + added, :, self.lo : self.hi] = keys
        self._v[self.rows : self.rows + added, :, self.lo : self.hi] = values
        self.rows += added


def fill_holes(keep: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Keeping rows `keep` (ascending) of a batch: the rows that leave below `len(keep)` (holes)
    are filled by the kept rows above it (movers), so only those rows are copied. Returns
    (holes, movers, order), `order[i]` being the old index of the row that ends up at `i`."""
    n, kept = len(keep), set(keep)
    holes = [i for i in range(n) if i not in kept]
    movers = [i for i in keep if i >= n]  # as many as there are holes
    order = list(range(n))
    for hole, mover in zip(holes, movers):
        order[hole] = mover
    return holes, movers, order


def new_cache() -> Any:
    """An empty cache for one forward pass or a running batch, whose layers are `SlabLayer`s."""
    cache = DynamicCache()
    cache.layers = []
    cache.layer_class_to_replicate = SlabLayer
    return cache
