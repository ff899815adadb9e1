"""Open-loop summary from a small requests.csv: achieved vs target rate, dispatch lag, latency
from the intended vs the actual send, and the report's section."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.arrivals import arrival_summary
from analysis.config import AnalysisConfig
from analysis.readers import REQUEST_COLUMNS, read_requests
from analysis.records import Findings
from analysis.report_sections import ARRIVALS_TITLE, arrivals_section

T0 = 1_700_000_000.0
ARRIVALS = {"process": "constant", "rate_rps": 2.0, "burstiness": None, "seed": 0,
            "start_ts": T0, "stop_ts": T0 + 6.0, "scheduled": 12}


def write_requests(path: Path, lags_ms: list[float], pool_ms: list[float]) -> Path:
    """One 200 ms success per arrival, due every 0.5 s, sent ``lags_ms`` late."""
    rows = []
    for i, (lag, pool) in enumerate(zip(lags_ms, pool_ms, strict=True)):
        intended = T0 + 0.5 * i
        rows.append({"timestamp": intended + lag / 1000, "user_class": "PromptUser",
                     "method": "POST", "route": "/generate-text", "status_code": 200,
                     "response_time_ms": 200.0, "success": 1, "arrival_index": i,
                     "intended_ts": intended, "dispatch_lag_ms": lag, "pool_wait_ms": pool,
                     "intended_latency_ms": lag + 200.0})
    pd.DataFrame(rows).reindex(columns=REQUEST_COLUMNS).to_csv(path, index=False)
    return path


def test_a_kept_schedule_has_no_lag_and_equal_latencies(tmp_path: Path) -> None:
    requests = read_requests(write_requests(tmp_path / "r.csv", [1.0] * 12, [0.0] * 12))
    s = arrival_summary(requests, ARRIVALS)
    assert (s.sent, s.scheduled, s.pool_delayed) == (12, 12, 0)
    assert s.achieved_rps == pytest.approx(2.0) and s.scheduled_rps == pytest.approx(2.0)
    assert s.lag_p50_ms == pytest.approx(1.0)
    assert s.intended_p50_ms == pytest.approx(201.0) and s.actual_p50_ms == pytest.approx(200.0)
    assert s.intended_growth_ms == pytest.approx(0.0) and s.actual_growth_ms == 0.0


def test_a_falling_behind_generator_shows_growth_from_the_intended_send(tmp_path: Path) -> None:
    lags = [300.0 * i for i in range(9)]  # each arrival 0.3 s later than the one before
    requests = read_requests(write_requests(tmp_path / "r.csv", lags, lags))
    s = arrival_summary(requests, ARRIVALS)
    assert (s.sent, s.pool_delayed) == (9, 8)
    assert s.achieved_rps == pytest.approx(9 / 6.0)
    assert s.intended_growth_ms == pytest.approx(1800.0) and s.actual_growth_ms == 0.0
    findings = Findings("x", {}, AnalysisConfig(), [], [], None, None, None, None, None, 0,
                        arrivals=s)
    section = arrivals_section(findings)
    assert section.title == ARRIVALS_TITLE
    text = str(section.blocks)
    assert "8 arrival(s) waited for a free user" in text and "75.0% of the target" in text


def test_closed_loop_runs_have_no_arrival_summary(tmp_path: Path) -> None:
    requests = read_requests(write_requests(tmp_path / "r.csv", [1.0], [0.0]))
    assert arrival_summary(requests, None) is None
    assert arrival_summary(requests.assign(intended_ts=float("nan")), ARRIVALS) is None
