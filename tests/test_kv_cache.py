"""The preallocated KV cache against the plain tensors it replaces: after any sequence of decode
steps, finished rows, joining rows and trimmed padding, the live keys and values are exactly what
whole-tensor concatenation and selection would have produced (up to the row order `_select`
reports), and the padding a masked column holds is finite."""

import random

import torch

from engines.hf.kv_cache import COLUMN_HEADROOM, SlabLayer, fill_holes, new_cache

HEADS, DIM = 2, 4


def kv(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, HEADS, cols, DIM), torch.randn(rows, HEADS, cols, DIM)


def test_random_surgery_matches_whole_tensor_reference():
    rng = random.Random(0)
    torch.manual_seed(0)
    layer = SlabLayer()
    k, v = kv(3, 5)
    layer.update(k, v)
    ref_k, ref_v = k.clone(), v.clone()
    reallocations = 0
    for _ in range(400):
        buffer = layer._k
        op = rng.random()
        rows = ref_k.shape[0]
        if op < 0.6 or rows == 1:  # a decode step: one new column for every row
            k, v = kv(rows, 1)
            got_k, got_v = layer.update(k, v)
            ref_k, ref_v = torch.cat([ref_k, k], 2), torch.cat([ref_v, v], 2)
            assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)
        elif op < 0.8:  # rows finish (the scheduler's hole-filling order)
            keep = sorted(rng.sample(range(rows), rng.randint(1, rows - 1)))
            holes, movers, order = fill_holes(keep)
            assert sorted(order) == keep and len(holes) == len(movers)  # every kept row, once
            layer.move_rows(holes, movers, len(keep))
            ref_k, ref_v = ref_k[order], ref_v[order]
            drop = rng.randint(0, ref_k.shape[2] - 1) if rng.random() < 0.3 else 0
            layer.drop_left(drop)
            ref_k, ref_v = ref_k[:, :, drop:], ref_v[:, :, drop:]
        else:  # rows join, narrower or wider than the batch
            width = ref_k.shape[2]
            new_width = rng.randint(1, width + 8)
            k, v = kv(rng.randint(1, 4), new_width)
            common = max(width, new_width)
            layer.pad_left(common - width)
            k = torch.nn.functional.pad(k, (0, 0, common - new_width, 0))
            v = torch.nn.functional.pad(v, (0, 0, common - new_width, 0))
            layer.append_rows(k, v)
            ref_k = torch.cat([torch.nn.functional.pad(ref_k, (0, 0, common - width, 0)), k], 0)
            ref_v = torch.cat([torch.nn.functional.pad(ref_v, (0, 0, common - width, 0)), v], 0)
        reallocations += layer._k is not buffer
        assert torch.equal(layer.keys, ref_k) and torch.equal(layer.values, ref_v)
        assert layer.get_seq_length() == ref_k.shape[2]
        assert torch.isfinite(layer._k).all() and torch.isfinite(layer._v).all()
    # Most operations worked in place: the buffer was replaced far less often than it was touched.
    assert reallocations < 400 / 4


def test_a_decode_step_writes_in_place_until_the_headroom_is_used():
    layer = SlabLayer()
    layer.update(*kv(2, 3))
    buffer = layer._k
    for _ in range(COLUMN_HEADROOM):
        layer.update(*kv(2, 1))
        assert layer._k is buffer
    layer.update(*kv(2, 1))
    assert layer._k is not buffer and layer.get_seq_length() == 3 + COLUMN_HEADROOM + 1


def test_a_model_forward_fills_slab_layers(tiny_engine):
    """A real model writes into the cache through transformers' own attention code."""
    model = tiny_engine._loaded.model
    cache = new_cache()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        model(input_ids=torch.tensor([[9]]), past_key_values=cache, use_cache=True)
    assert len(cache.layers) == model.config.num_hidden_layers
    assert all(type(layer) is SlabLayer and layer.get_seq_length() == 5 for layer in cache.layers)
