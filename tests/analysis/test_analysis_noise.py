"""scripts/measure_noise.py: the spread of each gated metric over runs, and its band."""

from __future__ import annotations

import pytest
from analysis_run_builders import request_row

from scripts.measure_noise import metric_spreads, spread, suggested_band


def test_spread_is_the_widest_deviation_from_the_median() -> None:
    found = spread([90.0, 100.0, 104.0, 120.0, 100.0])

    assert (found["median"], found["min"], found["max"], found["n"]) == (100.0, 90.0, 120.0, 5)
    assert found["widest"] == pytest.approx(0.20)


@pytest.mark.parametrize(("widest", "band"), [(0.0, 0.1), (0.04, 0.1), (0.12, 0.25),
                                              (0.2, 0.4)])
def test_band_is_twice_the_widest_rounded_up_with_a_floor(widest, band) -> None:
    assert suggested_band(widest) == pytest.approx(band)


def test_metric_spreads_reads_each_run_folder(write_run) -> None:
    runs = [write_run(f"r{i}", run={"label": f"r{i}"},
                      requests=[request_row(t, response_time_ms=latency) for t in range(30)])
            for i, latency in enumerate((1000.0, 1100.0, 1200.0))]
    found = metric_spreads(runs)

    assert found["p95_latency"]["median"] == 1100.0
    assert found["p95_latency"]["widest"] == pytest.approx(100 / 1100)
    assert "peak_total_pss" not in found  # no memory.csv: not measured, not a zero
