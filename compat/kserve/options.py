"""KServe's section of the settings (huggingfaceserver's post-processing flags and ours beyond
them): each default defined here, once. Plain values only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KServeOptions:
    """huggingfaceserver's post-processing flags."""

    return_probabilities: bool = False  # softmax, rounded to 4 decimals
    return_raw_logits: bool = False
    disable_special_tokens: bool = False  # tokenize without [CLS], [SEP], ...
    return_offsets_mapping: bool = False  # token classification: character spans as a second output
    # Beyond KServe, opt-in because they change the wire:
    return_label_names: bool = False  # id2label names as an extra `label_names` tensor
    scores_as_numbers: bool = False  # v2 scores as FP64 tensors instead of Python-repr strings
    fill_mask_top_k: int = 0  # fill-mask scores for the k best tokens instead of the whole vocabulary
    ragged_token_classification: bool = False  # each input's own tokens (v1), -1 padding (v2), not KServe's padded batch

    @property
    def add_special_tokens(self) -> bool:
        return not self.disable_special_tokens
