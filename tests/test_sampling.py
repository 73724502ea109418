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
