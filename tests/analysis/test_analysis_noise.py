"""python -m bench noise: the spread of each gated metric over runs, and its band."""

from __future__ import annotations

import pytest
from analysis_run_builders import request_row

from bench.serving.noise import metric_spreads, spread, suggested_band


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
