"""Batched autoregressive decoding with per-request lengths and sampling settings.

Why not ``model.generate``: it applies one GenerationConfig (one max_new_tokens, one
temperature, one global RNG) to the whole batch. Requests batched together here each keep
their own ``max_new_tokens``, temperature, top_p and seed, a finished or cancelled request
leaves the batch at once (its rows are dropped from the KV cache, so it costs no more
compute), and a greedy request yields the same tokens alone or in a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# on_step(phase, rows, forward_s, step_s): see generate_batch.
OnStep = Callable[[str, int, float, float], None]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, already tokenized, and how to continue it."""

    input_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Generation:
    """What one request got: its new token ids and why it stopped (length|stop|cancelled)."""

    token_ids: list[int]
    finish_reason: str


def _left_pad(requests: Sequence[GenerationRequest], pad_id: int):
    width = max(len(r.input_ids) for r in requests)
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for row, request in enumerate(requests):
        n = len(request.input_ids)
        ids[row, width - n :] = torch.tensor(request.input_ids, dtype=torch.long)
        mask[row, width - n :] = 1
    # Positions count real tokens only, so a left-padded row sees the positions it would alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


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


@torch.inference_mode()
def generate_batch(
    model: torch.nn.Module,
    requests: Sequence[GenerationRequest],
    eos_id: int,
    ignore_eos: bool = False,
    cancelled: Callable[[int], bool] = lambda index: False,
    on_token: Callable[[int, int], None] = lambda index, token: None,
    on_step: OnStep = lambda phase, rows, forward_s, step_s: None,
) -> list[Generation]:
    """Continue every request together; return one Generation per request, in order.

    ``on_token(index, token)`` is called for each kept token as soon as its step is done
    (streaming); ``cancelled(index)`` is polled each step to drop a request early.
    ``on_step(phase, rows, forward_s, step_s)`` reports each step: "prefill" or "decode",
    the rows it computed, the model forward's seconds and the whole step's (forward plus
    sampling, callbacks and KV-cache bookkeeping).
    """
    results = [Generation([], "length") for _ in requests]
    rngs = [make_rng(r.seed) for r in requests]
    ids, mask, positions = _left_pad(requests, pad_id=eos_id)
    live = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]  # request index per row
    cache, phase = None, "prefill"
    while live:
        started = time.perf_counter()
        # logits_to_keep=1: only the last position's logits are needed; on a 64-token
        # prefill of 8 prompts, the full logits would cost 33 GFLOP of lm_head more.
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    cache=cache, use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1, :].float()
        forward_s, rows_run = time.perf_counter() - started, len(live)
        keep, next_ids = [], []
        for row, index in enumerate(live):
            token = choose_token(logits[row], requests[index], rngs[index])
            results[index].token_ids.append(token)
            done = len(results[index].token_ids) >= requests[index].max_new_tokens
            if token == eos_id and not ignore_eos:
                results[index].token_ids.pop()  # the stop token is not part of the text
                results[index].finish_reason, done = "stop", True
            else:
                on_token(index, token)
            if cancelled(index):
                results[index].finish_reason, done = "cancelled", True
            if not done:
                keep.append(row)
                next_ids.append(token)
        if keep:  # else every request is done and the loop ends
            if len(keep) < len(live):
                rows = torch.tensor(keep)
                cache.batch_select_indices(rows)  # drop finished rows from the KV cache
                mask, positions = mask[rows], positions[rows]
            ids = torch.tensor(next_ids, dtype=torch.long).unsqueeze(1)
            mask = torch.cat([mask, torch.ones((len(keep), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
        live = [live[row] for row in keep]
        on_step(phase, rows_run, forward_s, time.perf_counter() - started)
        phase = "decode"
    return results
