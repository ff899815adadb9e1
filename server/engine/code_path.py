"""Decide, once per loaded model, which code runs its steps: one record, with the reasons.

Four choices make a step's path, and each used to be made where it was used:

- precision: the number format and kernel candidate measured fastest at startup
  (server.engine.kernels ``choose``), e.g. ``bfloat16+native``;
- linear: the kernel the model's linear layers run on, read from their modules;
- layers: the project's C layers (server.engine.native_gpt2 for a GPT-2 on the native bf16,
  fp16 or int8 GEMMs, server.engine.native_llama for a float16+native Llama-family decoder,
  native_llama_bf16 for a bfloat16+native one), a lean torch forward for its family
  (server.engine.gpt2_forward for another GPT-2, server.engine.llama_forward for a Llama,
  Qwen2 or Mistral decoder), or the model's own transformers forward; the record names the
  module that runs (``LEAN_FORWARDS``);
- attention: the C decode attention over bf16, fp16 or int8 caches (row_cache.NativeDecode;
  an AVX-512 BF16 or an AVX2 variant, server.engine.native_ops) or torch's
  ``scaled_dot_product_attention``, the dtype torch's attention computes in and the dtype
  the caches store.

``decide`` makes them all from the model, the KV_DTYPE setting and what this machine runs
(``Machine``: passed explicitly, tests decide for a CPU they are not on); the step engine
(server.engine.step) follows the ``CodePath`` it is given, and /ready reports it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch import nn

from server.engine import (
    gpt2_forward,
    llama_forward,
    native_f16,
    native_gemm,
    native_gpt2,
    native_llama,
    native_llama_bf16,
)
from server.engine.native_int8 import NativeInt8Linear
from server.engine.native_ops import (
    ATTENTION_VARIANTS,
    attention_takers,
    attention_variant,
    attention_variants,
)
from server.engine.row_cache import attention_dtype, resolve_kv_dtype, storage_dtype

NATIVE_LAYERS, MODEL_FORWARD = "native_c", "transformers"
GPT2_LAYERS, LLAMA_LAYERS = "gpt2_forward", "llama_forward"
# The lean torch forwards by the name ``layers`` reports: server.engine.<name>.forward runs.
LEAN_FORWARDS = {GPT2_LAYERS: gpt2_forward, LLAMA_LAYERS: llama_forward}
NATIVE_ATTENTION, TORCH_ATTENTION = "native_decode", "torch_sdpa"
# Linear kernel -> the precision server.engine.kernels names that candidate.
PRECISIONS = {"blas_fp32": "float32", "onednn_fp32": "float32+onednn",
              "fbgemm_fp16": "float16", "native_f16": "float16+native",
              "onednn_packed_bf16": "bfloat16",
              "torch_bf16": "bfloat16", "native_bf16": "bfloat16+native",
              "fbgemm_int8": "int8", "native_int8": "int8+native"}


@dataclass(frozen=True)
class Machine:
    """What this machine can run: ``native_blocked`` says why the project's C kernels cannot
    (e.g. "no avx512_bf16"), None when they run; ``attention`` names the C decode
    attention's variants that run here (server.engine.native_ops ``ATTENTION_VARIANTS`` keys,
    preferred first; the AVX2 one needs no AVX-512)."""

    native_blocked: str | None
    attention: tuple[str, ...] = ()

    @classmethod
    def here(cls) -> Machine:
        """This CPU, with the kernels as server.engine.native_gemm built and loaded them."""
        missing = native_gemm.missing_flags()
        if missing:
            return cls(f"no {', '.join(missing)} on this CPU", attention_variants())
        return cls(None if native_gemm.library() is not None
                   else "the native kernels did not build or load (see the startup log)",
                   attention_variants())


@dataclass(frozen=True)
class CodePath:
    """The path of a model's steps, and why each part was chosen."""

    precision: str  # kernels' choice (or read from the modules when not measured)
    linear: str  # a PRECISIONS key
    linear_why: str
    layers: str  # NATIVE_LAYERS | a LEAN_FORWARDS key | MODEL_FORWARD
    layers_why: str
    attention: str  # NATIVE_ATTENTION | TORCH_ATTENTION (decoding rows; chunks: torch)
    attention_why: str
    attention_dtype: str  # what torch's attention computes in
    kv_dtype: str  # the KV_DTYPE policy as resolved: float16 | int8 | model
    cache_dtype: str  # what the caches store

    def as_dict(self) -> dict:
        """The JSON form (/ready and run.json ``code_path``)."""
        return asdict(self)

    @property
    def torch_attention_dtype(self) -> torch.dtype:
        """``attention_dtype`` as a torch dtype."""
        return getattr(torch, self.attention_dtype)

    def summary(self) -> str:
        """One line for the startup log."""
        return (f"code path: {self.precision}; linear {self.linear} ({self.linear_why}); "
                f"layers {self.layers} ({self.layers_why}); attention {self.attention} "
                f"({self.attention_why}) in {self.attention_dtype}, caches in "
                f"{self.cache_dtype}")


