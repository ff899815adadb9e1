"""The Llama family's forward over one packed step, without transformers' per-call machinery.

Llama, Qwen2 and Mistral decoders share one layer: RMSNorm, q/k/v projections (Qwen2's with
biases), rotary position embeddings on queries and keys, grouped-query attention (``kv_heads``
key/value heads, each read by ``heads / kv_heads`` query heads), an output projection, RMSNorm
and a SwiGLU MLP (``down(silu(gate(x)) * up(x))``), then a final RMSNorm and the LM head.
This module runs that layer as server.engine.gpt2_forward runs GPT-2's: the model's own
submodules (the same weights, whatever kernel server.engine.kernels packed them into), the
project's packed attention (server.engine.row_cache), once per step:

- the rotary cosines and sines of the step's packed positions are computed once per step by
  the model's own rotary module (so every RoPE variant it implements, Llama 3's scaling
  included, is the one served) and applied to the queries and keys before ``step.update``:
  the caches hold rotated keys, as transformers' do;
- the caches hold ``kv_heads`` heads, not ``heads``, and nothing is repeated: torch's
  attention reads them with ``enable_gqa`` (``row_cache._segment_attention``), the C decode
  attention (bf16 caches with AVX-512 BF16; fp16, bf16 or int8 caches with AVX2 + FMA + F16C)
  reads each kv head once for its group of queries, taking q, k and v in the layout passed
  here;
- only the ``due`` rows go through the final norm and the LM head (a 128k-152k vocabulary
  costs a large GEMM per row).

The operations are transformers' own, in its order and dtypes (RMSNorm in float32 rounded to
the activations' dtype before the weight, ``q * cos + rotate_half(q) * sin``), so the logits
equal ``model(...)``'s through the step engine bit for bit, in float32 and bfloat16
(tests/test_llama_forward.py).
Shapes come from the config (layers, heads, key/value heads, head dim), not constants.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from server.engine.row_cache import PackedStep, packed_attention

# Decoders whose layers are the one above (Qwen3 adds per-head q/k norms; Gemma scales its
# embeddings and norms differently: not these).
MODEL_TYPES = ("llama", "qwen2", "mistral")


def supports(model: nn.Module) -> bool:
    """True for a Llama-family causal LM this module computes exactly: a config
    ``supports_config`` accepts, and the module tree it reads (``lm_head``, the body's
    ``layers`` and ``rotary_emb``)."""
    body = getattr(model, "model", None)
    return (supports_config(getattr(model, "config", None))
            and hasattr(model, "lm_head") and hasattr(body, "layers")
            and hasattr(body, "rotary_emb"))


def supports_config(config: object) -> bool:
    """True for a config this module computes exactly: ``model_type`` in MODEL_TYPES, SiLU
    MLPs, every layer attending to the whole cache (no sliding window)."""
    return (getattr(config, "model_type", None) in MODEL_TYPES
            and getattr(config, "hidden_act", None) == "silu"
            and getattr(config, "sliding_window", None) is None
            and all(kind == "full_attention" for kind in getattr(config, "layer_types", None)
                    or ()))


def shape(config: object) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) from a Llama-family config."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, int(head_dim)


def forward(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, step: PackedStep,
            due: torch.Tensor) -> torch.Tensor:
    """Logits [len(due), vocab] of the packed tokens ``ids`` (1-D) at ``positions``, for the
    packed indexes ``due``; every row's rotated keys and values go to its cache through
    ``step``."""
    body = model.model
    heads, kv_heads, head_dim = shape(model.config)
    hidden = body.embed_tokens(ids)
    rotary = Rotary(body.rotary_emb, hidden, positions)
    for layer, block in enumerate(body.layers):
        x = rms_norm(block.input_layernorm, hidden)
        hidden = hidden + attend(block.self_attn, x, rotary, step, layer, heads, kv_heads,
                                 head_dim)
        x = rms_norm(block.post_attention_layernorm, hidden)
        hidden = hidden + swiglu(block.mlp, x)
    return model.lm_head(rms_norm(body.norm, hidden[due]))


class Rotary:
    """The step's rotary cosines and sines, [tokens, 1, head dim] (one per packed position,
    shared by every layer and head), with the sign of ``rotate_half`` folded into the sines:
    ``x * cos + swap(x) * signed_sin`` is transformers' ``x * cos + rotate_half(x) * sin``
    to the bit (negation is exact), one op fewer per tensor and layer."""

    def __init__(self, rotary_emb: nn.Module, like: torch.Tensor,
                 positions: torch.Tensor) -> None:
        cos, sin = rotary_emb(like, positions[None])  # [1, tokens, dim] in like's dtype
        half = cos.shape[-1] // 2
        self.cos = cos[0, :, None, :]
        self.sin = torch.cat((-sin[0, :, None, :half], sin[0, :, None, half:]), dim=-1)
        self.half = half

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [tokens, heads, dim] rotated to its tokens' positions."""
        swapped = torch.cat((x[..., self.half:], x[..., :self.half]), dim=-1)
        return x * self.cos + swapped * self.sin


def attend(attn: nn.Module, x: torch.Tensor, rotary: Rotary, step: PackedStep, layer: int,
           heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """One layer's attention block on the normed ``x`` [tokens, width]: rotated queries and
    keys, each row's keys/values written through ``step``, the output projection."""
    tokens = x.shape[0]
    fused = getattr(attn, "qkv_proj", None)  # server.engine.native_f16.fuse_projections
    if fused is not None:
        q, k, v = fused.split(fused(x))
    else:
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    q = rotary.apply(q.view(tokens, heads, head_dim))
    k = rotary.apply(k.view(tokens, kv_heads, head_dim))
    v = v.view(tokens, kv_heads, head_dim)  # a fused call's column view: no copy
    # [1, heads, tokens, dim] views, the layout transformers hands the attention.
    q, k, v = (t[None].transpose(1, 2) for t in (q, k, v))
    step.update(k, v, layer)
    out, _ = packed_attention(attn, q, k, v, None, scaling=attn.scaling, packed_step=step)
    return attn.o_proj(out.reshape(tokens, -1))


def swiglu(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP ``down(silu(gate(x)) * up(x))``, gate and up in one call where they are fused
    (``mlp.gate_up_proj``)."""
    fused = getattr(mlp, "gate_up_proj", None)
    if fused is not None:
        gate, up = fused.split(fused(x))
    else:
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    return mlp.down_proj(functional.silu(gate) * up)


def rms_norm(norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The layer's RMSNorm in one call: torch's ``rms_norm`` makes transformers' Llama
    RMSNorm operations in its order (normalised in float32, rounded to the input's dtype,
    then times the weight), so the result is the module's to the bit (tests), with fewer
    Python frames."""
    return functional.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon)
