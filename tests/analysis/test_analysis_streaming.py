"""Streaming metrics, goodput and SLO attainment on hand-built requests.csv files.

Every expected number is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
from analysis_run_builders import STREAMED_ROWS, STREAMED_WINDOW_S, request_row, streamed_row

from analysis import goodput, streaming
from analysis.config import AnalysisConfig, load_config
from analysis.findings import build_findings
from analysis.run import load_run
from analysis.traffic import ALL_ROUTES

# Targets for STREAMED_ROWS: TTFT <= 350 ms, TPOT <= 500 ms, E2E <= 5000 ms, 90% attainment.
CONFIG = AnalysisConfig(slo_ttft_ms=350, slo_tpot_ms=500, slo_e2e_ms=5000, slo_attainment=0.9)
TARGETS = goodput.Targets(350, 500, 5000, 0.9)


@pytest.fixture
def requests(write_run) -> pd.DataFrame:
    return load_run(write_run(requests=STREAMED_ROWS)).requests


@pytest.mark.parametrize(
    ("e2e_ms", "ttft_ms", "tokens", "expected"),
    [
        (1000, 100, 10, 100.0),  # 900 ms / 9 tokens after the first
        (1100, 100, 2, 1000.0),  # one token after the first
        (150, 150, 1, math.nan),  # a one-token answer has no TPOT
        (500, 100, math.nan, math.nan),  # the server sent no usage
    ],
)
def test_tpot_formula(e2e_ms, ttft_ms, tokens, expected) -> None:
    rows = pd.DataFrame(
        {"response_time_ms": [e2e_ms], "ttft_ms": [ttft_ms], "completion_tokens": [tokens]}
    )
    assert streaming.tpot_ms(rows).iloc[0] == pytest.approx(expected, nan_ok=True)


def test_percentiles_over_successful_streamed_requests(requests) -> None:
    rows = {(p.route, p.metric): p for p in streaming.stream_latency(requests)}
    ttft = rows[(ALL_ROUTES, "TTFT")]
    # Five successes, sorted 100 150 200 250 300; rank = q * 4: p90 3.6 -> 250 + 0.6 * 50.
    assert (ttft.samples, ttft.p50, ttft.p90, ttft.p95, ttft.p99, ttft.mean) == pytest.approx(
        (5, 200, 280, 290, 298, 200)
    )
    tpot = rows[(ALL_ROUTES, "TPOT")]
    # The one-token answer has none: 100 100 200 1000; rank q * 3: p50 1.5 -> 150,
    # p90 2.7 -> 200 + 0.7 * 800 = 760, p95 2.85 -> 880, p99 2.97 -> 976; mean 1400 / 4.
    assert (tpot.samples, tpot.p50, tpot.p90, tpot.p95, tpot.p99, tpot.mean) == pytest.approx(
        (4, 150, 760, 880, 976, 350)
    )
    e2e = rows[(ALL_ROUTES, "E2E")]
    # 150 1000 1300 2000 4250 (the 503 and the non-streamed 1000 ms request left out):
    # p90 3.6 -> 2000 + 0.6 * 2250 = 3350, p95 -> 3800, p99 -> 4160.
    assert (e2e.p50, e2e.p90, e2e.p95, e2e.p99) == pytest.approx((1300, 3350, 3800, 4160))
    per_user = rows[(ALL_ROUTES, "Output tokens/s per user")]
    # 10/1.0, 10/2.0, 11/1.3, 5/4.25, 1/0.15 -> sorted middle value 1/0.15.
    assert per_user.p50 == pytest.approx(1 / 0.15)
    assert per_user.mean == pytest.approx((10 + 5 + 11 / 1.3 + 5 / 4.25 + 1 / 0.15) / 5)
    # Per route: /generate-text has TTFT 100 200 300 -> p99 at rank 1.98 = 298.
    assert rows[("/generate-text", "TTFT")].p99 == pytest.approx(298)
    assert rows[("/answer-question", "TPOT")].samples == 1
    assert list(rows)[-1] == (ALL_ROUTES, "Output tokens/s per user")


def test_goodput_counts_an_error_and_an_slo_miss(requests) -> None:
    g = goodput.goodput(requests, STREAMED_WINDOW_S, TARGETS)
    # Six streamed: four good, the 503 (failed) and the 1000 ms TPOT (over target) missed.
    assert (g.requests, g.good, g.failed) == (6, 4, 1)
    assert (g.over_ttft, g.over_tpot, g.over_e2e) == (0, 1, 0)
    assert g.goodput_rps == pytest.approx(4 / 7.25)
    assert g.good_output_tokens_per_s == pytest.approx((10 + 10 + 11 + 1) / 7.25)
    assert g.attainment == pytest.approx(4 / 6)
    assert g.meets_attainment is False
    assert g.max_users_within_attainment is None and g.steps.empty


def test_a_target_of_zero_is_not_checked(requests) -> None:
    g = goodput.goodput(requests, STREAMED_WINDOW_S, goodput.Targets(350, 0, 5000, 0.8))
    # Without a TPOT target only the error misses: 5 / 6 >= 0.8.
    assert (g.good, g.over_tpot, g.meets_attainment) == (5, 0, True)
    assert g.attainment == pytest.approx(5 / 6)


def test_findings_use_the_run_window_and_the_configured_targets(write_run) -> None:
    f = build_findings(load_run(write_run(requests=STREAMED_ROWS)), CONFIG)
    assert f.traffic.window_s == pytest.approx(STREAMED_WINDOW_S)
    s = f.streaming
    assert (s.requests, s.successes, s.without_token_count) == (6, 5, 0)
    # All successful streamed tokens: 10 + 10 + 11 + 5 + 1 = 37 over 7.25 s.
    assert s.output_tokens_per_s == pytest.approx(37 / 7.25)
    assert f.goodput.good == 4
    verdict = next(v for v in f.slo if v.name == "SLO attainment")
    assert (verdict.target, verdict.actual, verdict.passed) == (0.9, pytest.approx(4 / 6), False)


def test_attainment_per_sweep_step_and_max_users(write_run) -> None:
    rows = [streamed_row(1, 100, 1000, 10), streamed_row(2, 100, 1000, 10),  # 2 users: 2/2
            streamed_row(11, 100, 1000, 10), streamed_row(12, 900, 1000, 10),  # 4: TTFT miss
            streamed_row(21, 100, 1000, 10),  # 6 users: 1/2, one error
            request_row(22, stream=1, status_code=0, success=0,
                        failure_reason="connection_error")]  # fmt: skip
    requests = load_run(write_run(requests=rows)).requests
    steps = pd.DataFrame({"users": [2, 4, 6], "start_s": [0, 10, 20], "end_s": [10, 20, 30]})
    g = goodput.goodput(requests, 30.0, goodput.Targets(500, 0, 0, 0.5), steps)
    assert g.steps["requests"].tolist() == [2, 2, 2]
    assert g.steps["good"].tolist() == [2, 1, 1]
    assert g.steps["attainment"].tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert g.steps["meets"].tolist() == [True, True, True]
    assert g.max_users_within_attainment == 6
    stricter = goodput.goodput(requests, 30.0, goodput.Targets(500, 0, 0, 0.9), steps)
    assert stricter.steps["meets"].tolist() == [True, False, False]
    assert stricter.max_users_within_attainment == 2


def test_no_streamed_requests_means_no_streaming_findings(write_run) -> None:
    f = build_findings(load_run(write_run(requests=[request_row(1.0)])), CONFIG)
    assert f.streaming is None and f.goodput is None
    assert all(v.name != "SLO attainment" for v in f.slo)


def test_slo_targets_from_run_json_and_environment(monkeypatch) -> None:
    monkeypatch.setenv("ANALYSIS_SLO_TTFT_MS", "800")
    cfg = load_config()
    assert (cfg.slo_ttft_ms, cfg.slo_tpot_ms) == (800.0, 500.0)
    run = cfg.for_run({"slo": {"tpot_ms": 50, "e2e_ms": 4000, "attainment": 0.95}})
    assert (run.slo_ttft_ms, run.slo_tpot_ms, run.slo_e2e_ms, run.slo_attainment) == (
        800.0, 50.0, 4000.0, 0.95,
    )  # fmt: skip
