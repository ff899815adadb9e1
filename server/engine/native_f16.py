"""fp16-weight linear layers computed by the project's own kernel (``native/gemm_f16.c``).

Why (issues 31 and 33): on the AVX2-only Zen 3 the served path is ``float16``, fbgemm's fp16
GEMM, which read a one-row 1280 -> 5120 layer from DRAM at ~10 GB/s on one thread (notes in
server.engine.native_int8), and keeps its own packed copy of every weight: for a model whose
LM head is tied to its input embedding that is a second fp16 copy of the table beside the
HalfEmbedding the lookup reads (0.13 GB of gpt2-large, 0.53 GB of Llama-3.2-1B, 0.47 GB of
Qwen2.5-1.5B). The kernel reads the weight as torch lays it out, [outputs, inputs] fp16, so
the tied head reads the embedding table itself: one copy.

Arithmetic is fbgemm fp16's class: weights rounded to fp16 once, activations and sums in
float32; each output summed in one fixed order whatever the rows (batch invariant, bit for
bit). Everything else of the model stays float32 (norms, attention over fp16 caches), as with
``DTYPE=float16``. The candidate is ``float16+native`` (server.engine.kernels), timed at
startup with the others and served only where it measures fastest; it exists where the CPU
has AVX2 + FMA + F16C and the library is built (``unavailable`` says why not).

Rough timings on the shared 2-core Zen 3 (one thread, 12 distinct weights per shape so each
call reads from DRAM; the two paths timed one after the other, not interleaved, the box
busy): 1280 -> 3840 / 1280 -> 5120 / 5120 -> 1280 at one row 0.60-0.68 / 0.79-0.92 /
0.79-0.87 ms (12-17 GB/s) against fbgemm fp16's 0.74 / 1.01-1.09 / 0.86-0.87; at 8 rows
1.09-1.26 / 1.48-1.62 / 1.76-1.90 against 1.37-1.43 / 1.94-2.05 / 1.81-1.88. So level to
~1.3x faster, not the DRAM floor (one thread reads ~21 GB/s here). ``python -m bench
gemm-f16`` times both side by side; its one run so far had the box loaded (two threads
contending with another process: most calls ~8 ms for both paths, scheduler slices), and
only the LM head's showed through: 12.0 / 16.0 / 16.5 ms at 1 / 4 / 8 rows against fbgemm's
19.7 / 23.1 / 32.8.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import torch
from torch import nn

from server.config import ConfigError
from server.engine import native_ops
from server.engine.native_ops import NativeError
from server.engine.quantize import HalfEmbedding, half_embeddings, replace_modules

__all__ = ["NEEDED_FLAGS", "F16Layers", "FusedF16Linear", "NativeF16Linear", "available",
           "fuse_projections", "gemm_f16", "layers_library", "quantize_native_float16",
           "require", "tied_head", "unavailable"]

NEEDED_FLAGS = ("avx2", "fma", "f16c")  # gemm_f16.c's GLL_AVX2_F16C


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str | None]:
    """(the library with gemm_f16 declared, None) where it runs here, else (None, why)."""
    lib, problem = native_ops._variants_loaded({"avx2": NEEDED_FLAGS})
    if lib is not None:
        ptr, i32 = ctypes.c_void_p, ctypes.c_int
        lib.gemm_f16.argtypes, lib.gemm_f16.restype = [ptr] * 4 + [i32] * 4, i32
    return lib, problem


@functools.cache
def layers_library() -> tuple[ctypes.CDLL | None, str | None]:
    """(the library with the C layers on this GEMM declared, None) where they run here (this
    GEMM's features, which the AVX2 decode attention they call shares), else (None, why):
    llama_f16.c's ``llama_*`` (server.engine.native_llama) and gpt2_f16.c's ``gpt2_f16_*``
    and ``gpt2_int8_*`` (server.engine.native_gpt2)."""
    lib, problem = _loaded()
    if lib is not None:
        ptr, i32 = ctypes.c_void_p, ctypes.c_int
        for prefix in ("llama", "gpt2_f16", "gpt2_int8"):
            for name in (f"{prefix}_attn_in", f"{prefix}_attn_out"):
                getattr(lib, name).argtypes = [ptr, ptr, ptr, i32]
            getattr(lib, f"{prefix}_decode").argtypes = [ptr, i32, ptr, ptr, i32, ptr, i32,
                                                         *[ptr] * 4]
            for suffix in ("attn_in", "attn_out", "decode"):
                getattr(lib, f"{prefix}_{suffix}").restype = i32
    return lib, problem


class F16Layers:
    """What the C layer sets on this GEMM share (server.engine.native_gpt2.NativeGPT2F16 for
    ``gpt2_f16.c``, server.engine.native_llama.NativeLlama for ``llama_f16.c``; with its
    ``library`` and ``cache_args`` the bf16 kernels' ``llama_bf16.c``,
    server.engine.native_llama_bf16): refusing a
    model their C does not take, the library, and the two kinds of call: half a layer
    (``<prefix>_attn_in`` / ``_attn_out``) and every layer of a decode-only step
    (``<prefix>_decode``), each checked at the C boundary."""

    source = ""  # the C file, for messages
    prefix = ""  # its entry points' prefix

    def __init__(self, model: nn.Module, problem: str | None, blocks: ctypes.Array) -> None:
        if problem is not None:
            raise ValueError(f"{self.source} does not take this model: {problem}")
        lib, why = self.library()
        if lib is None:
            raise NativeError(f"{self.source}'s layers: {why}")
        self._lib, self._model, self.blocks = lib, model, blocks

    @staticmethod
    def library() -> tuple[ctypes.CDLL | None, str | None]:
        """(the library with these entry points declared, None), else (None, why not)."""
        return layers_library()

    @staticmethod
    def cache_args(caches: native_ops.DecodeCaches) -> tuple:
        """The caches as ``<prefix>_decode`` takes them: the AVX2 attention's (stores, dtype
        code, scales, capacities, lengths, tokens)."""
        stores, caps, lens, tokens = caches.arrays
        return (stores, native_ops.DTYPE_CODES[caches.dtype], caches.scale_array, caps, lens,
                tokens)

    def _half(self, which: str, layer: int, step: ctypes.Structure,
              hidden: torch.Tensor) -> None:
        """``<prefix>_<which>`` (attn_in or attn_out) of ``layer`` over ``hidden``'s rows."""
        native_ops._call(f"{self.prefix}_{which}", ctypes.byref(self.blocks[layer]),
                         ctypes.byref(step), hidden.data_ptr(), hidden.shape[0], lib=self._lib)

    def _every_layer(self, step: ctypes.Structure, hidden: torch.Tensor,
                     caches: native_ops.DecodeCaches, kv: tuple[int, int]) -> None:
        """``<prefix>_decode``: all layers in one call, each row decoding one token (token r
        is cached row r) over caches of the model's ``kv`` (key/value heads, head dim)."""
        if (caches.kv_heads, caches.dim) != kv:
            raise ValueError(f"cache geometry: {caches.kv_heads} kv heads of {caches.dim}, "
                             f"the model {kv[0]} of {kv[1]}")
        if caches.rows != hidden.shape[0] or caches.last_token >= hidden.shape[0]:
            raise ValueError(f"cache geometry: {caches.rows} cached rows (last token "
                             f"{caches.last_token}) for a step of {hidden.shape[0]} tokens")
        if caches.layers < len(self.blocks):
            raise ValueError(f"cache geometry: caches of {caches.layers} layers for a model "
                             f"of {len(self.blocks)}")
        native_ops._call(f"{self.prefix}_decode", self.blocks, len(self.blocks),
                         ctypes.byref(step), hidden.data_ptr(), hidden.shape[0],
                         *self.cache_args(caches), lib=self._lib)


