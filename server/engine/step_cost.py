"""The server's CPU time charged to the requests it serves, step by step.

The clock is the serving process's CPU clock (``time.process_time()``: every thread of the
worker, torch's OpenMP threads included). The generation thread reads it once after each
step; the core-seconds since the previous reading are that step's cost, and the step's rows
share it in proportion to the tokens each fed into the step (a decoding row feeds 1, a row
reading its prompt feeds its chunk, so a 128-token prefill chunk costs its row 128 shares;
a row that fed nothing this step pays nothing). The interval is not reset while the worker
idles: the CPU between two steps (the scheduler's bookkeeping, request threads parsing and
tokenizing, the worker's memory sampler, an idle gap) is charged to the next step's rows,
so that every core-second the worker spends after its warm-up lands on some request, and
summed per-request CPU equals the worker's CPU from the warm-up's end to its last step.
What no request pays for: the warm-up, the CPU after the last step (its answer's
serialisation), a step that failed, and the Gunicorn master (the run's report shows the
remainder against the whole tree's CPU from memory.csv).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def apportion(cpu_s: float, fed: Mapping[int, int]) -> dict[int, float]:
    """Split ``cpu_s`` over rows (index -> tokens fed) in proportion to their tokens."""
    tokens = sum(n for n in fed.values() if n > 0)
    if tokens <= 0:
        return {}
    return {i: cpu_s * n / tokens for i, n in fed.items() if n > 0}


class StepClock:
    """Process CPU seconds between successive ``lap()`` calls (one per step)."""

    def __init__(self, clock: Callable[[], float] = time.process_time) -> None:
        self._clock = clock
        self._mark: float | None = None

    def reset(self) -> None:
        """Start counting from now (after the warm-up: it is nobody's cost)."""
        self._mark = self._clock()

    def lap(self) -> float:
        """Core-seconds since the previous lap (or reset); 0 on the first call."""
        now = self._clock()
        spent = 0.0 if self._mark is None else max(0.0, now - self._mark)
        self._mark = now
        return spent
