"""Batched decoding: per-request lengths, batch-invariant greedy output, seeded sampling."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from server.decoding import GenerationRequest, generate_batch

EOS = 50256


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def _prompts(n: int) -> list[list[int]]:
    return [list(range(100 + 7 * i, 100 + 7 * i + 3 + 2 * i)) for i in range(n)]


def test_each_request_gets_exactly_its_own_length(model) -> None:
    requests = [GenerationRequest(ids, max_new_tokens=3 + 2 * i)
                for i, ids in enumerate(_prompts(8))]
    results = generate_batch(model, requests, EOS, ignore_eos=True)
    assert [len(r.token_ids) for r in results] == [3 + 2 * i for i in range(8)]
    assert all(r.finish_reason == "length" for r in results)


def test_greedy_output_is_the_same_alone_and_in_a_batch(model) -> None:
    requests = [GenerationRequest(ids, max_new_tokens=10) for ids in _prompts(6)]
    alone = [generate_batch(model, [r], EOS, ignore_eos=True)[0].token_ids for r in requests]
    batched = [g.token_ids for g in generate_batch(model, requests, EOS, ignore_eos=True)]
    assert batched == alone


def test_seeded_sampling_is_reproducible_in_any_batch(model) -> None:
    sampled = GenerationRequest([5, 6, 7], max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    others = [GenerationRequest(ids, max_new_tokens=4) for ids in _prompts(3)]
    first = generate_batch(model, [sampled], EOS)[0].token_ids
    again = generate_batch(model, [*others, sampled], EOS)[-1].token_ids
    other_seed = GenerationRequest([5, 6, 7], max_new_tokens=12, temperature=1.0, seed=4)
    assert first == again
    assert generate_batch(model, [other_seed], EOS)[0].token_ids != first


def test_cancelled_request_leaves_the_batch(model) -> None:
    requests = [GenerationRequest(ids, max_new_tokens=20) for ids in _prompts(2)]
    results = generate_batch(model, requests, EOS, ignore_eos=True, cancelled=lambda i: i == 0)
    assert results[0].finish_reason == "cancelled" and len(results[0].token_ids) == 1
    assert len(results[1].token_ids) == 20


class _PrefersEos(torch.nn.Module):
    """The real model with its EOS logit raised, so EOS is certainly the next token."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., EOS] += 1e4
        return out


def test_eos_stops_a_request_unless_ignored(model) -> None:
    eager = _PrefersEos(model)
    stopped = generate_batch(eager, [GenerationRequest([1, 2], 5)], EOS)[0]
    kept = generate_batch(eager, [GenerationRequest([1, 2], 5)], EOS, ignore_eos=True)[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == []
    assert kept.finish_reason == "length" and kept.token_ids == [EOS] * 5


def test_on_token_sees_every_kept_token_in_order(model) -> None:
    requests = [GenerationRequest(ids, max_new_tokens=2 + i) for i, ids in enumerate(_prompts(3))]
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    results = generate_batch(model, requests, EOS, ignore_eos=True,
                             on_token=lambda i, token: seen[i].append(token))
    assert [seen[i] for i in range(3)] == [r.token_ids for r in results]


def test_on_step_reports_one_prefill_then_each_decode_step_with_its_rows(model) -> None:
    # Lengths 2, 3, 5: the prefill makes every first token; then rows shrink as requests
    # finish and leave the batch (after their 2nd, 3rd and 5th tokens).
    requests = [GenerationRequest(ids, max_new_tokens=n)
                for ids, n in zip(_prompts(3), (2, 3, 5), strict=True)]
    steps: list[tuple[str, int, float, float]] = []
    generate_batch(model, requests, EOS, ignore_eos=True,
                   on_step=lambda *step: steps.append(step))
    assert [(phase, rows) for phase, rows, _, _ in steps] == [
        ("prefill", 3), ("decode", 3), ("decode", 2), ("decode", 1), ("decode", 1)]
    assert all(0 < forward_s <= step_s for _, _, forward_s, step_s in steps)
