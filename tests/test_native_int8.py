"""server.engine.native_int8 and the int8 operations of server.engine.native_ops: every operation
checks its tensors before any C runs (on any CPU), each kernel variant computes torch's
dequantized-weight product at odd shapes where the CPU has its features (AVX2 + FMA on Zen 3;
AVX-512 VNNI skips elsewhere, naming what is missing), and the tiny model served by it stays
within the stated tolerance of float32 with the same greedy tokens alone and batched.

Tolerance (the tiny model, 6 prompts of 24 tokens, logits of every position): max |int8 -
float32| <= 2% of max |float32 logit| (measured on the AVX2 variant: 0.8%; bf16 weights and
activations: 0.5%; torch's dynamic int8: 2.2%), and argmax agreement >= 98% (measured 100%).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from server.engine import code_path, kernels, native_f16, native_int8, native_ops
from server.engine.decoding import GenerationRequest
from server.engine.model import resolve_source
from server.engine.native_int8 import NativeInt8Linear, quantize_native_int8, quantize_weight
from server.engine.quantize import conv1d_to_linear
from server.engine.step import StepEngine, generate_alone
from tests.conftest import MODELS_DIR

VARIANTS = list(native_ops.INT8_VARIANTS)


def _runs(variant: str):
    """Skip unless this CPU runs ``variant``, naming the missing features."""
    missing = native_ops.int8_missing(variant)
    problem = (f"this CPU lacks {', '.join(missing)}" if missing
               else native_ops.int8_unavailable())
    return pytest.mark.skipif(problem is not None,
                              reason=f"native int8 {variant} does not run here: {problem}")


runs_here = pytest.mark.skipif(not native_int8.available(),
                               reason=f"native int8 does not run here: "
                                      f"{native_ops.int8_unavailable()}")


@pytest.fixture
def no_library(monkeypatch):
    """Fail the test if an operation reaches the library: its checks must come first."""
    def reached(*_args):
        raise AssertionError("the library was reached before the checks failed")
    monkeypatch.setattr(native_ops, "_int8_lib", reached)
    monkeypatch.setattr(native_ops, "_int8_loaded", reached)


def _packed(outputs: int = 32, inputs: int = 8, variant: str = "avx2") -> torch.Tensor:
    return torch.zeros(outputs, native_ops.int8_padded_inputs(inputs, variant), dtype=torch.int8)


def _misaligned(rows: int, cols: int) -> torch.Tensor:
    """A float32 tensor whose data starts 2 bytes past a float's alignment."""
    raw = torch.zeros(rows * cols * 4 + 4, dtype=torch.int8)
    return torch.from_numpy(raw.numpy()[2:2 + rows * cols * 4].view("float32")).view(rows, cols)


# -- checks: raise before the library (any CPU) -------------------------------------------

F32, I32 = torch.float32, torch.int32


