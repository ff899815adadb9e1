"""server.engine.gpt2_forward: the engine's own GPT-2 forward gives the logits transformers' forward
gives over the same packed step (bit for bit, bf16's fused GELU aside), and the step engine
uses it for GPT-2 models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from server.engine import gpt2_forward
from server.engine.decoding import GenerationRequest
from server.engine.model import resolve_source
from server.engine.row_cache import ATTENTION_NAME, PackedStep, Segment, register
from server.engine.step import StepEngine
from tests.conftest import MODELS_DIR


def _tiny(dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                dtype=dtype).eval()


def _rows(engine: StepEngine) -> list:
    """Two rows with caches of 9 and 23 positions, decoding."""
    rows = [engine.new_row(GenerationRequest(list(range(100 + n, 100 + 2 * n)), 8))
            for n in (9, 23)]
    while any(row.prompt_left for row in rows):
        engine.step(rows)
    return rows


def _both(model: torch.nn.Module, rows: list, chunk: list[int],
          lean_forward: Callable = gpt2_forward.forward) -> tuple:
    """Logits of one step (the rows' last tokens, then a prompt ``chunk`` of a new row),
    through transformers' forward and through ``lean_forward`` (gpt2_forward's), on copies
    of the same caches. ``model(...)`` attends through the packed attention, registered and
    named in its config as the step engine does for a model it serves that way."""
    register()
    model.config._attn_implementation = ATTENTION_NAME
    results = []
    for lean in (False, True):
        caches = [row.cache for row in rows]
        copies = []
        for cache in caches:
            copy = type(cache)(cache.capacity, cache.kv_dtype, cache.layers)
            copy.copy_prefix(cache, cache.length)
            copies.append(copy)
        fresh = type(caches[0])(len(chunk) + 4, caches[0].kv_dtype, caches[0].layers)
        segments = [Segment(c, i, 1) for i, c in enumerate(copies)]
        segments.append(Segment(fresh, len(copies), len(chunk)))
        step = PackedStep(segments)
        ids = torch.tensor([row.tokens[-1] for row in rows] + chunk)
        positions = torch.tensor([c.length for c in copies] + list(range(len(chunk))))
        due = torch.tensor([0, 1, len(ids) - 1])
        with torch.inference_mode():
            if lean:
                results.append(lean_forward(model, ids, positions, step, due))
            else:
                results.append(model(input_ids=ids[None], position_ids=positions[None],
                                     cache=step, use_cache=True, packed_step=step,
                                     logits_to_keep=due).logits[0])
    return tuple(results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_lean_forward_gives_transformers_logits(tiny_model: Path, dtype: torch.dtype,
                                                    monkeypatch) -> None:
    """Same submodules, same order: equal bit for bit (bf16 with transformers' own GELU)."""
    monkeypatch.setattr(gpt2_forward, "_fused_gelu", lambda act, dtype: False)
    model = _tiny(dtype)
    engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True)
    theirs, ours = _both(model, _rows(engine), list(range(300, 311)))
    assert ours.shape == theirs.shape == (3, model.config.vocab_size)
    assert torch.equal(ours, theirs)


def test_bf16_gelu_runs_fused_and_stays_close(tiny_model: Path) -> None:
    """In bf16 the tanh GELU is one fp32 kernel rounded once: close to transformers' chain
    of bf16 ops, not equal to it."""
    model = _tiny(torch.bfloat16)
    assert gpt2_forward._fused_gelu(model.transformer.h[0].mlp.act, torch.bfloat16)
    engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True)
    theirs, ours = _both(model, _rows(engine), list(range(300, 311)))
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0.05, atol=0.05)


def test_the_engine_uses_it_for_gpt2_only(tiny_model: Path, monkeypatch) -> None:
    calls = []
    lean = gpt2_forward.forward
    monkeypatch.setattr(gpt2_forward, "forward", lambda *a: calls.append(1) or lean(*a))
    model = _tiny(torch.float32)
    engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True)
    _rows(engine)
    assert calls
    model.config.model_type = "not-gpt2"
    assert not gpt2_forward.supports(model)
