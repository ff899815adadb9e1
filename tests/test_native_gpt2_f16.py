"""server.engine.native_gpt2.NativeGPT2F16 on synthetic:tiny served by ``float16+native``, and
NativeGPT2Int8 (the same C layers, ``gpt2_f16.c``, on the int8 GEMMs) served by ``int8+native``:
the C layers give transformers' logits over the same modules within float32 rounding, a
decoding row computes the same bits in a decode-only step (every layer in one C call) as
beside a prompt chunk (layer by layer), greedy tokens are the same alone, batched and joining
over float16 and int8 caches, and the code path says when the layers are not taken."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from server.engine import code_path, gpt2_forward, native_f16, native_gpt2, native_int8
from server.engine.code_path import Machine, decide
from server.engine.decoding import GenerationRequest
from server.engine.model import resolve_source
from server.engine.native_gpt2 import NativeGPT2F16, NativeGPT2Int8
from server.engine.quantize import conv1d_to_linear
from server.engine.step import StepEngine, generate_alone
from tests.conftest import MODELS_DIR, alone_together_joined
from tests.test_gpt2_forward import _both, _rows
from tests.test_native_gpt2 import _logits

F16_HERE = native_f16.layers_library()[0] is not None
NOT_HERE = f"not run here: {native_f16.layers_library()[1] or native_int8.int8_unavailable()}"
pytestmark = pytest.mark.skipif(not F16_HERE, reason=NOT_HERE)


@dataclass(frozen=True)
class Kind:
    """One GEMM the C layers run on: how the model is quantized, the layers' class and entry
    points' prefix, its misfit check and the phrases the code path uses."""

    name: str
    quantize: Callable[[torch.nn.Module], torch.nn.Module]
    layers: type
    prefix: str
    misfit: Callable[[torch.nn.Module], str | None]
    linear_is: str
    why: str


F16 = Kind("f16", native_f16.quantize_native_float16, NativeGPT2F16, "gpt2_f16",
           native_gpt2.misfit_f16, "native fp16 with a bias",
           "every layer native fp16 GPT-2 that gpt2_f16.c takes")
INT8 = Kind("int8", native_int8.quantize_native_int8, NativeGPT2Int8, "gpt2_int8",
            native_gpt2.misfit_int8, "native int8 with a bias, unpadded",
            "every layer native int8 GPT-2 that gpt2_f16.c's int8 entry points take")
KINDS = [pytest.param(F16, id="f16"),
         pytest.param(INT8, id="int8", marks=pytest.mark.skipif(
             not native_int8.available(), reason=NOT_HERE))]

# Against transformers' forward over the same modules: the same GEMMs and attention, the layer
# norms' sums in 8 lanes and GELU's tanh from a polynomial exponential. Measured on the tiny
# preset (AMD EPYC Zen 3, fp16, every cache dtype): at most 1.8e-7 apart, logits up to 0.95.
# The bound is 50 times below what a GELU without its cubic term changes (5e-4:
# test_the_tolerance_would_catch_a_plain_tanh_gelu).
ATOL = 1e-5


def _served(kind: Kind = F16) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return kind.quantize(model)


