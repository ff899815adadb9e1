"""Fixtures: run folders built by hand in tmp_path, with only the files a test names."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from analysis_run_builders import (
    FAILURES_HEADER,
    HISTORY_HEADER,
    MEMORY_HEADER,
    REQUESTS_HEADER,
    RUN_JSON,
    START_TS,
    STATS_HEADER,
    history_row,
    memory_rows,
    request_row,
    write_csv,
)

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
