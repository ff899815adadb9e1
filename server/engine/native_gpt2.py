"""GPT-2's layers in C for a model served by the native bf16 kernels (``native/gpt2_bf16.c``),
and by the native fp16 GEMM (``NativeGPT2F16``, ``native/gpt2_f16.c``: the same plan in float32
on AVX2 + FMA + F16C, for CPUs without AVX-512 BF16 such as the Zen 3).

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
from collections.abc import Callable

import torch
from torch import nn

from server.engine import gpt2_forward, native_f16, native_ops
from server.engine.native_f16 import NativeF16Linear
from server.engine.native_gemm import NativeBF16Linear
from server.engine.native_int8 import NativeInt8Linear
from server.engine.native_ops import Block, GPT2Scratch
from server.engine.row_cache import PackedStep


class NativeGPT2:
    """A native-packed GPT-2's layers as C calls (``build``; the step engine keeps one)."""

    def __init__(self, model: nn.Module) -> None:
        body = model.transformer
        first = body.h[0]
        self._model = model
        self._attn = [block.attn for block in body.h]
        self.width = first.attn.c_attn.in_features
        self.hidden = first.mlp.c_fc.out_features
        self.heads = first.attn.num_heads
        self.eps = float(first.ln_1.eps)
        self.scale = float(first.attn.scaling)
        self.blocks = (Block * len(body.h))(*(self._block(block) for block in body.h))

    @classmethod
    def build(cls, model: nn.Module) -> NativeGPT2:
        """The C layers for ``model`` (pointers to its weights as they are now: build after
        packing), which server.engine.code_path found they take (``misfit``)."""
        return cls(model)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, step: PackedStep,
                due: torch.Tensor) -> torch.Tensor:
        """Logits [len(due), vocab], as server.engine.gpt2_forward.forward."""
        body = self._model.transformer
        hidden = (body.wte(ids) + body.wpe(positions)).contiguous()
        tokens = hidden.shape[0]
        scratch = GPT2Scratch(self.width, self.hidden, self.heads, self.eps, self.scale, tokens)
        native = step.native
        if native is not None and len(native.indexes) == len(step.segments):
            native_ops.gpt2_decode(self.blocks, scratch, hidden, native.caches)
        else:
            self._layers(hidden, step, scratch)
        return gpt2_forward.logits(self._model, hidden, due)

    def _layers(self, hidden: torch.Tensor, step: PackedStep, scratch: GPT2Scratch) -> None:
        """Layer by layer: C before and after, the packed attention in between."""
        for layer, attn in enumerate(self._attn):
            native_ops.gpt2_attn_in(self.blocks[layer], scratch, hidden)
            scratch.buffers["att"].copy_(
                gpt2_forward.attend(attn, scratch.buffers["qkv"], step, layer))
            native_ops.gpt2_attn_out(self.blocks[layer], scratch, hidden)

    def _block(self, block: nn.Module) -> Block:
        tensors = (block.ln_1.weight, block.ln_1.bias, block.attn.c_attn.packed,
                   block.attn.c_attn.bias, block.attn.c_proj.packed, block.attn.c_proj.bias,
                   block.ln_2.weight, block.ln_2.bias, block.mlp.c_fc.packed,
                   block.mlp.c_fc.bias, block.mlp.c_proj.packed, block.mlp.c_proj.bias)
        return native_ops.gpt2_block(self.width, self.hidden, tensors)


def misfit(model: nn.Module) -> str | None:
    """What in ``model`` gpt2_bf16.c does not take (None: it takes it all): every block
    native-packed, unpadded, bf16 norms with biases, one scale and one eps, gelu_new, widths
    in whole vectors."""
    return _misfit(model, lambda m: isinstance(m, NativeBF16Linear) and m.padded == m.out_features,
                   "native-packed bf16, or padded", torch.bfloat16, 16)


