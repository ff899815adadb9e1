"""Weight layouts for fast CPU decoding: GPT-2's Conv1D as nn.Linear, float16 and int8 weights.

GPT-2 (transformers' ``Conv1D``) stores each projection as ``[in, out]`` and computes
``addmm(bias, x, weight)``; ``nn.Linear`` stores ``[out, in]``, the layout oneDNN and fbgemm
are tuned for. Same arithmetic, and a decode step of synthetic gpt2-large in bf16 on one
thread took 161 ms instead of 204 ms at batch 1, 239 instead of 297 ms at batch 8 (measured
on the 2-core box by python -m bench step layouts).

``DTYPE=int8`` goes further: every linear layer (the converted Conv1Ds and the LM head)
becomes torch's dynamic int8 Linear (fbgemm): weights int8 per output channel, activations
quantized per batch on the fly, float everywhere else. A decode step reads a quarter of
the fp32 bytes: 49 ms at batch 1 and 96 ms at batch 8 on one thread (4x and 3x bf16). The
text changes: on the synthetic models (random weights) nothing measures by how much, so
judge it on a real checkpoint before serving it (README, Recommendations).

``float16`` keeps the model float32 but stores every linear layer's weights in fp16
(torch's dynamic fp16 Linear, fbgemm's fp16 GEMM: weights widened to fp32 inside the
kernel, activations and everything else float32): the precision class of llama.cpp's f16
GGUF. Half the fp32 bytes per step, and on an AVX2-only CPU fbgemm's small-batch GEMM beats
MKL's; rounding a weight to fp16 changes the logits by ~1e-4 relative (less than bf16).

Both keep the embedding tables in float16 (``HalfEmbedding``, looked up in float32): the LM
head is its own packed copy, so the table serves the lookup alone, and in float32 it held
1.05 GB of Llama-3.2-1B's weights (0.93 GB of Qwen2.5-1.5B's, 0.26 GB of gpt2-large's).
``float16+native`` (server.engine.native_f16) reads unpacked fp16 weights, so its tied LM
head is that very table: one copy instead of two.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn


def replace_modules(model: nn.Module, kind: type[nn.Module],
                    make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every submodule of exactly type ``kind`` by ``make(it)``, in place; return
    how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, name, make(child))
                replaced += 1
    return replaced


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every transformers ``Conv1D`` in ``model`` by an equivalent ``nn.Linear``
    (weights transposed once, contiguous); return how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    return replace_modules(model, Conv1D, _as_linear)


def _as_linear(conv: nn.Module) -> nn.Linear:
    n_in, n_out = conv.weight.shape
    linear = nn.Linear(n_in, n_out, device="meta")  # no throw-away init of a big matrix
    linear.weight = nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=False)
    linear.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
    return linear


def own_memory(model: nn.Module) -> None:
    """Copy every parameter and buffer of ``model`` into memory of its own, in place (tied
    weights stay tied: the Parameter objects are kept, only their data is replaced).

    from_pretrained maps a float32 safetensors file and serves its tensors straight from
    that mapping. Once conv1d_to_linear has copied the projections, the embedding and
    layer norms still point into it, so the whole mapping stays, and every page the copy
    read stays resident: a float32 gpt2 held 993 MB instead of 500 (measured), a gpt2-large
    6.1 GB instead of 3.1. Copying the rest drops the last reference and the mapping.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()


# Buffers of rotary position embeddings (Llama, Qwen2, Mistral...): the frequencies of each
# dimension pair, which ``to_bfloat16`` keeps in float32.
ROTARY_BUFFERS = ("inv_freq", "original_inv_freq")


def to_bfloat16(model: nn.Module) -> nn.Module:
    """``model.to(torch.bfloat16)``, except the rotary frequencies stay float32, as
    ``from_pretrained(dtype=torch.bfloat16)`` leaves them.

    Why: rounded to bf16 (8 bits of mantissa) a frequency is off by up to 0.2% (measured
    on Llama 3's), and the angle it gives grows with the position: at position 1,000 a
    pair turning at 0.5 rad a token is off by a radian, and a real checkpoint's attention
    no longer finds what it learned. The rotary module computes its cosines in float32
    from them and rounds once, to the activations' dtype.
    """
    kept = [(name, buffer) for name, buffer in model.named_buffers()
            if name.rpartition(".")[2] in ROTARY_BUFFERS]
    model = model.to(torch.bfloat16)
    for name, buffer in kept:
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, buffer)
    return model


class HalfEmbedding(nn.Module):
    """An embedding table stored in float16 and looked up in float32: the rows a step reads
    are widened, the table itself keeps 2 bytes a value.

    Why: the float16 and int8 candidates compute in float32, and their LM head is its own
    packed copy, so a tied embedding table was left in float32 for the lookup alone: 1.05
    GB of Llama-3.2-1B's 128,256 x 2,048 (0.93 GB of Qwen2.5-1.5B's), against llama.cpp's
    one f16 table. ``computed_dtype`` tells server.engine.code_path what the activations
    are computed in (the table's own dtype no longer says it).
    """

    computed_dtype = torch.float32

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.weight.shape
        self.padding_idx = embedding.padding_idx
        self.weight = nn.Parameter(embedding.weight.detach().to(torch.float16),
                                   requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of ``ids``, in float32."""
        return nn.functional.embedding(ids, self.weight, self.padding_idx).float()


def half_embeddings(model: nn.Module) -> int:
    """Store every ``nn.Embedding`` of a float32 ``model`` in float16 (HalfEmbedding), in
    place; return how many were replaced."""
    return replace_modules(model, nn.Embedding, HalfEmbedding)


def quantize_float16(model: nn.Module) -> nn.Module:
    """Return ``model`` (float32) with every ``nn.Linear``'s weights stored in fp16 (torch's
    dynamic fp16 Linear, computed by fbgemm in fp32) and its embedding tables in fp16
    (HalfEmbedding)."""
    from torch.ao.quantization import float16_dynamic_qconfig

    model = _quantize_linears(model, float16_dynamic_qconfig)
    half_embeddings(model)
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """Return ``model`` (float32) with every ``nn.Linear`` as a dynamic int8 Linear, weights
    quantized per output channel, and its embedding tables in fp16 (HalfEmbedding)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    model = _quantize_linears(model, per_channel_dynamic_qconfig)
    half_embeddings(model)
    return model


def _quantize_linears(model: nn.Module, qconfig: object) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, which this
        # project does not ship; the pinned torch still runs it (tests/test_quantize.py).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {nn.Linear: qconfig}, inplace=True)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights ``model`` holds, packed float16/int8/bf16 Linear layers included
    (their weights are not parameters; a module that holds such weights itself reports them
    through a ``weight_bytes()`` method, as server.engine.kernels.PackedBF16Linear does)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():
        if callable(getattr(module, "weight_bytes", None)):
            total += module.weight_bytes()
        elif isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module.weight(), module.bias()
            # fp16 packed weights unpack to float32: count the 2 bytes they are stored in.
            size = 2 if module._packed_params.dtype == torch.float16 else weight.element_size()
            total += weight.numel() * size
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total
