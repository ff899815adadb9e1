"""server.engine.code_path: one decision per model (precision, linear kernel, layers, attention,
dtypes, reasons), decided for any CPU by passing what it runs (``Machine``), followed by the
step engine, and reported by /ready and /metrics."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from harness.waiting import wait_until
from server.engine import code_path, gpt2_forward, kernels, native_gemm, native_ops, row_cache
from server.engine.code_path import CodePath, Machine, decide
from server.engine.decoding import GenerationRequest
from server.engine.model import resolve_source
from server.engine.quantize import conv1d_to_linear, quantize_float16, quantize_int8
from server.engine.step import StepEngine, generate_alone
from tests.conftest import MODELS_DIR

# As on a CPU with AVX-512 BF16 and the kernels built (Zen 4): both attention variants run.
NATIVE_HERE = Machine(None, ("avx512_bf16", "avx2"))
# As on an AVX2-only CPU (Zen 3): the AVX2 decode attention, no AVX-512 kernels.
AVX2_ONLY = Machine("no avx512f, avx512bw, avx512vl, avx512_bf16 on this CPU", ("avx2",))
NO_BF16 = Machine("no avx512_bf16 on this CPU")  # and no attention variant (no AVX2 + F16C)


def _tiny(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """synthetic:tiny (GPT-2) with nn.Linear layers, as the server loads it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return model.to(dtype)


def test_a_float32_gpt2_runs_the_lean_forward_and_torch_attention(tiny_model: Path) -> None:
    path = decide(_tiny(), "auto", "float32", NATIVE_HERE)
    assert (path.precision, path.linear, path.layers, path.attention) == \
        ("float32", "blas_fp32", code_path.GPT2_LAYERS, code_path.TORCH_ATTENTION)
    assert path.layers_why == ("linear layers run blas_fp32: the C layers need native_bf16, "
                               "native_f16 or native_int8")
    assert "float32 caches" in path.attention_why
    assert (path.attention_dtype, path.kv_dtype, path.cache_dtype) == \
        ("float32", "model", "float32")  # KV_DTYPE=auto keeps float32 weights full width


def test_a_model_that_is_not_gpt2_runs_its_own_forward(tiny_model: Path) -> None:
    model = _tiny()
    model.config.model_type = "not-gpt2"
    path = decide(model, "model", machine=NATIVE_HERE)
    assert path.layers == code_path.MODEL_FORWARD
    assert path.layers_why == "no lean forward for model_type not-gpt2"


@pytest.mark.parametrize(("machine", "attention", "why"), [
    (NATIVE_HERE, code_path.NATIVE_ATTENTION,
     "decoding rows of bfloat16 caches in C (avx512_bf16)"),
    (AVX2_ONLY, code_path.NATIVE_ATTENTION, "decoding rows of bfloat16 caches in C (avx2)"),
    (NO_BF16, code_path.TORCH_ATTENTION,
     "no C decode attention for bfloat16 caches runs on this machine (avx512_bf16 needs "
     "avx512f, avx512bw, avx512vl, avx512_bf16; avx2 needs avx2, fma, f16c;"),
], ids=["avx512-bf16", "avx2-only", "neither"])
def test_bf16_caches_are_attended_in_c_where_a_variant_runs(
        tiny_model: Path, machine: Machine, attention: str, why: str) -> None:
    path = decide(_tiny(torch.bfloat16), "auto", "bfloat16", machine)
    assert path.attention == attention and path.attention_why.startswith(why)
    # torch's attention (prompt chunks, or every row without the kernel) widens to float32.
    assert (path.attention_dtype, path.cache_dtype) == ("float32", "bfloat16")
    assert path.layers == code_path.GPT2_LAYERS  # plain bf16 linears: not the C layers