def _misfit(model: nn.Module, linear_ok: Callable[[nn.Module], bool], linear_is: str,
            norm_dtype: torch.dtype, vector: int) -> str | None:
    """What in ``model`` a C layer set does not take (None: it takes it all): every linear
    layer ``linear_ok`` (else "... is not ``linear_is``"), layer norms in ``norm_dtype`` with
    biases and one eps, one attention scale, gelu_new, widths multiples of ``vector`` and a
    head dim a multiple of 16 up to 256. gpt2_bf16.c and gpt2_f16.c differ only in those."""
    blocks = list(model.transformer.h)
    first = blocks[0]
    width = getattr(first.attn.c_attn, "in_features", 0)
    norm = str(norm_dtype).removeprefix("torch.")
    for layer, block in enumerate(blocks):
        linears = (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
        if not all(linear_ok(m) for m in linears):
            return f"layer {layer}: a linear layer is not {linear_is}"
        if not all(n.weight is not None and n.bias is not None
                   and n.weight.dtype == n.bias.dtype == norm_dtype
                   and n.eps == first.ln_1.eps and tuple(n.normalized_shape) == (width,)
                   for n in (block.ln_1, block.ln_2)):
            return f"layer {layer}: a layer norm is not {norm} with a bias, or differs"
        if block.attn.scaling != first.attn.scaling:
            return f"layer {layer}: an attention scale unlike layer 0's"
        if type(block.mlp.act).__name__ != "NewGELUActivation":
            return f"layer {layer}: activation {type(block.mlp.act).__name__}, not gelu_new"
    hidden = first.mlp.c_fc.out_features
    dim = width // first.attn.num_heads
    if not (width % vector == 0 and hidden % vector == 0 and dim % 16 == 0 and dim <= 256):
        return (f"widths {width}/{hidden}, head dim {dim}: not multiples of {vector} "
                f"(head dim a multiple of 16 up to 256)")
    return None


# -- float16+native (AVX2 + FMA + F16C): native/gpt2_f16.c ----------------------------------

_F16_WEIGHTS = ("ln1_w", "ln1_b", "attn_b", "proj_b", "ln2_w", "ln2_b", "fc_b", "out_b",
                "attn_w", "proj_w", "fc_w", "out_w")


class F16Block(ctypes.Structure):
    """gpt2_f16.c's ``gpt2_f16_block``: one layer's weights."""

    _fields_ = [(name, ctypes.c_void_p) for name in _F16_WEIGHTS]


class F16Step(ctypes.Structure):
    """gpt2_f16.c's ``gpt2_f16_step``: sizes, and the step's fp32 scratch buffers."""

    _fields_ = [*((name, ctypes.c_int) for name in ("width", "hidden", "heads", "threads")),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float),
                *((name, ctypes.c_void_p) for name in ("x", "qkv", "att", "inner", "y"))]