@pytest.mark.parametrize(("call", "says"), [
    (lambda: native_ops.pack_int8(torch.zeros(24, 8, dtype=torch.int8), "avx2"),
     "outputs = 24"),
    (lambda: native_ops.pack_int8(torch.zeros(16, 8), "avx2"), "dtype torch.float32"),
    (lambda: native_ops.pack_int8(torch.zeros(16, 8, dtype=torch.int8), "sse"),
     "use one of avx512_vnni, avx2"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 8, dtype=torch.bfloat16), _packed(),
                                  torch.ones(32), None, None, "avx2"), "x: dtype"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 10), _packed(), torch.ones(32), None, None,
                                  "avx2"), r"x: shape \(3, 10\)"),
    (lambda: native_ops.gemm_int8(torch.zeros(8, 3).T, _packed(), torch.ones(32), None, None,
                                  "avx2"), "x: not contiguous"),
    (lambda: native_ops.gemm_int8(_misaligned(3, 8), _packed(), torch.ones(32), None, None,
                                  "avx2"), "not aligned to its 4-byte elements"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 8), _packed(), torch.ones(31), None, None,
                                  "avx2"), r"scales: shape \(31,\)"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 8), _packed(), torch.ones(32, dtype=I32),
                                  None, None, "avx2"), "scales: dtype torch.int32"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 8), _packed(), torch.ones(32),
                                  torch.zeros(32, dtype=I32), None, "avx2"),
     "the avx2 variant takes none"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 7), _packed(32, 7, "avx512_vnni"),
                                  torch.ones(32), None, None, "avx512_vnni"),
     "colsum: expected a tensor"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 7), _packed(32, 7, "avx2"), torch.ones(32),
                                  torch.zeros(32, dtype=I32), None, "avx512_vnni"),
     "inputs avx512_vnni packs as 7"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 8), _packed(), torch.ones(32), None,
                                  torch.zeros(33), "avx2"), r"bias: shape \(33,\)"),
    (lambda: native_ops.gemm_int8(torch.zeros(3, 8), _packed(20), torch.ones(20), None, None,
                                  "avx2"), "outputs = 20"),
], ids=["pack-outputs", "pack-dtype", "variant", "x-dtype", "x-width", "x-strided",
        "x-misaligned", "scales-shape", "scales-dtype", "colsum-avx2", "colsum-vnni",
        "vnni-width", "bias", "outputs"])
def test_int8_operations_check_before_any_c_runs(no_library, call, says) -> None:
    with pytest.raises(ValueError, match=says):
        call()


def test_a_variant_this_cpu_lacks_raises_naming_the_features(monkeypatch) -> None:
    monkeypatch.setattr(native_ops, "cpu_flags", lambda: {"avx2"})
    native_ops._int8_loaded.cache_clear()
    try:
        assert native_ops.int8_variant() is None
        assert "avx2, fma" in native_ops.int8_unavailable()
        with pytest.raises(native_ops.NativeError, match="needs fma"):
            native_ops.gemm_int8(torch.zeros(3, 8), _packed(), torch.ones(32), None, None,
                                 "avx2")
        with pytest.raises(ValueError, match="does not run here"):
            NativeInt8Linear(nn.Linear(8, 16))
    finally:
        native_ops._int8_loaded.cache_clear()


# -- the kernels against torch ------------------------------------------------------------


def _quantized_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x's rows as gemm_int8_vnni quantizes them: (q as float, scale per row)."""
    top = x.abs().amax(dim=1)
    inv = torch.where(top > 0, 127 / top, torch.zeros_like(top))
    return torch.round(x * inv[:, None]), top / 127


@pytest.mark.parametrize("variant", [pytest.param(v, marks=_runs(v)) for v in VARIANTS])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 13])
@pytest.mark.parametrize(("inputs", "outputs"), [(1, 16), (33, 48), (98, 144), (130, 32)])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_is_the_dequantized_product(variant: str, rows: int, inputs: int, outputs: int,
                                         bias: bool) -> None:
    torch.manual_seed(rows * 1000 + inputs + outputs)
    x = torch.randn(rows, inputs)
    q, scales = quantize_weight(torch.randn(outputs, inputs) / inputs ** 0.5)
    b = torch.randn(outputs) if bias else None
    colsum = q.sum(dim=1, dtype=torch.int32) if variant == "avx512_vnni" else None
    out = native_ops.gemm_int8(x, native_ops.pack_int8(q, variant), scales, colsum, b, variant)
    a, row_scale = (_quantized_rows(x) if variant == "avx512_vnni"
                    else (x, torch.ones(rows)))
    expected = (a.double() @ q.double().T) * row_scale.double()[:, None] * scales.double()
    expected += 0 if b is None else b.double()
    assert out.shape == (rows, outputs) and out.dtype == torch.float32
    # float32 sums of ``inputs`` products (avx512_vnni: exact int32 sums, then two roundings)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@runs_here
@pytest.mark.parametrize(("inputs", "outputs", "bias"),
                         [(64, 48, True), (33, 50, False), (96, 300, True)])
