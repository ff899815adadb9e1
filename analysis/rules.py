"""Judge the findings: SLO verdicts and recommendation rules, both pure on analysis.records.

A rule is a function ``(findings) -> Recommendation | None``: it returns None when its
condition does not hold, and otherwise a text that quotes the numbers that made it fire.
Thresholds come from ``findings.config`` (see analysis.config). The rules themselves live
in rules_traffic (time split, SLOs, the sweep, failures by status code) and rules_machine
(RAM, the kernel path, the load generator); all of them read only the records of
analysis.records.

SLO verdicts: each target in force against what was measured. Targets (analysis.config):
p95 latency of successful requests, overall and per route; the error rate (with or without
the server's deliberate 429/503 refusals, ``slo_count_refusals``); for streamed requests
TTFT and TPOT p95 and the SLO attainment (goodput); the memory slope after warm-up when
``slo_memory_slope_mb_per_min`` > 0. A verdict whose input was not measured has
``passed = None``: reported, never a failure.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from analysis import capacity_report, rules_machine, rules_traffic, traffic
from analysis.records import WARNING, Findings, Recommendation, SloVerdict

Rule = Callable[[Findings], Recommendation | None]


def all_rules() -> list[Rule]:
    """Every rule, in the order their findings appear in the report."""
    return [*rules_traffic.RULES, *rules_machine.RULES, *capacity_report.RULES]


def evaluate(findings: Findings, rules: list[Rule] | None = None) -> list[Recommendation]:
    """Run each rule on ``findings``; keep those whose condition held, warnings first."""
    fired = [r for rule in (rules or all_rules()) if (r := rule(findings)) is not None]
    return sorted(fired, key=lambda r: r.severity != WARNING)


# SLO verdicts.

REFUSALS = (429, 503)  # rate limited, overloaded: the server's deliberate, fast refusals


def check(name: str, target: float, actual: float | None, unit: str,
          floor: bool = False) -> SloVerdict:
    """A verdict: met when ``actual`` <= ``target`` (>= when ``floor``); None if unmeasured."""
    if actual is None or np.isnan(actual):
        return SloVerdict(name, target, None, None, unit)
    return SloVerdict(name, target, float(actual),
                      bool(actual >= target if floor else actual <= target), unit)


def error_rate(f: Findings) -> float | None:
    """Failed / all requests; without the 429/503 refusals unless config counts them."""
    t = f.traffic
    if t is None or not t.requests:
        return None
    if f.config.slo_count_refusals:
        return t.error_rate
    refused = sum(t.status_counts.get(status, 0) for status in REFUSALS)
    return max(0, t.failures - refused) / t.requests


def _stream_p95(f: Findings, metric: str) -> float | None:
    rows = f.streaming.percentiles if f.streaming is not None else []
    row = next((p for p in rows if p.metric == metric and p.route == traffic.ALL_ROUTES), None)
    return row.p95 if row is not None and row.samples else None


def slo_verdicts(f: Findings) -> list[SloVerdict]:
    """Every SLO verdict of ``f``, in the order the report and the gate list them."""
    cfg = f.config
    verdicts = [
        check(f"p95 latency, {r.route}", cfg.slo_p95_ms, r.p95_ms, "ms")
        for r in sorted(f.routes, key=lambda r: r.route != traffic.ALL_ROUTES)
    ]
    name = "error rate" if cfg.slo_count_refusals else "error rate (429/503 refusals excluded)"
    verdicts.append(check(name, cfg.slo_error_rate, error_rate(f), "ratio"))
    for metric, target in (("TTFT", cfg.slo_ttft_ms), ("TPOT", cfg.slo_tpot_ms)):
        actual = _stream_p95(f, metric)
        if target > 0 and actual is not None:
            verdicts.append(check(f"{metric} p95, streamed", target, actual, "ms"))
    if f.goodput is not None:  # a floor, not a ceiling: met when attainment >= the target
        verdicts.append(check("SLO attainment", cfg.slo_attainment, f.goodput.attainment,
                              "ratio", floor=True))
    if cfg.slo_memory_slope_mb_per_min > 0:
        slope = f.memory.slope_mb_per_min if f.memory is not None else None
        verdicts.append(check("memory slope (total PSS)", cfg.slo_memory_slope_mb_per_min,
                              slope, "MB/min"))
    return verdicts
