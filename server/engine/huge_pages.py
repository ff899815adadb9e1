"""Move a served model's weights onto transparent huge pages, once, in the master before fork.

A decode step reads every weight once per token, so it is bound by how fast the CPU streams
them from DRAM. Read through 4 KB pages, a 3 GB model crosses ~750,000 page boundaries per
token, each a TLB miss the hardware prefetchers stop at; read through 2 MB pages, ~1,500.
On the AMD EPYC Zen 3 two threads read an fp16 GEMV's weights at 29-32 GB/s on 2 MB pages
against 26-30 on 4 KB ones (results/profile/README.md, "Huge pages").

How: ``madvise(MADV_HUGEPAGE)`` marks each large weight's storage, then ``MADV_COLLAPSE``
(Linux 6.1+) copies its 4 KB pages into 2 MB ones synchronously, where they lie, so nothing
else changes: same addresses, same tensors, same bytes. Only the 2 MB-aligned interior of a
storage of at least 2 MB can be collapsed. Weights only, on purpose: torch's own switch
(``THP_MEM_ALLOC_ENABLE``) would put every large allocation on huge pages, KV caches and
activations too, and a cache touched 4 KB at a time would then hold 2 MB at once, which the
per-request RAM record would count.

The workers fork from the master after this and share the huge pages copy-on-write; the
weights are never written, so no page is copied. A kernel without ``MADV_COLLAPSE``, a
file-backed storage or a failed allocation collapses nothing: the weights stay where they
were and serve as before (the startup log says how many bytes moved). ``HUGE_PAGES=false``
skips it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

HUGE_PAGE = 2 * 1024 * 1024
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25  # Linux 6.1 (include/uapi/asm-generic/mman-common.h)
# EAGAIN is the kernel's "no huge page free just now": right after the kernel table's child
# exits, its ~10 GB are still being freed, and one storage of Qwen2.5-1.5B was refused once.
COLLAPSE_TRIES = 3


@dataclass(frozen=True)
class Collapse:
    """What ``collapse_weights`` did: weight bytes now on huge pages out of those eligible
    (storages of at least 2 MB), and the first refusal's errno name, if any."""

    collapsed_bytes: int
    eligible_bytes: int
    refused: str | None = None

    def summary(self) -> str:
        """One startup log line."""
        line = (f"weights on 2 MB pages: {self.collapsed_bytes / 2**20:,.0f} of "
                f"{self.eligible_bytes / 2**20:,.0f} MB eligible")
        return line + (f" (madvise refused: {self.refused})" if self.refused else "")


def collapse_weights(model: nn.Module) -> Collapse:
    """Put the storages of at least 2 MB behind ``model``'s weights on huge pages (each
    storage once, however many tensors view it); returns the bytes moved."""
    c = libc()
    seen: set[int] = set()
    collapsed = eligible = 0
    refused: str | None = None
    for start, size in _storages(model):
        if start in seen or size < HUGE_PAGE:
            continue
        seen.add(start)
        eligible += size
        moved, error = collapse_range(c, start, size)
        collapsed += moved
        refused = refused or error
    return Collapse(collapsed, eligible, refused)


def _storages(model: nn.Module) -> Iterator[tuple[int, int]]:
    """(address, bytes) of every dense CPU tensor a module holds: parameters, buffers, and
    the plain tensor attributes the native kernels keep their packed weights in
    (``NativeBF16Linear.packed``). Opaque ones (oneDNN's reordered weights, fbgemm's packed
    params) have no address to give and are skipped."""
    for module in model.modules():
        held = [*module.parameters(recurse=False), *module.buffers(recurse=False),
                *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        for tensor in held:
            if tensor.device.type == "cpu" and tensor.layout == torch.strided:
                storage = tensor.untyped_storage()
                yield storage.data_ptr(), storage.nbytes()


def collapse_range(c: ctypes.CDLL | None, start: int, size: int) -> tuple[int, str | None]:
    """Collapse the 2 MB-aligned interior of [start, start + size): (bytes collapsed, None)
    or (0, the errno's name) when the kernel refuses."""
    first = -(-start // HUGE_PAGE) * HUGE_PAGE
    end = (start + size) // HUGE_PAGE * HUGE_PAGE
    if c is None:
        return 0, "no libc"
    if end <= first:
        return 0, None
    if c.madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), MADV_HUGEPAGE) != 0:
        return 0, _errno_name(ctypes.get_errno())
    for _ in range(COLLAPSE_TRIES):
        if c.madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), MADV_COLLAPSE) == 0:
            return end - first, None
        if ctypes.get_errno() != errno.EAGAIN:
            break
    return 0, _errno_name(ctypes.get_errno())


def libc() -> ctypes.CDLL | None:
    """The C library, with errno kept for ``ctypes.get_errno`` (None where none is found)."""
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def _errno_name(number: int) -> str:
    return errno.errorcode.get(number, str(number))
