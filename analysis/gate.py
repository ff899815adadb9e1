"""The two CI gates: SLO verdicts and regression changes as pass/fail lines, their JUnit XML
and Markdown summary, and the SLO file that sets their targets and bands.

A Check is one line of the gate's output, one test case of its JUnit file and one row of its
Markdown summary. The gate fails when any check failed (FAIL or REGRESSED); unmeasured
checks are listed and skipped, never failed, and a change within noise is UNCHANGED.
``slo_gate`` and ``regression_gate`` are what the command line runs: print the lines, write
JUnit and Markdown, return the exit status (0 passed, 1 failed).

The SLO file holds the gate targets and regression bands a CI job keeps next to its code
(TOML)::

    [slo]                       # analysis.config SLO_KEYS: the targets of --gate
    p95_ms = 2000
    error_rate = 0.01
    count_refusals = false      # 429/503 refusals are not errors
    [regression]                # analysis.compare DEFAULT_BANDS keys: relative bands
    p95_latency = 0.5           # +/-50% of the baseline's p95 is noise

Unknown keys are refused with the list of valid ones, so a typo cannot switch a gate off.

JUnit: every CI system shows JUnit test cases (GitHub via an action, GitLab natively); each
check is one ``<testcase>``: a failing one carries ``<failure>``, an unmeasured one
``<skipped>``. The Markdown fits ``$GITHUB_STEP_SUMMARY`` or a merge-request comment.
"""

from __future__ import annotations

import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.compare import (
    DEFAULT_BANDS,
    HEADLINES,
    IMPROVED,
    NOT_MEASURED,
    REGRESSED,
    UNCHANGED,
    Change,
    compare_runs,
    headline_values,
)
from analysis.config import SLO_KEYS
from analysis.cost import busy_warning
from analysis.document import num, table
from analysis.records import Findings, SloVerdict

FAILING = frozenset({"FAIL", "REGRESSED"})


@dataclass(frozen=True)
class Check:
    """One checked target or metric: its suite, name, outcome and the sentence saying so."""

    suite: str  # slo | regression
    name: str
    outcome: str  # PASS | FAIL | SKIP | UNCHANGED | IMPROVED | REGRESSED | WARN
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


def busy_checks(runs: Sequence[Findings], suite: str) -> list[Check]:
    """A WARN check per run whose box was busy (analysis.cost.busy_warning): shown in the
    lines, the JUnit file and the summary, never failing the gate (the numbers may still
    meet their targets; the reader must know they were measured on a shared box)."""
    label = len(runs) > 1
    return [Check(suite, f"busy box{', ' + f.label if label else ''}", "WARN", text)
            for f in runs if (text := busy_warning(f.busy, f.config)) is not None]


def slo_checks(f: Findings) -> list[Check]:
    """The Checks of the run's traffic, of every SLO verdict of ``f``, and the busy box."""
    return [served_check(f), *(slo_check(v) for v in f.slo), *busy_checks([f], "slo")]


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


# The gates as the command line runs them.

def _write(checks: list[Check], title: str, suite: str, headline: tuple[list[str], list],
           junit: Path, summary: Path) -> int:
    for check in checks:
        print(check.line)
    junit.write_text(junit_xml(checks, suite))
    summary.write_text(summary_markdown(title, headline, checks))
    bad = failed(checks)
    print(f"{suite} gate {'FAILED' if bad else 'passed'}: wrote {junit} and {summary}")
    return 1 if bad else 0


def _headline_rows(runs: list[Findings]) -> list[tuple]:
    values = [headline_values(f) for f in runs]
    return [(f"{name} ({unit})" if unit else name, *(v[i] for v in values))
            for i, (name, unit, _, _) in enumerate(HEADLINES)
            if any(v[i] is not None for v in values)]


