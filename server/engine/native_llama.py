"""A Llama-family decoder's layers in C for a model served by ``float16+native``
(``native/llama_f16.c``: AVX2 + FMA + F16C).

server.engine.llama_forward runs a Llama, Qwen2 or Mistral layer as torch calls around the
native fp16 GEMMs and the C decode attention; what was left of a lone step was dispatch:
RMSNorm, RoPE, SiLU, products, residual adds and views, ~25 torch calls a layer (~18 ms of
a 126 ms qwen2.5-1.5b step on the AMD EPYC Zen 3, 2 threads). Here each layer is two C calls
around the attention (a prompt chunk's attention stays torch's), and a step in which every
row decodes one token runs all layers in one call, as server.engine.native_gpt2 does for
GPT-2 on AVX-512 BF16.

Every row goes through the same C code whatever else the step holds, so a row's tokens are
the same alone, batched, and beside a prompt chunk (tests/test_native_llama.py). The C sums
RMSNorm's squares and computes SiLU's exponential in other orders than torch, so the logits
differ from llama_forward's by float32 rounding (a stated tolerance in the tests); the GEMMs,
the attention and the final norm and LM head are the same code as that path's.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from server.engine import llama_forward, native_f16, native_ops
from server.engine.native_f16 import FusedF16Linear, NativeF16Linear
from server.engine.row_cache import PackedStep, packed_attention

_WEIGHTS = ("norm1", "norm2", "qkv_b", "qkv_w", "o_w", "gate_up_w", "down_w")
# What llama_f16.c attends through: the AVX2 decode attention, float32 queries over these.
CACHES = (torch.float16, torch.bfloat16, torch.int8)


class LlamaBlock(ctypes.Structure):
    """llama_f16.c's ``llama_block``: one layer's weights."""

    _fields_ = [(name, ctypes.c_void_p) for name in _WEIGHTS]


class LlamaStep(ctypes.Structure):
    """llama_f16.c's ``llama_step``: sizes, the step's rotary tables and its scratch."""

    _fields_ = [*((name, ctypes.c_int) for name in ("width", "inter", "heads", "kv_heads",
                                                    "dim", "threads")),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float),
                *((name, ctypes.c_void_p) for name in ("cos", "sin", "x", "qkv", "att",
                                                       "inner", "act", "y"))]


class Sizes:
    """A Llama-family model's sizes as llama_f16.c takes them, from its config and layers."""

    def __init__(self, model: nn.Module) -> None:
        first = model.model.layers[0]
        self.heads, self.kv_heads, self.dim = llama_forward.shape(model.config)
        self.width = first.self_attn.o_proj.out_features
        self.inter = first.mlp.down_proj.in_features
        self.eps = float(first.input_layernorm.variance_epsilon)
        self.scale = float(first.self_attn.scaling)
        self.qkv = (self.heads + 2 * self.kv_heads) * self.dim


