"""Open-loop arrivals: did the load generator keep its schedule, and what was the latency
from each request's intended send time (no coordinated omission)?

Reads requests.csv's arrival columns (``arrival_index``, ``intended_ts``,
``dispatch_lag_ms``, ``pool_wait_ms``, ``intended_latency_ms``; locustfiles/arrivals.py) and
run.json's ``arrivals`` block (process, rate, seed, ``start_ts``, ``stop_ts``, ``scheduled``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ArrivalSummary:
    """How the schedule was kept, and latency from the intended vs the actual send."""

    process: str
    target_rps: float
    burstiness: float | None
    seed: int | None
    window_s: float
    scheduled: int | None  # arrivals due in the window (run.json), None when not recorded
    sent: int
    scheduled_rps: float | None
    achieved_rps: float
    pool_delayed: int  # sent late because every user of the pool was busy
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    intended_p50_ms: float
    intended_p99_ms: float
    actual_p50_ms: float
    actual_p99_ms: float
    intended_growth_ms: float  # median, last third of the run - first third
    actual_growth_ms: float


def _p(values: pd.Series, q: float) -> float:
    values = values.dropna()
    return float(np.percentile(values, q)) if not values.empty else np.nan


def _growth(ok: pd.DataFrame, column: str) -> float:
    """Median of ``column`` over the last third of the arrivals minus over the first third."""
    if len(ok) < 3:
        return np.nan
    ordered = ok.sort_values("intended_ts")[column].to_numpy()
    third = len(ordered) // 3
    return float(np.median(ordered[-third:]) - np.median(ordered[:third]))


def arrival_summary(requests: pd.DataFrame, arrivals: dict[str, Any] | None
                    ) -> ArrivalSummary | None:
    """Summarise the open-loop requests of a run; None for closed-loop runs.

    Formula: the window is run.json's stop_ts - start_ts (the schedule's start to the moment
    the test began stopping), else the span of the intended send times. Achieved rate =
    requests sent / window; scheduled rate = arrivals due in the window / window (the
    realised schedule: a Poisson count over T seconds has a standard deviation of
    sqrt(rate x T)). Dispatch lag = actual send - intended send (p50/p99/max over every sent
    arrival); "sent late, pool busy" counts arrivals with pool_wait_ms > 0. Latency from the
    intended send = dispatch lag + response time; its p50/p99 and those of the response time
    (from the actual send) are over successful requests. Growth = median over the last third
    of the successful arrivals (by intended time) - median over the first third.
    """
    if requests.empty or "intended_ts" not in requests or not arrivals:
        return None
    sent = requests[requests["intended_ts"].notna()]
    if sent.empty:
        return None
    start, stop = arrivals.get("start_ts"), arrivals.get("stop_ts")
    if start is not None and stop is not None and stop > start:
        window_s = float(stop - start)
        achieved = len(sent) / window_s
    else:
        window_s = float(sent["intended_ts"].max() - sent["intended_ts"].min())
        achieved = (len(sent) - 1) / window_s if window_s > 0 else np.nan
    scheduled = arrivals.get("scheduled")
    ok = sent[sent["success"]]
    return ArrivalSummary(
        process=str(arrivals.get("process")), target_rps=float(arrivals.get("rate_rps") or 0),
        burstiness=arrivals.get("burstiness"), seed=arrivals.get("seed"), window_s=window_s,
        scheduled=scheduled, sent=len(sent),
        scheduled_rps=scheduled / window_s if scheduled is not None and window_s > 0 else None,
        achieved_rps=achieved, pool_delayed=int((sent["pool_wait_ms"].fillna(0) > 0).sum()),
        lag_p50_ms=_p(sent["dispatch_lag_ms"], 50), lag_p99_ms=_p(sent["dispatch_lag_ms"], 99),
        lag_max_ms=float(sent["dispatch_lag_ms"].max()),
        intended_p50_ms=_p(ok["intended_latency_ms"], 50),
        intended_p99_ms=_p(ok["intended_latency_ms"], 99),
        actual_p50_ms=_p(ok["response_time_ms"], 50), actual_p99_ms=_p(ok["response_time_ms"], 99),
        intended_growth_ms=_growth(ok, "intended_latency_ms"),
        actual_growth_ms=_growth(ok, "response_time_ms"),
    )