def decide(model: nn.Module, kv_dtype: str = "model", precision: str | None = None,
           machine: Machine | None = None) -> CodePath:
    """The code path for ``model`` as it is now (packed or quantized already) with KV_DTYPE
    ``kv_dtype`` (auto resolves), on ``machine`` (default: this one); ``precision`` is
    kernels' measured choice. Raises ValueError for an unknown KV dtype."""
    machine = machine or Machine.here()
    linear, linear_why = _linear(model)
    precision = precision or PRECISIONS.get(linear, "float32")
    kv_dtype = resolve_kv_dtype(kv_dtype, precision.split("+")[0])
    computed = _computed_dtype(model)
    cache = storage_dtype(computed, kv_dtype)
    layers, layers_why = _layers(model, linear, machine, cache)
    attention, attention_why = _attention(computed, cache, machine)
    return CodePath(precision, linear, linear_why, layers, layers_why, attention,
                    attention_why, _name(attention_dtype(computed)), kv_dtype, _name(cache))


def _layers(model: nn.Module, linear: str, machine: Machine,
            cache: torch.dtype) -> tuple[str, str]:
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if llama_forward.supports(model):
        if linear == "native_bf16":
            return _llama_bf16_layers(model, kind, machine, cache)
        return _llama_layers(model, kind, machine)
    if not gpt2_forward.supports(model):
        what = "this gpt2 config" if kind == "gpt2" else f"model_type {kind}"  # e.g. upcast
        return MODEL_FORWARD, f"no lean forward for {what}"
    if linear == "native_f16":
        return _gpt2_f16_layers(model, machine)
    if linear == "native_int8":
        return _gpt2_int8_layers(model, machine)
    misfit = native_gpt2.misfit(model)
    if misfit and linear != "native_bf16":
        return GPT2_LAYERS, (f"linear layers run {linear}: the C layers need native_bf16, "
                             "native_f16 or native_int8")
    if misfit or machine.native_blocked:
        return GPT2_LAYERS, misfit or machine.native_blocked
    if cache != torch.bfloat16:  # KV_DTYPE=int8: gpt2_bf16.c attends bf16 caches only
        return GPT2_LAYERS, f"{_name(cache)} caches: the C layers keep bf16 caches"
    return NATIVE_LAYERS, "every layer native-packed bf16 GPT-2 that gpt2_bf16.c takes"


def _gpt2_f16_layers(model: nn.Module, machine: Machine) -> tuple[str, str]:
    """gpt2_f16.c's C layers where they take the model and the AVX2 attention runs here, else
    gpt2_forward, with the reason (any cache dtype, as ``_llama_layers``)."""
    misfit = native_gpt2.misfit_f16(model) or _avx2_layers_blocked(machine)
    if misfit:
        return GPT2_LAYERS, f"no fp16 C layers: {misfit}"
    return NATIVE_LAYERS, "every layer native fp16 GPT-2 that gpt2_f16.c takes"


def _gpt2_int8_layers(model: nn.Module, machine: Machine) -> tuple[str, str]:
    """gpt2_f16.c's float32 layers on the int8 GEMMs (``gpt2_int8_*``) where they take the
    model and the AVX2 attention runs here, else gpt2_forward, with the reason (any cache
    dtype, as the fp16 layers)."""
    misfit = native_gpt2.misfit_int8(model) or _avx2_layers_blocked(machine)
    if misfit:
        return GPT2_LAYERS, f"no int8 C layers: {misfit}"
    return NATIVE_LAYERS, "every layer native int8 GPT-2 that gpt2_f16.c's int8 entry points take"


def _avx2_layers_blocked(machine: Machine) -> str | None:
    """Why the C layers on the fp16 GEMM cannot run on ``machine`` (None: they can)."""
    if "avx2" not in machine.attention:
        return "the AVX2 decode attention does not run here"
    return native_f16.unavailable()


def _llama_layers(model: nn.Module, kind: str, machine: Machine) -> tuple[str, str]:
    """llama_f16.c's C layers where they take the model and the AVX2 attention runs here, else
    the lean torch forward, with the reason. Any cache dtype: rows whose cache the C attention
    does not read are attended by torch between the layers' two C calls."""
    lean = f"a Llama-family decoder (model_type {kind})"
    misfit = native_llama.misfit(model) or _avx2_layers_blocked(machine)
    if misfit:
        return LLAMA_LAYERS, f"{lean}; no C layers: {misfit}"
    return NATIVE_LAYERS, (f"{lean}, every layer on the native fp16 GEMM, fused, that "
                           "llama_f16.c takes")


