"""The one timer of every micro-benchmark: call a function, time each call, keep the times.

    times = repeat(fn, reps=15, warmup=1)             # seconds of each call
    median_ms(fn, reps=15)                            # the usual figure
    interleaved({"a": fa, "b": fb}, reps=15)          # alternate within each repetition
    repeat_for(fn, seconds=2.0)                       # as many calls as fit in 2 s (>= 3)

Wall clock (``time.perf_counter``), on the caller's thread and torch's thread count as set:
``torch.utils.benchmark.Timer`` would reset the thread count and wants a statement without
state, while a decode step advances its cache on every call. ``fn`` may do exactly that: it
is called ``warmup + reps`` times in a row. Interleaving makes a busy box's drift hit every
variant alike (the Zen 4 VM drifts ±20% from process to process).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()``'s result and the seconds it took."""
    started = time.perf_counter()  # not a wait: a measurement
    result = fn()
    return result, time.perf_counter() - started


def repeat(fn: Callable[[], object], reps: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()  # first-call allocations, kernel selection
    return [timed(fn)[1] for _ in range(reps)]


def repeat_for(fn: Callable[[], object], seconds: float, min_reps: int = 3,
               warmup: int = 1) -> list[float]:
    """Seconds of each call of ``fn`` over about ``seconds`` (at least ``min_reps`` calls)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    ends_at = time.monotonic() + seconds
    while len(times) < min_reps or time.monotonic() < ends_at:  # not a wait: a measurement
        times.append(timed(fn)[1])
    return times


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 0) -> float:
    """Median ms of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    return statistics.median(repeat(fn, reps, warmup)) * 1000.0


def interleaved(fns: dict[str, Callable[[], object]], reps: int,
                warmup: int = 0) -> dict[str, list[float]]:
    """Seconds of each call of every function, the functions alternating in each repetition."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed(fn)[1])
    return times


def ms(times: list[float]) -> float:
    """The median of ``times`` (seconds), in ms."""
    return statistics.median(times) * 1000.0
