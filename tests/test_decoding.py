"""Sampling (server.engine.decoding): greedy is the argmax, top_p keeps the head of the
distribution, and a seeded request draws the same tokens whatever else runs."""

import torch

from server.engine.decoding import GenerationRequest, choose_token, make_rng


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


def _reference_head(probs: torch.Tensor, top_p: float) -> set[int]:
    """The nucleus by definition: sort, keep each token whose mass ahead is <= top_p."""
    ordered, order = probs.sort(descending=True)
    ahead = ordered.double().cumsum(-1) - ordered.double()
    return set(order[ahead <= top_p].tolist())


def test_top_p_keeps_exactly_the_head_the_sorted_definition_keeps() -> None:
    from server.engine.decoding import _top_p_filter

    generator = torch.Generator().manual_seed(0)
    for scale, top_p in [(0.5, 0.95), (3.0, 0.9), (8.0, 0.5), (1.0, 0.05), (4.0, 0.999)]:
        probs = torch.softmax(torch.randn(5000, generator=generator) * scale, -1)
        kept = _top_p_filter(probs, top_p)
        assert set(kept.nonzero().flatten().tolist()) == _reference_head(probs, top_p)
        assert torch.equal(kept[kept > 0], probs[kept > 0])  # kept tokens keep their odds


def test_draws_follow_the_distribution_and_never_a_zero_token() -> None:
    probs = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.3, 0.4, 0.0])
    request = GenerationRequest([1], 1, temperature=1.0, seed=3)
    rng = make_rng(request.seed)
    draws = [choose_token(probs.log(), request, rng) for _ in range(20_000)]
    counts = torch.bincount(torch.tensor(draws), minlength=7).double() / len(draws)
    assert counts[[0, 2, 6]].sum() == 0
    assert torch.allclose(counts, probs.double(), atol=0.015)
