"""Fallback numbers from Locust's own CSVs, used when requests.csv is missing.

Locust's percentiles cover every request, failures included, and are rounded the way
Locust rounds them (to about two significant digits above 100 ms); the report says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.traffic import ALL_ROUTES, RouteLatency, Traffic


def route_latency_from_stats(stats: pd.DataFrame) -> list[RouteLatency]:
    """Per-route percentiles as Locust computed them (the "Aggregated" row last)."""
    if stats.empty:
        return []
    rows = [
        RouteLatency(
            route=ALL_ROUTES if row.name == "Aggregated" else str(row.name),
            requests=int(row.request_count),
            successes=int(row.request_count - row.failure_count),
            p50_ms=float(row.p50_ms),
            p90_ms=float(row.p90_ms),
            p95_ms=float(row.p95_ms),
            p99_ms=float(row.p99_ms),
            mean_ms=float(row.average_response_time_ms),
        )
        for row in stats.itertuples()
    ]
    return sorted(rows, key=lambda r: (r.route == ALL_ROUTES, r.route))


def traffic_from_stats(stats: pd.DataFrame, failures: pd.DataFrame) -> Traffic | None:
    """Counts and rates from the "Aggregated" row; failure causes from Locust's error texts.

    Formula: throughput_rps = Locust's Requests/s - Failures/s (its whole-run averages).
    """
    agg = stats[stats["name"] == "Aggregated"] if not stats.empty else stats
    if agg.empty:
        return None
    row = agg.iloc[0]
    requests, failed = int(row["request_count"]), int(row["failure_count"])
    causes = (
        failures.groupby("error")["occurrences"].sum()
        if not failures.empty
        else pd.Series(dtype=int)
    )
    return Traffic(
        requests=requests,
        successes=requests - failed,
        failures=failed,
        error_rate=failed / requests if requests else np.nan,
        window_s=np.nan,
        throughput_rps=float(row["requests_per_s"] - row["failures_per_s"]),
        output_tokens_per_s=np.nan,
        failures_by_cause={str(k): int(v) for k, v in causes.items()},
        status_counts={},
    )
