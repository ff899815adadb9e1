"""server.engine.native_f16: the fp16-weight GEMM's checks come before any C (on any CPU); where
the CPU has AVX2 + FMA + F16C (skips elsewhere, naming what is missing) the kernel is torch's
float32 product of the widened weight at odd shapes, a row's result is the same alone and in
a batch bit for bit, a tied LM head reads the embedding table itself (one copy), and the tiny
presets served by ``DTYPE=float16+native`` keep their greedy tokens alone and batched, with
logits within 1e-4 of the float16 (fbgemm) candidate's scale.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from server.config import ConfigError
from server.engine import code_path, kernels, native_f16, native_ops
from server.engine.decoding import GenerationRequest
from server.engine.model import load_model, resolve_source
from server.engine.native_f16 import NativeF16Linear, gemm_f16, quantize_native_float16
from server.engine.quantize import HalfEmbedding, conv1d_to_linear, quantize_float16, weight_bytes
from server.engine.step import StepEngine, generate_alone
from tests.conftest import MODELS_DIR

runs_here = pytest.mark.skipif(not native_f16.available(),
                               reason=f"native fp16 GEMM does not run here: "
                                      f"{native_f16.unavailable()}")
F16 = torch.float16


@pytest.fixture
def no_library(monkeypatch):
    """Fail the test if an operation reaches the library: its checks must come first."""
    def reached(*_args):
        raise AssertionError("the library was reached before the checks failed")
    monkeypatch.setattr(native_f16, "_loaded", reached)


@pytest.fixture
def lacking_f16c(monkeypatch):
    """This CPU as one without F16C (the library's state asked again, then forgotten)."""
    monkeypatch.setattr(native_ops, "cpu_flags", lambda: {"avx2", "fma"})
    native_f16._loaded.cache_clear()
    yield
    native_f16._loaded.cache_clear()


# -- checks: raise before the library (any CPU) -------------------------------------------


@pytest.mark.parametrize(("call", "says"), [
    (lambda: gemm_f16(torch.zeros(3, 8), torch.zeros(5, 8), None), "fp16 weight: dtype"),
    (lambda: gemm_f16(torch.zeros(3, 8), torch.zeros(8, dtype=F16), None), "1-D"),
    (lambda: gemm_f16(torch.zeros(3, 8), torch.zeros(8, 5, dtype=F16).T, None),
     "fp16 weight: not contiguous"),
    (lambda: gemm_f16(torch.zeros(3, 8, dtype=F16), torch.zeros(5, 8, dtype=F16), None),
     "x: dtype torch.float16"),
    (lambda: gemm_f16(torch.zeros(3, 9), torch.zeros(5, 8, dtype=F16), None),
     r"x: shape \(3, 9\), expected \[rows, 8\]"),
    (lambda: gemm_f16(torch.zeros(8, 3).T, torch.zeros(5, 8, dtype=F16), None),
     "x: not contiguous"),
    (lambda: gemm_f16(torch.zeros(3, 8), torch.zeros(5, 8, dtype=F16), torch.zeros(6)),
     r"bias: shape \(6,\)"),
    (lambda: gemm_f16(torch.zeros(3, 8), torch.zeros(5, 8, dtype=F16), torch.zeros(5, dtype=F16)),
     "bias: dtype torch.float16"),
    (lambda: gemm_f16(torch.zeros(3, 0), torch.zeros(5, 0, dtype=F16), None),
     "fp16 weight inputs = 0"),
], ids=["w-dtype", "w-1d", "w-strided", "x-dtype", "x-width", "x-strided", "bias-shape",
        "bias-dtype", "no-inputs"])
def test_operations_check_before_any_c_runs(no_library, call, says) -> None:
    with pytest.raises(ValueError, match=says):
        call()


def test_a_cpu_without_f16c_has_no_candidate_and_an_explicit_dtype_names_it(
        lacking_f16c, tiny_model: Path) -> None:
    assert "f16c" in native_f16.unavailable()
    assert kernels.F16_NATIVE not in kernels.candidates("auto", allow_int8=True)
    assert kernels.candidates("float16", allow_int8=False) == [kernels.FLOAT16]
    with pytest.raises(native_ops.NativeError, match="f16c"):
        gemm_f16(torch.zeros(1, 8), torch.zeros(5, 8, dtype=F16), None)
    with pytest.raises(ValueError, match="does not run here"):
        NativeF16Linear(nn.Linear(8, 5))
    with pytest.raises(ConfigError, match=r"DTYPE=float16\+native: needs .*f16c"):
        load_model("synthetic:tiny", "float16+native", MODELS_DIR)


# -- the kernel against torch -------------------------------------------------------------


@runs_here
@pytest.mark.parametrize("rows", [*range(1, 10), 16, 21])  # 16+: prompt chunks
@pytest.mark.parametrize(("inputs", "outputs"), [(1, 1), (7, 5), (9, 17), (33, 67), (130, 300),
                                                 (777, 50)])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_is_torchs_float32_product_of_the_widened_weight(rows: int, inputs: int,
                                                              outputs: int, bias: bool) -> None:
    torch.manual_seed(rows * 1000 + inputs + outputs)
    x = torch.randn(rows, inputs)
    w = (torch.randn(outputs, inputs) / inputs ** 0.5).to(F16)
    b = torch.randn(outputs) if bias else None
    out = gemm_f16(x, w, b)
    assert out.shape == (rows, outputs) and out.dtype == torch.float32
    # Both float32 sums of the same products, in different orders: a few ulps apart.
    torch.testing.assert_close(out, nn.functional.linear(x, w.float(), b), rtol=1e-5, atol=1e-5)
    wrong = w.clone()
    wrong[-1, -1] += 1  # the comparison can fail: the last weight of the last output counts
    assert not torch.allclose(gemm_f16(x, wrong, b)[:, -1], out[:, -1], rtol=1e-5, atol=1e-5)


@runs_here
@pytest.mark.parametrize("inputs", [261, 777])
def test_a_rows_result_is_the_same_alone_and_in_any_batch(inputs: int) -> None:
    torch.manual_seed(1)
    w, b = torch.randn(203, inputs).to(F16), torch.randn(203)  # tails in both
    x = torch.randn(37, inputs)
    together = gemm_f16(x, w, b)
    for rows in range(1, 38):  # every register tile and their combinations, blocked or not
        assert torch.equal(gemm_f16(x[:rows], w, b), together[:rows])
    seven = x[4:11].contiguous()
    assert torch.equal(gemm_f16(x[7:8], w, b), gemm_f16(seven, w, b)[3:4])
    assert torch.equal(gemm_f16(x[30:31], w, b), together[30:31])


@runs_here
def test_the_linear_module_keeps_fp16_weights_and_any_leading_dims() -> None:
    torch.manual_seed(2)
    linear = nn.Linear(37, 11)
    layer = NativeF16Linear(linear)
    assert layer.weight.dtype == F16 and layer.bias.dtype == torch.float32
    x = torch.randn(2, 5, 37)
    out = layer(x)
    assert out.shape == (2, 5, 11)
    expected = nn.functional.linear(x, linear.weight.to(F16).float(), linear.bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected float16 \(11, 37\)"):
        NativeF16Linear(linear, nn.Parameter(torch.zeros(11, 36, dtype=F16)))


# -- the tiny presets ---------------------------------------------------------------------


def _load(preset: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    folder = resolve_source(f"synthetic:{preset}", MODELS_DIR)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return model


PRESETS = ["tiny", "tiny-llama"]


@runs_here
@pytest.mark.parametrize("preset", PRESETS)
def test_the_tied_head_reads_the_embedding_table_itself(tiny_model: Path, tiny_decoders,
                                                        preset: str) -> None:
    model = _load(preset)
    assert native_f16.tied_head(model) is model.lm_head
    fbgemm = quantize_float16(copy.deepcopy(model))
    native = quantize_native_float16(model)
    table = native.get_input_embeddings()
    assert isinstance(table, HalfEmbedding) and isinstance(native.lm_head, NativeF16Linear)
    assert native.lm_head.weight is table.weight
    assert native.lm_head.weight.untyped_storage().data_ptr() == \
        table.weight.untyped_storage().data_ptr()
    assert not [m for m in native.modules() if type(m) is nn.Linear]
    # fbgemm's float16 holds the table and its packed head copy; this one the table once.
    vocab, width = table.weight.shape
    assert weight_bytes(fbgemm) - weight_bytes(native) == vocab * width * 2


@runs_here
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen"])
def test_a_llama_layers_projections_are_fused_over_their_own_bytes(tiny_decoders,
                                                                   preset: str) -> None:
    """q/k/v and gate/up become one call each, over one stacked weight the parts read (the
    model's bytes unchanged), and a fused call's outputs are the parts' own, bit for bit."""
    model = _load(preset)
    unfused = quantize_float16(copy.deepcopy(model))  # the same fp16 bytes, one per layer
    native = quantize_native_float16(model)
    layers = native.model.layers
    attn, mlp = layers[0].self_attn, layers[0].mlp
    assert isinstance(attn.qkv_proj, native_f16.FusedF16Linear)
    assert isinstance(mlp.gate_up_proj, native_f16.FusedF16Linear)
    assert sum(isinstance(m, native_f16.FusedF16Linear) for m in native.modules()) == \
        2 * len(layers)
    assert weight_bytes(native) == weight_bytes(unfused) - native.lm_head.weight.numel() * 2
    stacked = attn.qkv_proj.weight
    assert attn.k_proj.weight.data_ptr() == \
        stacked.data_ptr() + attn.q_proj.out_features * stacked.shape[1] * 2
    x = torch.randn(5, attn.qkv_proj.in_features)
    for fused, parts in ((attn.qkv_proj, (attn.q_proj, attn.k_proj, attn.v_proj)),
                         (mlp.gate_up_proj, (mlp.gate_proj, mlp.up_proj))):
        outs = fused.split(fused(x))
        assert all(torch.equal(out, part(x)) for out, part in zip(outs, parts, strict=True))
    # the code path counts the layers once, and says what is fused
    path = code_path.decide(native, "auto", "float16+native")
    total = 7 * len(layers) + 1
    assert path.linear_why.startswith(f"{total} of {total} linear layers; "
                                      f"{2 * len(layers)} fused calls")


@runs_here
@pytest.mark.parametrize("preset", PRESETS)
def test_logits_are_close_to_the_float16_candidates(tiny_model: Path, tiny_decoders,
                                                    preset: str) -> None:
    model = _load(preset)
    fbgemm = quantize_float16(copy.deepcopy(model))
    native = quantize_native_float16(model)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 24))
    with torch.inference_mode():
        expected, got = fbgemm(input_ids=ids).logits, native(input_ids=ids).logits
    # The same fp16 weights, float32 sums in another order.
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@runs_here
@pytest.mark.parametrize("preset", PRESETS)
def test_dtype_float16_native_serves_the_same_greedy_tokens_alone_and_batched(
        tiny_model: Path, tiny_decoders, preset: str) -> None:
    loaded = load_model(f"synthetic:{preset}", "float16+native", MODELS_DIR)
    assert loaded.kernels.chosen == "float16+native" and loaded.precision == "float16"
    engine = StepEngine(loaded.model, eos_id=loaded.eos_id, ignore_eos=True, prefill_chunk=8,
                        kv_dtype="auto")
    # Both families' layers run in C on this GEMM where the AVX2 attention runs
    # (server.engine.native_gpt2's NativeGPT2F16, server.engine.native_llama).
    c_layers = "avx2" in native_ops.attention_variants()
    lean = code_path.GPT2_LAYERS if preset == "tiny" else code_path.LLAMA_LAYERS
    layers = code_path.NATIVE_LAYERS if c_layers else lean
    assert (engine.path.linear, engine.path.layers, engine.path.attention_dtype,
            engine.path.cache_dtype) == ("native_f16", layers, "float32", "float16")
    if "avx2" in native_ops.attention_variants():
        assert engine.path.attention == code_path.NATIVE_ATTENTION
    requests = [GenerationRequest(list(range(100 + n, 100 + 2 * n)), 10) for n in (3, 21, 12)]
    alone = [generate_alone(engine, r).token_ids for r in requests]
    rows = [engine.new_row(r) for r in requests]
    while any(r.finish_reason is None for r in rows):
        engine.step(rows)
    assert [r.tokens for r in rows] == alone
    assert all(len(tokens) == 10 for tokens in alone)


@runs_here
def test_it_is_a_float16_candidate_and_read_back_from_the_modules(tiny_model: Path) -> None:
    assert kernels.F16_NATIVE in kernels.candidates("auto", allow_int8=False)
    assert kernels.candidates("float16", allow_int8=False) == [kernels.FLOAT16,
                                                                kernels.F16_NATIVE]
    path = code_path.decide(quantize_native_float16(_load("tiny")))
    assert (path.precision, path.linear) == ("float16+native", "native_f16")
    assert path.linear_why == "9 of 9 linear layers"