@pytest.mark.parametrize(("machine", "attention", "why"), [
    (NATIVE_HERE, code_path.NATIVE_ATTENTION, "decoding rows of float16 caches in C (avx2)"),
    (AVX2_ONLY, code_path.NATIVE_ATTENTION, "decoding rows of float16 caches in C (avx2)"),
    (NO_BF16, code_path.TORCH_ATTENTION,
     "no C decode attention for float16 caches runs on this machine (avx2 needs avx2, fma, "
     "f16c;"),
], ids=["avx512-bf16", "avx2-only", "neither"])
def test_a_float16_models_caches_are_attended_in_c_by_the_avx2_variant(
        tiny_model: Path, machine: Machine, attention: str, why: str) -> None:
    """DTYPE=float16 (fp16 weights computed in float32), KV_DTYPE=auto: float16 caches read
    by float32 queries, which only the AVX2 variant takes (on AVX-512 CPUs too)."""
    path = decide(quantize_float16(_tiny()), "auto", "float16", machine)
    assert path.attention == attention and path.attention_why.startswith(why)
    assert (path.attention_dtype, path.kv_dtype, path.cache_dtype) == \
        ("float32", "float16", "float16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("machine", "attention", "why"), [
    (NATIVE_HERE, code_path.NATIVE_ATTENTION, "decoding rows of int8 caches in C (avx2)"),
    (AVX2_ONLY, code_path.NATIVE_ATTENTION, "decoding rows of int8 caches in C (avx2)"),
    (NO_BF16, code_path.TORCH_ATTENTION,
     "no C decode attention for int8 caches runs on this machine (avx2 needs avx2, fma, f16c;"),
], ids=["avx512-bf16", "avx2-only", "neither"])
def test_int8_caches_are_attended_in_c_by_the_avx2_variant_only(
        tiny_model: Path, machine: Machine, attention: str, why: str,
        dtype: torch.dtype) -> None:
    """KV_DTYPE=int8 with float32 or bf16 compute: int8 caches, which only the AVX2 variant
    reads (an AVX-512 BF16 CPU runs that one for them); torch's attention in float32."""
    path = decide(_tiny(dtype), "int8", machine=machine)
    assert path.attention == attention and path.attention_why.startswith(why)
    assert (path.attention_dtype, path.kv_dtype, path.cache_dtype) == \
        ("float32", "int8", "int8")


def test_int8_caches_keep_a_native_packed_gpt2_on_its_torch_layers(tiny_model: Path,
                                                                   monkeypatch) -> None:
    """GPT-2's C layers (gpt2_bf16.c) attend bf16 caches only: with KV_DTYPE=int8 a model
    they would take runs the lean torch forward instead (the AVX2 attention still in C)."""
    monkeypatch.setattr(code_path.native_gpt2, "misfit", lambda model: None)  # as if packed
    model = _tiny(torch.bfloat16)
    assert decide(model, "auto", "bfloat16+native", NATIVE_HERE).layers == \
        code_path.NATIVE_LAYERS
    path = decide(model, "int8", "bfloat16+native", NATIVE_HERE)
    assert (path.layers, path.attention) == (code_path.GPT2_LAYERS, code_path.NATIVE_ATTENTION)
    assert path.layers_why == "int8 caches: the C layers keep bf16 caches"


def test_this_cpu_names_what_it_lacks_for_the_native_path(tiny_model: Path) -> None:
    here = Machine.here()
    path = decide(_tiny(torch.bfloat16), "auto")
    if native_gemm.missing_flags():
        assert here.native_blocked.startswith("no ") and "avx512_bf16" in here.native_blocked
    assert (here.native_blocked is None) == native_gemm.available()
    assert here.attention == native_ops.attention_variants()
    runs = native_ops.attention_variant(torch.bfloat16, torch.bfloat16) is not None
    assert path.attention == (code_path.NATIVE_ATTENTION if runs else code_path.TORCH_ATTENTION)


@pytest.mark.skipif("avx2" not in native_ops.attention_variants(),
                    reason=f"no AVX2 decode attention here: {native_ops.attention_unavailable()}")
def test_an_avx2_cpu_serves_float16_models_with_the_c_decode_attention(tiny_model: Path) -> None:
    """On this CPU (AVX2 + FMA + F16C, e.g. Zen 3): a float16 model's engine attends its
    decoding rows in C, over float16 caches."""
    engine = StepEngine(quantize_float16(_tiny()), 0, kv_dtype="auto")
    assert (engine.path.attention, engine.path.cache_dtype) == \
        (code_path.NATIVE_ATTENTION, "float16")
    assert engine.path.attention_why.endswith("(avx2); prompt chunks in torch")


@pytest.mark.skipif(bool(native_gemm.missing_flags()),
                    reason=f"native path needs {', '.join(native_gemm.missing_flags())}")
def test_a_native_packed_gpt2_runs_the_c_layers_here(tiny_model: Path) -> None:
    if not native_gemm.available():
        pytest.skip("the native kernels did not build or load here")
    path = decide(native_gemm.pack_native(_tiny()), "auto")
    assert (path.precision, path.linear, path.layers, path.attention) == \
        ("bfloat16+native", "native_bf16", code_path.NATIVE_LAYERS, code_path.NATIVE_ATTENTION)


