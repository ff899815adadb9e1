"""server.engine.native_llama_bf16 on synthetic:tiny-llama and synthetic:tiny-qwen served by
``bfloat16+native``: the C layers give the torch forward's logits over the same modules within
bf16 rounding, a decoding row computes the same bits in a decode-only step (every layer in one C
call) as beside a prompt chunk (layer by layer), greedy tokens are the same alone, batched and
joining mid-generation, and the code path says when the layers are not taken."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from server.engine import code_path, kernels, llama_forward, native_gemm, native_llama_bf16
from server.engine.code_path import Machine, decide
from server.engine.decoding import GenerationRequest
from server.engine.native_gemm import NativeBF16Linear
from server.engine.native_llama_bf16 import NativeLlamaBF16
from server.engine.native_ops import NativeError
from server.engine.quantize import quantize_int8
from server.engine.step import StepEngine, generate_alone
from tests.conftest import TINY_DECODERS, alone_together_joined
from tests.test_gpt2_forward import _rows
from tests.test_native_gpt2 import _logits

pytestmark = pytest.mark.skipif(not native_gemm.available(),
                                reason=f"not run here: {native_gemm.unavailable()}")

# The C layers against llama_forward over the same bf16 modules: the same GEMMs and attention
# and the same bf16 roundings, but RMSNorm's sum of squares in 16 lanes with 1/sqrt, and SiLU's
# exponential by a polynomial, each able to move a bf16 rounding by one step. Measured on both
# tiny presets (AMD EPYC Zen 4): bit for bit, logits spread over ~1.6. The bound allows about
# one bf16 step of a logit; RoPE's sines unsigned moves them 3-4 times as far
# (test_the_tolerance_would_catch_unsigned_sines: 0.0059 and 0.0078).
ATOL = 2e-3


@pytest.fixture(params=TINY_DECODERS)
def folder(request: pytest.FixtureRequest, tiny_decoders: dict[str, Path]) -> Path:
    """Each tiny Llama-family preset's build in turn."""
    return tiny_decoders[request.param]


def _served(folder: Path) -> torch.nn.Module:
    """The bfloat16+native model kernels.choose builds (packed bf16 weights)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return kernels._build(model, kernels.BF16_NATIVE, quantize_int8)


def _engine(model: torch.nn.Module, kv_dtype: str = "auto") -> StepEngine:
    return StepEngine(model, int(model.config.eos_token_id), ignore_eos=True, prefill_chunk=8,
                      kv_dtype=kv_dtype)


def _lean(model: torch.nn.Module):
    return lambda *args: llama_forward.forward(model, *args)


def test_the_engine_serves_a_bfloat16_native_llama_through_the_c_layers(folder: Path) -> None:
    engine = _engine(_served(folder))
    assert engine.path.layers == code_path.NATIVE_LAYERS
    assert engine.path.layers_why.endswith("that llama_bf16.c takes")
    assert engine.path.cache_dtype == "bfloat16"
    assert isinstance(engine._native, NativeLlamaBF16)


def test_its_logits_are_llama_forwards_within_bf16_rounding(folder: Path) -> None:
    """Two decoding rows alone (every layer in one call), and beside a prompt chunk of 11
    (layer by layer, torch attending the chunk)."""
    model = _served(folder)
    rows = _rows(_engine(model))
    native = _engine(model)._native
    for chunk in ([], list(range(300, 311))):
        ours = _logits(native.forward, rows, chunk).float()
        theirs = _logits(_lean(model), rows, chunk).float()
        assert ours.shape == theirs.shape == (2 + bool(chunk), model.config.vocab_size)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
        assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_the_tolerance_would_catch_unsigned_sines(folder: Path, monkeypatch) -> None:
    """RoPE's sines handed to the C unsigned (rotate_half's sign lost): off by far more than
    ATOL, so the comparison above can fail."""
    model = _served(folder)
    rows = _rows(_engine(model))
    native = _engine(model)._native
    theirs = _logits(_lean(model), rows, []).float()
    real = llama_forward.Rotary.__init__

    def unsigned(self, *args) -> None:
        real(self, *args)
        self.sin = self.sin.abs()

    monkeypatch.setattr(llama_forward.Rotary, "__init__", unsigned)
    ours = _logits(native.forward, rows, []).float()
    assert (ours - theirs).abs().max() > 2 * ATOL


def test_a_decoding_row_computes_the_same_bits_with_or_without_a_prompt_chunk(
        folder: Path) -> None:
    """Decode-only: every layer in one C call (llama_bf16_decode, counted); beside a chunk:
    layer by layer with torch attending the chunk. The decoding rows must not see the
    difference."""
    engine = _engine(_served(folder))
    rows = _rows(engine)
    calls = []
    lib = engine._native._lib
    decode = lib.llama_bf16_decode
    lib.llama_bf16_decode = lambda *args: calls.append(1) or decode(*args)
    try:
        alone = _logits(engine._native.forward, rows, [])
        assert len(calls) == 1, "the decode-only step ran every layer in one call"
        beside = _logits(engine._native.forward, rows, list(range(400, 420)))
        assert len(calls) == 1, "the step with a prompt chunk ran layer by layer"
    finally:
        lib.llama_bf16_decode = decode
    assert torch.equal(alone[:2], beside[:2])


def test_greedy_tokens_are_the_same_alone_batched_and_joining(folder: Path) -> None:
    """Rows of 3, 37 and 12 prompt tokens (prefilled in chunks of 8): alone, started
    together, and the 12-token row joining after the others ran 9 steps; and they are
    llama_forward's tokens."""
    engine = _engine(_served(folder))
    assert isinstance(engine._native, NativeLlamaBF16)
    requests = [GenerationRequest(list(range(500 + 7 * n, 500 + 8 * n)), 10)
                for n in (3, 37, 12)]
    alone, together, joined = alone_together_joined(engine, requests)
    assert together == alone and joined == alone
    assert len({tuple(t) for t in alone}) == 3
    lean = replace(engine.path, layers=code_path.LLAMA_LAYERS)
    torch_engine = StepEngine(engine.model, int(engine.model.config.eos_token_id),
                              ignore_eos=True, prefill_chunk=8, path=lean)
    assert [generate_alone(torch_engine, r).token_ids for r in requests] == alone


