"""Gate checks: SLO verdicts and regression changes as pass/fail lines for a CI job.

A Check is one line of the gate's output, one test case of its JUnit file and one row of its
Markdown summary. The gate fails when any check failed (FAIL or REGRESSED); unmeasured
checks are listed and skipped, never failed, and a change within noise is UNCHANGED.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from analysis.formatting import num
from analysis.records import Findings, SloVerdict
from analysis.regression import IMPROVED, NOT_MEASURED, REGRESSED, UNCHANGED, Change

FAILING = frozenset({"FAIL", "REGRESSED"})


@dataclass(frozen=True)
class Check:
    """One checked target or metric: its suite, name, outcome and the sentence saying so."""

    suite: str  # slo | regression
    name: str
    outcome: str  # PASS | FAIL | SKIP | UNCHANGED | IMPROVED | REGRESSED
    message: str

    @property
    def failed(self) -> bool:
        """True when this check fails the gate."""
        return self.outcome in FAILING

    @property
    def line(self) -> str:
        """The printed line: outcome, name, message."""
        return f"{self.outcome:<9} {self.name}: {self.message}"


def _digits(unit: str) -> int:
    return 3 if unit == "ratio" else 1


def slo_check(v: SloVerdict) -> Check:
    """The Check of one SLO verdict."""
    d = _digits(v.unit)
    floor = v.name == "SLO attainment"
    target = f"target {'>=' if floor else '<='} {num(v.target, d)} {v.unit}".rstrip()
    if v.passed is None:
        return Check("slo", v.name, "SKIP", f"not measured ({target})")
    outcome = "PASS" if v.passed else "FAIL"
    return Check("slo", v.name, outcome, f"{num(v.actual, d)} {v.unit}, {target}")


def served_check(f: Findings) -> Check:
    """Whether the run served anything: a run with no successful request fails the gate
    (otherwise every target would be "not measured" and a broken run would pass)."""
    t = f.traffic
    if t is None or t.successes == 0:
        return Check("slo", "requests served", "FAIL", "no successful request: nothing to judge")
    return Check("slo", "requests served", "PASS", f"{t.requests} requests, {t.successes} ok")


def slo_checks(f: Findings) -> list[Check]:
    """The Checks of the run's traffic and of every SLO verdict of ``f``."""
    return [served_check(f), *(slo_check(v) for v in f.slo)]


_OUTCOMES = {UNCHANGED: "UNCHANGED", IMPROVED: "IMPROVED", REGRESSED: "REGRESSED",
             NOT_MEASURED: "SKIP"}


def regression_check(c: Change) -> Check:
    """The Check of one metric's change against the baseline."""
    d = _digits(c.unit)
    unit = f" {c.unit}" if c.unit else ""
    if c.verdict == NOT_MEASURED:
        return Check("regression", c.name, "SKIP", "not measured in both runs")
    delta = c.value - c.baseline
    change = f"{delta:+,.{d}f}{unit}" + (f" ({c.ratio:.2f}x)" if c.ratio is not None else "")
    message = (f"{num(c.baseline, d)} -> {num(c.value, d)}{unit}, {change}; noise band "
               f"+/-{num(c.band, d)}{unit}; {c.better} is better")
    return Check("regression", c.name, _OUTCOMES[c.verdict], message)


def regression_checks(changes: Sequence[Change]) -> list[Check]:
    """The Checks of every gated metric."""
    return [regression_check(c) for c in changes]


def failed(checks: Sequence[Check]) -> bool:
    """True when any check fails the gate."""
    return any(c.failed for c in checks)
