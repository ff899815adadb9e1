"""Streamed answers: TTFT, TPOT and end-to-end percentiles, output tokens/s per user and overall.

A streamed request is a requests.csv row with ``stream`` = 1 (the streaming users mark every
request they send, failed ones included). Definitions follow vLLM's ``benchmark_serving``
and guidellm (see locustfiles/sse.py): TTFT = request start -> first event with text,
E2E = request start -> end of the stream (``response_time_ms``), TPOT = the time per output
token after the first. Percentiles are linear interpolation over successful streamed
requests, as for the other latency tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.traffic import ALL_ROUTES, PERCENTILES

# (metric, unit) in the order the report lists them.
METRICS = [("TTFT", "ms"), ("TPOT", "ms"), ("E2E", "ms"), ("Output tokens/s per user", "tokens/s")]


@dataclass(frozen=True)
class StreamPercentiles:
    """Percentiles of one streaming metric over one route's (or all routes') good answers."""

    route: str
    metric: str
    unit: str
    samples: int
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float


@dataclass(frozen=True)
class StreamSummary:
    """Counts and per-metric percentiles of the streamed requests of a run."""

    requests: int
    successes: int
    without_token_count: int
    output_tokens_per_s: float
    percentiles: list[StreamPercentiles]


def streamed(requests: pd.DataFrame) -> pd.DataFrame:
    """The rows of streamed requests (``stream`` = 1); empty when the run streamed nothing."""
    if requests.empty or "stream" not in requests:
        return requests.iloc[0:0]
    return requests[pd.to_numeric(requests["stream"], errors="coerce") == 1]


def tpot_ms(rows: pd.DataFrame) -> pd.Series:
    """Time per output token after the first, per row; NaN below 2 tokens or without TTFT.

    Formula: TPOT = (E2E - TTFT) / (completion_tokens - 1), with E2E = response_time_ms of
    the streamed request and completion_tokens the server's own count (its final usage
    event); undefined for answers of fewer than 2 tokens.
    """
    tokens = rows["completion_tokens"]
    value = (rows["response_time_ms"] - rows["ttft_ms"]) / (tokens - 1)
    return value.where(tokens >= 2)


def tokens_per_s_per_user(rows: pd.DataFrame) -> pd.Series:
    """Output tokens/s one user saw while reading its answer, per row (NaN without a count).

    Formula: tokens/s per user = completion_tokens / (E2E / 1000) for each successful
    streamed request (what the user reading the stream got, the wait for the first token
    included).
    """
    seconds = rows["response_time_ms"] / 1000.0
    return (rows["completion_tokens"] / seconds).where(seconds > 0)


def _percentiles(route: str, metric: str, unit: str, values: pd.Series) -> StreamPercentiles:
    values = values.dropna()
    if values.empty:
        return StreamPercentiles(route, metric, unit, 0, *[np.nan] * 5)
    q = values.quantile([p / 100 for p in PERCENTILES]).tolist()
    return StreamPercentiles(route, metric, unit, len(values), *q, float(values.mean()))


def stream_latency(requests: pd.DataFrame) -> list[StreamPercentiles]:
    """TTFT, TPOT, E2E and tokens/s-per-user percentiles per route, then over all routes.

    Formula: pXX of TTFT (ttft_ms), TPOT, E2E (response_time_ms) and tokens/s per user = the
    XX-th percentile (linear interpolation) over successful streamed requests (stream = 1)
    that have the value; TPOT only over answers of 2 or more tokens.
    """
    ok = streamed(requests)
    ok = ok[ok["success"]]
    if ok.empty:
        return []
    groups = [(str(r), g) for r, g in ok.groupby("route", sort=True)]
    rows = []
    for route, group in [*groups, (ALL_ROUTES, ok)]:
        values = [group["ttft_ms"], tpot_ms(group), group["response_time_ms"],
                  tokens_per_s_per_user(group)]  # fmt: skip
        rows += [
            _percentiles(route, metric, unit, series)
            for (metric, unit), series in zip(METRICS, values, strict=True)
        ]
    return rows


def stream_summary(requests: pd.DataFrame, window_s: float) -> StreamSummary | None:
    """Counts, percentiles and overall output tokens/s of the streamed requests; None if none.

    Formula: overall output tokens/s = sum of completion_tokens of successful streamed
    requests / window_s (the run's measured window, as for throughput).
    """
    rows = streamed(requests)
    if rows.empty:
        return None
    ok = rows[rows["success"]]
    tokens = float(ok["completion_tokens"].fillna(0).sum())
    return StreamSummary(
        requests=len(rows),
        successes=len(ok),
        without_token_count=int(ok["completion_tokens"].isna().sum()),
        output_tokens_per_s=tokens / window_s if window_s > 0 else np.nan,
        percentiles=stream_latency(requests),
    )