def test_int8_caches_run_the_torch_layers(folder: Path) -> None:
    path = decide(_served(folder), "int8")
    assert path.layers == code_path.LLAMA_LAYERS
    assert path.layers_why.endswith("no C layers: int8 caches: the bf16 C layers keep bf16 "
                                    "caches")


def test_a_biased_output_projection_is_not_taken(folder: Path) -> None:
    model = _served(folder)
    attn = model.model.layers[1].self_attn
    linear = torch.nn.Linear(attn.o_proj.in_features, attn.o_proj.out_features, bias=True)
    attn.o_proj = NativeBF16Linear(linear)
    assert native_llama_bf16.misfit(model) == "layer 1: o, gate, up or down with a bias"
    path = decide(model, "auto")
    assert path.layers == code_path.LLAMA_LAYERS
    with pytest.raises(ValueError, match=r"llama_bf16\.c does not take this model: layer 1"):
        NativeLlamaBF16.build(model)


def test_a_padded_projection_is_not_taken(folder: Path) -> None:
    """gemm_bf16 writes whole 16-output blocks: a layer padded to them is not read in place."""
    model = _served(folder)
    mlp = model.model.layers[0].mlp
    mlp.up_proj = NativeBF16Linear(torch.nn.Linear(mlp.up_proj.in_features, 40, bias=False))
    assert native_llama_bf16.misfit(model) == ("layer 0: a projection is not an unpadded "
                                               "native bf16 layer")


def test_without_the_bf16_kernels_the_torch_layers_serve(folder: Path) -> None:
    path = decide(_served(folder), "auto", machine=Machine("no avx512_bf16 on this CPU"))
    assert path.layers == code_path.LLAMA_LAYERS
    assert path.layers_why.endswith("no C layers: no avx512_bf16 on this CPU")


def test_a_float32_model_is_not_taken(folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert native_llama_bf16.misfit(model) == ("layer 0: a projection is not an unpadded native "
                                               "bf16 layer")


def test_the_c_refuses_a_step_outside_its_sizes(folder: Path) -> None:
    """The checked boundary: a width that is not whole vectors comes back as GLL_BAD_SHAPE,
    raised as NativeError, and the hidden states are not written."""
    native = _engine(_served(folder))._native
    cos = torch.zeros(1, native.sizes.dim, dtype=torch.bfloat16)
    scratch = native_llama_bf16.BF16Scratch(native.sizes, 1, cos, cos)
    scratch.step.width = 40
    hidden = torch.randn(1, native.sizes.width).to(torch.bfloat16)
    before = hidden.clone()
    with pytest.raises(NativeError, match="a size outside what the kernel takes"):
        native._half("attn_out", 0, scratch.step, hidden)
    assert torch.equal(hidden, before)


def test_caches_of_another_geometry_are_refused_before_any_c_runs(folder: Path) -> None:
    """F16Layers._every_layer (shared by every C layer set) checks the caches' kv heads and
    head dim against the model's before the one-call decode."""
    from server.engine.row_cache import PackedStep, Segment

    engine = _engine(_served(folder))
    native = engine._native
    rows = _rows(engine)
    step = PackedStep([Segment(row.cache, i, 1) for i, row in enumerate(rows)])
    cos = torch.zeros(len(rows), native.sizes.dim, dtype=torch.bfloat16)
    scratch = native_llama_bf16.BF16Scratch(native.sizes, len(rows), cos, cos)
    hidden = torch.randn(len(rows), native.sizes.width).to(torch.bfloat16)
    before = hidden.clone()
    sizes = native.sizes
    with pytest.raises(ValueError, match=f"cache geometry: {sizes.kv_heads} kv heads of "
                                         f"{sizes.dim}, the model {sizes.kv_heads + 1}"):
        native._every_layer(scratch.step, hidden, step.native.caches,
                            (sizes.kv_heads + 1, sizes.dim))
    assert torch.equal(hidden, before)
