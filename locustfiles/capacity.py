"""``--shape search``: the capacity finder as a Locust load shape, judged on live stats.

Each probe asks for one load level, waits for the ramp-up (Locust's ``start`` returns when
the users are spawned: the first tick after it), holds it ``settle_s`` seconds, then
measures ``measure_s`` seconds: Locust's own stats (the master's aggregate with
``--processes``) are snapshotted at the start, middle and end of the window and diffed, so
p95 comes from the response-time histogram of that window only (Locust rounds times above
100 ms to 2 significant digits), the p95 of each half gives its noise, and refusals are
the 429/503 errors counted in the window. RAM comes from the memory sampler's samples
(memory.csv) taken in the window: the peak total PSS and the lowest MemAvailable.

The knob is a ``LoadKnob``: ``UsersKnob`` turns a level into (users, spawn rate). A rate
knob (open-loop arrivals) only needs ``unit``, ``quantum`` and a ``tick(level)`` that sets
the rate and returns the users that carry it; the search itself is knob-agnostic.

The result lands in run.json (``shape``: the search's settings; ``capacity``: what it
found, see capacity_search.Capacity.record) when the test stops, and in the log.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from locust import LoadTestShape
from locust.env import Environment

from harness.run_folder import update_record
from locustfiles.capacity_search import Bisection, Limits, Plan, Window, judge, probe_record
from locustfiles.capacity_search import search_shape_record as shape_record
from locustfiles.exit_code import is_refusal
from locustfiles.memory_sampler import MemorySampler

log = logging.getLogger(__name__)
METRIC_TYPES = ("TTFB", "TTFT", "TPOT")  # streaming users' extra stats entries (not requests)


class LoadKnob(Protocol):
    """Turns an abstract load level into a shape tick."""

    unit: str
    quantum: float

    def tick(self, level: float) -> tuple[int, float]:
        """The (users, spawn rate) tick that applies ``level``."""


@dataclass(frozen=True)
class UsersKnob:
    """The level is the number of concurrent (closed-loop) users."""

    spawn_rate: float = 10.0
    unit: str = "users"
    quantum: float = 1.0

    def tick(self, level: float) -> tuple[int, float]:
        """``level`` users, started at ``spawn_rate`` a second."""
        return int(level), self.spawn_rate


@dataclass
class StatsSnapshot:
    """Cumulative counts of Locust's stats at one moment."""

    times: dict[str, Counter] = field(default_factory=dict)  # request | TTFT | ... -> ms hist
    requests: int = 0
    failures: int = 0
    refusals: int = 0
    wall_s: float = 0.0


def snapshot(stats: Any) -> StatsSnapshot:
    """Copy the response-time histograms and counts of ``stats`` (a RequestStats)."""
    snap = StatsSnapshot(wall_s=time.time())
    for (_, method), entry in list(stats.entries.items()):
        group = method if method in METRIC_TYPES else "request"
        snap.times.setdefault(group, Counter()).update(entry.response_times)
        if group == "request":
            snap.requests += entry.num_requests
            snap.failures += entry.num_failures
    snap.refusals = sum(e.occurrences for e in list(stats.errors.values()) if is_refusal(e.error))
    return snap


def percentile(hist: Counter, q: float) -> float | None:
    """The ``q`` quantile of a {ms: count} histogram (None when empty)."""
    total = sum(hist.values())
    if total <= 0:
        return None
    seen = 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= q * total:
            return float(ms)
    return float(max(hist))


def _p95(a: StatsSnapshot, b: StatsSnapshot, group: str) -> float | None:
    return percentile(b.times.get(group, Counter()) - a.times.get(group, Counter()), 0.95)


def measure(a: StatsSnapshot, mid: StatsSnapshot, b: StatsSnapshot,
            sampler: MemorySampler | None) -> Window:
    """The window between snapshots ``a`` and ``b`` (``mid`` splits it in halves)."""
    requests = max(0, b.requests - a.requests)
    refusals = max(0, b.refusals - a.refusals)
    samples = [s for s in (sampler.history if sampler else ())
               if a.wall_s <= s.timestamp <= b.wall_s]
    available = [s.sys_available_mb for s in samples if s.sys_available_mb is not None]
    return Window(
        requests=requests, p95_ms=_p95(a, b, "request"),
        p95_halves_ms=(_p95(a, mid, "request"), _p95(mid, b, "request")),
        refusals=refusals, errors=max(0, b.failures - a.failures - refusals),
        ttft_p95_ms=_p95(a, b, "TTFT"), tpot_p95_ms=_p95(a, b, "TPOT"),
        peak_pss_mb=max((s.total.pss_mb for s in samples), default=None),
        min_available_mb=min(available, default=None))


