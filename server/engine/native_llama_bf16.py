"""A Llama-family decoder's layers in C for a model served by ``bfloat16+native``
(``native/llama_bf16.c``: AVX-512 BF16).

server.engine.llama_forward runs a Llama, Qwen2 or Mistral layer as torch calls around the
native bf16 GEMMs and the C decode attention; a lone qwen2.5-1.5b step took 106.8 ms that way
against 99.6 ms for its GEMMs alone (AMD EPYC Zen 4, 2 threads, ``python -m bench step paths``):
RMSNorm, RoPE, SiLU, products, residual adds and views, ~25 torch calls a layer. Here each
layer is two C calls around the attention (a prompt chunk's attention stays torch's), and a
step in which every row decodes one token runs all layers in one call: server.engine.native_llama's
plan (llama_f16.c, the fp16 GEMM on AVX2) on the bf16 kernels, with its forward.

The C makes the bf16 model's roundings where torch makes them (llama_bf16.c), except RMSNorm's
sum of squares and SiLU's exponential, so the logits are llama_forward's within bf16 rounding
(tests/test_native_llama_bf16.py states the tolerance); every row goes through the same code
whatever else the step holds, so a row's tokens are the same alone, batched, and beside a
prompt chunk. Caches: bf16 only (attention_bf16.c reads those); server.engine.code_path serves
llama_forward over other caches.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from server.engine import llama_forward, native_ops
from server.engine.native_gemm import NativeBF16Linear
from server.engine.native_llama import NativeLlama, Scratch, Sizes

_WEIGHTS = ("norm1", "norm2", "q_w", "q_b", "k_w", "k_b", "v_w", "v_b", "o_w", "gate_w",
            "up_w", "down_w")


class LlamaBF16Block(ctypes.Structure):
    """llama_bf16.c's ``llama_bf16_block``: one layer's weights."""

    _fields_ = [(name, ctypes.c_void_p) for name in _WEIGHTS]


class LlamaBF16Step(ctypes.Structure):
    """llama_bf16.c's ``llama_bf16_step``: sizes, the step's rotary tables and its scratch."""

    _fields_ = [*((name, ctypes.c_int) for name in ("width", "inter", "heads", "kv_heads",
                                                    "dim", "threads")),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float),
                *((name, ctypes.c_void_p) for name in ("cos", "sin", "x", "q", "k", "v", "att",
                                                       "gate", "up", "y"))]


class BF16Scratch(Scratch):
    """One step's bf16 buffers for ``tokens`` rows (``llama_bf16_step``), holding the bf16
    rotary tables it is given."""

    step_type, dtype = LlamaBF16Step, torch.bfloat16

    @staticmethod
    def widths(sizes: Sizes) -> dict[str, int]:
        """The scratch buffers' widths, in the step struct's order."""
        kv = sizes.kv_heads * sizes.dim
        return {"x": sizes.width, "q": sizes.heads * sizes.dim, "k": kv, "v": kv,
                "att": sizes.heads * sizes.dim, "gate": sizes.inter, "up": sizes.inter,
                "y": sizes.width}

    def qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's rotated queries and keys and its values, [tokens, n]."""
        return self.buffers["q"], self.buffers["k"], self.buffers["v"]


class NativeLlamaBF16(NativeLlama):
    """A bfloat16+native Llama-family model's layers as C calls (``build``; the step engine
    keeps one)."""

    source, prefix = "llama_bf16.c", "llama_bf16"
    scratch_type = BF16Scratch
    hidden_dtype = torch.bfloat16
    caches = (torch.bfloat16,)

    @staticmethod
    def misfit(model: nn.Module) -> str | None:
        """What in ``model`` llama_bf16.c does not take (module ``misfit``)."""
        return misfit(model)

    @staticmethod
    def block_array(layers: nn.ModuleList) -> ctypes.Array:
        """The C blocks: pointers to each layer's norms and packed weights."""
        return (LlamaBF16Block * len(layers))(*(_block(layer) for layer in layers))

    @staticmethod
    def library() -> tuple[ctypes.CDLL | None, str | None]:
        """The bf16 kernels' library (server.engine.native_ops), or (None, why not)."""
        lib = native_ops.library()
        return lib, None if lib is not None else native_ops.unavailable()

    @staticmethod
    def cache_args(caches: native_ops.DecodeCaches) -> tuple:
        """The bf16 caches as ``llama_bf16_decode`` takes them (the forward reaches here only
        with bf16 caches: ``caches``)."""
        return caches.arrays


def _projections(layer: nn.Module) -> tuple[nn.Module, ...]:
    attn, mlp = layer.self_attn, layer.mlp
    return (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,
            mlp.down_proj)


def _block(layer: nn.Module) -> LlamaBF16Block:
    q, k, v, o, gate, up, down = _projections(layer)
    tensors = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
               q.packed, q.bias, k.packed, k.bias, v.packed, v.bias, o.packed, gate.packed,
               up.packed, down.packed)
    return LlamaBF16Block(*(None if t is None else t.data_ptr() for t in tensors))


def misfit(model: nn.Module) -> str | None:
    """What in ``model`` llama_bf16.c does not take (None: it takes it all): a Llama-family
    decoder (llama_forward.supports) whose every projection is an unpadded NativeBF16Linear
    (biases on q, k and v only), bf16 RMSNorm weights with one eps, one attention scale,
    widths in whole 16-lane vectors and a head dim up to 256."""
    if not llama_forward.supports(model):
        return "not a Llama-family decoder llama_forward computes"
    heads, kv_heads, dim = llama_forward.shape(model.config)
    first = model.model.layers[0]
    for layer, block in enumerate(model.model.layers):
        problem = _layer_misfit(block, first)
        if problem:
            return f"layer {layer}: {problem}"
    width, inter = first.self_attn.o_proj.out_features, first.mlp.down_proj.in_features
    if width % 16 or inter % 16 or dim % 16 or dim > native_ops.MAX_HEAD_DIM or \
            heads % kv_heads:
        return (f"width {width}, intermediate {inter}, head dim {dim}, {heads} heads over "
                f"{kv_heads}: not whole vectors (multiples of 16, head dim up to 256)")
    return None


def _layer_misfit(block: nn.Module, first: nn.Module) -> str | None:
    projections = _projections(block)
    if not all(type(m) is NativeBF16Linear and m.padded == m.out_features
               for m in projections):
        return "a projection is not an unpadded native bf16 layer"
    if any(m.bias is not None for m in projections[3:]):
        return "o, gate, up or down with a bias"
    width = first.self_attn.o_proj.out_features
    norms = (block.input_layernorm, block.post_attention_layernorm)
    if not all(n.weight.dtype == torch.bfloat16 and tuple(n.weight.shape) == (width,)
               and n.weight.is_contiguous()
               and n.variance_epsilon == first.input_layernorm.variance_epsilon
               for n in norms):
        return "an RMSNorm not bf16 of the width, or another eps"
    if block.self_attn.scaling != first.self_attn.scaling:
        return "an attention scale unlike layer 0's"
    return None
