"""The capacity finder's logic: judge one probe window, bisect the load level, state the result.

No Locust import (the run script, the analysis and the unit tests use it): the Locust side
(locustfiles/capacity.py) measures each window and feeds it here.

The search works on an abstract *load level* (concurrent users today; a request rate can be
a second knob, see capacity.py's ``LoadKnob``): start at ``min_level``, double while every
probe passes, then bisect between the highest passing and the lowest failing level until
the bracket is no wider than the resolution, or the probe or time budget runs out.

A probe passes when every limit in force held over its measurement window:

==========  ===================================================================
limit       fails when
==========  ===================================================================
latency     p95 response time > ``p95_ms`` (or no request completed in the window)
ttft, tpot  p95 of the streamed users' TTFT / TPOT > ``ttft_ms`` / ``tpot_ms``
ram         peak total PSS of the server tree > ``ram_mb``, or the lowest
            MemAvailable < ``ram_headroom_mb``
refusals    (429 + 503) / requests > ``max_refusals``
errors      other failures / requests > ``max_errors``
==========  ===================================================================

A limit set to 0 (or whose input was not measured) is not checked. The limit that stopped
the search is the most exceeded one (measured / target) at the lowest failing level.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

LATENCY, TTFT, TPOT, RAM, REFUSALS, ERRORS = "latency", "ttft", "tpot", "ram", "refusals", "errors"
MAX_LEVEL = "max level"  # no probe failed: the capacity is at least the search's ceiling


@dataclass(frozen=True)
class Limits:
    """What a probe must hold (0 = not checked)."""

    p95_ms: float = 10_000.0
    ttft_ms: float = 0.0
    tpot_ms: float = 0.0
    ram_mb: float = 0.0  # total PSS budget of the server tree
    ram_headroom_mb: float = 0.0  # least MemAvailable of the host
    max_refusals: float = 0.05  # share of 429/503
    max_errors: float = 0.05  # share of other failures


@dataclass(frozen=True)
class Plan:
    """Where the search looks and how long it may take."""

    min_level: float = 1.0
    max_level: float = 256.0
    resolution: float = 1.0  # stop when highest fail - highest pass <= this
    resolution_relative: bool = False  # resolution is a fraction of the highest pass
    quantum: float = 1.0  # levels are multiples of this (1: whole users)
    settle_s: float = 10.0  # held before measuring: ramp-up and queues settle
    measure_s: float = 30.0  # the window each probe is judged on
    max_probes: int = 12
    max_time_s: float = 0.0  # 0: no cap besides max_probes (and Locust's -t)


@dataclass(frozen=True)
class Window:
    """One measurement window's live numbers (None: not measured)."""

    requests: int = 0
    p95_ms: float | None = None
    p95_halves_ms: tuple[float | None, float | None] = (None, None)
    refusals: int = 0
    errors: int = 0  # failures that were not refusals
    ttft_p95_ms: float | None = None
    tpot_p95_ms: float | None = None
    peak_pss_mb: float | None = None
    min_available_mb: float | None = None

    @property
    def p95_noise(self) -> float | None:
        """|p95 of the first half - p95 of the second| / their mean (None if either is missing)."""
        a, b = self.p95_halves_ms
        if a is None or b is None or a + b <= 0:
            return None
        return abs(a - b) / ((a + b) / 2)


def exceedances(w: Window, limits: Limits) -> dict[str, float]:
    """measured / target of every limit checked and measured in ``w`` (> 1: failed)."""
    found: dict[str, float] = {}

    def put(name: str, actual: float | None, target: float, ceiling: bool = True) -> None:
        if target > 0 and actual is not None:
            ratio = actual / target if ceiling else (target / actual if actual > 0 else math.inf)
            found[name] = max(found.get(name, 0.0), ratio)

    if limits.p95_ms > 0:
        found[LATENCY] = math.inf if w.requests == 0 or w.p95_ms is None \
            else w.p95_ms / limits.p95_ms
    put(TTFT, w.ttft_p95_ms, limits.ttft_ms)
    put(TPOT, w.tpot_p95_ms, limits.tpot_ms)
    put(RAM, w.peak_pss_mb, limits.ram_mb)
    put(RAM, w.min_available_mb, limits.ram_headroom_mb, ceiling=False)
    if w.requests:
        put(REFUSALS, w.refusals / w.requests, limits.max_refusals)
        put(ERRORS, w.errors / w.requests, limits.max_errors)
    return found


@dataclass(frozen=True)
class Probe:
    """One held level, its window and the verdict."""

    level: float
    window: Window
    exceeded: dict[str, float]  # limit -> measured / target, for every limit checked
    started_s: float = 0.0  # run time the level was asked for
    ended_s: float = 0.0  # run time its window closed

    @property
    def failed_limits(self) -> list[str]:
        """The limits this probe broke, most exceeded first."""
        return sorted((k for k, r in self.exceeded.items() if r > 1.0),
                      key=lambda k: -self.exceeded[k])

    @property
    def passed(self) -> bool:
        """True when every checked limit held."""
        return not self.failed_limits


def judge(level: float, w: Window, limits: Limits, started_s: float = 0.0,
          ended_s: float = 0.0) -> Probe:
    """The probe of ``level`` measured as ``w``."""
    return Probe(level, w, exceedances(w, limits), started_s, ended_s)


