"""Weight-only int8 linear layers computed by the project's own kernel (``native/gemm_int8.c``).

Why: a decode step reads every weight once per token, so at a few rows its time is the
weights' bytes over the memory's speed. int8 weights are half of bf16's bytes (a quarter of
float32's). torch's dynamic int8 Linear (fbgemm, ``DTYPE=int8``) also quantizes the
activations of every call and was slower at 8 rows than the bf16 path on the Zen 4 (issue 31).

Scales: symmetric, one per output channel (scale[n] = max_k |w[n, k]| / 127). Per channel
keeps the kernel's inner loop a plain multiply-add with one multiply per output at the end
(a per-group scale would cost a multiply per group of K for every output and row), and it is
the granularity fbgemm's int8 already serves here; its error is measured on the tiny model
(tests/test_native_int8.py) rather than assumed.

The variant is picked by CPU features when a layer is built (``native_ops.int8_variant``):

    avx2          AVX2 + FMA (Zen 3): int8 widened to fp32, fp32 FMA on fp32 activations
    avx512_vnni   AVX-512 VNNI (Zen 4): activations quantized per row to 8 bits, vpdpbusd

Everything else of the model stays float32 (embeddings, norms, attention), as with
``DTYPE=int8``. Prompt chunks run the same kernel: on the busy 2-core Zen 3, one thread, a
1280 -> 5120 layer took roughly 19 / 34 ms at 64 / 128 rows, about MKL's fp32 time on the
already dequantized weight (19 / 39) and below dequantizing per call and then MKL (40 / 55),
so there is no fallback (rough timings, the box shared with a test suite). At one row, twelve
distinct 1280 -> 5120 layers (weights from DRAM, not the 32 MB L3) took roughly 0.65 ms per
layer against fbgemm fp16's 1.30 and MKL fp32's 2.08: half fp16's bytes, half its time. With
one layer's weights resident in L3 the AVX2 kernel is compute-bound (3 instructions per 8
weights against fp16's 2) and only level with fp16 (0.44 / 0.41 ms); there fbgemm's int8,
which quantizes activations and multiplies 8-bit integers, is faster (``python -m bench gemm``:
42 / 80 ms at 1 / 8 rows against this kernel's 63 / 171, L3-resident), so on Zen 3 the startup
table decides, and this variant's gain is accuracy (float32 activations).
"""

from __future__ import annotations

import torch
from torch import nn

from server.config import ConfigError
from server.engine import native_ops
from server.engine.native_gemm import pad_rows
from server.engine.native_ops import BLOCK, int8_unavailable, int8_variant
from server.engine.quantize import half_embeddings, replace_modules

__all__ = ["NativeInt8Linear", "available", "int8_unavailable", "int8_variant",
           "quantize_native_int8", "quantize_weight", "require"]


def available() -> bool:
    """True where a variant of the native int8 kernel runs here (and the library loads)."""
    return int8_unavailable() is None


def require() -> None:
    """Raise ConfigError (naming the CPU features either variant needs, or the missing build)
    unless the native int8 kernel runs here: for an explicit ``DTYPE=int8+native``."""
    problem = int8_unavailable()
    if problem is not None:
        raise ConfigError(f"DTYPE=int8+native: {problem}; use DTYPE=int8 or auto")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [N, K], scales float32 [N]): ``weight`` ~ scales[:, None] * q, symmetric per
    output channel, q in [-127, 127] (a row of zeros gets scale 1)."""
    weight = weight.detach().float()
    top = weight.abs().amax(dim=1)
    scales = torch.where(top > 0, top / 127, torch.ones_like(top))
    q = torch.round(weight / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales.contiguous()


class NativeInt8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per-channel scales) computed by the native kernel.

    Outputs are padded to a multiple of 16 inside (zero weights), sliced off on return.
    """

    linear_kernel = "native_int8"  # its name in server.engine.code_path

    def __init__(self, linear: nn.Linear, variant: str | None = None) -> None:
        super().__init__()
        self.variant = variant or int8_variant()
        if self.variant is None:
            raise ValueError(f"the native int8 kernel does not run here: {int8_unavailable()}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.padded = -(-self.out_features // BLOCK) * BLOCK
        q, scales = quantize_weight(pad_rows(linear.weight.detach().float(), self.padded))
        self.packed = native_ops.pack_int8(q, self.variant)
        self.scales = scales
        self.colsum = (q.sum(dim=1, dtype=torch.int32) if self.variant == "avx512_vnni"
                       else None)
        self.bias = None if linear.bias is None else pad_rows(
            linear.bias.detach().float(), self.padded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T + bias in float32, any leading dims."""
        flat = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        out = native_ops.gemm_int8(flat, self.packed, self.scales, self.colsum, self.bias,
                                   self.variant)
        if self.padded != self.out_features:
            out = out[:, :self.out_features]
        return out.reshape(*x.shape[:-1], self.out_features)

    def quantized(self) -> torch.Tensor:
        """The int8 weight [padded outputs, inputs] as quantized, unpacked."""
        step = 4 if self.variant == "avx512_vnni" else 1
        width = self.packed.shape[1]
        blocks = self.packed.view(self.padded // BLOCK, width // step, BLOCK, step)
        return blocks.permute(0, 2, 1, 3).reshape(self.padded, width)[:, :self.in_features]

    def dequantized(self) -> torch.Tensor:
        """scales[:, None] * q as float32 [padded outputs, inputs]."""
        return self.quantized().float() * self.scales[:, None]

    def weight_bytes(self) -> int:
        """Bytes the packed weight, its scales (and column sums) and the bias hold."""
        extra = sum(t.numel() * 4 for t in (self.scales, self.colsum, self.bias)
                    if t is not None)
        return self.packed.numel() + extra


def quantize_native_int8(model: nn.Module) -> nn.Module:
    """``model`` (float32) with every ``nn.Linear`` as a NativeInt8Linear (the LM head too: its
    own int8 copy beside the embedding it was tied to, which is kept in float16 as
    ``DTYPE=int8`` keeps it: server.engine.quantize.HalfEmbedding)."""
    replace_modules(model, nn.Linear, NativeInt8Linear)
    half_embeddings(model)
    return model

