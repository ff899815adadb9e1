"""server.engine.native_llama on synthetic:tiny-llama and synthetic:tiny-qwen served by
``float16+native``: the C layers give transformers' logits over the same modules within float32
rounding, a decoding row computes the same bits in a decode-only step (every layer in one C
call) as beside a prompt chunk (layer by layer), greedy tokens are the same alone, batched and
joining mid-generation over float16 and int8 caches, and the code path says when the layers
are not taken."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from server.engine import code_path, kernels, llama_forward, native_f16, native_llama
from server.engine.code_path import Machine, decide
from server.engine.decoding import GenerationRequest
from server.engine.native_f16 import NativeF16Linear
from server.engine.native_llama import NativeLlama
from server.engine.native_ops import NativeError
from server.engine.quantize import quantize_int8
from server.engine.step import StepEngine, generate_alone
from tests.conftest import TINY_DECODERS, alone_together_joined
from tests.test_gpt2_forward import _both, _rows
from tests.test_native_gpt2 import _logits

pytestmark = pytest.mark.skipif(
    native_f16.unavailable() is not None,
    reason=f"not run here: {native_f16.unavailable()}")

# The C layers against transformers' forward over the same fp16-weight modules: the same GEMMs
# and attention, but RMSNorm's sum of squares in 8 lanes and SiLU's exponential by a
# polynomial. Measured on both tiny presets (AMD EPYC Zen 3): at most 1.2e-7 apart, logits
# spread over ~1.4. The bound leaves room for other CPUs and is 100 times below what RoPE's
# sines unsigned changes (test_the_tolerance_would_catch_unsigned_sines).
ATOL = 1e-5
KV_DTYPES = ("float16", "int8", "model")  # served (auto), KV_DTYPE=int8, float32 caches


@pytest.fixture(params=TINY_DECODERS)
def folder(request: pytest.FixtureRequest, tiny_decoders: dict[str, Path]) -> Path:
    """Each tiny Llama-family preset's build in turn."""
    return tiny_decoders[request.param]


