"""A Llama-family checkpoint as a module tree, built without transformers' model classes.

The step engine runs these decoders through server.engine.llama_forward (or the C layers),
which read only the module tree: the embedding, each layer's norms, projections and MLP, the
final norm, the LM head and the rotary module. ``load`` builds that tree under the names
transformers gives it (``model.layers.0.self_attn.q_proj`` ...) and fills it from the
checkpoint (server.engine.checkpoint, which says why: ~80 MB of imports the master never
needs), so every consumer (kernels' module swaps, the C layers, huge pages, tests) sees the
same attributes. The tree has no ``forward``. A config llama_forward cannot compute exactly
(``llama_forward.supports_config``) or a RoPE that changes with the sequence length
(dynamic, longrope) is not built here: server.engine.model loads it with from_pretrained.
"""

from __future__ import annotations

import torch
from torch import nn

from server.engine import checkpoint, llama_forward

# RoPE variants whose frequencies depend on the sequence seen (transformers'
# ``dynamic_rope_update``): computed once here, they would be wrong past the original length.
DYNAMIC_ROPE = ("dynamic", "longrope")
# (q/k/v bias, o bias, MLP bias) per model_type, as transformers' classes build them: one
# for each type llama_forward computes (``MODEL_TYPES``; tests/test_checkpoint.py holds them equal).
BIASES = {
    "llama": lambda c: (c.attention_bias, c.attention_bias, c.mlp_bias),
    "qwen2": lambda c: (True, False, False),
    "mistral": lambda c: (False, False, False),
}


class RMSNorm(nn.Module):
    """The weight and epsilon llama_forward.rms_norm reads (transformers' ``variance_epsilon``)."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.variance_epsilon = eps


class Attention(nn.Module):
    """One layer's projections, its index and the softmax scale (``head_dim ** -0.5``)."""

    def __init__(self, config: object, layer_idx: int) -> None:
        super().__init__()
        heads, kv_heads, head_dim = llama_forward.shape(config)
        qkv_bias, o_bias, _ = BIASES[config.model_type](config)
        width = config.hidden_size
        self.layer_idx = layer_idx
        self.scaling = head_dim ** -0.5
        self.q_proj = nn.Linear(width, heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(width, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(width, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, width, bias=o_bias)


class MLP(nn.Module):
    """SwiGLU's three projections."""

    def __init__(self, config: object) -> None:
        super().__init__()
        bias = BIASES[config.model_type](config)[2]
        width, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(width, inner, bias=bias)
        self.up_proj = nn.Linear(width, inner, bias=bias)
        self.down_proj = nn.Linear(inner, width, bias=bias)


class DecoderLayer(nn.Module):
    """Norm, attention, norm, MLP: what llama_forward.forward runs per layer."""

    def __init__(self, config: object, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)


class RotaryEmbedding(nn.Module):
    """transformers' Llama rotary module, static variants only: ``forward(x, position_ids)``
    gives the cosines and sines in ``x``'s dtype, computed in float32 by the same operations
    (so the same bits)."""

    def __init__(self, config: object) -> None:
        super().__init__()
        inv_freq, self.attention_scaling = rope_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device,
                                                                   dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rope_frequencies(config: object) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, attention scaling) of the config's RoPE: transformers' default
    formula, or its ``ROPE_INIT_FUNCTIONS`` entry for a scaled variant (Llama 3's)."""
    rope = config.rope_parameters
    if rope["rope_type"] != "default":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        return ROPE_INIT_FUNCTIONS[rope["rope_type"]](config)
    dim = llama_forward.shape(config)[2]
    base = rope["rope_theta"]
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0


class Decoder(nn.Module):
    """The body: ``embed_tokens``, ``layers``, ``norm`` and ``rotary_emb``."""

    def __init__(self, config: object) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(checkpoint.CausalTree):
    """``model`` (the Decoder) and ``lm_head`` (CausalTree's default names): llama_forward
    runs it."""

    def __init__(self, config: object) -> None:
        super().__init__(config, Decoder(config))


def unsupported(config: object) -> str | None:
    """Why ``config`` is not built here (None: it is)."""
    if getattr(config, "model_type", None) not in BIASES:
        return f"model_type {getattr(config, 'model_type', None)} is not a Llama-family one"
    if not llama_forward.supports_config(config):
        return "llama_forward does not compute this config exactly"
    rope = getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type")
    if kind in DYNAMIC_ROPE or "rope_theta" not in rope or kind is None:
        return f"RoPE {kind!r} is not a static one"
    return None


def load(source: str) -> CausalLM | None:
    """The Llama-family checkpoint in folder ``source`` as a float32 CausalLM in eval mode,
    or None where this module does not build it (server.engine.checkpoint ``load_tree``:
    not a folder of safetensors, or a config ``unsupported`` refuses)."""
    return checkpoint.load_tree(source, unsupported, build)


def build(config: object) -> CausalLM:
    """The tree of ``config`` on meta tensors, the rotary frequencies computed."""
    with checkpoint.shapes_only():
        model = CausalLM(config)
    model.model.rotary_emb = RotaryEmbedding(config)
    return model