def test_native_int8_linear_is_the_dequantized_linear(inputs: int, outputs: int,
                                                      bias: bool) -> None:
    """Output widths not a multiple of 16 are padded inside and sliced off."""
    torch.manual_seed(inputs + outputs)
    linear = nn.Linear(inputs, outputs, bias=bias)
    layer = NativeInt8Linear(linear)
    q, _ = quantize_weight(linear.weight)
    assert torch.equal(layer.quantized()[:outputs], q)
    x = torch.randn(2, 5, inputs)
    out = layer(x)
    assert out.shape == (2, 5, outputs) and out.dtype == torch.float32
    expected = nn.functional.linear(x, layer.dequantized()[:outputs], linear.bias)
    if layer.variant == "avx2":  # fp32 activations: only the weights were rounded
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # Either variant against the float32 layer: within the weights' (and activations') int8
    # rounding, 1/254 of each row's largest weight (and of x's largest) per product.
    torch.testing.assert_close(out, linear(x), rtol=0, atol=0.05)
    # One byte per (padded) weight, and 4 per output for its scale, bias and VNNI column sum.
    floats = 1 + bias + (layer.variant == "avx512_vnni")
    assert layer.weight_bytes() == layer.packed.numel() + 4 * floats * layer.padded


@runs_here
def test_a_rows_result_is_the_same_alone_and_in_any_batch() -> None:
    torch.manual_seed(1)
    layer = NativeInt8Linear(nn.Linear(256, 200))
    x = torch.randn(19, 256)
    together = layer(x)
    for rows in range(1, 20):  # every register tile and their combinations
        assert torch.equal(layer(x[:rows]), together[:rows])
    assert torch.equal(layer(x[11:12]), together[11:12])


# -- the tiny model -----------------------------------------------------------------------


def _tiny() -> nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return model


@runs_here
def test_tiny_logits_are_within_tolerance_of_float32(tiny_model: Path) -> None:
    model = _tiny()
    int8 = quantize_native_int8(copy.deepcopy(model))
    assert not [m for m in int8.modules() if type(m) is nn.Linear]
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (6, 24))  # the test prompts
    with torch.inference_mode():
        expected, got = model(input_ids=ids).logits, int8(input_ids=ids).logits
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 0.02 * scale
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree >= 0.98, agree


@runs_here
def test_tiny_greedy_tokens_are_the_same_alone_and_batched(tiny_model: Path) -> None:
    model = quantize_native_int8(_tiny())
    engine = StepEngine(model, eos_id=50256, ignore_eos=True, prefill_chunk=8)
    requests = [GenerationRequest(list(range(100 + n, 100 + 2 * n)), 10) for n in (3, 21, 12)]
    alone = [generate_alone(engine, r).token_ids for r in requests]
    rows = [engine.new_row(r) for r in requests]
    while any(r.finish_reason is None for r in rows):
        engine.step(rows)
    assert [r.tokens for r in rows] == alone
    assert all(len(tokens) == 10 for tokens in alone)


@runs_here
def test_it_is_a_kernel_candidate_only_where_int8_is_allowed(tiny_model: Path) -> None:
    assert kernels.INT8_NATIVE in kernels.candidates("auto", allow_int8=True)
    assert kernels.INT8_NATIVE not in kernels.candidates("auto", allow_int8=False)
    assert kernels.candidates("int8", allow_int8=False) == [kernels.INT8, kernels.INT8_NATIVE]
    path = code_path.decide(quantize_native_int8(_tiny()))
    assert (path.precision, path.linear) == ("int8+native", "native_int8")
    assert f"{native_ops.int8_variant()} variant" in path.linear_why
    # gpt2_f16.c's int8 entry points where the AVX2 layers run here (tests/test_native_gpt2_f16.py)
    c_layers = native_f16.layers_library()[0] is not None
    assert path.layers == (code_path.NATIVE_LAYERS if c_layers else code_path.GPT2_LAYERS)
    assert path.attention_dtype == "float32"
