"""What a decode step of n rows costs, in one-row steps, as measured on the serving threads.

A step reads the weights once whatever its rows, so its time grows with rows far slower
than linearly while it is bandwidth-bound and about linearly once it is compute-bound. The
startup kernel table gives a first guess, a straight line through its batch-1 and
batch-max timings (``KernelChoice.row_growth``), but it times ONE thread in the Gunicorn
master; a worker steps on all its threads, where a one-row step is bandwidth-bound and a
16-row one is not. On the AMD EPYC Zen 3 (2 cores) that line said an 8-row step of
gpt2-large costs 2.18 one-row steps where the worker measured 1.51, and 3.72 at 16 rows
(fbgemm) where the served waves implied ~3.1 (results/reference/README.md, c = 32).

So the scheduler keeps the ratio each row count was measured at (the worker's warm-up
measures one step at its maximum rows; served steps refine them) and prices a count it has
not seen from its measured neighbours: between two, on the straight line through them;
above the largest, along the last measured slope (never falling); with nothing measured
above one row, along the kernel table's line.
"""

from __future__ import annotations

import bisect

# Weight of the newest step in a row count's running ratio (about its last 10 steps).
RATIO_EWMA = 0.1


class RowCurve:
    """A decode step's cost by row count, in one-row steps (1.0 for one row)."""

    def __init__(self, growth: float = 0.0) -> None:
        self._growth = max(0.0, growth)  # the kernel table's line: each row adds this
        self._ratios: dict[int, float] = {}  # measured, rows >= 2

    def cost(self, rows: int) -> float:
        """A step of ``rows`` rows in one-row steps."""
        rows = max(1, rows)
        if rows == 1:
            return 1.0
        if rows in self._ratios:
            return self._ratios[rows]
        points = [(1, 1.0), *sorted(self._ratios.items())]
        at = bisect.bisect_left([n for n, _ in points], rows)
        if at < len(points):  # between two measured counts
            (n0, r0), (n1, r1) = points[at - 1], points[at]
            return r0 + (r1 - r0) * (rows - n0) / (n1 - n0)
        if len(points) >= 2:  # above the largest: its slope, from the count below it
            (n0, r0), (n1, r1) = points[-2], points[-1]
            return r1 + max(0.0, (r1 - r0) / (n1 - n0)) * (rows - n1)
        return 1.0 + self._growth * (rows - 1)

    def learn(self, rows: int, ratio: float) -> None:
        """Fold in a decode step of ``rows`` rows that took ``ratio`` one-row steps."""
        if rows < 2 or ratio <= 0.0:
            return
        old = self._ratios.get(rows)
        self._ratios[rows] = ratio if old is None else old + RATIO_EWMA * (ratio - old)

    def measured(self) -> dict[int, float]:
        """The measured ratios by row count (for logs and /ready)."""
        return dict(self._ratios)
