"""GPT-2's layers in C for a model served by the native bf16 kernels (``native/gpt2_bf16.c``).

server.engine.gpt2_forward runs GPT-2's layers as torch calls; with ``DTYPE=bfloat16+native`` the
GEMMs and the decode attention already run in the project's C kernels, and what was left of
a step was dispatch (gpt2-large, Zen 4, 2 threads: 56.4 / 94.8 ms at 1 / 8 rows through torch's
layers, 45.5 / 80.5 here, 46.7 / 67.3 for the GEMMs alone; ``python
python -m bench step paths --rows 1,8``): layer norms, GELU, residual adds and
views, ~20 torch calls a layer, each costing more to call than to compute. Here each layer
is two C calls around the attention (the prefill chunks' attention stays in torch), and a
step in which every row decodes one token runs all 36 layers in one call.

Every row goes through the same C code whatever else the step holds, so a row's tokens are
the same alone, batched, and beside a prompt chunk (tests/test_native_gpt2.py). Layer norm
and GELU compute in fp32 and round to bf16 once; their logits differ from torch's bf16 path
by bf16 rounding only.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from server.engine import gpt2_forward
from server.engine.native_gemm import NativeBF16Linear, library
from server.engine.row_cache import PackedStep

_WEIGHTS = ("ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b",
            "ln2_w", "ln2_b", "fc_w", "fc_b", "out_w", "out_b")


class Block(ctypes.Structure):
    """gpt2_bf16.c's ``gpt2_block``: one layer's weights."""

    _fields_ = [(name, ctypes.c_void_p) for name in _WEIGHTS]


class Step(ctypes.Structure):
    """gpt2_bf16.c's ``gpt2_step``: sizes, and the step's scratch buffers."""

    _fields_ = [("width", ctypes.c_int), ("hidden", ctypes.c_int), ("heads", ctypes.c_int),
                ("threads", ctypes.c_int), ("eps", ctypes.c_float), ("scale", ctypes.c_float),
                ("x", ctypes.c_void_p), ("qkv", ctypes.c_void_p), ("att", ctypes.c_void_p),
                ("inner", ctypes.c_void_p), ("y", ctypes.c_void_p)]


class NativeGPT2:
    """A native-packed GPT-2's layers as C calls (``build``; the step engine keeps one)."""

    def __init__(self, model: nn.Module, lib: ctypes.CDLL) -> None:
        body = model.transformer
        first = body.h[0]
        self._lib = lib
        self._model = model
        self._attn = [block.attn for block in body.h]
        self.width = first.attn.c_attn.in_features
        self.hidden = first.mlp.c_fc.out_features
        self.heads = first.attn.num_heads
        self.eps = float(first.ln_1.eps)
        self.scale = float(first.attn.scaling)
        self.blocks = (Block * len(body.h))(*(_block(block) for block in body.h))

    @classmethod
    def build(cls, model: nn.Module) -> NativeGPT2 | None:
        """The C layers for ``model`` (pointers to its weights as they are now: build after
        packing), or None unless every layer is native-packed bf16 GPT-2 of sizes the C code
        takes."""
        lib = library()
        return cls(model, lib) if lib is not None and _fits(model) else None

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, step: PackedStep,
                due: torch.Tensor) -> torch.Tensor:
        """Logits [len(due), vocab], as server.engine.gpt2_forward.forward."""
        body = self._model.transformer
        hidden = (body.wte(ids) + body.wpe(positions)).contiguous()
        tokens = hidden.shape[0]
        scratch, buffers = self._scratch(tokens)
        native = step.native
        if not (native is not None and len(native.indexes) == len(step.segments)
                and self._lib.gpt2_decode(self.blocks, len(self.blocks), ctypes.byref(scratch),
                                          hidden.data_ptr(), tokens, *native.arrays()) == 0):
            self._layers(hidden, step, scratch, buffers)
        return gpt2_forward.logits(self._model, hidden, due)

    def _layers(self, hidden: torch.Tensor, step: PackedStep, scratch: Step,
                buffers: dict[str, torch.Tensor]) -> None:
        """Layer by layer: C before and after, the packed attention in between."""
        tokens = hidden.shape[0]
        for layer, attn in enumerate(self._attn):
            self._lib.gpt2_attn_in(ctypes.byref(self.blocks[layer]), ctypes.byref(scratch),
                                   hidden.data_ptr(), tokens)
            buffers["att"].copy_(gpt2_forward.attend(attn, buffers["qkv"], step, layer))
            self._lib.gpt2_attn_out(ctypes.byref(self.blocks[layer]), ctypes.byref(scratch),
                                    hidden.data_ptr(), tokens)

    def _scratch(self, tokens: int) -> tuple[Step, dict[str, torch.Tensor]]:
        widths = {"x": self.width, "qkv": 3 * self.width, "att": self.width,
                  "inner": self.hidden, "y": self.width}
        buffers = {name: torch.empty(tokens, n, dtype=torch.bfloat16)
                   for name, n in widths.items()}
        scratch = Step(self.width, self.hidden, self.heads, torch.get_num_threads(), self.eps,
                       self.scale, *(buffers[name].data_ptr() for name in widths))
        return scratch, buffers


def _block(block: nn.Module) -> Block:
    tensors = (block.ln_1.weight, block.ln_1.bias, block.attn.c_attn.packed,
               block.attn.c_attn.bias, block.attn.c_proj.packed, block.attn.c_proj.bias,
               block.ln_2.weight, block.ln_2.bias, block.mlp.c_fc.packed, block.mlp.c_fc.bias,
               block.mlp.c_proj.packed, block.mlp.c_proj.bias)
    return Block(*(None if t is None else t.data_ptr() for t in tensors))


def _fits(model: nn.Module) -> bool:
    """Every block native-packed, unpadded, bf16 norms with biases, one scale and one eps,
    gelu_new, widths in whole vectors: what gpt2_bf16.c takes."""
    blocks = list(model.transformer.h)
    first = blocks[0]
    width = getattr(first.attn.c_attn, "in_features", 0)
    for block in blocks:
        linears = (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
        norms = (block.ln_1, block.ln_2)
        if not all(isinstance(m, NativeBF16Linear) and m.padded == m.out_features
                   for m in linears):
            return False
        if not all(n.weight is not None and n.bias is not None
                   and n.weight.dtype == n.bias.dtype == torch.bfloat16
                   and n.eps == first.ln_1.eps and tuple(n.normalized_shape) == (width,)
                   for n in norms):
            return False
        if (block.attn.scaling != first.attn.scaling
                or type(block.mlp.act).__name__ != "NewGELUActivation"):
            return False
    hidden = first.mlp.c_fc.out_features
    dim = width // first.attn.num_heads
    return width % 16 == 0 and hidden % 16 == 0 and dim % 16 == 0 and dim <= 256
