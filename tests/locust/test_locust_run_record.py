"""Any Locust run writes a complete run.json: plain headless, --processes 2 and the web UI
(autostarted), against a real Gunicorn on synthetic:tiny, with no script around Locust."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from harness.gunicorn_process import REPO, GunicornServer
from tests.conftest import server_env
from tests.locust_runs import locust_env, run_headless

MODES = {
    # A p95 target no server meets: the suite's --check-* sets Locust's exit code to 3.
    "headless": ("--headless", "--check-p95-ms", "0.001"),
    # A target met on the master, from its workers' statistics: exit code 0.
    "processes-2": ("--headless", "--processes", "2", "--check-p95-ms", "600000",
                    "--check-fail-ratio", "0.5"),
    # The web UI, started and stopped by Locust itself (no browser needed to click "Start").
    "web-ui": ("--autostart", "--autoquit", "0", "--web-host", "127.0.0.1", "--web-port", "0"),
}
EXIT_CODES = {"headless": 3, "processes-2": 0, "web-ui": 0}


@pytest.fixture(scope="module", params=list(MODES))
def run(request: pytest.FixtureRequest, tiny_model: Path,
        tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One 8-second Locust run in ``request.param`` mode against 2 Gunicorn workers."""
    mode, tmp = request.param, tmp_path_factory.mktemp(request.param)
    run_dir, api_key = tmp / "run", secrets.token_urlsafe(24)
    env = server_env(run_dir, API_KEYS=api_key, MAX_QUEUE="17")
    run_dir.mkdir()
    with GunicornServer(tmp, env, workers=2) as server:
        args = ("-u", "4", "-r", "4", "-t", "8s", "--stop-timeout", "30", "--label", mode)
        if mode == "web-ui":
            with open(run_dir / "locust.log", "wb") as log:
                cmd = [sys.executable, "-m", "locust", "-f", "locustfiles", "--host", server.url,
                       "--run-dir", str(run_dir), "--csv", str(run_dir / "locust"),
                       "--csv-full-history", *MODES[mode], *args]
                env = locust_env(LOCUST_API_KEY=api_key,
                                 LOCUST_OPERATOR_KEY=server.operator_key)
                done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=300)
        else:
            done = run_headless(run_dir, server.url, api_key, *MODES[mode][1:], *args,
                                operator_key=server.operator_key)
    log = (run_dir / "locust.log").read_text()
    assert done.returncode == EXIT_CODES[mode], log[-4000:]
    assert ("target missed: p95" in log) == (mode == "headless")
    return mode, run_dir


def test_run_json_has_the_client_facts(run: tuple[str, Path]) -> None:
    mode, run_dir = run
    record = json.loads((run_dir / "run.json").read_text())
    client = record["client"]

    assert (record["label"], record["users"], record["spawn_rate"]) == (mode, 4, 4)
    assert (record["mix"], record["target"], record["duration_s"]) == ("tasks", "lab", 8)
    assert record["target_url"].startswith("http://127.0.0.1:") and record["shape"] is None
    assert record["started_at"] < record["ended_at"] and record["versions"]["locust"]
    assert client["locust_version"] == record["versions"]["locust"]
    assert client["mode"] == ("web-ui" if mode == "web-ui" else "headless")
    assert client["role"] == ("master" if mode == "processes-2" else "local")
    assert client["workers_expected"] == (2 if mode == "processes-2" else None)
    assert set(client["user_classes"]) == {"PromptUser", "SummarizeUser", "QAUser"}
    assert client["host"]["cores"] >= 1 and client["host"]["cpu_model"]


def test_run_json_has_the_server_facts_from_ready_and_metrics(run: tuple[str, Path]) -> None:
    _, run_dir = run
    record = json.loads((run_dir / "run.json").read_text())
    server = record["server"]

    assert (record["model"], record["dtype"], record["workers"]) == ("synthetic:tiny",
                                                                     "float32", 2)
    assert record["torch_threads"] == 1 and server["threads_shared"] is False
    assert server["kernels"]["chosen"] in {t["precision"] for t in server["kernels"]["table"]}
    assert server["limits"]["max_queue"] == 17  # the server's own setting, not a default
    assert server["workers_seen"] == 2 and server["weight_mb"] > 0
    assert "facts_error" not in server
    # The server is on this machine: its host fingerprint includes torch's kernel path.
    assert record["host"]["torch_cpu_capability"] and record["host"]["isa"]


def test_analysis_reports_the_settings_without_missing_notes(run: tuple[str, Path]) -> None:
    _, run_dir = run
    done = subprocess.run([sys.executable, "-m", "analysis", str(run_dir), "--no-html"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    report = (run_dir / "report.md").read_text()

    assert done.returncode == 0, done.stderr[-3000:]
    assert "missing" not in report and "could not be read" not in report
    settings = report.split("## Run settings")[1]
    assert "| model | synthetic:tiny |" in settings and "| server.limits.max_queue | 17 |" \
        in settings
