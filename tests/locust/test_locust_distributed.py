"""Distributed Locust (a master and 2 worker processes): every request reaches requests.csv."""

from __future__ import annotations

import secrets
from collections import Counter
from pathlib import Path

from harness.gunicorn_process import GunicornServer
from tests.conftest import server_env
from tests.locust_runs import (
    LOCUST_FILES,
    USER_CLASSES,
    locust_totals,
    read_csv,
    read_jsonl,
    run_headless,
)


def test_master_and_two_workers_record_every_request(tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    api_key = secrets.token_urlsafe(24)
    # Requests are still in flight when the run time is up: without the drain
    # (--stop-timeout), the master would quit before the workers' last rows and statistics.
    # (server_env: rate limits off, so a burst of the slowed machine's late replies cannot
    # turn into 429s.)
    env = server_env(run_dir, API_KEYS=api_key)
    with GunicornServer(tmp_path, env, workers=2) as server:
        result = run_headless(run_dir, server.url, api_key, "--processes", "2", "-u", "6",
                              "-r", "6", "-t", "15s", "--stop-timeout", "30",
                              "--server-pidfile", str(server.pidfile),
                              operator_key=server.operator_key)
        worker_pids = set(map(str, server.worker_pids()))
    log = (run_dir / "locust.log").read_text()

    assert result.returncode == 0, log
    assert "2 workers connected" in log or "(index 1) reported as ready" in log, log
    assert all((run_dir / name).is_file() for name in LOCUST_FILES), sorted(run_dir.iterdir())
    rows = read_csv(run_dir / "requests.csv")
    served = read_jsonl(run_dir / "server_requests.jsonl")
    client_only = {r["request_id"] for r in rows} - {s["request_id"] for s in served}
    assert len(rows) == len(served) == locust_totals(run_dir)[0] > 0, (
        [r for r in rows if r["request_id"] in client_only], locust_totals(run_dir))
    assert Counter(r["request_id"] for r in rows) == Counter(s["request_id"] for s in served)
    assert {r["user_class"] for r in rows} == USER_CLASSES
    assert locust_totals(run_dir)[1] == 0 and {r["success"] for r in rows} == {"1"}
    assert {r["worker_pid"] for r in rows} <= worker_pids
    # Users in both Locust workers took distinct numbers: request ids never repeat.
    assert len({r["request_id"] for r in rows}) == len(rows)
    roles = Counter(r["role"] for r in read_csv(run_dir / "memory.csv"))
    assert roles["master"] > 5 and roles["worker"] == 2 * roles["master"] == 2 * roles["total"]
    # Every Locust process ticks into loadgen.csv: the master's own rows, the workers' by message.
    ticks = read_csv(run_dir / "loadgen.csv")
    processes = {(r["role"], r["pid"]) for r in ticks}
    assert Counter(role for role, _ in processes) == {"master": 1, "worker": 2}
    per_process = Counter((r["role"], r["pid"]) for r in ticks)
    assert min(per_process.values()) > 50  # ~10 a second over a 15 s run