def _engine(model: torch.nn.Module, kv_dtype: str = "float16") -> StepEngine:
    return StepEngine(model, int(model.config.eos_token_id), ignore_eos=True, prefill_chunk=8,
                      kv_dtype=kv_dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_the_engine_serves_a_native_gpt2_through_the_c_layers(tiny_model: Path,
                                                                kind: Kind) -> None:
    engine = _engine(_served(kind))
    assert engine.path.layers == code_path.NATIVE_LAYERS
    assert engine.path.layers_why == kind.why
    assert isinstance(engine._native, kind.layers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kv_dtype", ["float16", "int8", "model"])
def test_its_logits_are_transformers_within_float32_rounding(tiny_model: Path, kind: Kind,
                                                             kv_dtype: str) -> None:
    """Two decoding rows and a prompt chunk of 11 (layer by layer) against transformers; the
    two rows alone (one call for every layer) against gpt2_forward, which gives transformers'
    logits bit for bit (tests/test_gpt2_forward.py)."""
    model = _served(kind)
    engine = _engine(model, kv_dtype)
    rows = _rows(engine)
    theirs, ours = _both(model, rows, list(range(300, 311)),
                         lambda _model, *args: engine._native.forward(*args))
    assert ours.shape == theirs.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
    lean = _logits(lambda *args: gpt2_forward.forward(model, *args), rows, [])
    torch.testing.assert_close(_logits(engine._native.forward, rows, []), lean, rtol=0,
                               atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_the_tolerance_would_catch_a_plain_tanh_gelu(tiny_model: Path, kind: Kind,
                                                     monkeypatch) -> None:
    """gpt2_forward with GELU's cubic term dropped is off from the C layers by far more than
    ATOL: the comparison above can fail."""
    model = _served(kind)
    engine = _engine(model)
    rows = _rows(engine)
    ours = _logits(engine._native.forward, rows, [])
    for block in model.transformer.h:
        monkeypatch.setattr(block.mlp.act, "forward", lambda x: 0.5 * x * (1 + torch.tanh(
            0.7978845608028654 * x)))
    wrong = _logits(lambda *args: gpt2_forward.forward(model, *args), rows, [])
    assert (ours - wrong).abs().max() > 10 * ATOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_a_decoding_row_computes_the_same_bits_with_or_without_a_prompt_chunk(
        tiny_model: Path, kind: Kind, kv_dtype: str) -> None:
    engine = _engine(_served(kind), kv_dtype)
    rows = _rows(engine)
    calls = []
    lib = engine._native._lib
    name = f"{kind.prefix}_decode"
    decode = getattr(lib, name)
    setattr(lib, name, lambda *args: calls.append(1) or decode(*args))
    try:
        alone = _logits(engine._native.forward, rows, [])
        assert len(calls) == 1, "the decode-only step ran every layer in one call"
        beside = _logits(engine._native.forward, rows, list(range(400, 420)))
        assert len(calls) == 1, "the step with a prompt chunk ran layer by layer"
    finally:
        setattr(lib, name, decode)
    assert torch.equal(alone[:2], beside[:2])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_greedy_tokens_are_the_same_alone_batched_and_joining(tiny_model: Path, kind: Kind,
                                                              kv_dtype: str) -> None:
    """Rows of 3, 37 and 12 prompt tokens (chunks of 8): alone, together, and the last joining
    after 9 steps of the others; over a float16 cache, gpt2_forward's tokens too."""
    model = _served(kind)
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


@pytest.mark.parametrize("kind", KINDS)
def test_a_layer_left_in_torch_is_not_taken(tiny_model: Path, kind: Kind) -> None:
    model = _served(kind)
    block = model.transformer.h[1]
    block.mlp.c_fc = torch.nn.Linear(block.mlp.c_fc.in_features, block.mlp.c_fc.out_features)
    assert kind.misfit(model) == f"layer 1: a linear layer is not {kind.linear_is}"
    path = decide(model, "float16")
    assert path.layers == code_path.GPT2_LAYERS
    with pytest.raises(ValueError, match=r"gpt2_f16\.c does not take this model: layer 1"):
        kind.layers.build(model)


@pytest.mark.parametrize("kind", KINDS)
def test_without_the_avx2_attention_gpt2_forward_serves(tiny_model: Path, kind: Kind) -> None:
    path = decide(_served(kind), "float16", machine=Machine(None, ()))
    assert path.layers == code_path.GPT2_LAYERS
    assert path.layers_why == (f"no {'fp16' if kind is F16 else 'int8'} C layers: the AVX2 "
                               "decode attention does not run here")


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


@pytest.mark.skipif(not native_int8.available(), reason=NOT_HERE)
def test_the_int8_entry_points_refuse_a_block_without_its_weights_or_of_an_unknown_variant(
        tiny_model: Path) -> None:
    """A block whose weight pointer is NULL, or whose variant is neither GEMM's, comes back
    as GLL_BAD_SHAPE, raised as NativeError; the hidden states are not written."""
    native = _engine(_served(INT8))._native
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
            with pytest.raises(native_gpt2.native_ops.NativeError, match="a size outside"):
                native._half("attn_out", 0, scratch, hidden)
        finally:
            native.blocks[0] = good
        assert torch.equal(hidden, before)
