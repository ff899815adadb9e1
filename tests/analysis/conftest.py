"""Build run folders by hand in tmp_path: only the files a test names, with the real headers."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

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


WriteRun = Callable[..., Path]


@pytest.fixture
def write_run(tmp_path: Path) -> WriteRun:
    """Factory: a run folder with only the files passed (run=dict merged into RUN_JSON)."""

    def factory(
        name: str = "run",
        *,
        run: dict | None = None,
        requests=None,
        memory=None,
        history=None,
        stats=None,
        failures=None,
        server_log=None,
    ) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if run is not None:
            (folder / "run.json").write_text(json.dumps(RUN_JSON | run))
        tables = [("requests.csv", REQUESTS_HEADER, requests),
                  ("memory.csv", MEMORY_HEADER, memory),
                  ("locust_stats_history.csv", HISTORY_HEADER, history),
                  ("locust_stats.csv", STATS_HEADER, stats),
                  ("locust_failures.csv", FAILURES_HEADER, failures)]  # fmt: skip
        for file_name, header, rows in tables:
            if rows is not None:
                write_csv(folder / file_name, header, rows)
        if server_log is not None:
            lines = (json.dumps({"ts": START_TS + r.pop("t", 0.0), **r}) for r in server_log)
            (folder / "server_requests.jsonl").write_text("".join(f"{ln}\n" for ln in lines))
        return folder

    return factory


@pytest.fixture
def sweep_run(write_run: WriteRun) -> Path:
    """A complete 60 s step sweep (2 -> 4 -> 6 users, 20 s each) that saturates at 4 users.

    Every second each step completes min(users, 4) / 2 requests of 1 s (2 routes), so the
    throughput is 1, 2 and 2 req/s; memory grows 0.5 MB/s in one worker; one 429 and one
    503 near the end.
    """
    requests, memory, history, log = [], [], [], []
    for second in range(60):
        users = 2 * (second // 20 + 1)
        history.append(history_row(second, users, rps=min(users, 4) / 2))
        memory += memory_rows(second, [(101, 3100, 150 + second / 2, 1150 + second / 2),
                                       (102, 3100, 150, 1150)])  # fmt: skip
        for k in range(min(users, 4) // 2):
            route = "/generate-text" if k == 0 else "/summarize-text"
            requests.append(request_row(second + 0.1 * k, route, batch_size=1 + k))
            log.append({"t": second + 1, "route": route, "status": 200, "worker_pid": 101,
                        "rss_mb": 3100, "rss_delta_mb": 0.5, "rss_peak_mb": 3101})  # fmt: skip
    requests.append(request_row(58.5, status_code=429, success=0, failure_reason="rate_limited",
                                response_time_ms=5))  # fmt: skip
    requests.append(request_row(58.6, status_code=503, success=0, failure_reason="overloaded",
                                response_time_ms=5))  # fmt: skip
    return write_run("sweep", run={"label": "sweep", "users": 6}, requests=requests,
                     memory=memory, history=history, server_log=log)  # fmt: skip