def _llama_bf16_layers(model: nn.Module, kind: str, machine: Machine,
                       cache: torch.dtype) -> tuple[str, str]:
    """llama_bf16.c's C layers where they take the model, the bf16 kernels run here and the
    caches are bf16 (what attention_bf16.c reads), else the lean torch forward, with the
    reason."""
    lean = f"a Llama-family decoder (model_type {kind})"
    misfit = native_llama_bf16.misfit(model) or machine.native_blocked
    if misfit is None and cache != torch.bfloat16:  # KV_DTYPE=int8
        misfit = f"{_name(cache)} caches: the bf16 C layers keep bf16 caches"
    if misfit:
        return LLAMA_LAYERS, f"{lean}; no C layers: {misfit}"
    return NATIVE_LAYERS, (f"{lean}, every layer on the native bf16 GEMM, that "
                           "llama_bf16.c takes")


def _attention(computed: torch.dtype, cache: torch.dtype, machine: Machine) -> tuple[str, str]:
    """The C decode attention where a variant that ``machine`` runs takes queries computed in
    ``computed`` over ``cache`` caches (AVX-512 BF16: bf16 over bf16; AVX2 + FMA + F16C:
    float32 or bf16 over float16 or bf16), else torch's.

    Assumed, not timed at startup: the kernel reads each cache once in its 16-bit dtype, where
    torch first widens the row's whole cache to float32 per layer (2 bytes read, 4 written and
    4 read again per element) and makes one call per row and layer; decode attention is
    bound by those bytes, so the kernel's advantage grows with the context and is not a close
    call for the startup table to settle. One case it may not win: a lone row of a model with
    fewer kv heads than threads (its OpenMP loop has fewer tasks than threads, torch's SDPA
    splits the row across them). The startup table's decode steps (server.engine.kernels)
    already run with it, so the precision it chooses is measured with this attention.
    ``python -m bench attention`` times both side by side; if a CPU shows torch ahead, time
    a step with ``NativeDecode`` on and off in that table rather than add a rule here."""
    takers = attention_takers(computed, cache)
    if not takers:
        return TORCH_ATTENTION, (f"{_name(cache)} caches read by {_name(computed)} queries: "
                                 "no variant of the C kernel takes them")
    variant = attention_variant(computed, cache, machine.attention)
    if variant is None:
        needs = "; ".join(f"{name} needs {', '.join(ATTENTION_VARIANTS[name])}"
                          for name in takers)
        return TORCH_ATTENTION, (f"no C decode attention for {_name(cache)} caches runs on "
                                 f"this machine ({needs}; or the library did not build or "
                                 "load: see the startup log)")
    return NATIVE_ATTENTION, (f"decoding rows of {_name(cache)} caches in C ({variant}); "
                              "prompt chunks in torch")


def _linear(model: nn.Module) -> tuple[str, str]:
    """The kernel most of the model's linear layers run on, and how many do."""
    kinds = Counter(kind for kind in map(_linear_kind, model.modules()) if kind is not None)
    if not kinds:
        return "blas_fp32", "no linear layer"
    (kind, count), total = kinds.most_common(1)[0], sum(kinds.values())
    variants = sorted({m.variant for m in model.modules() if isinstance(m, NativeInt8Linear)})
    variant = f", {'/'.join(variants)} variant" if kind == "native_int8" else ""
    fused = sum(1 for m in model.modules() if getattr(type(m), "fuses", False))
    calls = f"; {fused} fused calls (q/k/v, gate/up)" if fused else ""
    return kind, f"{count} of {total} linear layers{variant}{calls}"


def _linear_kind(module: nn.Module) -> str | None:
    if isinstance(module, native_gemm.NativeBF16Linear):
        return "native_bf16"
    kind = getattr(type(module), "linear_kernel", None)  # server.engine.kernels' modules
    if kind is not None:
        return kind
    if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
        return "fbgemm_fp16" if module._packed_params.dtype == torch.float16 else "fbgemm_int8"
    if isinstance(module, nn.Linear):
        return "torch_bf16" if module.weight.dtype == torch.bfloat16 else "blas_fp32"
    return None


def _computed_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's activations (and so its keys and values) are computed in: its
    token embedding's (float16 and int8 weights compute in float32)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") \
        else None
    if embeddings is not None:  # a float16-stored table says what it computes in
        computed = getattr(embeddings, "computed_dtype", None)  # a table without .weight too
        return computed if computed is not None else embeddings.weight.dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
