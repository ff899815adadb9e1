"""server.engine.native_gpt2: a native-packed GPT-2's layers in C give the logits of the torch path
within bf16 rounding, a decoding row computes the same bits in a decode-only step (all layers
in one call) as beside a prompt chunk (layer by layer), and the engine serves through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine import code_path, gpt2_forward, native_gemm
from server.engine.decoding import GenerationRequest
from server.engine.model import resolve_source
from server.engine.native_gpt2 import NativeGPT2
from server.engine.quantize import conv1d_to_linear
from server.engine.row_cache import PackedStep, RowCache, Segment
from server.engine.step import StepEngine
from tests.conftest import MODELS_DIR

pytestmark = pytest.mark.skipif(not native_gemm.available(),
                                reason=f"not run here: {native_gemm.unavailable()}")


def _native_tiny() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return native_gemm.pack_native(model)


def _decoding(engine: StepEngine, lengths: tuple[int, ...]) -> list:
    rows = [engine.new_row(GenerationRequest(list(range(100 + n, 100 + 2 * n)), 8))
            for n in lengths]
    while any(row.prompt_left for row in rows):
        engine.step(rows)
    return rows


def _copy(cache: RowCache) -> RowCache:
    copy = RowCache(cache.capacity, cache.kv_dtype, cache.layers)
    copy.copy_prefix(cache, cache.length)
    return copy


def _logits(run, rows: list, chunk: list[int]) -> torch.Tensor:
    """One step's logits for the rows' last tokens (and, given a ``chunk``, a new row's
    prompt chunk after them), on copies of the rows' caches."""
    caches = [_copy(row.cache) for row in rows]
    segments = [Segment(c, i, 1) for i, c in enumerate(caches)]
    ids = [row.tokens[-1] for row in rows]
    positions = [c.length for c in caches]
    if chunk:
        segments.append(Segment(RowCache(len(chunk) + 2, "model", caches[0].layers),
                                len(rows), len(chunk)))
        ids += chunk
        positions += list(range(len(chunk)))
    due = torch.tensor(list(range(len(rows))) + ([len(ids) - 1] if chunk else []))
    with torch.inference_mode():
        return run(torch.tensor(ids), torch.tensor(positions), PackedStep(segments), due)


def test_the_engine_serves_a_native_gpt2_through_it(tiny_model: Path) -> None:
    model = _native_tiny()
    engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True)
    assert isinstance(engine._native, NativeGPT2)
    plain = StepEngine(model.float(), int(model.config.eos_token_id))
    assert plain._native is None  # float32 layers: the torch path


def test_its_logits_are_the_torch_paths_within_bf16_rounding(tiny_model: Path) -> None:
    model = _native_tiny()
    engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True)
    rows = _decoding(engine, (9, 23, 4))
    chunk = list(range(400, 413))
    ours = _logits(engine._native.forward, rows, chunk)
    torch_path = _logits(lambda *a: gpt2_forward.forward(model, *a), rows, chunk)
    assert ours.shape == torch_path.shape == (4, model.config.vocab_size)
    torch.testing.assert_close(ours.float(), torch_path.float(), rtol=0.05, atol=0.05)


def test_a_decoding_row_computes_the_same_bits_with_or_without_a_prompt_chunk(
        tiny_model: Path) -> None:
    """Decode-only: every layer in one C call; beside a chunk: layer by layer with torch
    attending the chunk. The decoding rows must not see the difference."""
    model = _native_tiny()
    engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True)
    rows = _decoding(engine, (9, 23))
    calls = []
    lib = native_gemm.library()  # native_ops.gpt2_decode calls through this one
    decode = lib.gpt2_decode

    def counted(*args):
        calls.append(1)
        return decode(*args)

    lib.gpt2_decode = counted
    try:
        alone = _logits(engine._native.forward, rows, [])
        assert calls, "the decode-only step ran all layers in one call"
        beside = _logits(engine._native.forward, rows, list(range(400, 420)))
    finally:
        lib.gpt2_decode = decode
    assert torch.equal(alone, beside[:2])


def test_a_model_with_a_torch_layer_left_is_not_taken(tiny_model: Path) -> None:
    model = _native_tiny()
    block = model.transformer.h[1]
    block.mlp.c_fc = torch.nn.Linear(block.mlp.c_fc.in_features,
                                     block.mlp.c_fc.out_features).to(torch.bfloat16)
    path = code_path.decide(model)
    assert path.layers == code_path.GPT2_LAYERS and path.layers_why.startswith("layer 1:")
