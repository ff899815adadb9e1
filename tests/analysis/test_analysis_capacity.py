"""The capacity search in the analysis: run.json's result in the report, its finding rule,
and the regression gate failing a run whose capacity fell beyond the baseline's band."""

from __future__ import annotations

from pathlib import Path

import pytest
from analysis_run_builders import request_row

from analysis.capacity import capacity
from analysis.cli import main
from analysis.compare import DEFAULT_BANDS, REGRESSED, UNCHANGED, compare_runs
from analysis.config import AnalysisConfig
from analysis.findings import build_findings
from analysis.report import render_markdown
from analysis.run import load_run
from locustfiles.capacity_search import (
    Bisection,
    Limits,
    Plan,
    Window,
    judge,
    search_shape_record,
)


def searched(threshold_ms_per_user: float, p95_ms: float, ram_mb: float = 0.0) -> dict:
    """run.json entries of a real bisection against a synthetic server: p95 = users x
    ``threshold_ms_per_user``, total PSS = 500 MB + 10 MB per user."""
    plan, limits = Plan(), Limits(p95_ms=p95_ms, ram_mb=ram_mb)
    search = Bisection(plan)
    while (level := search.next_level()) is not None:
        p95 = level * threshold_ms_per_user
        window = Window(requests=40, p95_ms=p95, p95_halves_ms=(p95 * 0.95, p95 * 1.05),
                        peak_pss_mb=500 + 10 * level)
        search.add(judge(level, window, limits))
    return {"shape": search_shape_record(plan, limits), "capacity": search.result().record()}


@pytest.fixture
def search_run(write_run):
    def factory(name: str, **kwargs) -> Path:
        rows = [request_row(i / 4, response_time_ms=500) for i in range(80)]
        return write_run(name, run={"label": name, **searched(**kwargs)}, requests=rows)

    return factory


def test_report_shows_the_capacity_its_limit_and_confidence(search_run) -> None:
    findings = build_findings(load_run(search_run("found", threshold_ms_per_user=100,
                                                  p95_ms=2_000)), _cfg())
    report = render_markdown(findings)

    assert findings.capacity.level == 20 and findings.capacity.limit == "latency"
    assert ("The highest load that met every limit: **20 users**, limited by **p95 latency** "
            "(21 users failed).") in report
    assert "Bracket 20 .. 21 users (width 1)" in report and "Confidence: **high**" in report
    assert "| 21 | FAIL: latency | 40 | 2,100.0 |" in report
    assert "a capacity search between 1 and 256 users" in report
    rule = next(r for r in findings.recommendations if r.rule == "capacity_limit")
    assert rule.severity == "info" and "20 users" in rule.text
    assert "capacity.level" not in findings.settings  # a finding, not a setting


def test_ram_limit_is_reported_and_warned(search_run) -> None:
    findings = build_findings(load_run(search_run("ram", threshold_ms_per_user=100,
                                                  p95_ms=2_000, ram_mb=600)), _cfg())

    assert (findings.capacity.level, findings.capacity.limit) == (10, "ram")
    rule = next(r for r in findings.recommendations if r.rule == "capacity_limit")
    assert rule.severity == "warning" and "the RAM budget" in rule.text
    assert "limited by **the RAM budget**" in render_markdown(findings)


def test_a_run_without_a_search_has_no_capacity_section(write_run) -> None:
    findings = build_findings(load_run(write_run("plain", run={"label": "plain"},
                                                 requests=[request_row(0.0)])), _cfg())

    assert findings.capacity is None and "## Capacity search" not in render_markdown(findings)
    assert capacity({"capacity": None}) is None


@pytest.mark.parametrize(("base_ms", "run_ms", "verdict"), [
    (100, 105, UNCHANGED),   # 20 -> 19 users: within the baseline's bracket / 10%
    (100, 200, REGRESSED),   # 20 -> 10 users: the capacity halved
])  # fmt: skip
def test_gate_judges_the_capacity_against_the_baseline_band(search_run, base_ms, run_ms,
                                                             verdict) -> None:
    base = build_findings(load_run(search_run("base", threshold_ms_per_user=base_ms,
                                              p95_ms=2_000)), _cfg())
    run = build_findings(load_run(search_run("run", threshold_ms_per_user=run_ms,
                                             p95_ms=2_000)), _cfg())
    [change] = [c for c in compare_runs(base, run) if c.key == "capacity"]

    assert change.verdict == verdict
    assert change.band == DEFAULT_BANDS["capacity"][1].width(base.capacity.level)


def test_regression_gate_command_fails_a_capacity_drop(search_run, capsys, tmp_path) -> None:
    base = search_run("base", threshold_ms_per_user=100, p95_ms=2_000)
    run = search_run("halved", threshold_ms_per_user=200, p95_ms=2_000)
    code = main(["compare", str(base), str(run), "--gate", "--out", str(tmp_path / "cmp")])
    lines = capsys.readouterr().out.splitlines()

    assert code == 1
    assert ("REGRESSED Capacity (search): 20.0 -> 10.0 level, -10.0 level (0.50x); noise band "
            "+/-2.0 level; higher is better") in lines


def test_a_wide_baseline_bracket_widens_the_band(search_run) -> None:
    base = build_findings(load_run(search_run("base", threshold_ms_per_user=100,
                                              p95_ms=2_000)), _cfg())
    base.capacity = base.capacity.__class__(**{**base.capacity.__dict__, "lowest_fail": 28.0})
    run = build_findings(load_run(search_run("run", threshold_ms_per_user=130,
                                             p95_ms=2_000)), _cfg())
    [change] = [c for c in compare_runs(base, run) if c.key == "capacity"]

    assert (base.capacity.level, run.capacity.level) == (20, 15)
    assert change.band == 8.0 and change.verdict == UNCHANGED  # 20 .. 28 was the bracket


def _cfg() -> AnalysisConfig:
    return AnalysisConfig()