@dataclass(frozen=True)
class Capacity:
    """What the search found: the level, what limited it, and how sure it is."""

    level: float | None  # highest passing level (None: even min_level failed)
    limit: str | None  # most exceeded limit at the lowest failing level, or MAX_LEVEL
    failed_limits: list[str]  # every limit broken at the lowest failing level
    bracket: tuple[float | None, float | None]  # (highest pass, lowest fail)
    probes_passed: int
    probes_failed: int
    p95_noise: float | None  # within-window p95 noise at the capacity level
    stopped_by: str  # converged | min level failed | max level passed | max probes | max time
    confidence: str  # high | medium | low
    unit: str = "users"
    probes: list[dict] = field(default_factory=list)

    @property
    def bracket_width(self) -> float | None:
        """Lowest fail - highest pass (None when either end is unknown)."""
        lo, hi = self.bracket
        return None if lo is None or hi is None else hi - lo

    def record(self) -> dict:
        """The run.json "capacity" entry."""
        return {**asdict(self), "bracket": list(self.bracket),
                "bracket_width": self.bracket_width}


class Bisection:
    """Double from ``plan.min_level`` until a probe fails, then bisect the bracket."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.probes: list[Probe] = []
        self.stopped_by = ""

    @property
    def highest_pass(self) -> Probe | None:
        """The highest level that passed."""
        return max((p for p in self.probes if p.passed), key=lambda p: p.level, default=None)

    @property
    def lowest_fail(self) -> Probe | None:
        """The lowest level that failed."""
        return min((p for p in self.probes if not p.passed), key=lambda p: p.level, default=None)

    def add(self, probe: Probe) -> None:
        """Record a judged probe."""
        self.probes.append(probe)

    def _quantize(self, level: float) -> float:
        q = self.plan.quantum
        return math.floor(level / q + 1e-9) * q if q > 0 else level

    def _resolution(self, lo: float) -> float:
        r = self.plan.resolution
        return r * lo if self.plan.resolution_relative else r

    def next_level(self, elapsed_s: float = 0.0) -> float | None:
        """The level to probe next; None when the search is over (``stopped_by`` says why)."""
        plan, lo, hi = self.plan, self.highest_pass, self.lowest_fail
        if not self.probes:
            return self._quantize(plan.min_level) or plan.quantum
        if lo is None:
            return self._stop("min level failed")
        if hi is None and lo.level >= plan.max_level:
            return self._stop("max level passed")
        if len(self.probes) >= plan.max_probes:
            return self._stop("max probes")
        if plan.max_time_s and elapsed_s + plan.settle_s + plan.measure_s > plan.max_time_s:
            return self._stop("max time")
        if hi is None:
            return min(self._quantize(lo.level * 2), plan.max_level)
        middle = self._quantize((lo.level + hi.level) / 2)
        if hi.level - lo.level <= self._resolution(lo.level) or not lo.level < middle < hi.level:
            return self._stop("converged")
        return middle

    def _stop(self, reason: str) -> None:
        self.stopped_by = reason
        return None

    def result(self, unit: str = "users") -> Capacity:
        """The capacity found so far."""
        lo, hi = self.highest_pass, self.lowest_fail
        failed = hi.failed_limits if hi is not None else []
        limit = failed[0] if failed else (MAX_LEVEL if lo is not None else None)
        noise = lo.window.p95_noise if lo is not None else None
        return Capacity(
            level=lo.level if lo is not None else None, limit=limit, failed_limits=failed,
            bracket=(lo.level if lo else None, hi.level if hi else None),
            probes_passed=sum(p.passed for p in self.probes),
            probes_failed=sum(not p.passed for p in self.probes),
            p95_noise=noise, stopped_by=self.stopped_by or "running",
            confidence=self.confidence(), unit=unit,
            probes=[probe_record(p) for p in self.probes])

    def confidence(self) -> str:
        """high: bracketed to the resolution with a steady p95; medium: bracketed within 25%
        or to the resolution with a noisy p95 (> 25% between window halves); low: otherwise
        (no failing level, or the budget ran out on a wide bracket)."""
        lo, hi = self.highest_pass, self.lowest_fail
        if lo is None or hi is None:
            return "low"
        width = hi.level - lo.level
        converged = width <= max(self._resolution(lo.level), self.plan.quantum)
        noise = lo.window.p95_noise
        steady = noise is None or noise <= 0.25
        if converged and steady:
            return "high"
        return "medium" if converged or width <= 0.25 * lo.level else "low"


def probe_record(p: Probe) -> dict:
    """A probe as run.json and the web UI show it."""
    w = p.window
    return {"level": p.level, "passed": p.passed, "failed_limits": p.failed_limits,
            "started_s": round(p.started_s, 1), "ended_s": round(p.ended_s, 1),
            "requests": w.requests, "p95_ms": w.p95_ms,
            "p95_noise": None if w.p95_noise is None else round(w.p95_noise, 3),
            "refusal_share": round(w.refusals / w.requests, 4) if w.requests else None,
            "error_share": round(w.errors / w.requests, 4) if w.requests else None,
            "ttft_p95_ms": w.ttft_p95_ms, "tpot_p95_ms": w.tpot_p95_ms,
            "peak_pss_mb": w.peak_pss_mb, "min_available_mb": w.min_available_mb,
            "exceeded": {k: (None if math.isinf(v) else round(v, 3))
                         for k, v in p.exceeded.items()}}


def search_shape_record(plan: Plan, limits: Limits, knob: str = "users") -> dict:
    """The run.json "shape" entry of a search (its settings; the result is "capacity")."""
    return {"kind": "search", "knob": knob, **asdict(plan), "limits": asdict(limits)}


def parse_resolution(text: str | float) -> tuple[float, bool]:
    """(value, relative) of a resolution: "2" (level units) or "10%" (of the highest pass)."""
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"bad resolution {text!r}: write a level step (2) or a percentage (10%)")
    return (value / 100, True) if relative else (value, False)
