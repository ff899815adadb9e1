"""Open-loop arrivals in real headless Locust runs: a rate kept by two Locust processes on one
schedule against the tiny model, and latency from the intended send time growing against a
server too slow for the rate while the latency from the actual send stays flat."""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests

from analysis.arrivals import arrival_summary
from analysis.config import AnalysisConfig
from analysis.findings import build_findings
from analysis.readers import read_requests
from analysis.report import render_markdown
from analysis.run import load_run
from harness.gunicorn_process import REPO, GunicornServer
from harness.processes import free_port, stop_process
from harness.waiting import wait_until
from tests.conftest import server_env
from tests.locust.test_locust_arrival_schedule import ks_exponential
from tests.locust_runs import USER_CLASSES, locust_command, locust_env, read_csv, run_headless

SERVICE_S = 0.5  # the slow server answers one request at a time, each after this long


class _Slow(BaseHTTPRequestHandler):
    """A valid /generate-text answer after SERVICE_S; one request at a time (HTTPServer)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(SERVICE_S)
        body = json.dumps({"text": " slow", "model": "slow",
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""


@pytest.fixture
def slow_server() -> Iterator[str]:
    """URL of a single-threaded server that takes SERVICE_S per request: 2 req/s at most."""
    server = HTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_latency_from_the_intended_send_grows_when_the_server_cannot_keep_up(
        slow_server: str, tmp_path: Path) -> None:
    # 4 req/s on schedule, one user in the pool, a server that serves 2 req/s: a closed-loop
    # user (one request after another) would measure a flat 0.5 s; arrivals queue behind it.
    run_dir = tmp_path / "run"
    result = run_headless(run_dir, slow_server, "key", "PromptUser", "--arrival", "constant",
                          "--rate", "4", "-u", "1", "-r", "10", "-t", "8s",
                          "--stop-timeout", "5", "--memory-sample-s", "0")
    assert result.returncode == 0, (run_dir / "locust.log").read_text()[-3000:]

    record = json.loads((run_dir / "run.json").read_text())
    arrivals = record["arrivals"]
    assert {k: arrivals[k] for k in ("process", "rate_rps", "seed", "kinds")} == {
        "process": "constant", "rate_rps": 4.0, "seed": 0, "kinds": {"PromptUser": 3.0}}
    requests = read_requests(run_dir / "requests.csv")
    summary = arrival_summary(requests, arrivals)
    window = arrivals["stop_ts"] - arrivals["start_ts"]
    assert arrivals["scheduled"] == pytest.approx(4 * window, abs=1)
    # The server's pace, not the schedule's: half of what fell due was sent.
    assert summary.sent <= 2.2 / 4 * arrivals["scheduled"] + 1
    assert summary.pool_delayed >= summary.sent - 2
    # Latency from the actual send stays ~SERVICE_S; from the intended send it climbs ~0.25 s
    # per arrival (due every 0.25 s, served every 0.5 s).
    assert summary.actual_p99_ms < 3 * SERVICE_S * 1000
    assert abs(summary.actual_growth_ms) < 250
    assert summary.intended_growth_ms > 1500
    lat = requests.sort_values("intended_ts")["intended_latency_ms"].to_numpy()
    assert lat[-1] > lat[0] + 2000 and all(lat[1:] >= lat[:-1] - 50)  # climbs all the way

    report = render_markdown(build_findings(load_run(run_dir), AnalysisConfig()))
    assert "## Arrivals (open-loop load)" in report
    assert "waited for a free user" in report


def test_two_locust_processes_keep_a_poisson_rate_on_one_schedule(
        tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    api_key = secrets.token_urlsafe(24)
    with GunicornServer(tmp_path, server_env(run_dir, API_KEYS=api_key), workers=1) as server:
        result = run_headless(run_dir, server.url, api_key, "--processes", "2",
                              "--arrival", "poisson", "--rate", "3", "--arrival-seed", "4",
                              "-u", "8", "-r", "100", "-t", "10s", "--stop-timeout", "30",
                              "--server-pidfile", str(server.pidfile),
                              operator_key=server.operator_key)
    assert result.returncode == 0, (run_dir / "locust.log").read_text()[-3000:]

    arrivals = json.loads((run_dir / "run.json").read_text())["arrivals"]
    rows = read_csv(run_dir / "requests.csv")
    indices = sorted(int(r["arrival_index"]) for r in rows)
    # Both processes sent their share: together the whole schedule, each arrival once (give
    # or take the last one or two, due as the processes were told to stop).
    assert len(indices) == len(set(indices))
    assert abs(len(indices) - arrivals["scheduled"]) <= 2, (len(indices), arrivals)
    assert indices[: arrivals["scheduled"] - 2] == list(range(arrivals["scheduled"] - 2))
    assert {r["user_class"] for r in rows} == USER_CLASSES and {r["success"] for r in rows} == {"1"}
    summary = arrival_summary(read_requests(run_dir / "requests.csv"), arrivals)
    assert summary.achieved_rps == pytest.approx(summary.scheduled_rps, rel=0.1)
    assert summary.pool_delayed <= 2 and summary.lag_p50_ms < 50
    # The actual sends, not only the schedule, are a Poisson process at the rate.
    sends = sorted(float(r["timestamp"]) for r in rows)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert ks_exponential(gaps, 3.0)[1] > 0.01


def _arrivals_tab(url: str) -> dict[str, str]:
    """The Arrivals tab's rows from the UI's statistics poll ({} while it has none)."""
    try:
        stats = requests.get(f"{url}/stats/requests", timeout=2).json()
    except (requests.ConnectionError, ValueError):
        return {}
    tabs = {t["key"]: t["data"] for t in stats.get("extended_stats", [])}
    return {row["metric"]: row["value"] for row in tabs.get("arrivals", [])}


def test_the_web_ui_shows_the_arrivals_tab_live(slow_server: str, tmp_path: Path) -> None:
    port = free_port()
    cmd = locust_command(tmp_path / "run", slow_server, "--web-host", "127.0.0.1",
                         "--web-port", str(port), "--autostart", "-u", "1", "-r", "10",
                         "-t", "60s", "PromptUser", "--arrival", "constant", "--rate", "4",
                         "--memory-sample-s", "0")
    with open(tmp_path / "locust.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=locust_env(LOCUST_API_KEY="key"),
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _arrivals_tab(url).get("Sent late: every user busy (raise -u)",
                                                      "0") not in ("0", ""),
                       "the Arrivals tab counts arrivals sent late", timeout_s=60,
                       interval_s=0.5, alive=lambda: proc.poll() is None,
                       detail=lambda: (tmp_path / "locust.log").read_text()[-3000:])
            rows = _arrivals_tab(url)
            assert "Arrivals" in requests.get(url, timeout=5).text  # the tab's title
        finally:
            stop_process(proc, 30)
    assert rows["Arrival process"] == "constant at 4 req/s, seed 0"
    due, sent = map(int, rows["Due so far / sent"].split(" / "))
    assert sent >= 1 and due > sent  # one user, a 2 req/s server: the schedule runs ahead
    actual_p50_ms = float(rows["Latency from actual send p50 / p99"].split(" ms")[0])
    assert SERVICE_S * 1000 <= actual_p50_ms < 2 * SERVICE_S * 1000