def slo_gate(findings: Findings, run_dir: Path, junit: Path | None = None,
             summary: Path | None = None) -> int:
    """Apply the SLO gate to ``findings``: run_dir/slo-junit.xml and slo-summary.md."""
    headline = (["Metric", findings.label], _headline_rows([findings]))
    return _write(slo_checks(findings), f"SLO gate: {findings.label}", "slo", headline,
                  junit or run_dir / "slo-junit.xml", summary or run_dir / "slo-summary.md")


def regression_gate(baseline: Findings, run: Findings, bands: Mapping[str, float], out: Path,
                    junit: Path | None = None, summary: Path | None = None) -> int:
    """Apply the regression gate to ``run`` against ``baseline``: files in ``out``."""
    checks = [*regression_checks(compare_runs(baseline, run, bands)),
              *busy_checks([baseline, run], "regression")]
    headline = (["Metric", f"baseline: {baseline.label}", f"run: {run.label}"],
                _headline_rows([baseline, run]))
    return _write(checks, f"Regression gate: {run.label} vs {baseline.label}", "regression",
                  headline, junit or out / "regression-junit.xml",
                  summary or out / "regression-summary.md")


# The SLO file.

@dataclass(frozen=True)
class SloFile:
    """The two tables of an SLO file (empty when no file is given)."""

    slo: dict[str, Any] = field(default_factory=dict)
    regression: dict[str, float] = field(default_factory=dict)


def _checked(table: dict[str, Any], valid: Any, what: str, path: Path) -> dict[str, Any]:
    unknown = set(table) - set(valid)
    if unknown:
        raise ValueError(f"{path}: unknown {what} keys {sorted(unknown)}; valid: {sorted(valid)}")
    return dict(table)


def read_slo_file(path: Path | str | None) -> SloFile:
    """Read the SLO file at ``path`` (None or "": no file, nothing set)."""
    if not path:
        return SloFile()
    path = Path(path)
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"slo", "regression"}
    if unknown:
        raise ValueError(f"{path}: unknown tables {sorted(unknown)}; valid: ['regression', 'slo']")
    return SloFile(_checked(data.get("slo", {}), SLO_KEYS, "[slo]", path),
                   _checked(data.get("regression", {}), DEFAULT_BANDS, "[regression]", path))


# CI-native outputs: JUnit XML and the Markdown job summary.

_ICONS = {"PASS": "✅", "FAIL": "❌", "SKIP": "⏭", "UNCHANGED": "✅", "IMPROVED": "🟢",
          "REGRESSED": "❌", "WARN": "⚠️"}


def junit_xml(checks: Sequence[Check], suite: str) -> str:
    """A JUnit XML document with one test suite ``suite`` and one test case per check."""
    root = ET.Element("testsuites", name="gpt-load-lab gates")
    cases = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)),
                          failures=str(sum(c.failed for c in checks)),
                          skipped=str(sum(c.outcome == "SKIP" for c in checks)), errors="0")
    for c in checks:
        case = ET.SubElement(cases, "testcase", classname=f"{suite}.{c.suite}", name=c.name)
        if c.failed:
            ET.SubElement(case, "failure", message=c.message, type=c.outcome).text = c.line
        elif c.outcome == "SKIP":
            ET.SubElement(case, "skipped", message=c.message)
        ET.SubElement(case, "system-out").text = c.line
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def summary_markdown(title: str, headline: tuple[list[str], list[tuple]],
                     checks: Sequence[Check]) -> str:
    """A job summary: the title and overall result, the headline table, then every check."""
    bad = [c for c in checks if c.failed]
    result = f"**FAILED**: {len(bad)} of {len(checks)} checks" if bad else \
        f"**PASSED**: {len(checks)} checks"
    rows = [(f"{_ICONS.get(c.outcome, '')} {c.outcome}", c.name, c.message) for c in checks]
    warnings = [f"**Warning** ({c.name}): {c.message}" for c in checks if c.outcome == "WARN"]
    return "\n\n".join([
        f"## {title}", result, *warnings, table(*headline),
        table(["Verdict", "Check", "Detail"], rows), ""])
