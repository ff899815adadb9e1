"""Per-request generation records and sampling: what the step engine (server.engine) uses.

Why not ``model.generate``: it applies one GenerationConfig (one max_new_tokens, one
temperature, one global RNG) to the whole batch. Here each request keeps its own
``max_new_tokens``, temperature, top_p and seed (its own ``torch.Generator``), so a greedy
request yields the same tokens alone or beside others, and a seeded one the same draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, already tokenized, and how to continue it."""

    input_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    # vLLM's min_tokens: the stop token cannot be chosen before this many new tokens (its
    # logit is masked, so the text stays text); ignore_eos is min_new_tokens = max_new_tokens.
    min_new_tokens: int = 0


@dataclass
class Generation:
    """What one request got: its new token ids and why it stopped (length|stop|cancelled)."""

    token_ids: list[int]
    finish_reason: str


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set of tokens whose mass reaches top_p."""
    sorted_probs, order = probs.sort(descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
    sorted_probs[outside] = 0.0
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def choose_token(logits: torch.Tensor, request: GenerationRequest,
                 rng: torch.Generator | None) -> int:
    """The next token for ``request`` from its logits: argmax at temperature 0, else a draw
    from its temperature/top_p distribution with its own generator."""
    if request.temperature <= 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits / request.temperature, dim=-1)
    if request.top_p < 1.0:
        probs = _top_p_filter(probs, request.top_p)
    return int(torch.multinomial(probs, 1, generator=rng))


def make_rng(seed: int | None) -> torch.Generator:
    """A generator of its own for one request: seeded, or from fresh entropy."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
