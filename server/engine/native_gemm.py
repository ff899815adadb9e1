"""A bf16 GEMM of the project's own for CPUs with AVX-512 BF16 (``native/gemm_bf16.c``).

Why: oneDNN's prepacked bf16 kernel (server.engine.kernels.PackedBF16Linear) reads a one-row
decode step's weights at ~20 GB/s where this box streams ~30 (``python -m bench roofline``),
and costs about as much at 8 rows as at 1 only because both are slow. The C kernel packs
each weight once into blocks of 16 outputs x 2 inputs, the layout ``vdpbf16ps`` multiplies
with a broadcast pair of activations, and keeps up to 8 rows x 8 blocks of accumulators in
registers: on the AMD EPYC Zen 4 (2 threads) gpt2-large's linear layers took 39 / 43 / 460
ms at 1 / 8 / 128 rows against oneDNN's prepacked 63 / 63 / 463
(``python -m bench gemm --rows 1,8,128 --threads 2``).
Each output is summed in the same order whatever the rows, so a row's result is the same
alone or in any batch, bit for bit.

It is one more kernel candidate (``bfloat16+native``, server.engine.kernels), timed at startup
like the others and served only where it measures fastest. The C is compiled when the package
is installed and called through checked operations (server.engine.native_ops: loading, the
CPU-feature and build checks, ``require``); where the CPU lacks AVX-512 BF16 or the library is
not built the candidate is simply absent, and an explicit ``DTYPE=bfloat16+native`` stops
startup with a ConfigError naming the missing CPU features and the CPU, or the missing build.
"""

from __future__ import annotations

import torch
from torch import nn

from server.engine import native_ops
from server.engine.native_f16 import tied_head
from server.engine.native_ops import (  # the library's state, as the kernel paths ask it
    BLOCK,
    NEEDED_FLAGS,
    available,
    library,
    missing_flags,
    require,
    unavailable,
)
from server.engine.quantize import replace_modules, to_bfloat16

__all__ = ["BLOCK", "NEEDED_FLAGS", "NativeBF16Linear", "PackedTableEmbedding", "available",
           "library", "missing_flags", "pack_native", "pad_rows", "require", "unavailable"]


class NativeBF16Linear(nn.Module):
    """``nn.Linear`` in bf16 computed by the native kernel, its weight packed once.

    Outputs are padded to a multiple of 16 inside (zero weights), sliced off on return.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if library() is None or linear.in_features % 2:
            raise ValueError("the native kernel needs AVX-512 BF16 and an even input width")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.padded = -(-self.out_features // BLOCK) * BLOCK
        weight = pad_rows(linear.weight.detach().to(torch.bfloat16), self.padded)
        self.packed = native_ops.pack_vnni(weight)
        self.bias = None if linear.bias is None else pad_rows(
            linear.bias.detach().to(torch.bfloat16), self.padded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T + bias in bf16, any leading dims."""
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = native_ops.gemm(flat, self.packed, self.bias)
        if self.padded != self.out_features:
            out = out[:, :self.out_features]
        return out.reshape(*x.shape[:-1], self.out_features)

    def weight_bytes(self) -> int:
        """Bytes the packed weight and the bias hold (padding included)."""
        bias = 0 if self.bias is None else self.bias.numel() * 2
        return self.packed.numel() * 2 + bias


class PackedTableEmbedding(nn.Module):
    """The input embedding of a model whose LM head is tied to it, read from the head's packed
    weight: one copy of the table.

    Why: packing the tied head (a NativeBF16Linear) made a second bf16 copy of the table beside
    the ``nn.Embedding`` the lookup read: 525 MB of Llama-3.2-1B's 128,256 x 2,048, 467 MB of
    Qwen2.5-1.5B's, 129 MB of gpt2-large's. On the AMD EPYC Zen 4 the Llama-3.2-1B server's
    PSS was 1.18x llama-server's RSS by that much (results/reference/README.md). A token's row
    is gathered from the [N/16][K/2][16][2] layout (block id // 16, lane id % 16), the same
    bf16 values the table held, bit for bit.
    """

    computed_dtype = torch.bfloat16  # what server.engine.code_path reads instead of a weight

    def __init__(self, head: NativeBF16Linear) -> None:
        super().__init__()
        # A tuple, not an attribute nn.Module registers: the head stays the model's submodule
        # alone, and the lookup reads its packed weight as it is at call time (huge pages
        # may have moved it, server.engine.huge_pages).
        self._head = (head,)
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of ``ids`` (any shape), bf16; IndexError for an id outside the table."""
        flat = ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"token id outside the embedding table of {self.num_embeddings}")
        blocks = self._head[0].packed.view(-1, self.embedding_dim // 2, BLOCK, 2)
        rows = blocks[flat // BLOCK, :, flat % BLOCK, :]  # [tokens, K/2, 2]: a row in order
        return rows.reshape(*ids.shape, self.embedding_dim)


def pack_native(model: nn.Module) -> nn.Module:
    """``model`` in bf16 with every ``nn.Linear`` as a NativeBF16Linear (the LM head too,
    packed); a tied LM head's input embedding then reads the packed head
    (PackedTableEmbedding), so the model holds one copy of the table. A layer of odd input
    width, which the kernel's input pairs cannot take, stays a plain bf16 ``nn.Linear``."""
    model = to_bfloat16(model)  # rotary frequencies stay float32 (server.engine.quantize)
    tied = tied_head(model) is not None
    replace_modules(model, nn.Linear,
                    lambda layer: layer if layer.in_features % 2 else NativeBF16Linear(layer))
    head = model.get_output_embeddings() if tied else None
    if isinstance(head, NativeBF16Linear):
        model.set_input_embeddings(PackedTableEmbedding(head))
    return model


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with zero rows appended up to ``rows`` (outputs in whole 16-wide blocks:
    the kernels' layout), contiguous; the padded outputs are sliced off after the GEMM."""
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    pad = tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])
    return torch.cat([tensor, pad]).contiguous()
