"""A worker's memory over time: one reading, a cheap background sampler, and handing freed
heap back.

RSS counts every resident page of a process, shared or not, so N preloaded workers each
report the whole model. USS (pages only this process has) and PSS (shared pages divided
among their sharers) show what a worker really costs; summing PSS over a process tree gives
its true footprint. psutil reads them: ``memory_full_info`` parses ``smaps_rollup``, which
the kernel makes by walking the page tables (~26 ms for a gpt2-large worker, holding its
mmap lock), while ``memory_info`` reads RSS from ``statm`` in microseconds at any size.

Request threads never read /proc themselves: they take the sampler's latest sample
(``WorkerMemorySampler.latest``) for the X-Worker-*-MB headers and the request log, and its
history for a request's peak RSS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from itertools import takewhile

import psutil

_MB = 2**20


@dataclass(frozen=True)
class MemorySample:
    """One reading of a process: resident, unique, proportional and shared MB.

    ``measured`` is False when USS/PSS were not read in this sample but carried over from
    the last full read (see WorkerMemorySampler).
    """

    at: float  # time.monotonic()
    rss_mb: float
    uss_mb: float
    pss_mb: float
    shared_mb: float
    sys_available_mb: float
    measured: bool = True


def system_available_mb() -> float:
    """Memory the host can still give out without swapping (MemAvailable), in MB."""
    return psutil.virtual_memory().available / _MB


def read_process_memory(pid: int | None = None) -> MemorySample:
    """One process's RSS/USS/PSS/shared (``smaps_rollup``: the costly read); default: this
    process. A process that is gone raises ProcessLookupError (an OSError, as reading /proc
    did), one we may not read PermissionError."""
    try:
        full = psutil.Process(pid).memory_full_info()
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process {pid}") from None
    except psutil.AccessDenied:
        raise PermissionError(f"process {pid}: memory not readable") from None
    return MemorySample(at=time.monotonic(), rss_mb=full.rss / _MB, uss_mb=full.uss / _MB,
                        pss_mb=full.pss / _MB, shared_mb=max(0, full.rss - full.uss) / _MB,
                        sys_available_mb=system_available_mb())


def read_rss_mb(pid: int | None = None) -> float:
    """One process's RSS (``statm``: one small read, cheap at any process size)."""
    return psutil.Process(pid).memory_info().rss / _MB


@cache
def _process(pid: int) -> psutil.Process:
    # Keyed by pid: a Process made before fork would go on reading the master.
    return psutil.Process(pid)


def current_rss_mb() -> float:
    """This process's RSS, cheap enough per request (statm, ~30 us)."""
    return _process(os.getpid()).memory_info().rss / _MB


# Share of one core the sampler may spend in smaps_rollup reads. At gpt2-large (~26 ms per
# read) that is one full read every ~10 s instead of every 0.5 s (was 5% of a core).
DEFAULT_FULL_BUDGET = 0.0025


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def release_free_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``; else no-op).

    glibc keeps memory freed by a batch (activations, KV cache, tokenizer buffers) inside its
    arenas, so a worker's private memory drifts up with the largest batches it has seen and
    differs run to run. Trimming when the generation thread goes idle returns it: what a
    worker costs is then what it holds, not what it once held.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


