"""Sampling (server.decoding): greedy is the argmax, top_p keeps the head of the
distribution, and a seeded request draws the same tokens whatever else runs."""

import torch

from server.decoding import GenerationRequest, choose_token, make_rng


def _logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_temperature_zero_takes_the_argmax() -> None:
    logits = _logits([0.1, 0.6, 0.3])
    assert choose_token(logits, GenerationRequest([1], 1), rng=None) == 1


def test_top_p_draws_only_from_the_smallest_head_reaching_p() -> None:
    # Token 2 alone holds 70%: with top_p 0.6 it is the only one left to draw.
    request = GenerationRequest([1], 1, temperature=1.0, top_p=0.6)
    rng = make_rng(0)
    draws = {choose_token(_logits([0.1, 0.2, 0.7]), request, rng) for _ in range(200)}
    assert draws == {2}


def test_seeded_draws_repeat_and_other_seeds_differ() -> None:
    logits = _logits([0.25, 0.25, 0.25, 0.25])

    def draws(seed: int) -> list[int]:
        request = GenerationRequest([1], 1, temperature=1.0, seed=seed)
        rng = make_rng(request.seed)
        return [choose_token(logits, request, rng) for _ in range(32)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert set(draws(7)) == {0, 1, 2, 3}  # a real draw, not a constant
