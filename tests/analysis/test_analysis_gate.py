"""The SLO and regression gates on hand-built run folders: exit codes, lines, JUnit, Markdown;
python -m bench noise: the spread of each gated metric over runs, and its band."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from analysis_run_builders import STREAMED_ROWS, memory_rows, request_row

from analysis.cli import main
from analysis.compare import DEFAULT_BANDS, Band, judge
from bench.serving.noise import metric_spreads, spread, suggested_band


def steady_requests(latency_ms: float, per_second: int = 4, seconds: int = 60,
                    refused_every: int = 0) -> list[dict]:
    """``per_second`` requests a second; latency varies +/-10% around ``latency_ms``;
    every ``refused_every``-th request is a 429 (0 = none)."""
    rows = []
    for i in range(per_second * seconds):
        t = i / per_second
        if refused_every and i % refused_every == 0:
            rows.append(request_row(t, status_code=429, success=0,
                                    failure_reason="rate_limited", response_time_ms=3))
        else:
            rows.append(request_row(t, response_time_ms=latency_ms * (0.9 + 0.2 * (i % 5) / 4)))
    return rows


@pytest.fixture
def steady_run(write_run):
    """Factory: a 60 s run folder of steady traffic (see steady_requests)."""

    def factory(name: str, latency_ms: float = 1000.0, per_second: int = 4, **kwargs) -> Path:
        return write_run(name, run={"label": name},
                         requests=steady_requests(latency_ms, per_second, **kwargs))

    return factory


def gate(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main([*argv, "--no-html"] if argv[0] != "compare" else list(argv))
    return code, capsys.readouterr().out.splitlines()


def test_a_run_that_meets_its_targets_passes(steady_run, capsys) -> None:
    run = steady_run("good")
    code, lines = gate(capsys, str(run), "--gate", "--slo-p95-ms", "2000")

    assert code == 0
    assert any(line.startswith("PASS      p95 latency, All routes: 1,") for line in lines)
    assert any(line.startswith("PASS      error rate: 0.000 ratio") for line in lines)
    assert "slo gate passed" in lines[-1]


def test_a_missed_p95_fails_with_the_failing_line(steady_run, capsys) -> None:
    run = steady_run("slow", latency_ms=3000)
    code, lines = gate(capsys, str(run), "--gate", "--slo-p95-ms", "2000")

    assert code == 1
    assert "FAIL      p95 latency, All routes: 3,300.0 ms, target <= 2,000.0 ms" in lines
    assert "slo gate FAILED" in lines[-1]


def test_refusals_count_as_errors_unless_configured_otherwise(steady_run, capsys,
                                                               tmp_path) -> None:
    run = steady_run("refused", refused_every=10)  # 10% answered 429
    code, lines = gate(capsys, str(run), "--gate")
    assert code == 1 and "FAIL      error rate: 0.100 ratio, target <= 0.010 ratio" in lines

    slo = tmp_path / "slo.toml"
    slo.write_text("[slo]\ncount_refusals = false\np95_ms = 2000\n")
    code, lines = gate(capsys, str(run), "--gate", "--slo-file", str(slo))
    assert code == 0
    assert "PASS      error rate (429/503 refusals excluded): 0.000 ratio, target <= 0.010 " \
           "ratio" in lines


def test_a_run_that_served_nothing_fails(write_run, capsys) -> None:
    run = write_run("empty", run={"label": "empty"})  # run.json only: Locust never got going
    code, lines = gate(capsys, str(run), "--gate")

    assert code == 1
    assert "FAIL      requests served: no successful request: nothing to judge" in lines


def test_slo_file_targets_and_its_typos(steady_run, capsys, tmp_path) -> None:
    run = steady_run("file")
    slo = tmp_path / "slo.toml"
    slo.write_text("[slo]\np95_ms = 500\n")
    assert gate(capsys, str(run), "--gate", "--slo-file", str(slo))[0] == 1
    # The command line wins over the file.
    assert gate(capsys, str(run), "--gate", "--slo-file", str(slo), "--slo-p95-ms", "5000")[0] == 0

    slo.write_text("[slo]\np95 = 500\n")
    with pytest.raises(ValueError, match=r"unknown \[slo\] keys \['p95'\]; valid: .*p95_ms"):
        gate(capsys, str(run), "--gate", "--slo-file", str(slo))


def test_memory_slope_and_streaming_targets_when_in_force(write_run, capsys) -> None:
    memory = [row for t in range(0, 120, 2)
              for row in memory_rows(t, [(101, 3100, 150 + t, 1150 + t)])]  # +60 MB/min
    run = write_run("leaky", run={"label": "leaky"}, requests=STREAMED_ROWS, memory=memory)
    code, lines = gate(capsys, str(run), "--gate", "--slo-memory-slope-mb-per-min", "5",
                       "--slo-ttft-ms", "280", "--slo-tpot-ms", "5000", "--slo-error-rate", "1",
                       "--slo-attainment", "0.1")

    assert code == 1
    assert any(line.startswith("FAIL      memory slope (total PSS): 60.0 MB/min") for line in lines)
    assert any(line.startswith("FAIL      TTFT p95, streamed: 2") for line in lines)
    assert any(line.startswith("PASS      TPOT p95, streamed:") for line in lines)
    # Without a memory.csv the slope is not measured: listed, skipped, not failed.
    bare = write_run("bare", run={"label": "bare"}, requests=steady_requests(1000))
    code, lines = gate(capsys, str(bare), "--gate", "--slo-memory-slope-mb-per-min", "5")
    assert code == 0 and any(line.startswith("SKIP      memory slope (total PSS): not measured")
                             for line in lines)


def test_junit_xml_names_each_verdict_and_the_summary_is_written(steady_run, capsys) -> None:
    run = steady_run("junit", latency_ms=3000)
    gate(capsys, str(run), "--gate", "--slo-p95-ms", "2000", "--slo-memory-slope-mb-per-min", "5")

    suite = ET.parse(run / "slo-junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"requests served", "p95 latency, All routes",
                          "p95 latency, /generate-text", "error rate", "memory slope (total PSS)"}
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "2", "1")
    assert "3,300.0 ms" in cases["p95 latency, All routes"].find("failure").get("message")
    assert cases["memory slope (total PSS)"].find("skipped") is not None
    assert cases["error rate"].find("failure") is None
    summary = (run / "slo-summary.md").read_text()
    assert summary.startswith("## SLO gate: junit") and "**FAILED**: 2 of 5 checks" in summary
    assert "| p95 latency (ms) | 3,300" in summary.replace(".0 |", " |")
    assert "| ❌ FAIL | p95 latency, All routes | 3,300.0 ms, target <= 2,000.0 ms |" in summary


def test_a_run_within_noise_of_its_baseline_is_unchanged(steady_run, capsys, tmp_path) -> None:
    base = steady_run("base", latency_ms=1000, per_second=4)
    # 10% slower, 10% more throughput (fewer requests a second are not noise-free either).
    run = steady_run("same", latency_ms=1100)
    code, lines = gate(capsys, "compare", str(base), str(run), "--gate",
                       "--out", str(tmp_path / "cmp"))

    assert code == 0
    assert any(line.startswith("UNCHANGED p95 latency: 1,100.0 -> 1,210.0 ms, +110.0 ms (1.10x)")
               for line in lines)
    assert not any(line.startswith(("REGRESSED", "IMPROVED")) for line in lines)
    assert "regression gate passed" in lines[-1]
    junit = ET.parse(tmp_path / "cmp" / "regression-junit.xml").getroot()
    assert junit.find("testsuite").get("failures") == "0"
    assert (tmp_path / "cmp" / "regression-summary.md").read_text().startswith(
        "## Regression gate: same vs base")


def test_a_2x_p95_regression_fails_and_says_by_how_much(steady_run, capsys, tmp_path) -> None:
    base = steady_run("base", latency_ms=1000)
    run = steady_run("slower", latency_ms=2000)
    code, lines = gate(capsys, "compare", str(base), str(run), "--gate",
                       "--out", str(tmp_path / "cmp"))

    band = DEFAULT_BANDS["p95_latency"][1].width(1100.0)
    assert band < 1100.0  # the default band (measured noise) is narrower than a 2x change
    assert code == 1
    assert ("REGRESSED p95 latency: 1,100.0 -> 2,200.0 ms, +1,100.0 ms (2.00x); noise band "
            f"+/-{band:,.1f} ms; lower is better") in lines
    failures = [c.get("name") for c in ET.parse(tmp_path / "cmp" / "regression-junit.xml")
                .getroot().iter("testcase") if c.find("failure") is not None]
    assert "p95 latency" in failures and "Throughput" not in failures
    # A wider band for p95 (and p50, p99) makes the same change noise.
    wide = ["--band", "p50_latency=1.5", "--band", "p95_latency=1.5", "--band", "p99_latency=1.5"]
    assert gate(capsys, "compare", str(base), str(run), "--gate", *wide,
                "--out", str(tmp_path / "cmp2"))[0] == 0


def test_an_improvement_beyond_noise_passes(steady_run, capsys, tmp_path) -> None:
    base = steady_run("base", per_second=2)
    run = steady_run("busier", per_second=4)  # twice the throughput, same latency
    code, lines = gate(capsys, "compare", str(base), str(run), "--gate",
                       "--out", str(tmp_path / "cmp"))

    assert code == 0 and any(line.startswith("IMPROVED  Throughput") for line in lines)
    assert any(line.startswith("UNCHANGED p95 latency") for line in lines)


@pytest.mark.parametrize(("base", "value", "expected"), [
    (100.0, 130.0, "unchanged"),   # within +/-40% (relative)
    (100.0, 160.0, "regressed"),
    (100.0, 40.0, "improved"),
    (10.0, 50.0, "unchanged"),     # within the 50 ms absolute floor
    (None, 50.0, "not measured"),
])
def test_judge_uses_the_wider_of_relative_and_absolute_bands(base, value, expected) -> None:
    assert judge(base, value, Band(0.4, 50.0), "lower") == expected


def test_spread_is_the_widest_and_the_median_deviation_from_the_median() -> None:
    found = spread([90.0, 100.0, 104.0, 150.0, 100.0])

    assert (found["median"], found["min"], found["max"], found["n"]) == (100.0, 90.0, 150.0, 5)
    assert found["widest"] == pytest.approx(0.50)  # the one slow run
    assert found["mad"] == pytest.approx(0.04)  # deviations 0.1, 0, 0.04, 0.5, 0: median 0.04


@pytest.mark.parametrize(("mad", "band"), [(0.0, 0.1), (0.03, 0.1), (0.05, 0.15),
                                           (0.26, 0.8), (0.1, 0.3)])
def test_band_is_three_mads_rounded_up_with_a_floor(mad, band) -> None:
    assert suggested_band(mad) == pytest.approx(band)


def test_metric_spreads_reads_each_run_folder(write_run) -> None:
    runs = [write_run(f"r{i}", run={"label": f"r{i}"},
                      requests=[request_row(t, response_time_ms=latency) for t in range(30)])
            for i, latency in enumerate((1000.0, 1100.0, 1200.0))]
    found = metric_spreads(runs)

    assert found["p95_latency"]["median"] == 1100.0
    assert found["p95_latency"]["widest"] == pytest.approx(100 / 1100)
    assert "peak_total_pss" not in found  # no memory.csv: not measured, not a zero