class NativeGPT2F16(native_f16.F16Layers):
    """A float16+native GPT-2's layers as C calls (native/gpt2_f16.c): NativeGPT2's plan on
    the fp16 GEMM and the AVX2 decode attention, in float32 (any cache that attention reads:
    float16, bf16, int8)."""

    source, prefix = "gpt2_f16.c", "gpt2_f16"

    def __init__(self, model: nn.Module) -> None:
        problem = self.misfit(model)
        body = model.transformer
        super().__init__(model, problem, None if problem else (self.block_type * len(body.h))(
            *(self.block(block) for block in body.h)))
        first = body.h[0]
        self._attn = [block.attn for block in body.h]
        self.width = first.attn.c_attn.in_features
        self.hidden = first.mlp.c_fc.out_features
        self.heads = first.attn.num_heads
        self.eps = float(first.ln_1.eps)
        self.scale = float(first.attn.scaling)

    @classmethod
    def build(cls, model: nn.Module) -> NativeGPT2F16:
        """The C layers for ``model`` (pointers to its weights as they are now: build after
        quantizing), which ``misfit`` found they take."""
        return cls(model)

    # What differs by GEMM (NativeGPT2Int8 overrides them): the model check, one layer's
    # C block and its ctypes type.
    block_type: type[ctypes.Structure] = F16Block

    @staticmethod
    def misfit(model: nn.Module) -> str | None:
        """What in ``model`` these C layers do not take (None: they take it all)."""
        return misfit_f16(model)

    @staticmethod
    def block(block: nn.Module) -> ctypes.Structure:
        """One transformer block's weights as the C block."""
        return _f16_block(block)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, step: PackedStep,
                due: torch.Tensor) -> torch.Tensor:
        """Logits [len(due), vocab], as server.engine.gpt2_forward.forward."""
        body = self._model.transformer
        hidden = (body.wte(ids) + body.wpe(positions)).to(torch.float32).contiguous()
        widths = {"x": self.width, "qkv": 3 * self.width, "att": self.width,
                  "inner": self.hidden, "y": self.width}
        buffers = {name: torch.empty(hidden.shape[0], n) for name, n in widths.items()}
        scratch = F16Step(self.width, self.hidden, self.heads, native_ops._threads(), self.eps,
                          self.scale, *(buffers[name].data_ptr() for name in widths))
        native = step.native
        if native is not None and len(native.indexes) == len(step.segments):
            self._every_layer(scratch, hidden, native.caches,
                              (self.heads, self.width // self.heads))
        else:
            for layer, attn in enumerate(self._attn):
                self._half("attn_in", layer, scratch, hidden)
                buffers["att"].copy_(gpt2_forward.attend(attn, buffers["qkv"], step, layer))
                self._half("attn_out", layer, scratch, hidden)
        return gpt2_forward.logits(self._model, hidden, due)


def _f16_block(block: nn.Module) -> F16Block:
    attn, mlp = block.attn, block.mlp
    tensors = {"ln1_w": block.ln_1.weight, "ln1_b": block.ln_1.bias,
               "attn_b": attn.c_attn.bias, "proj_b": attn.c_proj.bias,
               "ln2_w": block.ln_2.weight, "ln2_b": block.ln_2.bias, "fc_b": mlp.c_fc.bias,
               "out_b": mlp.c_proj.bias, "attn_w": attn.c_attn.weight,
               "proj_w": attn.c_proj.weight, "fc_w": mlp.c_fc.weight,
               "out_w": mlp.c_proj.weight}
    return F16Block(*(tensors[name].data_ptr() for name in _F16_WEIGHTS))


def misfit_f16(model: nn.Module) -> str | None:
    """What in ``model`` gpt2_f16.c does not take (None: it takes it all): every linear layer
    a NativeF16Linear with its float32 bias, float32 layer norms with biases, one eps and one
    scale, gelu_new, widths in whole vectors (head dim a multiple of 16 up to 256)."""
    return _misfit(model, lambda m: type(m) is NativeF16Linear and m.bias is not None,
                   "native fp16 with a bias", torch.float32, 8)


# -- int8+native (DTYPE=int8): gpt2_f16.c's plan on the int8 GEMMs ------------------------------


class Int8Linear(ctypes.Structure):
    """kernels.h's ``gpt2_int8_linear``: a NativeInt8Linear's operands."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("q", "scale", "colsum", "bias")]


class Int8Block(ctypes.Structure):
    """kernels.h's ``gpt2_int8_block``: layer norms, the four int8 layers, their variant."""

    _fields_ = [*((name, ctypes.c_void_p) for name in ("ln1_w", "ln1_b", "ln2_w", "ln2_b")),
                ("linear", Int8Linear * 4), ("variant", ctypes.c_int)]


class NativeGPT2Int8(NativeGPT2F16):
    """A ``DTYPE=int8`` GPT-2's layers as C calls: gpt2_f16.c's float32 plan (layer norms,
    GELU, residual adds, the AVX2 decode attention over any cache it reads) with the int8
    GEMMs (``gpt2_int8_*``) where the fp16 one was.

    Why (issue 31): the int8 path ran torch's float32 layers around its GEMMs. On the Zen 4
    (gpt2-large, 2 threads, ``python -m bench step paths --dtype int8``) a decode step took
    26.7 / 52.2 ms at 1 / 8 rows through torch's layers, 18.3 / 38.5 here, with the GEMMs
    alone 19.7 / 27.9 (results/profile/c-layers-int8-zen4.txt)."""

    source, prefix = "gpt2_f16.c", "gpt2_int8"
    block_type = Int8Block

    @staticmethod
    def misfit(model: nn.Module) -> str | None:
        """What in ``model`` these C layers do not take (None: they take it all)."""
        return misfit_int8(model)

    @staticmethod
    def block(block: nn.Module) -> ctypes.Structure:
        """One transformer block's weights as the C block."""
        return _int8_block(block)


def _int8_linear(linear: NativeInt8Linear) -> Int8Linear:
    colsum = None if linear.colsum is None else linear.colsum.data_ptr()
    return Int8Linear(linear.packed.data_ptr(), linear.scales.data_ptr(), colsum,
                      linear.bias.data_ptr())


def _int8_block(block: nn.Module) -> Int8Block:
    attn, mlp = block.attn, block.mlp
    linears = (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
    return Int8Block(block.ln_1.weight.data_ptr(), block.ln_1.bias.data_ptr(),
                     block.ln_2.weight.data_ptr(), block.ln_2.bias.data_ptr(),
                     (Int8Linear * 4)(*(_int8_linear(m) for m in linears)),
                     # kernels.h's GLL_INT8_FMA / _VNNI are pack_int8's layout codes
                     native_ops._INT8_LAYOUTS[attn.c_attn.variant])


def misfit_int8(model: nn.Module) -> str | None:
    """What in ``model`` the int8 C layers do not take (None: they take it all): every linear
    layer a NativeInt8Linear with its float32 bias, unpadded, all of one variant; otherwise
    as ``misfit_f16``."""
    variants = {getattr(m, "variant", None) for m in model.modules()
                if isinstance(m, NativeInt8Linear)}
    if len(variants) > 1:
        return f"int8 layers of several variants: {sorted(map(str, variants))}"
    return _misfit(model, lambda m: type(m) is NativeInt8Linear and m.bias is not None
                   and m.padded == m.out_features, "native int8 with a bias, unpadded",
                   torch.float32, 8)
