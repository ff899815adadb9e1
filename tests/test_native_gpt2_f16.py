"""server.engine.native_gpt2.NativeGPT2F16 on synthetic:tiny served by ``float16+native``: the C
layers give transformers' logits over the same fp16-weight modules within float32 rounding, a
decoding row computes the same bits in a decode-only step (every layer in one C call) as
beside a prompt chunk (layer by layer), greedy tokens are the same alone, batched and joining
over float16 and int8 caches, and the code path says when the layers are not taken."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from server.engine import code_path, gpt2_forward, native_f16, native_gpt2
from server.engine.code_path import Machine, decide
from server.engine.decoding import GenerationRequest
from server.engine.model import resolve_source
from server.engine.native_gpt2 import NativeGPT2F16
from server.engine.quantize import conv1d_to_linear
from server.engine.step import StepEngine, generate_alone
from tests.conftest import MODELS_DIR, alone_together_joined
from tests.test_gpt2_forward import _both, _rows
from tests.test_native_gpt2 import _logits

pytestmark = pytest.mark.skipif(native_f16.layers_library()[0] is None,
                                reason=f"not run here: {native_f16.layers_library()[1]}")

# Against transformers' forward over the same modules: the same GEMMs and attention, the layer
# norms' sums in 8 lanes and GELU's tanh from a polynomial exponential. Measured on the tiny
# preset (AMD EPYC Zen 3, every cache dtype): at most 1.8e-7 apart, logits up to 0.95. The
# bound is 50 times below what a GELU without its cubic term changes (5e-4:
# test_the_tolerance_would_catch_a_plain_tanh_gelu).
ATOL = 1e-5


def _served() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return native_f16.quantize_native_float16(model)


def _engine(model: torch.nn.Module, kv_dtype: str = "float16") -> StepEngine:
    return StepEngine(model, int(model.config.eos_token_id), ignore_eos=True, prefill_chunk=8,
                      kv_dtype=kv_dtype)


def test_the_engine_serves_a_float16_native_gpt2_through_the_c_layers(tiny_model: Path) -> None:
    engine = _engine(_served())
    assert engine.path.layers == code_path.NATIVE_LAYERS
    assert engine.path.layers_why == "every layer native fp16 GPT-2 that gpt2_f16.c takes"
    assert isinstance(engine._native, NativeGPT2F16)


@pytest.mark.parametrize("kv_dtype", ["float16", "int8", "model"])
def test_its_logits_are_transformers_within_float32_rounding(tiny_model: Path,
                                                             kv_dtype: str) -> None:
    """Two decoding rows and a prompt chunk of 11 (layer by layer) against transformers; the
    two rows alone (one call for every layer) against gpt2_forward, which gives transformers'
    logits bit for bit (tests/test_gpt2_forward.py)."""
    model = _served()
    engine = _engine(model, kv_dtype)
    rows = _rows(engine)
    theirs, ours = _both(model, rows, list(range(300, 311)),
                         lambda _model, *args: engine._native.forward(*args))
    assert ours.shape == theirs.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
    lean = _logits(lambda *args: gpt2_forward.forward(model, *args), rows, [])
    torch.testing.assert_close(_logits(engine._native.forward, rows, []), lean, rtol=0,
                               atol=ATOL)


def test_the_tolerance_would_catch_a_plain_tanh_gelu(tiny_model: Path, monkeypatch) -> None:
    """gpt2_forward with GELU's cubic term dropped is off from the C layers by far more than
    ATOL: the comparison above can fail."""
    model = _served()
    engine = _engine(model)
    rows = _rows(engine)
    ours = _logits(engine._native.forward, rows, [])
    for block in model.transformer.h:
        monkeypatch.setattr(block.mlp.act, "forward", lambda x: 0.5 * x * (1 + torch.tanh(
            0.7978845608028654 * x)))
    wrong = _logits(lambda *args: gpt2_forward.forward(model, *args), rows, [])
    assert (ours - wrong).abs().max() > 10 * ATOL


@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_a_decoding_row_computes_the_same_bits_with_or_without_a_prompt_chunk(
        tiny_model: Path, kv_dtype: str) -> None:
    engine = _engine(_served(), kv_dtype)
    rows = _rows(engine)
    calls = []
    lib = engine._native._lib
    decode = lib.gpt2_f16_decode
    lib.gpt2_f16_decode = lambda *args: calls.append(1) or decode(*args)
    try:
        alone = _logits(engine._native.forward, rows, [])
        assert len(calls) == 1, "the decode-only step ran every layer in one call"
        beside = _logits(engine._native.forward, rows, list(range(400, 420)))
        assert len(calls) == 1, "the step with a prompt chunk ran layer by layer"
    finally:
        lib.gpt2_f16_decode = decode
    assert torch.equal(alone[:2], beside[:2])


@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_greedy_tokens_are_the_same_alone_batched_and_joining(tiny_model: Path,
                                                              kv_dtype: str) -> None:
    """Rows of 3, 37 and 12 prompt tokens (chunks of 8): alone, together, and the last joining
    after 9 steps of the others; over a float16 cache, gpt2_forward's tokens too."""
    model = _served()
    engine = _engine(model, kv_dtype)
    requests = [GenerationRequest(list(range(500 + 7 * n, 500 + 8 * n)), 10)
                for n in (3, 37, 12)]
    alone, together, joined = alone_together_joined(engine, requests)
    assert together == alone and joined == alone
    assert len({tuple(t) for t in alone}) == 3
    if kv_dtype == "float16":
        lean = replace(decide(model, kv_dtype), layers=code_path.GPT2_LAYERS)
        torch_engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True,
                                  prefill_chunk=8, path=lean)
        assert [generate_alone(torch_engine, r).token_ids for r in requests] == alone


def test_a_layer_left_in_torch_is_not_taken(tiny_model: Path) -> None:
    model = _served()
    block = model.transformer.h[1]
    block.mlp.c_fc = torch.nn.Linear(block.mlp.c_fc.in_features, block.mlp.c_fc.out_features)
    assert native_gpt2.misfit_f16(model) == ("layer 1: a linear layer is not native fp16 with a "
                                             "bias")
    path = decide(model, "float16")
    assert path.layers == code_path.GPT2_LAYERS
    with pytest.raises(ValueError, match=r"gpt2_f16\.c does not take this model: layer 1"):
        NativeGPT2F16.build(model)


def test_without_the_avx2_attention_gpt2_forward_serves(tiny_model: Path) -> None:
    path = decide(_served(), "float16", machine=Machine(None, ()))
    assert path.layers == code_path.GPT2_LAYERS
    assert path.layers_why == "no fp16 C layers: the AVX2 decode attention does not run here"


def test_the_c_refuses_a_step_outside_its_sizes(tiny_model: Path) -> None:
    """The checked boundary: heads that do not divide the width come back as GLL_BAD_SHAPE,
    raised as NativeError, and the hidden states are not written."""
    native = _engine(_served())._native
    buffers = [torch.zeros(1, 4 * native.width) for _ in range(5)]
    scratch = native_gpt2.F16Step(native.width, native.hidden, native.heads + 1, 1, native.eps,
                                  native.scale, *(b.data_ptr() for b in buffers))
    hidden = torch.randn(1, native.width)
    before = hidden.clone()
    with pytest.raises(native_gpt2.native_ops.NativeError, match="a size outside"):
        native._half("attn_out", 0, scratch, hidden)
    assert torch.equal(hidden, before)
