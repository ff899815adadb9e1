"""A GPT-2 checkpoint as a module tree, built without transformers' model classes.

server.engine.gpt2_forward and the C layers (server.engine.native_gpt2) run GPT-2 from its
module tree alone: ``transformer.wte``/``wpe``, each block's ``ln_1``, ``attn.c_attn``,
``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.act``, ``mlp.c_proj``, then ``ln_f`` and
``lm_head``. ``load`` builds that tree under transformers' names and fills it from the
checkpoint (server.engine.checkpoint says why: ~80 MB of imports the master never needs).
The projections are ``nn.Linear`` from the start, holding the checkpoint's Conv1D weights
transposed: what server.engine.quantize.conv1d_to_linear makes of transformers' model.
Configs gpt2_forward does not compute as transformers does (cross-attention, the upcast and
reordered attention, an activation other than gelu_new) are not built here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from server.engine import checkpoint

# The Conv1D projections' weights, stored [in, out] in a GPT-2 checkpoint.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class NewGELUActivation(nn.Module):
    """GPT-2's tanh GELU, transformers' ``NewGELUActivation`` to the bit (same operations;
    the name is what gpt2_forward and native_gpt2 look for)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                           * (x + 0.044715 * torch.pow(x, 3.0))))


class Attention(nn.Module):
    """The fused q/k/v and output projections, heads, head dim, layer index and the scale
    transformers computes (``head_dim ** -0.5`` if ``scale_attn_weights``, divided by the
    layer's number if ``scale_attn_by_inverse_layer_idx``)."""

    def __init__(self, config: object, layer_idx: int) -> None:
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = width // self.num_heads
        self.layer_idx = layer_idx
        self.scaling = self.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)


class MLP(nn.Module):
    """c_fc, the activation, c_proj."""

    def __init__(self, config: object) -> None:
        super().__init__()
        width = config.hidden_size
        inner = config.n_inner or 4 * width
        self.c_fc = nn.Linear(width, inner)
        self.act = NewGELUActivation()
        self.c_proj = nn.Linear(inner, width)


class Block(nn.Module):
    """ln_1, attention, ln_2, MLP."""

    def __init__(self, config: object, layer_idx: int) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(config)


class Transformer(nn.Module):
    """The body: token and position embeddings, the blocks, the final norm."""

    def __init__(self, config: object) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


class GPT2LM(checkpoint.CausalTree):
    """``transformer`` and ``lm_head``: gpt2_forward runs it."""

    BODY, EMBEDDING = "transformer", "wte"

    def __init__(self, config: object) -> None:
        super().__init__(config, Transformer(config))


def unsupported(config: object) -> str | None:
    """Why ``config`` is not built here (None: it is)."""
    if getattr(config, "model_type", None) != "gpt2":
        return f"model_type {getattr(config, 'model_type', None)} is not gpt2"
    if config.add_cross_attention or config.reorder_and_upcast_attn:
        return "cross-attention or the reordered, upcast attention"
    if config.activation_function != "gelu_new":
        return f"activation {config.activation_function}, not gelu_new"
    return None


def checkpoint_name(name: str) -> str | None:
    """The tree's name of a checkpoint tensor (None: skipped): original GPT-2 files omit
    ``transformer.`` and store each layer's causal mask (``attn.bias``, ``attn.masked_bias``),
    which transformers ignores too."""
    if name.endswith((".attn.bias", ".attn.masked_bias")):
        return None
    return name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"


def transposed(config: object) -> frozenset[str]:
    """The tree's names of every Conv1D weight."""
    return frozenset(f"transformer.h.{i}.{name}" for i in range(config.num_hidden_layers)
                     for name in CONV1D)


def build(config: object) -> GPT2LM:
    """The tree of ``config`` on meta tensors."""
    with checkpoint.shapes_only():
        return GPT2LM(config)


def load(source: str) -> GPT2LM | None:
    """The GPT-2 checkpoint in folder ``source`` as a float32 GPT2LM in eval mode, or None
    where this module does not build it (server.engine.checkpoint ``load_tree``)."""
    return checkpoint.load_tree(source, unsupported, build, checkpoint_name, transposed)
