"""Per-request generation records and sampling: what the step engine (server.engine.step) uses.

Why not ``model.generate``: it applies one GenerationConfig (one max_new_tokens, one
temperature, one global RNG) to the whole batch. Here each request keeps its own
``max_new_tokens``, temperature, top_p and seed (its own ``torch.Generator``), so a greedy
request yields the same tokens alone or beside others, and a seeded one the same draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, already tokenized, and how to continue it."""

    input_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    # vLLM's min_tokens: no stop token can be chosen before this many new tokens (their
    # logits are masked, so the text stays text); ignore_eos is min_new_tokens = max_new_tokens.
    min_new_tokens: int = 0
    # Who asked (the API key's id, "" when anonymous): the queue serves tenants fairly
    # (server.engine.fair_queue) and the prefix cache reuses a tenant's own prompts only.
    tenant: str = ""
    # vLLM's cache_salt: narrows prefix-cache reuse to requests of this tenant with the same
    # salt (a tenant's own users that must not share cached prompts).
    cache_salt: str = ""

    @property
    def cache_scope(self) -> tuple[str, str]:
        """Whose kept caches this request may reuse, and its own may be reused by."""
        return self.tenant, self.cache_salt


@dataclass
class Generation:
    """What one request got: its new token ids and why it stopped (length|stop|cancelled)."""

    token_ids: list[int]
    finish_reason: str


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set of tokens whose mass reaches top_p.

    The head is cut at a probability found from the sorted values alone (numpy's sort of
    the values: no argsort, no scatter back), and every token at least that likely is kept
    (ties with the last one kept included). On gpt2's 50,257 tokens a top_p token cost
    5.0-5.3 ms with torch's sort and its indices, 1.9-2.0 ms this way (AMD EPYC Zen 4,
    2 threads, python -m bench sampling); an 8-row step samples 8 times.
    """
    ordered = np.sort(probs.numpy())[::-1]
    before = np.cumsum(ordered, dtype=np.float64) - ordered  # mass ahead of each token
    kept = int(np.searchsorted(before, top_p, side="right"))  # those with before <= top_p
    return torch.where(probs >= float(ordered[max(1, kept) - 1]), probs, 0.0)


def _draw(probs: torch.Tensor, rng: torch.Generator | None) -> int:
    """One token drawn from ``probs`` (unnormalised, non-negative) with ``rng``: inverse CDF,
    one uniform number and a binary search. torch.multinomial over the vocabulary cost
    1.0 ms a draw; a temperature-only token now costs 0.13-0.40 ms in all
    (python -m bench sampling). The first index whose CDF passes u has a positive
    probability, since a zero adds nothing to the CDF."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand((), generator=rng, dtype=torch.float64) * cdf[-1]
    token = int(torch.searchsorted(cdf, u, right=True))
    if token >= probs.numel():  # u rounded up to the total: the last possible token
        token = int(torch.nonzero(probs)[-1])
    return token


def choose_token(logits: torch.Tensor, request: GenerationRequest,
                 rng: torch.Generator | None) -> int:
    """The next token for ``request`` from its logits: argmax at temperature 0, else a draw
    from its temperature/top_p distribution with its own generator."""
    if request.temperature <= 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits / request.temperature, dim=-1)
    if request.top_p < 1.0:
        probs = _top_p_filter(probs, request.top_p)
    return _draw(probs, rng)


def make_rng(seed: int | None) -> torch.Generator:
    """A generator of its own for one request: seeded, or from fresh entropy."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
