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
REQUESTS_HEADER = [
    "timestamp", "user_class", "method", "route", "status_code", "response_time_ms",
    "response_bytes", "success", "failure_reason", "request_id", "worker_pid", "worker_rss_mb",
    "worker_uss_mb", "worker_pss_mb", "queue_ms", "inference_ms", "batch_size",
    "prompt_tokens", "completion_tokens",
]  # fmt: skip
MEMORY_HEADER = [
    "timestamp", "pid", "role", "rss_mb", "uss_mb", "pss_mb", "shared_mb", "sys_available_mb",
]  # fmt: skip

RUN_JSON = {
    "label": "handmade", "model": "synthetic:tiny", "dtype": "float32", "workers": 2,
    "torch_threads": 1, "max_batch_size": 8, "batch_wait_ms": 5, "users": 10,
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
