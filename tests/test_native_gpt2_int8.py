"""server.engine.native_gpt2.NativeGPT2Int8 on synthetic:tiny with ``DTYPE=int8`` (the native
int8 GEMMs): the C layers give transformers' logits over the same int8 modules within float32
rounding, a decoding row computes the same bits in a decode-only step (every layer in one C
call) as beside a prompt chunk (layer by layer), greedy tokens are the same alone, batched and
joining, and equal gpt2_forward's; the code path says when the layers are not taken, and the C
boundary refuses a block it cannot run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from server.engine import code_path, gpt2_forward, native_f16, native_gpt2, native_int8
from server.engine.code_path import Machine, decide
from server.engine.decoding import GenerationRequest
from server.engine.model import resolve_source
from server.engine.native_gpt2 import NativeGPT2Int8
from server.engine.native_ops import NativeError
from server.engine.quantize import conv1d_to_linear
from server.engine.step import StepEngine, generate_alone
from tests.conftest import MODELS_DIR, alone_together_joined
from tests.test_gpt2_forward import _both, _rows
from tests.test_native_gpt2 import _logits

pytestmark = pytest.mark.skipif(
    native_f16.layers_library()[0] is None or not native_int8.available(),
    reason=f"not run here: {native_f16.layers_library()[1] or native_int8.int8_unavailable()}")

# Against transformers' forward over the same int8 modules: the same GEMMs and attention; the
# layer norms' sums in 8 lanes and GELU's tanh from a polynomial exponential, as the fp16 C
# layers (tests/test_native_gpt2_f16.py, whose bound this is; measured here on the Zen 4: see
# test_its_logits_are_transformers_within_float32_rounding's message on failure).
ATOL = 1e-5


def _served() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return native_int8.quantize_native_int8(model)


def _engine(model: torch.nn.Module, kv_dtype: str = "float16") -> StepEngine:
    return StepEngine(model, int(model.config.eos_token_id), ignore_eos=True, prefill_chunk=8,
                      kv_dtype=kv_dtype)


def test_the_engine_serves_an_int8_gpt2_through_the_c_layers(tiny_model: Path) -> None:
    engine = _engine(_served())
    assert (engine.path.linear, engine.path.layers) == ("native_int8", code_path.NATIVE_LAYERS)
    assert "gpt2_f16.c's int8 entry points" in engine.path.layers_why
    assert isinstance(engine._native, NativeGPT2Int8)


@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_its_logits_are_transformers_within_float32_rounding(tiny_model: Path,
                                                             kv_dtype: str) -> None:
    """Two decoding rows and a prompt chunk of 11 (layer by layer) against transformers; the
    two rows alone (one call for every layer) against gpt2_forward."""
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


def test_the_tolerance_would_catch_a_shifted_layer_norm_bias(tiny_model: Path) -> None:
    """The C layers with one layer norm's bias moved by 0.01 (as a wrong operand at the
    boundary would) are off from gpt2_forward's logits of before by far more than ATOL: the
    comparison above can fail."""
    model = _served()
    engine = _engine(model)
    rows = _rows(engine)
    lean = _logits(lambda *args: gpt2_forward.forward(model, *args), rows, [])
    with torch.no_grad():
        model.transformer.h[0].ln_2.bias.add_(0.01)  # the C block points at this tensor
    wrong = _logits(engine._native.forward, rows, [])
    assert (wrong - lean).abs().max() > 10 * ATOL


@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_a_decoding_row_computes_the_same_bits_with_or_without_a_prompt_chunk(
        tiny_model: Path, kv_dtype: str) -> None:
    engine = _engine(_served(), kv_dtype)
    rows = _rows(engine)
    calls = []
    lib = engine._native._lib
    decode = lib.gpt2_int8_decode
    lib.gpt2_int8_decode = lambda *args: calls.append(1) or decode(*args)
    try:
        alone = _logits(engine._native.forward, rows, [])
        assert len(calls) == 1, "the decode-only step ran every layer in one call"
        beside = _logits(engine._native.forward, rows, list(range(400, 420)))
        assert len(calls) == 1, "the step with a prompt chunk ran layer by layer"
    finally:
        lib.gpt2_int8_decode = decode
    assert torch.equal(alone[:2], beside[:2])


@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_greedy_tokens_are_the_same_alone_batched_and_joining(tiny_model: Path,
                                                              kv_dtype: str) -> None:
    """Rows of 3, 37 and 12 prompt tokens (chunks of 8): alone, together, and the last joining
    after 9 steps of the others; gpt2_forward's tokens too."""
    model = _served()
    engine = _engine(model, kv_dtype)
    requests = [GenerationRequest(list(range(500 + 7 * n, 500 + 8 * n)), 10)
                for n in (3, 37, 12)]
    alone, together, joined = alone_together_joined(engine, requests)
    assert together == alone and joined == alone
    assert len({tuple(t) for t in alone}) == 3
    lean = replace(decide(model, kv_dtype), layers=code_path.GPT2_LAYERS)
    torch_engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True,
                              prefill_chunk=8, kv_dtype=kv_dtype, path=lean)
    assert [generate_alone(torch_engine, r).token_ids for r in requests] == alone


def test_a_layer_left_in_torch_is_not_taken(tiny_model: Path) -> None:
    model = _served()
    block = model.transformer.h[1]
    block.mlp.c_fc = torch.nn.Linear(block.mlp.c_fc.in_features, block.mlp.c_fc.out_features)
    assert native_gpt2.misfit_int8(model) == ("layer 1: a linear layer is not native int8 with "
                                              "a bias, unpadded")
    assert decide(model, "float16").layers == code_path.GPT2_LAYERS
    with pytest.raises(ValueError, match=r"gpt2_f16\.c does not take this model: layer 1"):
        NativeGPT2Int8.build(model)


def test_without_the_avx2_attention_gpt2_forward_serves(tiny_model: Path) -> None:
    path = decide(_served(), "float16", machine=Machine(None, ()))
    assert path.layers == code_path.GPT2_LAYERS
    assert path.layers_why == "no int8 C layers: the AVX2 decode attention does not run here"


def test_the_c_refuses_a_block_without_its_weights_or_of_an_unknown_variant(
        tiny_model: Path) -> None:
    """The checked boundary: a block whose weight pointer is NULL, or whose variant is neither
    GEMM's, comes back as GLL_BAD_SHAPE, raised as NativeError; the hidden states are not
    written."""
    native = _engine(_served())._native
    buffers = [torch.zeros(1, 4 * native.width) for _ in range(5)]
    scratch = native_gpt2.F16Step(native.width, native.hidden, native.heads, 1, native.eps,
                                  native.scale, *(b.data_ptr() for b in buffers))
    hidden = torch.randn(1, native.width)
    before = hidden.clone()
    good = native.blocks[0]
    for broken in ("q", "variant"):
        block = native_gpt2.Int8Block.from_buffer_copy(good)
        if broken == "q":
            block.linear[2].q = None
        else:
            block.variant = 7
        native.blocks[0] = block
        try:
            with pytest.raises(NativeError, match="a size outside"):
                native._half("attn_out", 0, scratch, hidden)
        finally:
            native.blocks[0] = good
        assert torch.equal(hidden, before)
