"""Build run-folder files by hand: the real headers, rows made one at a time (no randomness)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

START_TS = 1_700_000_000.0  # 2023-11-14T22:13:20Z, the started_at of every built run
STARTED_AT = "2023-11-14T22:13:20+00:00"

# Locust 2.x headers, as locust/stats.py (StatsCSV, StatsCSVFileWriter) writes them.
PCT = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
STATS_HEADER = [
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time",
    "Average Response Time", "Min Response Time", "Max Response Time", "Average Content Size",
    "Requests/s", "Failures/s", *PCT,
]  # fmt: skip
HISTORY_HEADER = [
    "Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", *PCT,
    "Total Request Count", "Total Failure Count", "Total Median Response Time",
    "Total Average Response Time", "Total Min Response Time", "Total Max Response Time",
    "Total Average Content Size",
]  # fmt: skip
FAILURES_HEADER = ["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"]
EXCEPTIONS_HEADER = ["Count", "Message", "Traceback", "Nodes"]
# requests.csv before streaming (still readable), then as locustfiles/request_recorder.py writes it.
PRE_STREAMING_HEADER = [
    "timestamp", "user_class", "method", "route", "status_code", "response_time_ms",
    "response_bytes", "success", "failure_reason", "request_id", "worker_pid", "worker_rss_mb",
    "worker_uss_mb", "worker_pss_mb", "queue_ms", "inference_ms", "batch_size",
    "prompt_tokens", "completion_tokens",
]  # fmt: skip
STREAM_HEADER = ["stream", "ttfb_ms", "ttft_ms", "tpot_ms", "chunks", "max_chunk_gap_ms",
                 "chunk_gaps_ms"]  # fmt: skip
REQUESTS_HEADER = [*PRE_STREAMING_HEADER, *STREAM_HEADER]
MEMORY_HEADER = [
    "timestamp", "pid", "role", "rss_mb", "uss_mb", "pss_mb", "shared_mb", "sys_available_mb",
]  # fmt: skip

RUN_JSON = {
    "label": "handmade", "model": "synthetic:tiny", "dtype": "float32", "workers": 2,
    "torch_threads": 1, "max_batch_size": 8, "users": 10,
    "spawn_rate": 10, "duration_s": 60, "shape": None, "git_commit": "abc1234",
    "host": {"cores": 2, "ram_gb": 16}, "versions": {"torch": "2.13.0"},
    "started_at": STARTED_AT, "ended_at": "2023-11-14T22:14:20+00:00",
}  # fmt: skip


def request_row(t: float, route: str = "/generate-text", **fields: Any) -> dict[str, Any]:
    """One requests.csv row at ``t`` s after the start: a 200 unless ``fields`` say otherwise."""
    row = {
        "timestamp": START_TS + t, "user_class": "PromptUser", "method": "POST", "route": route,
        "status_code": 200, "response_time_ms": 1000.0, "response_bytes": 200, "success": 1,
        "failure_reason": "", "request_id": f"r{t}", "worker_pid": 101, "worker_rss_mb": 3100,
        "worker_uss_mb": 150, "worker_pss_mb": 1150, "queue_ms": 100.0, "inference_ms": 900.0,
        "batch_size": 2, "prompt_tokens": 10, "completion_tokens": 20,
    }  # fmt: skip
    row.update(fields)
    return row


def streamed_row(
    t: float,
    ttft_ms: float,
    e2e_ms: float,
    tokens: Any,
    route: str = "/generate-text",
    **fields: Any,
) -> dict[str, Any]:
    """A successful streamed request: TTFT, end-to-end time and output tokens as given.

    tpot_ms is left blank: the analysis derives TPOT from the other three columns.
    """
    return request_row(t, route, response_time_ms=e2e_ms, completion_tokens=tokens, stream=1,
                       ttfb_ms=ttft_ms / 2, ttft_ms=ttft_ms, chunks=tokens, **fields)  # fmt: skip


# A streamed run, for targets TTFT <= 350 ms, TPOT <= 500 ms, E2E <= 5000 ms.
# t, TTFT, E2E, tokens -> TPOT = (E2E - TTFT) / (tokens - 1), tokens/s per user = tokens / E2E
STREAMED_ROWS = [
    streamed_row(0, 100, 1000, 10),  # TPOT 900/9 = 100, 10 tok/s; good
    streamed_row(1, 200, 2000, 10),  # TPOT 1800/9 = 200, 5 tok/s; good
    streamed_row(2, 300, 1300, 11),  # TPOT 1000/10 = 100, 11/1.3 tok/s; good
    # TPOT 4000/4 = 1000 > 500: succeeded, but an SLO miss. Ends at 3 + 4.25 = 7.25 s.
    streamed_row(3, 250, 4250, 5, "/answer-question"),
    streamed_row(4, 150, 150, 1, "/answer-question"),  # one token: no TPOT (0); good
    request_row(5, stream=1, status_code=503, success=0, failure_reason="overloaded",
                response_time_ms=5, completion_tokens=""),  # an error: a miss
    request_row(6, stream=0, response_time_ms=1000),  # not streamed: left out
]  # fmt: skip
STREAMED_WINDOW_S = 7.25  # first start 0 s, last end 7.25 s (the TPOT miss)


def memory_rows(
    t: float,
    workers: Sequence[tuple[int, float, float, float]],
    master=(3000, 50, 1000),
    available: float = 8000.0,
) -> list[dict[str, Any]]:
    """memory.csv rows of one sample: master, each (pid, rss, uss, pss) worker, and the total."""
    procs = [(100, "master", *master)] + [(pid, "worker", r, u, p) for pid, r, u, p in workers]
    rows = [
        {"timestamp": START_TS + t, "pid": pid, "role": role, "rss_mb": rss, "uss_mb": uss,
         "pss_mb": pss, "shared_mb": rss - uss, "sys_available_mb": available}
        for pid, role, rss, uss, pss in procs
    ]  # fmt: skip
    total = {k: sum(r[k] for r in rows) for k in ("rss_mb", "uss_mb", "pss_mb", "shared_mb")}
    rows.append({"timestamp": START_TS + t, "pid": 0, "role": "total", **total,
                 "sys_available_mb": available})  # fmt: skip
    return rows


def history_row(
    t: float,
    users: int,
    rps: float = 1.0,
    fps: float = 0.0,
    p50: Any = 900,
    p95: Any = 1500,
    p99: Any = 1800,
) -> dict[str, Any]:
    """One "Aggregated" row of locust_stats_history.csv at ``t`` s."""
    pct = dict.fromkeys(PCT, "N/A" if p50 == "N/A" else p95) | {"50%": p50, "95%": p95, "99%": p99}
    return {"Timestamp": int(START_TS + t), "User Count": users, "Type": "", "Name": "Aggregated",
            "Requests/s": rps, "Failures/s": fps, **pct, "Total Request Count": 0,
            "Total Failure Count": 0, "Total Median Response Time": 0,
            "Total Average Response Time": 0, "Total Min Response Time": 0,
            "Total Max Response Time": 0, "Total Average Content Size": 0}  # fmt: skip


def write_csv(path: Path, header: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` under ``header`` (missing keys blank)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(header), restval="")
        writer.writeheader()
        writer.writerows(rows)
