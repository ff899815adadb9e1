"""The 8-bit KV cache's number format (``KV_DTYPE=int8``): quantise on write, widen on read.

Keys and values are stored as int8, symmetric, with one float32 scale per (layer, keys or
values, kv head, position): ``scale = max|x| / 127`` over the head dim, ``q = round(x /
scale)`` (half to even) clamped to [-127, 127], and ``x ~ q * scale``; a vector of zeros has
scale 0 and is stored as zeros. This is OpenVINO GenAI's u8 KV cache idea (one scale per
token and head), symmetric so that the decode kernel needs no zero point: a score is
``scale_k * (q . Kint)``. One position of gpt2-large then weighs 36 x 2 x 20 x (64 + 4) =
97,920 B instead of float16's 184,320 (server.engine.kv_budget).

The arithmetic is fixed so that the C decode kernel (``native/attention_avx2.c``) writes the
same bytes as ``quantize``: the max in float32 (exact), one float32 division for the scale,
one float32 division per element (never a multiplication by a reciprocal), rounding half to
even. A row's cache is then the same whichever path wrote each of its positions. Keys and
values that are not finite are outside the format (their bytes are not specified).
"""

from __future__ import annotations

import torch

QMAX = 127  # symmetric: -128 is never written
SCALE_BYTES = 4  # one float32 per (layer, k|v, kv head, position)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [..., dim] (any float dtype) as (int8 [..., dim], float32 scales [...])."""
    wide = x.float()
    scale = wide.abs().amax(dim=-1) / QMAX
    # A zero vector has scale 0: divided by 1 instead, every element rounds to 0.
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(wide / divisor.unsqueeze(-1)).clamp_(-QMAX, QMAX)
    return q.to(torch.int8), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q`` [..., dim] int8 times ``scale`` [...] (float32), in ``dtype``."""
    return (q.float() * scale.unsqueeze(-1)).to(dtype)


def dequantize_into(out: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``out`` [..., dim] = ``q`` * ``scale`` [...], computed in float32 and written in
    ``out``'s dtype in one pass (no temporary of the cache's size); returns ``out``."""
    return torch.mul(q, scale.unsqueeze(-1), out=out)
