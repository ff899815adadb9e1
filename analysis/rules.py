"""Recommendation rules: explicit conditions on computed numbers, each emitting its own text.

A rule is a function ``(findings) -> Recommendation | None``: it returns None when its
condition does not hold, and otherwise a text that quotes the numbers that made it fire.
Thresholds come from ``findings.config`` (see analysis.config). The rules themselves live
in rules_traffic (time split, SLOs, the sweep), rules_failures (status codes) and
rules_memory (RAM).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.findings import Findings

WARNING = "warning"
INFO = "info"


@dataclass(frozen=True)
class Recommendation:
    """What one rule concluded: its id, how serious, and its text (numbers computed)."""

    rule: str
    severity: str
    text: str


Rule = Callable[["Findings"], Recommendation | None]


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


def all_rules() -> list[Rule]:
    """Every rule, in the order their findings appear in the report."""
    from analysis import rules_failures, rules_hardware, rules_loadgen, rules_memory, rules_traffic

    return [*rules_traffic.RULES, *rules_failures.RULES, *rules_memory.RULES,
            *rules_hardware.RULES, *rules_loadgen.RULES]


def evaluate(findings: Findings, rules: list[Rule] | None = None) -> list[Recommendation]:
    """Run each rule on ``findings``; keep those whose condition held, warnings first."""
    fired = [r for rule in (rules or all_rules()) if (r := rule(findings)) is not None]
    return sorted(fired, key=lambda r: r.severity != WARNING)
