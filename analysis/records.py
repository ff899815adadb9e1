"""The findings of a run as data: every number the report and the rules read, and nothing else.

Records only (no computation): analysis.findings builds them, analysis.rules_traffic and
analysis.rules_machine read them, analysis.report renders them. Imports go one way:
records <- rules_traffic, rules_machine <- rules <- findings.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analysis import cost, goodput, memory, streaming, sweep, traffic, workloads
from analysis.arrivals import ArrivalSummary
from analysis.capacity import CapacityResult
from analysis.config import AnalysisConfig
from analysis.hardware import Hardware
from analysis.loadgen import LoadGen

WARNING = "warning"
INFO = "info"


@dataclass(frozen=True)
class Recommendation:
    """What one rule concluded: its id, how serious, and its text (numbers computed)."""

    rule: str
    severity: str
    text: str


@dataclass(frozen=True)
class SloVerdict:
    """One target, what was measured, and whether it held (None when not measured)."""

    name: str
    target: float
    actual: float | None
    passed: bool | None
    unit: str


@dataclass
class Findings:
    """All computed numbers of one run; None where the input file was missing or empty."""

    label: str
    settings: dict[str, Any]
    config: AnalysisConfig
    notes: list[str]
    routes: list[traffic.RouteLatency]
    traffic: traffic.Traffic | None
    time_split: traffic.TimeSplit | None
    memory: memory.MemorySummary | None
    ram: memory.RamPerRequest | None
    sweep: sweep.Sweep | None
    worker_pids_seen: int
    slo: list[SloVerdict] = field(default_factory=list)
    recommendations: list[Recommendation] = field(default_factory=list)
    streaming: streaming.StreamSummary | None = None
    goodput: goodput.Goodput | None = None
    hardware: Hardware | None = None  # run.json host and server.kernels (analysis.hardware)
    loadgen: LoadGen | None = None  # Locust's own CPU and loop lag (analysis.loadgen)
    # --workload: run.json's manifest, RAM per request by context bin, prefix-cache hits
    workload: dict[str, Any] | None = None
    ram_by_context: pd.DataFrame | None = None
    prefix_cache: workloads.PrefixCacheHits | None = None
    capacity: CapacityResult | None = None  # --shape search's result (analysis.capacity)
    cost: cost.Cost | None = None  # the server's CPU per request and token (analysis.cost)
    busy: cost.BusyBox | None = None  # other processes' and the hypervisor's CPU share
    arrivals: ArrivalSummary | None = None  # open-loop runs (analysis.arrivals)

    @property
    def overall(self) -> traffic.RouteLatency | None:
        """The all-routes latency row."""
        return next((r for r in self.routes if r.route == traffic.ALL_ROUTES), None)


def setting(findings: Findings, key: str) -> Any:
    """A run.json setting by dotted key ("host.cores"), or None when absent."""
    return findings.settings.get(key)


def status_count(findings: Findings, statuses: Collection[int], cause: str) -> int:
    """Requests that ended with one of ``statuses``; by failure ``cause`` (a substring of the
    cause, case-insensitive) when no statuses are given or no status codes were recorded
    (Locust's failure table has only error texts)."""
    t = findings.traffic
    if t is None:
        return 0
    if statuses and t.status_counts:
        return sum(t.status_counts.get(status, 0) for status in statuses)
    return sum(n for c, n in t.failures_by_cause.items() if cause in c.lower())