class Scratch:
    """One step's buffers for ``tokens`` rows (llama_f16.c's ``llama_step``), holding the
    rotary tables ``cos`` and ``sin`` [tokens, dim] it is given."""

    step_type, dtype = LlamaStep, torch.float32

    def __init__(self, sizes: Sizes, tokens: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.tokens, self.sizes = tokens, sizes
        widths = self.widths(sizes)
        self.buffers = {name: torch.empty(tokens, n, dtype=self.dtype)
                        for name, n in widths.items()}
        self.cos, self.sin = cos, sin  # kept alive while the C reads them
        self.step = self.step_type(sizes.width, sizes.inter, sizes.heads, sizes.kv_heads,
                                   sizes.dim, native_ops._threads(), sizes.eps, sizes.scale,
                                   cos.data_ptr(), sin.data_ptr(),
                                   *(self.buffers[n].data_ptr() for n in widths))

    @staticmethod
    def widths(sizes: Sizes) -> dict[str, int]:
        """The scratch buffers' widths, in the step struct's order."""
        return {"x": sizes.width, "qkv": sizes.qkv, "att": sizes.heads * sizes.dim,
                "inner": 2 * sizes.inter, "act": sizes.inter, "y": sizes.width}

    def qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's rotated queries and keys and its values, [tokens, n] views of where the
        C left them."""
        sizes = self.sizes
        return self.buffers["qkv"].split([sizes.heads * sizes.dim, sizes.kv_heads * sizes.dim,
                                          sizes.kv_heads * sizes.dim], dim=1)


class NativeLlama(native_f16.F16Layers):
    """A float16+native Llama-family model's layers as C calls (``build``; the step engine
    keeps one). server.engine.native_llama_bf16.NativeLlamaBF16 is the same on the bf16
    kernels: the class attributes below are what differ."""

    source, prefix = "llama_f16.c", "llama"
    scratch_type = Scratch
    hidden_dtype = torch.float32  # the residual stream the C layers update
    caches = CACHES  # cache dtypes the one-call decode attends

    def __init__(self, model: nn.Module) -> None:
        problem = self.misfit(model)
        layers = model.model.layers
        super().__init__(model, problem, None if problem else
                         self.block_array(layers))
        self.sizes = Sizes(model)
        self._attn = [layer.self_attn for layer in layers]

    @staticmethod
    def misfit(model: nn.Module) -> str | None:
        """What in ``model`` these C layers do not take (module ``misfit``)."""
        return misfit(model)

    @staticmethod
    def block_array(layers: nn.ModuleList) -> ctypes.Array:
        """The C blocks: pointers to each layer's weights."""
        return (LlamaBlock * len(layers))(*(_block(layer) for layer in layers))

    @classmethod
    def build(cls, model: nn.Module) -> NativeLlama:
        """The C layers for ``model`` (pointers to its weights as they are now: build after
        quantizing and fusing), which ``misfit`` found they take."""
        return cls(model)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, step: PackedStep,
                due: torch.Tensor) -> torch.Tensor:
        """Logits [len(due), vocab], as server.engine.llama_forward.forward."""
        body = self._model.model
        hidden = body.embed_tokens(ids).to(self.hidden_dtype).contiguous()
        rotary = llama_forward.Rotary(body.rotary_emb, hidden, positions)
        scratch = self.scratch_type(self.sizes, hidden.shape[0], rotary.cos[:, 0].contiguous(),
                                    rotary.sin[:, 0].contiguous())
        native = step.native
        if native is not None and len(native.indexes) == len(step.segments) and \
                native.caches.dtype in self.caches:
            self._every_layer(scratch.step, hidden, native.caches,
                              (self.sizes.kv_heads, self.sizes.dim))
        else:
            self._layers(hidden, step, scratch)
        return self._model.lm_head(llama_forward.rms_norm(body.norm, hidden[due]))

    def _layers(self, hidden: torch.Tensor, step: PackedStep, scratch: Scratch) -> None:
        """Layer by layer: C before and after, the packed attention in between."""
        sizes, tokens = self.sizes, scratch.tokens
        att = scratch.buffers["att"]
        q, k, v = (t.view(tokens, -1, sizes.dim)[None].transpose(1, 2) for t in scratch.qkv())
        for layer, attn in enumerate(self._attn):
            self._half("attn_in", layer, scratch.step, hidden)
            step.update(k, v, layer)
            out, _ = packed_attention(attn, q, k, v, None, scaling=attn.scaling,
                                      packed_step=step)
            att.copy_(out.reshape(tokens, -1))
            self._half("attn_out", layer, scratch.step, hidden)


def _block(layer: nn.Module) -> LlamaBlock:
    attn, mlp = layer.self_attn, layer.mlp
    tensors = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
               attn.qkv_proj.bias, attn.qkv_proj.weight, attn.o_proj.weight,
               mlp.gate_up_proj.weight, mlp.down_proj.weight)
    return LlamaBlock(*(None if t is None else t.data_ptr() for t in tensors))


def misfit(model: nn.Module) -> str | None:
    """What in ``model`` llama_f16.c does not take (None: it takes it all): a Llama-family
    decoder (llama_forward.supports) whose every layer has fused q|k|v and gate|up and plain
    o and down projections on the native fp16 GEMM (no biases but q|k|v's), float32 RMSNorm
    weights with one eps, one attention scale, widths in whole vectors."""
    if not llama_forward.supports(model):
        return "not a Llama-family decoder llama_forward computes"
    heads, kv_heads, dim = llama_forward.shape(model.config)
    first = model.model.layers[0]
    width = first.self_attn.o_proj.out_features
    for layer, block in enumerate(model.model.layers):
        problem = _layer_misfit(block, first, width)
        if problem:
            return f"layer {layer}: {problem}"
    inter = first.mlp.down_proj.in_features
    if width % 8 or inter % 8 or dim % 16 or dim > native_ops.MAX_HEAD_DIM or heads % kv_heads:
        return (f"width {width}, intermediate {inter}, head dim {dim}, {heads} heads over "
                f"{kv_heads}: not whole vectors (head dim a multiple of 16 up to 256)")
    return None


def _layer_misfit(block: nn.Module, first: nn.Module, width: int) -> str | None:
    attn, mlp = block.self_attn, block.mlp
    fused = (getattr(attn, "qkv_proj", None), getattr(mlp, "gate_up_proj", None))
    if not all(isinstance(m, FusedF16Linear) for m in fused):
        return "q/k/v or gate/up not fused on the native fp16 GEMM"
    if not all(type(m) is NativeF16Linear and m.bias is None for m in (attn.o_proj,
                                                                        mlp.down_proj)):
        return "o_proj or down_proj not a bias-free native fp16 layer"
    if fused[1].bias is not None:
        return "gate/up with a bias"
    norms = (block.input_layernorm, block.post_attention_layernorm)
    if not all(n.weight.dtype == torch.float32 and tuple(n.weight.shape) == (width,)
               and n.variance_epsilon == first.input_layernorm.variance_epsilon
               for n in norms):
        return "an RMSNorm not float32 of the width, or another eps"
    if attn.scaling != first.self_attn.scaling:
        return "an attention scale unlike layer 0's"
    return None
