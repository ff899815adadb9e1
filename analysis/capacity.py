"""The capacity search of a run (``--shape search``): what it found, read from run.json.

The search ran live in Locust (locustfiles/capacity.py) and wrote its result to run.json's
``capacity`` entry and its settings to ``shape`` (kind "search"); this module turns them
into a record for the report, the rules and the regression gate. Pure: a dict in, a record
out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

PROBE_COLUMNS = ["level", "passed", "failed_limits", "requests", "p95_ms", "p95_noise",
                 "refusal_share", "error_share", "ttft_p95_ms", "tpot_p95_ms", "peak_pss_mb",
                 "min_available_mb"]


@dataclass(frozen=True)
class CapacityResult:
    """The highest load level that met every limit, what limited it, and how sure it is."""

    level: float | None
    unit: str
    limit: str | None  # latency | ttft | tpot | ram | refusals | errors | max level
    failed_limits: list[str]
    highest_pass: float | None
    lowest_fail: float | None
    probes_passed: int
    probes_failed: int
    p95_noise: float | None
    stopped_by: str
    confidence: str
    limits: dict[str, float]  # the targets in force (run.json shape.limits)
    probes: pd.DataFrame  # one row per probe, PROBE_COLUMNS

    @property
    def bracket_width(self) -> float | None:
        """Formula: bracket width = lowest failing level - highest passing level; the true
        capacity lies in [highest pass, lowest fail). None when either end is unknown."""
        if self.highest_pass is None or self.lowest_fail is None:
            return None
        return self.lowest_fail - self.highest_pass


def capacity(settings: dict[str, Any]) -> CapacityResult | None:
    """The capacity search in run.json ``settings``; None for a run without one."""
    found = settings.get("capacity")
    if not isinstance(found, dict):
        return None
    lo, hi = [*(found.get("bracket") or []), None, None][:2]
    shape = settings.get("shape") or {}
    probes = pd.DataFrame(found.get("probes") or [], columns=PROBE_COLUMNS)
    return CapacityResult(
        level=found.get("level"), unit=found.get("unit") or "users", limit=found.get("limit"),
        failed_limits=list(found.get("failed_limits") or []), highest_pass=lo, lowest_fail=hi,
        probes_passed=int(found.get("probes_passed") or 0),
        probes_failed=int(found.get("probes_failed") or 0),
        p95_noise=found.get("p95_noise"), stopped_by=str(found.get("stopped_by") or ""),
        confidence=str(found.get("confidence") or "low"),
        limits=dict(shape.get("limits") or {}), probes=probes)
