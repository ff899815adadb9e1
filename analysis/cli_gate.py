"""The two gates as the command line runs them: print the lines, write JUnit and Markdown,
return the exit status (0 passed, 1 failed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from analysis.ci_outputs import junit_xml, summary_markdown
from analysis.compare import HEADLINES, headline_values
from analysis.gate import Check, failed, regression_checks, slo_checks
from analysis.records import Findings
from analysis.regression import compare_runs


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
    checks = regression_checks(compare_runs(baseline, run, bands))
    headline = (["Metric", f"baseline: {baseline.label}", f"run: {run.label}"],
                _headline_rows([baseline, run]))
    return _write(checks, f"Regression gate: {run.label} vs {baseline.label}", "regression",
                  headline, junit or out / "regression-junit.xml",
                  summary or out / "regression-summary.md")