def _served(folder: Path) -> torch.nn.Module:
    """The float16+native model kernels.choose builds (fp16 weights, q/k/v and gate/up
    fused)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return kernels._build(model, kernels.F16_NATIVE, quantize_int8)


def _engine(model: torch.nn.Module, kv_dtype: str = "float16") -> StepEngine:
    return StepEngine(model, int(model.config.eos_token_id), ignore_eos=True, prefill_chunk=8,
                      kv_dtype=kv_dtype)


def _native(engine: StepEngine):
    return lambda _model, *args: engine._native.forward(*args)


def test_the_engine_serves_a_float16_native_llama_through_the_c_layers(folder: Path) -> None:
    engine = _engine(_served(folder))
    assert engine.path.layers == code_path.NATIVE_LAYERS
    assert engine.path.layers_why.endswith("that llama_f16.c takes")
    assert isinstance(engine._native, NativeLlama)


@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_its_logits_are_transformers_within_float32_rounding(folder: Path,
                                                             kv_dtype: str) -> None:
    """Two decoding rows and a prompt chunk of 11 in one packed step (layer by layer), and the
    two rows alone (every layer in one call)."""
    model = _served(folder)
    engine = _engine(model, kv_dtype)
    rows = _rows(engine)
    theirs, ours = _both(model, rows, list(range(300, 311)), _native(engine))
    assert ours.shape == theirs.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
    # llama_forward gives transformers' logits bit for bit (tests/test_llama_forward.py).
    lean = _logits(lambda *args: llama_forward.forward(model, *args), rows, [])
    torch.testing.assert_close(_logits(engine._native.forward, rows, []), lean, rtol=0,
                               atol=ATOL)


def test_the_tolerance_would_catch_unsigned_sines(folder: Path, monkeypatch) -> None:
    """RoPE's sines handed to the C unsigned (rotate_half's sign lost): off by far more than
    ATOL, so the comparison above can fail."""
    model = _served(folder)
    engine = _engine(model)
    rows = _rows(engine)
    real = llama_forward.Rotary.__init__

    def unsigned(self, *args) -> None:
        real(self, *args)
        self.sin = self.sin.abs()

    monkeypatch.setattr(llama_forward.Rotary, "__init__", unsigned)
    theirs, ours = _both(model, rows, list(range(300, 311)), _native(engine))
    assert (ours - theirs).abs().max() > 100 * ATOL


@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_a_decoding_row_computes_the_same_bits_with_or_without_a_prompt_chunk(
        folder: Path, kv_dtype: str) -> None:
    """Decode-only: every layer in one C call (llama_decode, counted); beside a chunk: layer
    by layer with torch attending the chunk. The decoding rows must not see the difference."""
    engine = _engine(_served(folder), kv_dtype)
    rows = _rows(engine)
    calls = []
    lib = engine._native._lib
    decode = lib.llama_decode
    lib.llama_decode = lambda *args: calls.append(1) or decode(*args)
    try:
        alone = _logits(engine._native.forward, rows, [])
        assert len(calls) == 1, "the decode-only step ran every layer in one call"
        beside = _logits(engine._native.forward, rows, list(range(400, 420)))
        assert len(calls) == 1, "the step with a prompt chunk ran layer by layer"
    finally:
        lib.llama_decode = decode
    assert torch.equal(alone[:2], beside[:2])


@pytest.mark.parametrize("kv_dtype", ["float16", "int8"])
def test_greedy_tokens_are_the_same_alone_batched_and_joining(folder: Path,
                                                              kv_dtype: str) -> None:
    """Rows of 3, 37 and 12 prompt tokens (prefilled in chunks of 8): alone, started
    together, and the 12-token row joining after the others ran 9 steps; and over a float16
    cache they are llama_forward's tokens (the closest top-2 logits of these steps are far
    wider apart than the 1e-7 between the paths: test_llama_forward)."""
    model = _served(folder)
    engine = _engine(model, kv_dtype)
    requests = [GenerationRequest(list(range(500 + 7 * n, 500 + 8 * n)), 10)
                for n in (3, 37, 12)]
    alone, together, joined = alone_together_joined(engine, requests)
    assert together == alone and joined == alone
    assert len({tuple(t) for t in alone}) == 3
    if kv_dtype == "float16":
        lean = replace(decide(model, kv_dtype), layers=code_path.LLAMA_LAYERS)
        torch_engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True,
                                  prefill_chunk=8, path=lean)
        assert [generate_alone(torch_engine, r).token_ids for r in requests] == alone


def test_a_model_with_an_unfused_layer_runs_the_torch_layers(folder: Path) -> None:
    model = _served(folder)
    mlp = model.model.layers[1].mlp
    del mlp.gate_up_proj
    path = decide(model, "float16")
    assert path.layers == code_path.LLAMA_LAYERS
    assert path.layers_why.endswith("no C layers: layer 1: q/k/v or gate/up not fused on the "
                                    "native fp16 GEMM")
    with pytest.raises(ValueError, match=r"llama_f16\.c does not take this model: layer 1"):
        NativeLlama.build(model)


def test_a_biased_output_projection_is_not_taken(folder: Path) -> None:
    model = _served(folder)
    attn = model.model.layers[0].self_attn
    linear = torch.nn.Linear(attn.o_proj.in_features, attn.o_proj.out_features, bias=True)
    attn.o_proj = NativeF16Linear(linear)
    assert native_llama.misfit(model) == ("layer 0: o_proj or down_proj not a bias-free native "
                                          "fp16 layer")


def test_without_the_avx2_attention_the_torch_layers_serve(folder: Path) -> None:
    path = decide(_served(folder), "float16", machine=Machine(None, ()))
    assert path.layers == code_path.LLAMA_LAYERS
    assert path.layers_why.endswith("no C layers: the AVX2 decode attention does not run here")


def test_a_float32_model_is_not_taken(folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert native_llama.misfit(model) == ("layer 0: q/k/v or gate/up not fused on the native "
                                          "fp16 GEMM")
    assert decide(model, "model").layers == code_path.LLAMA_LAYERS


def test_the_c_refuses_a_step_outside_its_sizes(folder: Path) -> None:
    """The checked boundary: a width that is not whole vectors comes back as GLL_BAD_SHAPE,
    raised as NativeError, and the hidden states are not written."""
    engine = _engine(_served(folder))
    native = engine._native
    cos = torch.zeros(1, native.sizes.dim)
    scratch = native_llama.Scratch(native.sizes, 1, cos, cos)
    scratch.step.width = 36
    hidden = torch.randn(1, native.sizes.width)
    before = hidden.clone()
    with pytest.raises(NativeError, match="a size outside what the kernel takes"):
        native._half("attn_out", 0, scratch.step, hidden)
    assert torch.equal(hidden, before)