def unavailable() -> str | None:
    """Why the native fp16 GEMM does not run here (CPU features or build), None if it does."""
    return _loaded()[1]


def available() -> bool:
    """True where the native fp16 GEMM runs here."""
    return unavailable() is None


def require() -> None:
    """Raise ConfigError (naming the missing CPU features, or the missing build) unless the
    kernel runs here: for an explicit ``DTYPE=float16+native``."""
    problem = unavailable()
    if problem is not None:
        raise ConfigError(f"DTYPE=float16+native: {problem}; use DTYPE=float16 or auto")


def gemm_f16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] float32 @ weight.T + bias in float32: ``weight`` [N, K] float16 as torch lays
    it out, ``bias`` [N] float32 or None; [M, N]. ValueError before any C runs on a wrong
    dtype, shape, layout or device; NativeError where the kernel does not run here."""
    check_weight(weight, bias)
    return _run(x, weight, bias)


def check_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """ValueError unless ``weight`` is a contiguous [N, K] float16 CPU tensor and ``bias``
    None or [N] float32: what gemm_f16 checks of its fixed operands (a layer checks them
    once, at construction, not on every call)."""
    native_ops._tensor("fp16 weight", weight, torch.float16)
    if weight.dim() != 2:
        raise ValueError(f"fp16 weight: {weight.dim()}-D, expected [outputs, inputs]")
    native_ops._size("fp16 weight outputs", weight.shape[0])
    native_ops._size("fp16 weight inputs", weight.shape[1])
    if bias is not None:
        native_ops._tensor("bias", bias, torch.float32, (weight.shape[0],))


def _run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """gemm_f16 on operands already checked by check_weight; ``x`` is checked here."""
    outputs, inputs = weight.shape
    native_ops._tensor("x", x, torch.float32)
    if x.dim() != 2 or x.shape[1] != inputs:
        raise ValueError(f"x: shape {tuple(x.shape)}, expected [rows, {inputs}]")
    out = torch.empty(x.shape[0], outputs, dtype=torch.float32)
    if x.shape[0] == 0:
        return out
    rows = native_ops._size("rows", x.shape[0])
    lib, problem = _loaded()
    if lib is None:
        raise NativeError(f"native fp16 GEMM: {problem}")
    native_ops._call("gemm_f16", x.data_ptr(), weight.data_ptr(),
                     None if bias is None else bias.data_ptr(), out.data_ptr(), rows, outputs,
                     inputs, native_ops._threads(), lib=lib)
    return out


class NativeF16Linear(nn.Module):
    """``nn.Linear`` with its weight stored in fp16 [outputs, inputs], computed in float32 by
    the native kernel. ``weight``: an fp16 Parameter to read instead of a copy of the
    linear's (a tied LM head reads its HalfEmbedding's table)."""

    linear_kernel = "native_f16"  # its name in server.engine.code_path

    def __init__(self, linear: nn.Linear, weight: nn.Parameter | None = None) -> None:
        super().__init__()
        if not available():
            raise ValueError(f"the native fp16 GEMM does not run here: {unavailable()}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if weight is None:
            weight = nn.Parameter(linear.weight.detach().to(torch.float16).contiguous(),
                                  requires_grad=False)
        elif weight.shape != (self.out_features, self.in_features) or \
                weight.dtype != torch.float16:
            raise ValueError(f"weight: {weight.dtype} {tuple(weight.shape)}, expected float16 "
                             f"({self.out_features}, {self.in_features})")
        self.weight = weight  # a Parameter: model.parameters() counts a shared one once
        self.bias = None if linear.bias is None else nn.Parameter(
            linear.bias.detach().float().contiguous(), requires_grad=False)
        check_weight(self.weight, self.bias)  # once: forward runs per layer per step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T + bias in float32, any leading dims."""
        flat = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        out = _run(flat, self.weight, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


class FusedF16Linear(NativeF16Linear):
    """Several NativeF16Linear layers of the same input computed as one: their weights (and
    biases) stacked into one [sum of outputs, inputs] fp16 tensor, the outputs side by side
    in ``sizes`` order (``split`` cuts them apart).

    The parts stay in the model and read their rows of the stacked weight (views, plain
    attributes: the model's parameters count the bytes once), so transformers' own forward
    still runs on them. Each output is summed in the kernel's fixed order whatever the other
    outputs of the call, so a part's result is bit for bit the one it computes alone.

    Why: one call streams one longer weight where the parts were separate calls. On the AMD
    EPYC Zen 3 (2 threads, one decode row, qwen2.5-1.5b) a 1536 -> 256 key or value
    projection read 10 GB/s and the 1536 -> 1536 query 23 GB/s, against 32-41 GB/s for the
    MLP's large layers; q, k and v took 6.1 ms of a 110 ms step.
    """

    # Not counted as a linear layer of its own by server.engine.code_path: its parts are.
    linear_kernel = None
    fuses = True

    def __init__(self, parts: Sequence[NativeF16Linear]) -> None:
        nn.Module.__init__(self)
        inputs = {part.in_features for part in parts}
        biased = {part.bias is not None for part in parts}
        if len(parts) < 2 or len(inputs) != 1 or len(biased) != 1:
            raise ValueError("fuse two or more layers of one input, all with or all without "
                             "a bias")
        self.in_features = inputs.pop()
        self.sizes = [part.out_features for part in parts]
        self.out_features = sum(self.sizes)
        self.weight = nn.Parameter(torch.cat([part.weight for part in parts]),
                                   requires_grad=False)
        self.bias = None if not biased.pop() else nn.Parameter(
            torch.cat([part.bias for part in parts]), requires_grad=False)
        check_weight(self.weight, self.bias)
        start = 0
        for part, size in zip(parts, self.sizes, strict=True):
            _read_rows(part, self.weight, self.bias, start, size)
            start += size

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The parts' outputs (views) of this layer's ``out``, in ``sizes`` order."""
        return out.split(self.sizes, dim=-1)


def _read_rows(part: NativeF16Linear, weight: torch.Tensor, bias: torch.Tensor | None,
               start: int, size: int) -> None:
    """Point ``part`` at rows start .. start + size of a stacked weight and bias (plain
    attributes, not Parameters: the stack is the model's parameter)."""
    del part.weight
    part.weight = weight.detach()[start:start + size]
    if bias is not None:
        del part.bias
        part.bias = bias.detach()[start:start + size]


def fuse_projections(model: nn.Module) -> int:
    """Fuse each Llama-family layer's q/k/v projections (``self_attn.qkv_proj``) and its
    MLP's gate/up (``mlp.gate_up_proj``) where they are all NativeF16Linear of one input, for
    server.engine.llama_forward; how many fused layers were made."""
    body = getattr(model, "model", None)
    made = 0
    for block in getattr(body, "layers", ()):
        for owner, names, fused in ((getattr(block, "self_attn", None),
                                     ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
                                    (getattr(block, "mlp", None), ("gate_proj", "up_proj"),
                                     "gate_up_proj")):
            parts = [getattr(owner, name, None) for name in names]
            if all(type(part) is NativeF16Linear for part in parts) and \
                    len({part.in_features for part in parts}) == 1 and \
                    len({part.bias is None for part in parts}) == 1:
                setattr(owner, fused, FusedF16Linear(parts))
                made += 1
    return made


def tied_head(model: nn.Module) -> nn.Linear | None:
    """``model``'s LM head if it is an nn.Linear whose weight is its input embedding's
    (transformers' ``tie_word_embeddings``: the same tensor), else None."""
    if not (hasattr(model, "get_output_embeddings") and hasattr(model, "get_input_embeddings")):
        return None
    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    if type(head) is not nn.Linear or table is None or head.bias is not None:
        return None
    same = head.weight.data_ptr() == table.weight.data_ptr() and \
        head.weight.shape == table.weight.shape
    return head if same else None


def quantize_native_float16(model: nn.Module) -> nn.Module:
    """``model`` (float32) with its embedding tables in fp16 (HalfEmbedding) and every
    ``nn.Linear`` as a NativeF16Linear; a tied LM head reads the input embedding's fp16 table
    (the same tensor), so the model holds one copy of it; a Llama-family layer's q/k/v and
    gate/up are fused (``fuse_projections``)."""
    head = tied_head(model)
    half_embeddings(model)
    table = model.get_input_embeddings() if head is not None else None
    shared = table.weight if isinstance(table, HalfEmbedding) else None
    replace_modules(model, nn.Linear, lambda linear: NativeF16Linear(
        linear, shared if linear is head else None))
    fuse_projections(model)
    return model