@dataclass
class _Hold:
    """The probe under way: its level and when each part of it began (run seconds)."""

    level: float
    asked_s: float
    ramped_s: float | None = None
    snaps: list[StatsSnapshot] = field(default_factory=list)  # window start, middle


class SearchShape(LoadTestShape):
    """Bisect the load level to the highest one that meets the limits (capacity_search)."""

    abstract = True  # instantiated for --shape search by CapacitySearch, never auto-selected

    def __init__(self, plan: Plan, limits: Limits, knob: LoadKnob | None = None,
                 sampler: MemorySampler | None = None) -> None:
        super().__init__()
        self.plan, self.limits, self.sampler = plan, limits, sampler
        self.knob = knob or UsersKnob()
        self.search = Bisection(plan)
        self.hold: _Hold | None = None

    def reset_time(self) -> None:
        """A new start (the web UI's button, again): a new search."""
        super().reset_time()
        self.search, self.hold = Bisection(self.plan), None

    @property
    def done(self) -> bool:
        """True once the search has stopped."""
        return bool(self.search.stopped_by)

    def tick(self) -> tuple[int, float] | None:
        """The current probe's tick; judge it when its window closes; None when done."""
        now = self.get_run_time()
        if self.hold is None:
            level = None if self.done else self.search.next_level(now)
            if level is None:
                return None
            self.hold = _Hold(level, now)
            return self.knob.tick(level)
        hold, plan = self.hold, self.plan
        if hold.ramped_s is None:
            hold.ramped_s = now  # Locust's start() blocks while spawning: ramp-up is over
        held = now - hold.ramped_s
        stats = self.runner.environment.stats
        marks = (plan.settle_s, plan.settle_s + plan.measure_s / 2)
        if len(hold.snaps) < len(marks) and held >= marks[len(hold.snaps)]:
            hold.snaps.append(snapshot(stats))
        if held >= plan.settle_s + plan.measure_s and len(hold.snaps) == len(marks):
            window = measure(*hold.snaps, snapshot(stats), self.sampler)
            probe = judge(hold.level, window, self.limits, hold.asked_s, now)
            self.search.add(probe)
            log.info("search probe %g %s: %s", probe.level, self.knob.unit,
                     "pass" if probe.passed else "FAIL " + ", ".join(probe.failed_limits))
            self.hold = None
            return self.tick()
        return self.knob.tick(hold.level)

    def status(self) -> dict[str, Any]:
        """Where the search is: the current probe, the bracket, every verdict so far."""
        lo, hi = self.search.highest_pass, self.search.lowest_fail
        current = None
        if self.hold is not None:
            held = self.get_run_time() - (self.hold.ramped_s or self.get_run_time())
            phase = "ramping" if self.hold.ramped_s is None else \
                "settling" if held < self.plan.settle_s else "measuring"
            current = {"level": self.hold.level, "phase": phase, "held_s": round(held, 1)}
        return {"unit": self.knob.unit, "current": current,
                "bracket": [lo.level if lo else None, hi.level if hi else None],
                "stopped_by": self.search.stopped_by,
                "probes": [probe_record(p) for p in self.search.probes]}


def _level(level: float | None) -> str:
    return "none" if level is None else f"{level:g}"


class CapacitySearch:
    """Apply ``--shape search`` to a run: the shape, its run.json entries and the log line."""

    def __init__(self, run_dir: Path, shape: SearchShape) -> None:
        self.run_dir = Path(run_dir)
        self.shape = shape

    def register(self, environment: Environment) -> None:
        """Make ``shape`` the run's shape; write run.json at test start and stop."""
        self.shape.runner = environment.runner
        environment.shape_class = self.shape
        environment.events.test_start.add_listener(self._on_test_start)
        environment.events.test_stop.add_listener(self._on_test_stop)

    def _on_test_start(self, **kwargs: Any) -> None:
        update_record(self.run_dir, shape=shape_record(self.shape.plan, self.shape.limits,
                                                       self.shape.knob.unit))

    def _on_test_stop(self, **kwargs: Any) -> None:
        search = self.shape.search
        if not search.stopped_by:
            search.stopped_by = "stopped before the end"
        found = search.result(self.shape.knob.unit)
        levels = [p.level for p in search.probes]
        users = {"users": int(max(levels))} if levels and found.unit == "users" else {}
        update_record(self.run_dir, capacity=found.record(), **users)
        lo, hi = found.bracket
        log.info("capacity: %s %s (limit: %s; bracket %s .. %s; %d passed, %d failed; "
                 "confidence %s; stopped by %s)", _level(found.level), found.unit, found.limit,
                 _level(lo), _level(hi), found.probes_passed, found.probes_failed, found.confidence,
                 found.stopped_by)
