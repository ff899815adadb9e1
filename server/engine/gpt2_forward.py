"""GPT-2's forward over one packed step, without transformers' per-call machinery.

The step engine (server.engine.step) runs one forward per step over a packed sequence. Through
``model(...)`` each step also paid for transformers' generic path: keyword plumbing, output
dataclasses, mask and cache dispatch, the attention-interface lookup, once per layer. On
gpt2-large (AMD EPYC Zen 4, 2 threads, 200-token prompts) a decode step took 58.8 / 105.5 ms
at 1 / 8 rows through ``model(...)`` and 56.4 / 94.8 ms here, the fused GELU below included
(``python -m bench step paths --rows 1,8``, interleaved in one process). Not
measured on an AVX2-only CPU, where the same calls are made with fewer Python frames.

This module calls the same submodules (the same weights, whatever kernel packs them) and
the same packed attention (server.engine.row_cache) in GPT-2's order, so its logits equal
``model(...)``'s bit for bit (tests/test_gpt2_forward.py), with one deliberate exception:
in bf16, GPT-2's tanh GELU (``gelu_new``) runs as ``torch.nn.functional.gelu(x,
approximate="tanh")``, one kernel that computes in fp32 and rounds once, instead of
transformers' eight bf16 ops each rounding to bf16 (more exact, and cheaper).

Used for models whose config says ``model_type == "gpt2"`` (every synthetic preset and
real GPT-2 checkpoints); any other model runs through ``model(...)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from server.engine.row_cache import PackedStep, packed_attention


def supports(model: nn.Module) -> bool:
    """True for a GPT-2 LM (``model.transformer.h`` of GPT-2 blocks, no cross-attention)
    whose attention ``attend`` computes as transformers does: not ``reorder_and_upcast_attn``
    (scores scaled before the product and taken in float32), which from_pretrained loads
    (server.engine.gpt2_model does not build it) and ``model(...)`` then runs."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) == "gpt2"
            and not getattr(config, "add_cross_attention", False)
            and not getattr(config, "reorder_and_upcast_attn", False)
            and hasattr(model, "transformer") and hasattr(model, "lm_head"))


def _fused_gelu(act: nn.Module, dtype: torch.dtype) -> bool:
    """Whether this block's activation runs as one tanh-GELU kernel (see the module doc)."""
    return dtype == torch.bfloat16 and type(act).__name__ == "NewGELUActivation"


def forward(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, step: PackedStep,
            due: torch.Tensor) -> torch.Tensor:
    """Logits [len(due), vocab] of the packed tokens ``ids`` (1-D) at ``positions``, for the
    packed indexes ``due``; every row's keys and values go to its cache through ``step``."""
    body = model.transformer
    hidden = body.wte(ids) + body.wpe(positions)
    for layer, block in enumerate(body.h):
        attn, mlp = block.attn, block.mlp
        x = functional.layer_norm(hidden, block.ln_1.normalized_shape, block.ln_1.weight,
                                  block.ln_1.bias, block.ln_1.eps)
        out = attend(attn, attn.c_attn(x), step, layer)
        hidden = attn.c_proj(out) + hidden
        x = functional.layer_norm(hidden, block.ln_2.normalized_shape, block.ln_2.weight,
                                  block.ln_2.bias, block.ln_2.eps)
        x = mlp.c_fc(x)
        x = functional.gelu(x, approximate="tanh") if _fused_gelu(mlp.act, x.dtype) \
            else mlp.act(x)
        hidden = hidden + mlp.c_proj(x)
    return logits(model, hidden, due)


def attend(attn: nn.Module, qkv: torch.Tensor, step: PackedStep, layer: int) -> torch.Tensor:
    """The packed attention of one layer from its c_attn output ``qkv`` [tokens, 3 width]:
    each row's keys/values written through ``step``, the output [tokens, width]."""
    tokens = qkv.shape[0]
    # [1, tokens, 3, heads, dim] -> three [1, heads, tokens, dim] views of one tensor, as
    # GPT-2's attention splits them (the native attention reads them in place).
    q, k, v = qkv.view(1, tokens, 3, attn.num_heads, attn.head_dim) \
        .permute(2, 0, 3, 1, 4).unbind(0)
    step.update(k, v, layer)
    out, _ = packed_attention(attn, q, k, v, None, scaling=attn.scaling, packed_step=step)
    return out.reshape(tokens, -1)


def logits(model: nn.Module, hidden: torch.Tensor, due: torch.Tensor) -> torch.Tensor:
    """The LM head over the final layer norm of the packed rows ``due``."""
    final = model.transformer.ln_f
    last = functional.layer_norm(hidden[due], final.normalized_shape, final.weight,
                                 final.bias, final.eps)
    return model.lm_head(last)
