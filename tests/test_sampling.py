import torch

from engines.sampling import make_generator, sample_next
from engines.types import GenerationParams

LOGITS = torch.tensor([0.0, 3.0, 2.9, -1.0, 1.0])


def draws(params, n=400, seed=0):
    gen = make_generator(seed, torch.device("cpu"))
    return [sample_next(LOGITS, params, gen) for _ in range(n)]


def test_temperature_zero_is_argmax():
    assert set(draws(GenerationParams(max_tokens=1, temperature=0.0), n=20)) == {1}


def test_top_k_restricts_to_the_k_best():
    assert set(draws(GenerationParams(max_tokens=1, top_k=2))) == {1, 2}


def test_top_p_keeps_the_smallest_nucleus():
    # softmax(LOGITS): token 1 ~0.45, token 2 ~0.41: p=0.5 keeps exactly these two.
    assert set(draws(GenerationParams(max_tokens=1, top_p=0.5))) == {1, 2}
    assert set(draws(GenerationParams(max_tokens=1, top_p=0.01))) == {1}


def test_full_distribution_reaches_every_token():
    assert set(draws(GenerationParams(max_tokens=1, temperature=2.0), n=2000)) == {0, 1, 2, 3, 4}


def test_same_seed_same_draws_and_different_seed_differs():
    p = GenerationParams(max_tokens=1, temperature=1.5)
    assert draws(p, seed=7) == draws(p, seed=7)
    assert draws(p, seed=7) != draws(p, seed=8)


def test_negative_and_large_seeds_are_accepted():
    p = GenerationParams(max_tokens=1)
    assert draws(p, n=5, seed=-1) == draws(p, n=5, seed=-1)
    assert len(draws(p, n=1, seed=2**63 - 1)) == 1


def test_rows_sampled_together_follow_each_rows_own_temperature():
    """`choose_plain_rows`: greedy rows take the argmax; sampled rows draw from the softmax at
    their own temperature (frequencies over 4,000 batched draws within 0.03 of it)."""
    from engines.sampling import choose_plain_rows

    logits = torch.stack([LOGITS, LOGITS.flip(0), LOGITS])
    temperatures = [0.0, 1.0, 2.0]
    gen = make_generator(0, torch.device("cpu"))
    counts = torch.zeros(3, 5)
    for _ in range(4000):
        for row, token in enumerate(choose_plain_rows(logits, temperatures, gen)):
            counts[row, token] += 1
    assert counts[0, 1] == 4000  # greedy
    for row, temperature in ((1, 1.0), (2, 2.0)):
        expected = torch.softmax(logits[row] / temperature, dim=-1)
        assert torch.allclose(counts[row] / 4000, expected, atol=0.03), (row, counts[row] / 4000, expected)


def test_only_rows_that_need_no_processing_are_sampled_together():
    from engines.sampling import SequenceSampler

    def plain(generated=0, **kw):
        params = GenerationParams(max_tokens=4, **kw)
        sampler = SequenceSampler(params, vocab_size=5, prompt_ids=[1, 2], blocked_until_min={4}, device=torch.device("cpu"))
        return sampler.plain(generated)

    assert plain() and plain(temperature=0.0) and plain(temperature=0.0, seed=3) and plain(temperature=0.7)
    assert not plain(seed=3)  # its own RNG: repeats whatever else runs
    assert not plain(top_k=2) and not plain(top_p=0.5) and not plain(min_p=0.1)
    assert not plain(logit_bias=((1, 5.0),)) and not plain(presence_penalty=0.5) and not plain(repetition_penalty=1.2)
    assert not plain(min_tokens=2, generated=1) and plain(min_tokens=2, generated=2)


def test_draw_follows_the_distribution_and_never_picks_an_impossible_token():
    from engines.sampling import draw

    gen = make_generator(1, torch.device("cpu"))
    probs = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.7, 0.0])  # zeros at both ends and inside
    tokens = draw(probs.expand(20000, 6).contiguous(), gen)
    frequencies = torch.bincount(tokens, minlength=6) / 20000
    assert frequencies[0] == frequencies[2] == frequencies[5] == 0
    assert torch.allclose(frequencies, probs, atol=0.01)
    assert draw(probs * 3, gen).dim() == 0  # 1-D in, one token out; the scale does not matter
