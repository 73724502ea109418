"""Pooling token states into one embedding per input (shared by the encoder backend and
KServe's transformer mode)."""

from __future__ import annotations

import torch

from engines.loader import Pooling


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """[batch, seq, dim] token states + [batch, seq] attention mask -> [batch, dim]."""
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode == "cls":
        out = hidden[:, 0]
    elif pooling.mode == "max":
        out = hidden.masked_fill(mask_f == 0, float("-inf")).max(dim=1).values
    elif pooling.mode == "last":
        last = mask.sum(dim=1) - 1  # right padding: the last real token
        out = hidden[torch.arange(hidden.shape[0]), last]
    else:
        out = (hidden * mask_f).sum(dim=1) / mask_f.sum(dim=1).clamp(min=1e-9)
    out = out.float()
    if pooling.normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=-1)
    return out