@pytest.mark.parametrize(("build", "linear", "precision"), [
    (lambda m: m, "blas_fp32", kernels.FLOAT32),
    (lambda m: kernels.swap_linears(m, to_onednn=True) and m, "onednn_fp32", kernels.ONEDNN),
    (quantize_float16, "fbgemm_fp16", kernels.FLOAT16),
    (quantize_int8, "fbgemm_int8", kernels.INT8),
    (lambda m: m.to(torch.bfloat16), "torch_bf16", kernels.BFLOAT16),
])
def test_the_linear_kernel_is_read_from_the_modules(tiny_model: Path, build, linear: str,
                                                    precision: str) -> None:
    """Unmeasured (a bare engine), the precision is the candidate kernels names that way."""
    path = decide(build(_tiny()), "auto", machine=NO_BF16)
    assert (path.linear, path.precision) == (linear, precision)
    assert path.linear_why == "9 of 9 linear layers"


def test_packed_bf16_is_read_as_onednn_where_it_packs(tiny_model: Path) -> None:
    if not kernels.packing_available():
        pytest.skip("oneDNN cannot prepack bf16 weights on this CPU (AVX-512 needed)")
    path = decide(kernels.pack_bfloat16(_tiny()), "auto", machine=NO_BF16)
    assert (path.linear, path.precision) == ("onednn_packed_bf16", kernels.BFLOAT16)


def test_an_unknown_kv_dtype_is_refused(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="float16, int8, model"):
        decide(_tiny(), "int4", machine=NO_BF16)


def test_the_engine_follows_the_record_not_its_own_choice(tiny_model: Path,
                                                          monkeypatch) -> None:
    """A GPT-2 the engine would run through gpt2_forward, given a record that says
    transformers: the model's own forward runs, and the tokens are the same."""
    model = _tiny()
    request = GenerationRequest(list(range(100, 109)), 6)
    lean = generate_alone(StepEngine(copy.deepcopy(model), 0, ignore_eos=True), request)
    calls = []
    real = gpt2_forward.forward
    monkeypatch.setattr(gpt2_forward, "forward", lambda *a: calls.append(1) or real(*a))
    forced = replace(decide(model, "model"), layers=code_path.MODEL_FORWARD)
    engine = StepEngine(model, 0, ignore_eos=True, path=forced)
    assert engine.path is forced and engine._native is None
    assert generate_alone(engine, request) == lean and not calls


def test_the_engine_takes_its_kv_dtype_and_attention_dtype_from_the_record(
        tiny_model: Path, monkeypatch) -> None:
    model = _tiny()
    forced = replace(decide(model, "model"), kv_dtype="float16", attention_dtype="float64")
    engine = StepEngine(model, 0, ignore_eos=True, kv_dtype="model", path=forced)
    row = engine.new_row(GenerationRequest(list(range(100, 105)), 2))
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append(q.dtype)
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(row_cache.functional, "scaled_dot_product_attention", recording)
    while row.finish_reason is None:
        engine.step([row])
    assert row.cache.keys[0].dtype == torch.float16 and set(seen) == {torch.float64}


def test_ready_and_metrics_report_the_path(client, operator_headers) -> None:
    answers = []

    def ready() -> bool:
        answers.append(client.get("/ready", headers=operator_headers))
        return answers[-1].status_code != 503

    wait_until(ready, "/ready says yes", timeout_s=300, interval_s=0.05)
    body = answers[-1].json
    reported = CodePath(**body["code_path"])
    assert reported.precision == body["kernels"]["chosen"]
    assert reported.kv_dtype == body["kv_dtype"]
    assert reported.layers == code_path.GPT2_LAYERS  # synthetic:tiny is GPT-2
    assert all(getattr(reported, f"{part}_why") for part in ("linear", "layers", "attention"))
    metrics = client.get("/metrics", headers=operator_headers).get_data(as_text=True)
    labels = [s.labels for family in text_string_to_metric_families(metrics)
              for s in family.samples if s.name == "gpt_code_path" and s.value == 1]
    assert labels == [{key: body["code_path"][key] for key in labels[0]}]
    assert set(labels[0]) == {"precision", "linear", "layers", "attention",
                              "attention_dtype", "cache_dtype"}


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen"])
def test_ready_names_the_llama_forward_for_the_llama_family(make_app, tiny_decoders,
                                                            operator_headers,
                                                            preset: str) -> None:
    client = make_app(MODEL=f"synthetic:{preset}").test_client()
    answers = []

    def ready() -> bool:
        answers.append(client.get("/ready", headers=operator_headers))
        return answers[-1].status_code != 503

    wait_until(ready, "/ready says yes", timeout_s=300, interval_s=0.05)
    path = answers[-1].json["code_path"]
    assert path["layers"] == code_path.LLAMA_LAYERS
    assert path["layers_why"].startswith("a Llama-family decoder (model_type ")