# glibc's M_MMAP_THRESHOLD (mallopt's parameter number) and the value a worker pins.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
# Where a user sets it themselves: glibc's environment variable, and its tunable's name.
USER_ENV = "MALLOC_MMAP_THRESHOLD_"
USER_TUNABLE = "glibc.malloc.mmap_threshold"


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``threshold`` bytes and more with their own mmap, for good
    (glibc ``mallopt(M_MMAP_THRESHOLD)``); True if set. Left alone where glibc is absent or
    the user tuned it (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``).

    Why: glibc starts at 128 KiB but raises the threshold to the size of each mmapped block
    freed, up to 32 MiB, so after a worker's first prefill step its activations (a 128-token
    chunk's MLP is 2 MiB a tensor) came from the arena, and their pages stayed resident
    between steps until a trim. Pinned, they go back to the kernel when freed: a worker's
    peak USS over its KV cache fell from 37-51 to 8-17 MiB on an 8-row mixed batch of
    llama-3.2-1b and from 26-33 to 6-12 MiB on one 238-token row, prefill and decode times
    unchanged (AMD EPYC Zen 2, results/profile/mmap-threshold-zen2.txt). 1 MiB, not glibc's
    starting 128 KiB (which held 6-10 MiB less there): a decode step's per-layer
    temporaries (an 8-row MLP activation is 128-160 KiB) then stay in the arena on every
    preset instead of costing an mmap and its page faults each; that cost on other models
    was not measured.
    """
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    if os.environ.get(USER_ENV) or USER_TUNABLE in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, threshold))


class HeapReleaser:
    """Decides when the generation thread calls ``release_free_heap``: whenever it goes
    idle, and at least every ``interval_s`` while it stays busy.

    Under steady load the queue is never empty, and without the periodic trim a worker
    kept whatever its largest batches had freed: its memory stepped up by 10-15 MB now and
    then and stayed there until the load stopped (seen in the soak test), which reads like
    a leak. One trim costs ~3 ms on synthetic:gpt2 after a 16-request batch (measured), so
    every 5 s is under 0.1% of the generation thread's time.
    """

    def __init__(self, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 release: Callable[[], None] = release_free_heap) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._release = release
        self._last = clock()

    def after_batch(self, idle: bool) -> bool:
        """Trim if the thread is now idle or the last trim is ``interval_s`` old; True if
        it trimmed."""
        now = self._clock()
        if not idle and now - self._last < self.interval_s:
            return False
        self._release()
        self._last = now
        return True


def estimate_from(full: MemorySample, rss_mb: float, at: float,
                  sys_available_mb: float) -> MemorySample:
    """A sample with RSS measured now and USS/PSS carried from ``full``, shifted by the RSS
    change since.

    What a worker allocates or frees between reads (activations, KV cache, heap) is private,
    so it moves RSS, USS and PSS alike. What leaves RSS unchanged waits for the next full
    read: pages turning private by copy-on-write, and PSS shifting as workers (sharers of
    the weights) come and go.
    """
    delta = rss_mb - full.rss_mb
    uss = max(0.0, full.uss_mb + delta)
    pss = max(uss, full.pss_mb + delta)
    return MemorySample(at, rss_mb, uss, pss, max(0.0, rss_mb - uss), sys_available_mb,
                        measured=False)


class WorkerMemorySampler:
    """A daemon thread that samples this process every ``interval_s`` seconds, cheaply.

    Every sample reads RSS from statm (microseconds). USS and PSS need ``smaps_rollup``,
    whose cost grows with the process, so it is read only as often as ``full_budget`` (a
    share of one core) allows: after a read that took c seconds the next waits
    c / full_budget seconds (26 ms at 0.25%: every ~10 s; a small process's 0.2 ms read:
    every sample). In between, USS/PSS come from ``estimate_from`` (``measured=False``).
    ``full_budget=math.inf`` reads smaps_rollup on every sample (the old behaviour).
    """

    def __init__(self, interval_s: float, history: int = 2400,
                 on_sample: Callable[[MemorySample], None] = lambda sample: None,
                 full_budget: float = DEFAULT_FULL_BUDGET,
                 clock: Callable[[], float] = time.monotonic,
                 read_full: Callable[[], MemorySample] = read_process_memory,
                 read_rss: Callable[[], float] = current_rss_mb) -> None:
        self.interval_s = interval_s
        self.full_budget = full_budget
        self._on_sample = on_sample
        self._clock, self._read_full, self._read_rss = clock, read_full, read_rss
        self._samples: deque[MemorySample] = deque(maxlen=history)
        self._full: MemorySample | None = None
        self._next_full_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # What sampling cost so far (read by python -m bench sampler-cost).
        self.samples_taken = 0
        self.full_reads = 0
        self.full_read_s = 0.0
        self.sample_once()

    def sample_once(self) -> MemorySample:
        """Take one sample now (full if it is due), record and publish it, and return it."""
        now = self._clock()
        if self._full is None or now >= self._next_full_at:
            sample = replace(self._read_full(), at=now)
            cost_s = max(0.0, self._clock() - now)
            self._full = sample
            self.full_reads += 1
            self.full_read_s += cost_s
            self._next_full_at = now + cost_s / self.full_budget
        else:
            sample = estimate_from(self._full, self._read_rss(), now, system_available_mb())
        self.samples_taken += 1
        self._samples.append(sample)
        self._on_sample(sample)
        return sample

    def start(self) -> None:
        """Start sampling (call in the process to be sampled: threads do not survive fork)."""
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sampling thread (it exits within one interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    @property
    def native_id(self) -> int | None:
        """The sampling thread's kernel thread id (its /proc/self/task entry), once started."""
        return self._thread.native_id if self._thread is not None else None

    @property
    def latest(self) -> MemorySample:
        """The most recent sample (never blocks, never reads /proc)."""
        return self._samples[-1]

    def peak_rss_mb(self, since: float) -> float:
        """Highest sampled RSS at or after monotonic time ``since``, 0 if none yet."""
        samples = list(self._samples)  # a copy: the sampler thread appends concurrently
        recent = takewhile(lambda s: s.at >= since, reversed(samples))
        return max((s.rss_mb for s in recent), default=0.0)
