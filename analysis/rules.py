"""Recommendation rules: explicit conditions on computed numbers, each emitting its own text.

A rule is a function ``(findings) -> Recommendation | None``: it returns None when its
condition does not hold, and otherwise a text that quotes the numbers that made it fire.
Thresholds come from ``findings.config`` (see analysis.config). The rules themselves live
in rules_traffic (time split, SLOs, the sweep), rules_failures (status codes) and
rules_memory (RAM); all of them read only the records of analysis.records.
"""

from __future__ import annotations

from collections.abc import Callable

from analysis import rules_failures, rules_hardware, rules_loadgen, rules_memory, rules_traffic
from analysis.records import WARNING, Findings, Recommendation

Rule = Callable[[Findings], Recommendation | None]


def all_rules() -> list[Rule]:
    """Every rule, in the order their findings appear in the report."""
    return [*rules_traffic.RULES, *rules_failures.RULES, *rules_memory.RULES,
            *rules_hardware.RULES, *rules_loadgen.RULES]


def evaluate(findings: Findings, rules: list[Rule] | None = None) -> list[Recommendation]:
    """Run each rule on ``findings``; keep those whose condition held, warnings first."""
    fired = [r for rule in (rules or all_rules()) if (r := rule(findings)) is not None]
    return sorted(fired, key=lambda r: r.severity != WARNING)
