"""Read a process's memory from /proc: RSS, USS, PSS and shared MB, and the host's free RAM.

RSS counts every resident page of a process, shared or not, so N preloaded workers each
report the whole model. USS (pages only this process has) and PSS (shared pages divided
among their sharers) show what a worker really costs; summing PSS over a process tree gives
its true footprint.

Two sources, very different in cost: ``smaps_rollup`` has all four figures but the kernel
walks the page tables to make it (~26 ms for a gpt2-large worker, holding the process's
mmap lock), while ``statm`` has RSS only and costs microseconds at any size.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass(frozen=True)
class MemorySample:
    """One reading of a process: resident, unique, proportional and shared MB.

    ``measured`` is False when USS/PSS were not read in this sample but carried over from
    the last ``smaps_rollup`` read (see server.memory.MemorySampler).
    """

    at: float  # time.monotonic()
    rss_mb: float
    uss_mb: float
    pss_mb: float
    shared_mb: float
    sys_available_mb: float
    measured: bool = True


def _read_kb_fields(path: str) -> dict[str, int]:
    fields: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0])
    return fields


def system_available_mb() -> float:
    """MemAvailable from /proc/meminfo, in MB."""
    return _read_kb_fields("/proc/meminfo")["MemAvailable"] / 1024


def read_process_memory(pid: int | str = "self") -> MemorySample:
    """Read one process's RSS/USS/PSS/shared from /proc/<pid>/smaps_rollup (the costly read)."""
    f = _read_kb_fields(f"/proc/{pid}/smaps_rollup")
    uss_kb = f.get("Private_Clean", 0) + f.get("Private_Dirty", 0) + f.get("Private_Hugetlb", 0)
    shared_kb = f.get("Shared_Clean", 0) + f.get("Shared_Dirty", 0) + f.get("Shared_Hugetlb", 0)
    return MemorySample(
        at=time.monotonic(),
        rss_mb=f["Rss"] / 1024,
        uss_mb=uss_kb / 1024,
        pss_mb=f["Pss"] / 1024,
        shared_mb=shared_kb / 1024,
        sys_available_mb=system_available_mb(),
    )


def read_rss_mb(pid: int | str = "self") -> float:
    """One process's RSS from /proc/<pid>/statm: one small read, cheap at any process size."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE_MB


def current_rss_mb() -> float:
    """This process's RSS (statm), cheap enough per request."""
    return read_rss_mb("self")
