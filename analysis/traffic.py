"""Latency, throughput, failures and time split, computed from requests.csv.

Percentiles use linear interpolation between closest ranks (pandas' default), over
successful requests only: refusals (429/503) return in milliseconds and would make latency
look better than what served users saw. Failures are counted separately as the error rate.

When requests.csv is missing, the fallback numbers come from Locust's own CSVs: Locust's
percentiles cover every request, failures included, and are rounded the way Locust rounds
them (to about two significant digits above 100 ms); the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PERCENTILES = (50, 90, 95, 99)
ALL_ROUTES = "All routes"


@dataclass(frozen=True)
class RouteLatency:
    """Latency percentiles of one route (or of all routes together)."""

    route: str
    requests: int
    successes: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float


@dataclass(frozen=True)
class Traffic:
    """Counts and rates of the whole run."""

    requests: int
    successes: int
    failures: int
    error_rate: float
    window_s: float
    throughput_rps: float
    output_tokens_per_s: float
    failures_by_cause: dict[str, int]
    status_counts: dict[int, int]


@dataclass(frozen=True)
class TimeSplit:
    """Where server time went for successful requests: waiting in queue vs generating."""

    requests: int
    mean_queue_ms: float
    mean_inference_ms: float
    queue_share: float
    mean_batch_size: float


def route_latency(requests: pd.DataFrame) -> list[RouteLatency]:
    """Latency percentiles per route, then over all routes.

    Formula: pXX_ms = the XX-th percentile (linear interpolation) of response_time_ms over
    successful requests.
    """
    if requests.empty:
        return []
    groups = [(str(r), g) for r, g in requests.groupby("route", sort=True)]
    rows = []
    for route, group in [*groups, (ALL_ROUTES, requests)]:
        ok = group.loc[group["success"], "response_time_ms"]
        q = ok.quantile([p / 100 for p in PERCENTILES]).tolist() if len(ok) else [np.nan] * 4
        mean = float(ok.mean()) if len(ok) else np.nan
        rows.append(RouteLatency(route, len(group), len(ok), *q, mean))
    return rows


def traffic(requests: pd.DataFrame) -> Traffic | None:
    """Counts, error rate, throughput and output tokens/s of the run.

    Formula: window_s = last request end - first request start; throughput_rps = successful
    requests / window_s; output_tokens_per_s = sum of completion_tokens of successful
    requests / window_s; error_rate = failed requests / all requests.
    """
    if requests.empty:
        return None
    window_s = float(requests["end_elapsed_s"].max() - requests["elapsed_s"].min())
    ok = requests[requests["success"]]
    failed = requests[~requests["success"]]
    causes = failed["failure_reason"].replace("", "unspecified").value_counts()
    rate = (lambda n: n / window_s) if window_s > 0 else (lambda n: np.nan)
    return Traffic(
        requests=len(requests),
        successes=len(ok),
        failures=len(failed),
        error_rate=len(failed) / len(requests),
        window_s=window_s,
        throughput_rps=rate(len(ok)),
        output_tokens_per_s=rate(float(ok["completion_tokens"].fillna(0).sum())),
        failures_by_cause={str(k): int(v) for k, v in causes.sort_index().items()},
        status_counts={
            int(k): int(v) for k, v in requests["status_code"].value_counts().sort_index().items()
        },
    )


def time_split(requests: pd.DataFrame) -> TimeSplit | None:
    """Mean queue and inference time of successful requests, and the queue's share.

    Formula: queue_share = sum(queue_ms) / (sum(queue_ms) + sum(inference_ms)) over
    successful requests that report both.
    """
    if requests.empty:
        return None
    timed = requests[requests["success"]].dropna(subset=["queue_ms", "inference_ms"])
    if timed.empty:
        return None
    total = timed["queue_ms"].sum() + timed["inference_ms"].sum()
    return TimeSplit(
        requests=len(timed),
        mean_queue_ms=float(timed["queue_ms"].mean()),
        mean_inference_ms=float(timed["inference_ms"].mean()),
        queue_share=float(timed["queue_ms"].sum() / total) if total > 0 else np.nan,
        mean_batch_size=float(timed["batch_size"].mean()),
    )


def tokens_over_time(requests: pd.DataFrame, bin_s: float) -> pd.DataFrame:
    """Output tokens/s and requests/s per time bin, by request end time.

    Formula: tokens_per_s(bin) = completion_tokens of successful requests ending in the bin
    / bin_s.
    """
    columns = ["elapsed_s", "tokens_per_s", "requests_per_s"]
    ok = requests[requests["success"]] if not requests.empty else requests
    if ok.empty:
        return pd.DataFrame(columns=columns, dtype=float)
    last_bin = int(ok["end_elapsed_s"].max() // bin_s)
    return (
        ok.assign(bin=lambda d: (d["end_elapsed_s"] // bin_s).astype(int))
        .groupby("bin")
        .agg(tokens=("completion_tokens", "sum"), n=("completion_tokens", "size"))
        .reindex(range(min(0, last_bin), last_bin + 1), fill_value=0)
        .reset_index()
        .assign(
            elapsed_s=lambda d: d["bin"] * bin_s,
            tokens_per_s=lambda d: d["tokens"] / bin_s,
            requests_per_s=lambda d: d["n"] / bin_s,
        )
        .loc[:, columns]
    )


# Fallback numbers from Locust's own CSVs, used when requests.csv is missing.


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
