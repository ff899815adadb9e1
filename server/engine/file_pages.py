"""Hand back the file pages only the Gunicorn master touched while it loaded the model.

Loading reads code the workers never run again: safetensors, transformers' loading code,
and libtorch's float32 paths that the startup kernel table times and then discards. Those
library pages stay mapped in the master, which after the fork runs nothing but the arbiter,
and every one of them counts in the tree's PSS (a page only one process maps is all its
own). On the AMD EPYC Zen 4 the master of a Qwen2.5-1.5B server held 74 MB of such pages
(Private_Clean in its smaps; 52 MB of them in libtorch_cpu.so) that the worker never mapped.

``release_file_pages`` asks the kernel to reclaim this process's file-backed pages
(``madvise(MADV_PAGEOUT)``, Linux 5.4+): a clean file page mapped by this process alone
leaves memory; a page another process maps is left as it is (the kernel skips shared
pages), and anonymous memory (weights, Python objects) is never touched. A page is read back
from the file when someone needs it again, so nothing can break, only get slower once: the
master calls it before it forks, and the workers fault in the code they run during their
warm-up. A kernel without MADV_PAGEOUT releases nothing and says so.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from server.engine.huge_pages import libc as c_library
from server.engine.procfs import file_mappings, resident_file_mb

MADV_PAGEOUT = 21  # include/uapi/asm-generic/mman-common.h (Linux 5.4)


@dataclass(frozen=True)
class Released:
    """What ``release_file_pages`` did: resident file-backed MB before and after, and why
    nothing was released (errno name), if so."""

    before_mb: float
    after_mb: float
    refused: str | None = None

    def summary(self) -> str:
        """One startup log line."""
        if self.refused:
            return f"file pages kept ({self.refused}): {self.before_mb:,.0f} MB resident"
        return (f"released {self.before_mb - self.after_mb:,.0f} MB of file pages only this "
                f"process mapped ({self.after_mb:,.0f} MB of file pages still resident)")


def release_file_pages() -> Released:
    """Reclaim the file-backed pages this process alone maps (see the module docstring)."""
    libc = c_library()
    before = resident_file_mb()
    if libc is None:
        return Released(before, before, "no libc")
    refused = None
    for start, length in file_mappings():
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_PAGEOUT) != 0:
            # EINVAL: a kernel before 5.4 (unknown advice), or a mapping madvise cannot take
            # (locked, PFN-mapped); the others are still tried.
            code = ctypes.get_errno()
            refused = refused or errno.errorcode.get(code, str(code))
    after = resident_file_mb()
    if refused and after >= before:
        return Released(before, after, refused)
    return Released(before, after)
